"""Section 11, "workermem": a worker's peak memory against a plain forward's (issue 11 item 4).

The same 640x272 clip goes x4 through two child processes, at the same settings (precision,
frames per forward pass):

* plain: what Real-ESRGAN's video script does, without its ffmpeg pipes: decode a frame,
  collect a micro-batch, one forward pass of the raw module, clamp/scale/round to uint8,
  encode; nothing overlapped, nothing else held;
* pipeline: ``vsrflow.pipeline.upscale_batch`` (the whole clip as one batch) through the
  Upscaler, decode, model and encode overlapped by threads and bounded queues.

Two settings: the peer's own (fp32, one frame per pass) and the engine's defaults. Reported:
each child's resident set after loading the model and its peak (VmHWM), and the pipeline's
peak over the plain one's. Target: at most 300 MB over.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SHARED, get_weights, make_clip, run_child
from bench.sections.rss import worker_rss
from vsrflow.procmem import proc_status_mb

#: Target from issue 11: the worker's peak over the plain forward's, at equal settings.
TARGET_OVER_PLAIN_MB = 300.0
SOURCE = "bikes_640x272_25fps_noaudio.mp4"


def _settings(precision: str, frames_per_pass: int) -> Any:
    from vsrflow.engine import EngineSettings

    return EngineSettings(precision=precision, micro_batch=frames_per_pass)  # type: ignore[arg-type]


def worker_plain(clip: Path, workdir: Path, precision: str, frames_per_pass: int) -> dict[str, Any]:
    """Child: decode -> forward -> encode, one micro-batch at a time, in this thread."""
    import contextlib
    from fractions import Fraction

    import av
    import torch

    from vsrflow.engine import resolve_precision

    model = get_weights()
    net = model.descriptor.model.eval()
    chosen = resolve_precision(
        _settings(precision, frames_per_pass).precision, torch.device("cpu"), model.descriptor
    )
    rss_loaded = proc_status_mb("VmRSS")
    started = time.perf_counter()
    frames = 0
    with av.open(str(clip)) as src, av.open(str(workdir / f"{uuid.uuid4().hex}.mp4"), "w") as out:
        decoded = src.streams.video[0]
        stream = out.add_stream("libx264", rate=25, options={"preset": "fast"})
        stream.width, stream.height = decoded.width * model.scale, decoded.height * model.scale
        stream.pix_fmt = "yuv420p"

        def run(batch: list[np.ndarray]) -> None:
            nonlocal frames
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)
            autocast = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if chosen == "bf16"
                else contextlib.nullcontext()
            )
            with torch.inference_mode():
                with autocast:
                    y = net(x)
                y = y.float().clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
                rgbs = y.permute(0, 2, 3, 1).contiguous().numpy()
            for rgb in rgbs:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = frames, Fraction(1, 25)
                out.mux(stream.encode(frame))
                frames += 1

        batch: list[np.ndarray] = []
        for frame in src.decode(video=0):
            batch.append(frame.to_ndarray(format="rgb24"))
            if len(batch) == frames_per_pass:
                run(batch)
                batch = []
        if batch:
            run(batch)
        out.mux(stream.encode(None))
    return {
        "frames": frames,
        "precision": chosen,
        "seconds": round(time.perf_counter() - started, 2),
        "rss_after_model_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(proc_status_mb("VmHWM"), 1),
    }


def worker_pipeline(
    clip: Path, workdir: Path, precision: str, frames_per_pass: int
) -> dict[str, Any]:
    """Child: the whole clip as one batch through ``upscale_batch``, as a worker runs it."""
    return worker_rss(clip, workdir, _settings(precision, frames_per_pass))


def run_workermem(scratch: Path, quick: bool) -> dict[str, Any]:
    frames = 16 if quick else 48
    clip = make_clip(SHARED / "media" / SOURCE, scratch / "mem-640x272.mp4", frames)
    out = scratch / "mem-out"
    out.mkdir(exist_ok=True)
    results: dict[str, Any] = {"source": SOURCE, "frames": frames, "size": [640, 272]}
    for label, precision, per_pass in (("peer", "fp32", 1), ("defaults", "auto", 4)):
        args = [str(clip), str(out), precision, str(per_pass)]
        runs = {k: run_child(["--worker", f"mem-{k}", *args]) for k in ("plain", "pipeline")}
        over = runs["pipeline"]["peak_rss_mb"] - runs["plain"]["peak_rss_mb"]
        results[label] = {
            "precision": precision,
            "frames_per_pass": per_pass,
            **runs,
            "pipeline_over_plain_mb": round(over, 1),
        }
        print(f"  workermem {label}: pipeline {over:+.0f} MB over the plain forward", flush=True)
    results["target_over_plain_mb"] = TARGET_OVER_PLAIN_MB
    return results
