"""Tasks around the media: probe the source, plan the batches, assemble the output."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from vsrflow.hashing import file_sha256
from vsrflow.job import JobPlan, UpscaleJob, make_plan
from vsrflow.media.assemble import AssemblyReport, assemble, check_output_compatible
from vsrflow.media.probe import MediaInfo, probe
from vsrflow.models import get_model
from vsrflow.progress import write_listing


@task(name="probe", cache_policy=NO_CACHE)
def probe_source(input_path: str, max_pixels: int | None = None) -> MediaInfo:
    """Probe the source; fails fast with a specific error for unusable input."""
    if max_pixels is None:
        return probe(input_path)
    return probe(input_path, max_pixels=max_pixels)


@task(name="plan", cache_policy=NO_CACHE)
def plan_job(
    info: MediaInfo,
    job: UpscaleJob,
    output_path: str,
    work_dir: str,
    frames_per_batch: int | None = None,
    seconds_per_batch: float | None = None,
) -> JobPlan:
    """Resolve the weights (download + verify if needed), check the output container can hold
    every stream, hash the source and cut it into keyed batches."""
    check_output_compatible(info, output_path, job.encoder.codec)
    model = get_model(job.model, denoise_strength=job.denoise_strength)
    plan = make_plan(
        info,
        job,
        weights_sha256=model.weights_sha256,
        model_scale=model.scale,
        source_sha256=file_sha256(Path(info.path)),
        frames_per_batch=frames_per_batch,
        seconds_per_batch=seconds_per_batch,
    )
    write_listing(work_dir, output_path, [b.key for b in plan.batches], plan.frame_count)
    return plan


@task(name="assemble", cache_policy=NO_CACHE)
def assemble_output(info: MediaInfo, chunks: list[str], output_path: str) -> AssemblyReport:
    """Remux the chunks and the source's other streams; verify; publish atomically."""
    return assemble(info, chunks, output_path)


__all__ = ["assemble_output", "plan_job", "probe_source"]
