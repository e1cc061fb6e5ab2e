"""Upscale-image task: one image per task run, cached by image content and settings."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.caching import KeyedBy
from tasks.upscale import upscaler_for
from vsrflow.images import ImageResult, upscale_image_file
from vsrflow.job import UpscaleJob


@task(
    name="upscale-image",
    task_run_name="image-{source.name}",
    retries=2,
    retry_delay_seconds=1,
    cache_policy=KeyedBy(parameter="key", prefix="upscale-image-"),
    persist_result=True,
)
def upscale_image(source: Path, output: Path, job: UpscaleJob, key: str) -> ImageResult:
    """Upscale ``source`` into ``output`` (atomic write)."""
    return upscale_image_file(
        source,
        output,
        upscaler_for(job),
        outscale=job.outscale,
        target_height=job.target_height,
        alpha_mode=job.alpha_mode,  # type: ignore[arg-type]
    )
