"""Section 1, "core" (and "flow" with it): the model, the engine, the pipeline and the
Prefect flow timed on the same frames in the same interleaved rounds, plus decode alone and
encode alone, from which the CPU-bound floor follows. The flow is timed here, not in its own
pass, so that it sees the same machine load as the pipeline; its harness is
bench/sections/flow.py."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import Sizes, fresh_upscaler, interleaved, per_frame, timed
from bench.rig import BatchRig
from bench.sections.flow import FlowBench

if TYPE_CHECKING:
    from vsrflow.models import LoadedModel


def run_speed(
    model: LoadedModel,
    clip: Path,
    warm_clip: Path,
    frames: np.ndarray,
    sizes: Sizes,
    scratch: Path,
    with_flow: bool,
) -> dict[str, Any]:
    """Time the layers on the same frames with the default settings in interleaved rounds
    (model, engine, pipeline, flow), plus decode alone and encode alone, from which the
    CPU-bound floor follows: on a CPU the model and the codec share the cores, so overlap can
    hide waiting but not work. Returns {"core": ..., "flow": ...}."""
    import torch

    from vsrflow.engine import EngineSettings
    from vsrflow.media.codecs import EncoderSettings

    settings = EngineSettings()
    rig = BatchRig(fresh_upscaler(model, settings), clip, frames, scratch / "core-chunks")
    n = rig.n
    upscaled = rig.engine_only()  # warm-up at this shape; kept for the encode-only run
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("model", rig.model_only),
        ("engine", rig.engine_only),
        ("pipeline", rig.pipeline),
    ]
    flow = FlowBench(clip, warm_clip, scratch) if with_flow else None
    if flow is not None:
        variants.append(("flow", flow.run_once))
    samples = interleaved(variants, sizes.rounds, "speed")
    samples.pop("flow", None)
    encoded = rig.chunks / "encode-only.mp4"
    decode_sample = timed(rig.decode_only)[0]
    encode_sample = timed(lambda: rig.encode_only(upscaled, EncoderSettings(), encoded))[0]
    encoded.unlink()
    result: dict[str, Any] = {name: per_frame(s, n) for name, s in samples.items()}
    m, e, p = result["model"], result["engine"], result["pipeline"]
    cores = os.cpu_count() or 1
    codec_cpu = (decode_sample.cpu + encode_sample.cpu) / n
    floor = max(e["best_s_per_frame"], (e["cpu_s_per_frame"] + codec_cpu) / cores)
    result.update(
        frames=n,
        settings=dataclasses.asdict(settings),
        encoder=EncoderSettings().identity(),
        precision=rig.upscaler.precision,
        torch_threads=torch.get_num_threads(),
        decode_only=per_frame([decode_sample], n),
        encode_only=per_frame([encode_sample], n),
        serial_sum_s_per_frame=round(
            e["best_s_per_frame"] + (decode_sample.wall + encode_sample.wall) / n, 4
        ),
        cpu_bound_floor_s_per_frame=round(floor, 4),
        ratio_pipeline_over_model=round(p["best_s_per_frame"] / m["best_s_per_frame"], 3),
        ratio_pipeline_over_model_median=round(
            p["median_s_per_frame"] / m["median_s_per_frame"], 3
        ),
        ratio_engine_over_model=round(e["best_s_per_frame"] / m["best_s_per_frame"], 3),
        ratio_pipeline_over_cpu_floor=round(p["best_s_per_frame"] / floor, 3),
        # The best ratio any overlap could reach here: the codec's CPU on top of the model's.
        ratio_floor_over_model=round(floor / m["best_s_per_frame"], 3),
        pipeline_peak_disk_bytes=max(rig.peak_disk),
        pipeline_output_bytes=rig.output_bytes[-1],
        # Every pipeline round's chunk decoded back: all n frames, or the ratio means nothing.
        pipeline_output_frames=sorted(set(rig.output_frames)),
    )
    speed: dict[str, Any] = {"core": result}
    if flow is not None:
        flow_result = flow.result()
        flow_result["fixed_overhead_s"] = round(
            flow_result["best_total_s"] - p["best_s_per_frame"] * n, 2
        )
        speed["flow"] = flow_result
    return speed
