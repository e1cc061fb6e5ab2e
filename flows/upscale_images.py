"""The upscale-images flow: one image or a folder of png/jpg/webp images, local or s3://.

plan (list, identify each source, key, check outputs) -> one upscale task per image (mapped,
cached across runs by content and settings) -> a manifest. Any mix of local and S3 inputs and
outputs works: S3 sources are read one image per task (never the whole folder at once), and
every output is published atomically (S3: temporary key -> verify -> copy), as for videos.

The manifest lists source, output, weights sha256 and the settings: for a folder job it is
``<output folder>/.vsrflow-manifest.json`` (one document for the whole folder; hidden, so a
later folder job never takes it for an image), for a single image ``<output>.manifest.json``
beside it, as for a video.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow
from prefect.futures import wait
from pydantic import Field

from deployments.profiles import get_profile
from flows.params import (
    CredentialsParam,
    ImageLocation,
    ProfileParam,
    WorkDirParam,
    form_descriptions,
)
from flows.upscale_video import SettingsParam, default_work_dir
from tasks.images import ImageItem, plan_images, upscale_image, write_manifest
from tasks.storage import result_storage_for
from vsrflow import PIPELINE_VERSION
from vsrflow.images import ImageResult
from vsrflow.job import UpscaleJob
from vsrflow.results import ImageEntry, ImagesResult, ImageStatus
from vsrflow.settings import UpscaleSettings


@flow(name="upscale-images", log_prints=True)
@form_descriptions
def upscale_images(
    input_path: Annotated[
        ImageLocation,
        Field(
            description="An image (local path or s3://bucket/key) or a folder of png/jpg/webp "
            "images (local folder or s3://bucket/prefix/)."
        ),
    ],
    output_path: Annotated[
        ImageLocation,
        Field(
            description="Output file, or folder for a folder input (names kept; .png keeps "
            "16-bit); local or s3://. A manifest is written beside it (a folder: "
            ".vsrflow-manifest.json inside it)."
        ),
    ],
    settings: SettingsParam = UpscaleSettings(),  # noqa: B008 (frozen; Prefect copies it)
    profile: ProfileParam = "local",
    work_dir: WorkDirParam = "",
    credentials_block: CredentialsParam = "",
) -> ImagesResult:
    """Upscale images with the same models and engine as videos (one image per pass)."""
    creds = credentials_block or None
    single = settings.model_copy(
        update={"engine": settings.engine.model_copy(update={"micro_batch": 1})}
    )
    job = UpscaleJob.from_settings(single)
    plan = plan_images(input_path, output_path, job, settings.output_identity(), creds)
    weights = plan.weights_sha256
    work = work_dir or default_work_dir(plan.items[0].output)
    results = _upscale_all.with_options(task_runner=get_profile(profile).make_task_runner())(
        list(plan.items), job, work, creds
    )
    entries = tuple(
        ImageEntry(item.source, item.output, status)
        for item, (_, status) in zip(plan.items, results, strict=True)
    )
    manifest: dict[str, Any] = {
        "vsrflow_pipeline": PIPELINE_VERSION,
        "kind": "images",
        "source": input_path,
        "output": plan.output,
        "model": job.model,
        "weights_sha256": weights,
        "parameters": settings.parameters(),
        "profile": profile,
        "images": [
            _manifest_entry(item, result, status)
            for item, (result, status) in zip(plan.items, results, strict=True)
        ],
    }
    if not plan.folder:  # the keys a video manifest has, so archive-style checks read both
        manifest["source_identity"] = plan.items[0].source_identity
        manifest["output_bytes"] = results[0][0].output_bytes
    write_manifest(plan.manifest, manifest, creds)
    return ImagesResult(
        images=entries,
        model=job.model,
        weights_sha256=weights,
        parameters=settings.parameters(),
        source=input_path,
        output=plan.output,
        manifest=plan.manifest,
        work_dir=work,
    )


def _manifest_entry(item: ImageItem, result: ImageResult, status: ImageStatus) -> dict[str, Any]:
    return {
        "source": item.source,
        "source_identity": item.source_identity,
        "output": item.output,
        "output_bytes": result.output_bytes,
        "width": result.width,
        "height": result.height,
        "channels": result.channels,
        "bit_depth": result.bit_depth,
        "status": status.value,
    }


@flow(name="upscale-image-set")
def _upscale_all(
    items: list[ImageItem], job: UpscaleJob, work_dir: str, credentials_block: str | None
) -> list[tuple[ImageResult, ImageStatus]]:
    """One task per image on the profile's task runner. An image whose output is missing is
    recomputed even if a cache record exists (a record without its output is not trusted)."""
    task = upscale_image.with_options(
        result_storage=result_storage_for(work_dir, credentials_block)
    )
    futures = []
    for item in items:
        runner = task if item.output_exists else task.with_options(refresh_cache=True)
        futures.append(runner.submit(item.source, item.output, job, item.key, credentials_block))
    wait(futures)
    results = []
    for future in futures:
        result = future.result()
        status = ImageStatus.CACHED if future.state.name == "Cached" else ImageStatus.COMPUTED
        results.append((result, status))
    return results
