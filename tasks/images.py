"""Upscale-image task: one image per task run, cached by image content and settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from tasks.upscale import upscaler_for
from vsrflow.images import AlphaMode, ImageResult, upscale_image_file
from vsrflow.job import UpscaleJob


@dataclass
class ImageKeyPolicy(CachePolicy):
    """Cache key = the image's precomputed key; a missing output is recomputed by the flow."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        key = inputs.get("key")
        return f"upscale-image-{key}" if key else None


@task(
    name="upscale-image",
    task_run_name="image-{source.name}",
    retries=2,
    retry_delay_seconds=1,
    cache_policy=ImageKeyPolicy(),
    persist_result=True,
)
def upscale_image(
    source: Path, output: Path, job: UpscaleJob, alpha_mode: AlphaMode, key: str
) -> ImageResult:
    """Upscale ``source`` into ``output`` (atomic write)."""
    return upscale_image_file(
        source,
        output,
        upscaler_for(job),
        outscale=job.outscale,
        target_height=job.target_height,
        alpha_mode=alpha_mode,
    )
