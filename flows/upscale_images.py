"""The upscale-images flow: one image or a folder of png/jpg/webp images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

from prefect import flow
from prefect.futures import wait
from pydantic import Field

from deployments.profiles import get_profile
from flows.params import ImageLocation, ProfileParam, WorkDirParam, form_descriptions
from flows.upscale_video import SettingsParam
from tasks.images import upscale_image
from vsrflow import PIPELINE_VERSION
from vsrflow.hashing import file_sha256
from vsrflow.images import IMAGE_SUFFIXES, find_images
from vsrflow.job import UpscaleJob
from vsrflow.models import get_model
from vsrflow.results import ImageEntry, ImagesResult, ImageStatus
from vsrflow.settings import UpscaleSettings


def _image_key(source: Path, output: Path, job: UpscaleJob, weights: str) -> str:
    payload = [
        PIPELINE_VERSION,
        file_sha256(source),
        output.suffix.lower(),
        weights,
        job.outscale,
        job.target_height,
        job.engine.identity(),
        job.alpha_mode,
    ]
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()


def pair_paths(input_path: Path, output_path: Path) -> list[tuple[Path, Path]]:
    """(source, output) pairs: file -> file, or folder -> folder keeping names."""
    if input_path.is_dir():
        if output_path.suffix.lower() in IMAGE_SUFFIXES:
            raise ValueError("input is a folder, so output_path must be a folder too")
        pairs = [(src, output_path / src.name) for src in find_images(input_path)]
        if not pairs:
            raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {input_path}")
        return pairs
    if not input_path.is_file():
        raise FileNotFoundError(f"input not found: {input_path}")
    if output_path.suffix.lower() not in IMAGE_SUFFIXES:
        output_path = output_path / input_path.name
    return [(input_path, output_path)]


@flow(name="upscale-images", log_prints=True)
@form_descriptions
def upscale_images(
    input_path: Annotated[
        ImageLocation, Field(description="An image file or a folder of png/jpg/webp images.")
    ],
    output_path: Annotated[
        ImageLocation,
        Field(
            description="Output file, or folder for a folder input (names kept; .png keeps 16-bit)."
        ),
    ],
    settings: SettingsParam = UpscaleSettings(),  # noqa: B008 (frozen; Prefect copies it)
    profile: ProfileParam = "local",
    work_dir: WorkDirParam = "",
) -> ImagesResult:
    """Upscale images with the same models and engine as videos (one image per pass)."""
    pairs = pair_paths(Path(input_path), Path(output_path))
    single = settings.model_copy(
        update={"engine": settings.engine.model_copy(update={"micro_batch": 1})}
    )
    job = UpscaleJob.from_settings(single)
    weights = get_model(job.model, denoise_strength=job.denoise_strength).weights_sha256
    work = Path(work_dir) if work_dir else pairs[0][1].parent / ".vsrflow-work"
    entries = _upscale_all.with_options(task_runner=get_profile(profile).make_task_runner())(
        pairs, job, weights, str(work)
    )
    return ImagesResult(
        images=tuple(entries),
        model=job.model,
        weights_sha256=weights,
        parameters=settings.parameters(),
    )


@flow(name="upscale-image-set")
def _upscale_all(
    pairs: list[tuple[Path, Path]], job: UpscaleJob, weights: str, work_dir: str
) -> list[ImageEntry]:
    task = upscale_image.with_options(result_storage=Path(work_dir) / "results")
    futures = []
    for source, output in pairs:
        runner = task if output.is_file() else task.with_options(refresh_cache=True)
        key = _image_key(source, output, job, weights)
        futures.append(runner.submit(source, output, job, key))
    wait(futures)
    entries = []
    for (source, _), future in zip(pairs, futures, strict=True):
        result = future.result()
        status = ImageStatus.CACHED if future.state.name == "Cached" else ImageStatus.COMPUTED
        entries.append(ImageEntry(str(source), str(result.output), status))
    return entries
