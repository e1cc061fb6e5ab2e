"""Section 10, "feature": a feature-length film through ``vsrflow upscale`` (issue 11).

A synthetic film at a tiny size (32x18, 24 fps: the model is cheap, so what is measured is
what grows with the film's length: tasks, futures, results, records) runs through the CLI on
the local-gpus profile (one worker process; the flow process only orchestrates), twice: the
full length (2 hours, 172,800 frames; 30 minutes with ``--quick``) and a quarter of it.
Reported: the flow process's peak RSS for both (bounded submission: it must not grow with the
length), batches (task runs) and the batch-count cap, the submission window, the upscale
stage against the model seconds the batches reported, and the output's frame count against
the source's. A third, shorter film at 320x180 (3 minutes; 1 with ``--quick``) measures the
share of the upscale stage spent outside batch tasks when the model does real work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from bench.common import REPO, SHARED, WEIGHTS_NAME

#: Targets from issue 11: flow-process peak RSS for the 2-hour film, and its growth
#: against the shorter film's.
TARGET_FLOW_RSS_MB = 500.0
TARGET_RSS_GROWTH = 1.10
SIZE = (32, 18)
#: Frames the size of the speed section's (320x180 -> 1280x720) for the orchestration share.
SD_SIZE = (320, 180)
#: Target from issue 11: time in the upscale stage outside batch tasks, at 320x180.
TARGET_OUTSIDE_SHARE = 0.05
RATE = 24


def make_film(path: Path, frames: int, size: tuple[int, int] = SIZE) -> Path:
    """``frames`` frames of a moving gradient (x264 ultrafast: seconds per hour at 32x18)."""
    width, height = size
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=RATE, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        base = np.broadcast_to(ramp, (height, width, 3))
        for i in range(frames):
            rgb = ((base + i * 3) % 256).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, RATE)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.demux(video=0) if _.size)


def _upscale(film: Path, home: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL",)}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(REPO))
    out = film.with_name(film.stem + "_x4.mp4")
    command = [sys.executable, "-m", "flows.cli", "upscale", str(film), "-o", str(out)]
    command += ["--weights", str(SHARED / "models" / WEIGHTS_NAME), "--no-progress"]
    # Batches in a worker process of their own (on CPU: one, with every core), so the flow
    # process's memory is the orchestration's alone; the local profile runs them in-process.
    command += ["--profile", "local-gpus"]
    env["VSRFLOW_LOCAL_WORKERS"] = "1"
    started = time.perf_counter()
    done = subprocess.run(command, cwd=film.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"vsrflow upscale failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    model_s = sum(b["seconds_model"] for b in result["batch_results"])
    # One worker: the stage's time not spent inside a batch task is orchestration's.
    in_batches = sum(b["seconds_total"] for b in result["batch_results"])
    stage = result["seconds"]["upscale"]
    return {
        "source_frames": _decoded_frames(film),
        "output_frames": _decoded_frames(out),
        "wall_s": round(wall, 1),
        "upscale_stage_s": round(result["seconds"]["upscale"], 1),
        "batch_model_s": round(model_s, 1),
        "outside_batches_s": round(stage - in_batches, 1),
        "outside_batches_share": round((stage - in_batches) / stage, 3),
        "batches": result["batches"],
        "window": result["window"],
        "flow_peak_rss_mb": result["flow_peak_rss_mb"],
    }


def run_feature(scratch: Path, quick: bool, *, sd: bool = True) -> dict[str, Any]:
    """Both films, then (``sd``) the few minutes at 320x180 for the orchestration share
    (50 min of the section's ~110 on 2 cores; ``--feature-films-only`` leaves it out)."""
    minutes = 30 if quick else 120
    frames = minutes * 60 * RATE
    home = scratch / "feature-home"
    runs = {}
    try:
        for label, count in (("quarter", frames // 4), ("full", frames)):
            film = make_film(scratch / f"film-{label}.mp4", count)
            runs[label] = _upscale(film, home)
        # Orchestration against real model work: SD-like frames, a few minutes of film.
        sd_minutes = 1 if quick else 3
        if sd:
            film = make_film(scratch / "film-sd.mp4", sd_minutes * 60 * RATE, SD_SIZE)
            sd_run = _upscale(film, home)
    finally:
        subprocess.run(
            [sys.executable, "-m", "flows.cli", "server", "stop"],
            env={**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": str(REPO)},
            capture_output=True,
            check=False,
        )
    full, quarter = runs["full"], runs["quarter"]
    return {
        "minutes": minutes,
        "size": list(SIZE),
        "runs": runs,
        "rss_growth": round(full["flow_peak_rss_mb"] / quarter["flow_peak_rss_mb"], 3),
        "frames_exact": all(r["source_frames"] == r["output_frames"] for r in runs.values()),
        **({"sd": {"minutes": sd_minutes, "size": list(SD_SIZE), **sd_run}} if sd else {}),
        "targets": {
            "flow_rss_mb": TARGET_FLOW_RSS_MB,
            "rss_growth": TARGET_RSS_GROWTH,
            "outside_batches_share": TARGET_OUTSIDE_SHARE,
        },
    }
