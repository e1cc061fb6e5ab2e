"""The upscale-video flow: probe -> plan -> upscale batches (mapped) -> assemble -> publish."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.futures import wait
from pydantic import Field

from deployments.profiles import task_runner_for
from tasks.media import assemble_output, plan_job, probe_source
from tasks.upscale import chunk_is_present, upscale_batch
from vsrflow.engine import EngineSettings
from vsrflow.job import JobPlan, UpscaleJob
from vsrflow.media.encode import EncoderSettings
from vsrflow.models import model_for_content
from vsrflow.pipeline import BatchResult

WORK_DIR_ENV = "VSRFLOW_WORK_DIR"

Content = Literal["anime", "real", "general"]
Codec = Literal["h264", "hevc", "av1", "prores", "ffv1"]
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]


def default_work_dir(output_path: str) -> str:
    """``$VSRFLOW_WORK_DIR``, else ``.vsrflow-work`` beside the output (same disk, found again
    by a rerun, which is what makes resuming after a crash work)."""
    return os.environ.get(WORK_DIR_ENV) or str(Path(output_path).parent / ".vsrflow-work")


@flow(name="upscale-batches", log_prints=True)
def upscale_batches(plan: JobPlan, job: UpscaleJob, work_dir: str) -> dict[str, Any]:
    """Submit every batch to the profile's task runner; count cached vs computed batches."""
    task = upscale_batch.with_options(result_storage=Path(work_dir) / "results")
    futures = []
    for batch in plan.batches:
        # A cache record without its chunk must not be trusted: recompute and overwrite it.
        runner = (
            task if chunk_is_present(work_dir, batch) else task.with_options(refresh_cache=True)
        )
        futures.append(runner.submit(plan.video, batch, job, plan.out_size, work_dir))
    wait(futures)
    results: list[BatchResult] = [future.result() for future in futures]
    cached = sum(1 for future in futures if future.state.name == "Cached")
    return {"results": results, "cached": cached, "computed": len(futures) - cached}


@flow(name="upscale-video", log_prints=True)
def upscale_video(
    input_path: Annotated[str, Field(description="Source video file (mp4, mkv, mov, webm...).")],
    output_path: Annotated[
        str, Field(description="Where to publish the result; .mp4, .mkv or .mov.")
    ],
    content: Annotated[
        Content,
        Field(
            description="Content preset picking the model when `model` is empty: anime -> "
            "realesr-animevideov3, real -> RealESRGAN_x4plus, general -> "
            "realesr-general-x4v3."
        ),
    ] = "anime",
    model: Annotated[
        str | None,
        Field(
            description="Registry model name (see `vsrflow models list`) or a path to a "
            "spandrel-compatible .pth/.safetensors file; overrides `content`."
        ),
    ] = None,
    denoise_strength: Annotated[
        float,
        Field(
            ge=0.0,
            le=1.0,
            description="realesr-general-x4v3 only: 1 = no extra "
            "denoising, 0 = strongest (wdn blend).",
        ),
    ] = 1.0,
    outscale: Annotated[
        float | None,
        Field(gt=0.0, le=16.0, description="Final scale factor; the model's own scale when empty."),
    ] = None,
    target_height: Annotated[
        int | None,
        Field(
            ge=16,
            le=8640,
            description="Final height in pixels (aspect kept); exclusive with outscale.",
        ),
    ] = None,
    codec: Annotated[Codec, Field(description="Output video codec.")] = "h264",
    crf: Annotated[
        int | None,
        Field(
            ge=0,
            le=63,
            description="Quality (lower is better); codec default when empty (h264: 18).",
        ),
    ] = None,
    encoder_preset: Annotated[
        str | None,
        Field(description="Encoder speed preset (x264/x265: ultrafast..veryslow; svt-av1: 0..13)."),
    ] = None,
    precision: Annotated[
        PrecisionChoice,
        Field(description="auto = fp16 on CUDA, bf16 on CPUs with native bf16, else fp32."),
    ] = "auto",
    tile: Annotated[
        int,
        Field(
            ge=0,
            le=4096,
            description="Tile size in input pixels, 0 = whole frames. "
            "Use on GPUs with little memory.",
        ),
    ] = 0,
    tile_pad: Annotated[int, Field(ge=0, le=256, description="Overlap around each tile.")] = 16,
    micro_batch: Annotated[int, Field(ge=1, le=64, description="Frames per forward pass.")] = 4,
    batch_frames: Annotated[
        int | None,
        Field(ge=1, description="Frames per batch (one task each); overrides batch_seconds."),
    ] = None,
    batch_seconds: Annotated[
        float, Field(gt=0.0, le=3600.0, description="Seconds of video per batch.")
    ] = 4.0,
    profile: Annotated[
        str, Field(description="Compute profile from deployments/profiles.yaml (local, ...).")
    ] = "local",
    work_dir: Annotated[
        str | None,
        Field(
            description="Chunks, cached results and progress; default "
            "$VSRFLOW_WORK_DIR or .vsrflow-work beside the output."
        ),
    ] = None,
    keep_chunks: Annotated[
        bool,
        Field(
            description="Keep batch chunks after publishing (a rerun then recomputes "
            "nothing); off frees the scratch space."
        ),
    ] = False,
) -> dict[str, Any]:
    """Upscale a video: exact frames and timestamps, every audio/subtitle stream kept."""
    logger = get_run_logger()
    timings: dict[str, float] = {}
    work = work_dir or default_work_dir(output_path)
    job = UpscaleJob(
        model=model or model_for_content(content),
        denoise_strength=denoise_strength,
        outscale=outscale,
        target_height=target_height,
        engine=EngineSettings(
            precision=precision, tile=tile, tile_pad=tile_pad, micro_batch=micro_batch
        ),
        encoder=EncoderSettings(codec=codec, quality=crf, speed=encoder_preset),
    )
    runner = task_runner_for(profile)

    t0 = time.perf_counter()
    info = probe_source(input_path)
    timings["probe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = plan_job(
        info, job, output_path, work, frames_per_batch=batch_frames, seconds_per_batch=batch_seconds
    )
    timings["plan"] = time.perf_counter() - t0
    logger.info(
        "%d frames in %d batches -> %dx%d with %s",
        plan.frame_count,
        len(plan.batches),
        *plan.out_size,
        job.model,
    )

    t0 = time.perf_counter()
    outcome = upscale_batches.with_options(task_runner=runner)(plan, job, work)
    timings["upscale"] = time.perf_counter() - t0
    results: list[BatchResult] = outcome["results"]

    t0 = time.perf_counter()
    report = assemble_output(info, [r.chunk for r in results], output_path)
    timings["assemble"] = time.perf_counter() - t0
    if not keep_chunks:
        for result in results:
            Path(result.chunk).unlink(missing_ok=True)
    logger.info(
        "published %s: %d frames, %d batches computed, %d cached",
        report.path,
        report.frames,
        outcome["computed"],
        outcome["cached"],
    )
    return {
        "output": report.path,
        "frames": report.frames,
        "size_bytes": report.size_bytes,
        "out_size": list(plan.out_size),
        "model": job.model,
        "weights_sha256": plan.weights_sha256,
        "batches": len(plan.batches),
        "batches_cached": outcome["cached"],
        "batches_computed": outcome["computed"],
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "work_dir": work,
    }


def remove_work_dir(work_dir: str) -> None:
    """Delete a work directory (chunks, cached results, progress) once it is no longer wanted."""
    shutil.rmtree(work_dir, ignore_errors=True)
