"""Section 1b, "encoder": on a CPU the encoder competes with the model for the same cores,
so its CPU is the pipeline's overhead. Compares x264 presets (CPU, bytes, PSNR, pipeline /
model), checks that vsrflow's default is the cheapest acceptable one, and times the pipeline
with a core left to the codec (as beside a GPU)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import (
    NOISE_MARGIN,
    Sizes,
    fresh_upscaler,
    interleaved,
    load_frames,
    per_frame,
    psnr,
    timed,
)
from bench.rig import BatchRig

if TYPE_CHECKING:
    from vsrflow.models import LoadedModel


#: x264 presets compared, slowest first; x264's own default (medium) is the reference.
X264_PRESETS = ("medium", "faster", "veryfast", "superfast", "ultrafast")
REFERENCE_PRESET = "medium"
#: A preset may replace the reference as the default when its file at the same CRF is no
#: larger and its PSNR against the model's frames is at most this much lower.
MAX_ENCODER_PSNR_LOSS_DB = 0.5


def run_encoders(
    model: LoadedModel, clip: Path, frames: np.ndarray, sizes: Sizes, scratch: Path
) -> dict[str, Any]:
    """On a CPU the encoder competes with the model for the same cores, so its CPU cost is the
    pipeline's overhead. For each x264 preset at the default CRF: the encoder alone (CPU per
    frame, bytes, PSNR of the decoded chunk against the model's frames) and pipeline / model
    in interleaved rounds; the cheapest preset no larger and at most 0.5 dB worse than x264's
    default must be vsrflow's default. Then the same pipeline with torch on all cores but one,
    which leaves the codec a core of its own, as a GPU node does (the model on the GPU, the
    codec on the CPU): that ratio is what the overlap achieves when work does not compete."""
    import torch

    from vsrflow.engine import EngineSettings
    from vsrflow.media.codecs import EncoderSettings

    rig = BatchRig(fresh_upscaler(model, EngineSettings()), clip, frames, scratch / "enc-chunks")
    n = rig.n
    upscaled = rig.engine_only()
    default_preset = EncoderSettings().options().get("preset", "")
    presets: dict[str, dict[str, Any]] = {}
    for preset in X264_PRESETS:
        path = rig.chunks / f"encode-{preset}.mp4"
        sample = timed(
            lambda p=preset, out=path: rig.encode_only(upscaled, EncoderSettings(speed=p), out)
        )[0]
        presets[preset] = {
            "encode_cpu_s_per_frame": round(sample.cpu / n, 4),
            "encode_s_per_frame": round(sample.wall / n, 4),
            "bytes": path.stat().st_size,
            "psnr_db_vs_model_frames": round(psnr(load_frames(path), upscaled), 2),
        }
        path.unlink()
    variants: list[tuple[str, Callable[[], Any]]] = [("model", rig.model_only)]
    variants += [(p, lambda p=p: rig.pipeline(EncoderSettings(speed=p))) for p in X264_PRESETS]
    samples = interleaved(variants, sizes.encoder_rounds, "encoder")
    model_s = min(s.wall for s in samples["model"])
    for preset, record in presets.items():
        record["pipeline"] = per_frame(samples[preset], n)
        record["pipeline_over_model"] = round(min(s.wall for s in samples[preset]) / model_s, 3)
    ref = presets[REFERENCE_PRESET]
    eligible = [
        p
        for p, r in presets.items()
        if r["bytes"] <= ref["bytes"]
        and r["psnr_db_vs_model_frames"]
        >= ref["psnr_db_vs_model_frames"] - MAX_ENCODER_PSNR_LOSS_DB
    ]
    pick = min(eligible, key=lambda p: presets[p]["encode_cpu_s_per_frame"])
    result: dict[str, Any] = {
        "frames": n,
        "crf": EncoderSettings().options().get("crf"),
        "default_preset": default_preset,
        "presets": presets,
        "cheapest_eligible": pick,
        "default_is_cheapest_eligible": default_preset == pick
        or presets.get(default_preset, {}).get("encode_cpu_s_per_frame", math.inf)
        <= presets[pick]["encode_cpu_s_per_frame"] * NOISE_MARGIN,
    }
    threads = torch.get_num_threads()
    if threads < 2:
        result["spare_core"] = {"skipped": f"torch uses {threads} thread: no core to spare"}
        return result
    torch.set_num_threads(threads - 1)
    try:
        rig.model_only()  # warm-up at this thread count
        spare = interleaved(
            [("model", rig.model_only), ("pipeline", rig.pipeline)],
            sizes.encoder_rounds,
            "spare core",
        )
    finally:
        torch.set_num_threads(threads)
    m, p = per_frame(spare["model"], n), per_frame(spare["pipeline"], n)
    result["spare_core"] = {
        "torch_threads": threads - 1,
        "cores": os.cpu_count(),
        "model": m,
        "pipeline": p,
        "pipeline_over_model": round(p["best_s_per_frame"] / m["best_s_per_frame"], 3),
    }
    return result
