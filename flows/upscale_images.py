"""The upscale-images flow: one image or a folder of png/jpg/webp images, local or s3://.

plan (list, identify each source, key, check outputs) -> one upscale task per image (mapped,
cached across runs by content and settings) -> a manifest. Any mix of local and S3 inputs and
outputs works: S3 sources are read one image per task (never the whole folder at once), and
every output is published atomically (S3: temporary key -> verify -> copy), as for videos.

The manifest lists source, output, weights sha256 and the settings: for a folder job it is
``<output folder>/.vsrflow-manifest.json`` (one document for the whole folder; hidden, so a
later folder job never takes it for an image), for a single image ``<output>.manifest.json``
beside it, as for a video.

One image that cannot be used (corrupt, not an image, gone since planning) does not stop a
folder: the others are published, and the failed one is listed with its reason in the
result (``ImageStatus.FAILED``) and the manifest (``"status": "failed"``, ``"reason"``,
and the top-level ``"failed"`` list). A job where every image fails, or a single-image job,
fails with that image's error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from prefect import flow, get_run_logger
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
from tasks.preflight import preflight_images
from tasks.run_logging import CLI_REPORTS_IT
from tasks.storage import result_storage_for
from vsrflow import PIPELINE_VERSION
from vsrflow.errors import MediaError, ObjectNotFoundError
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
    preflight_images(input_path, plan.output, work, plan.folder, creds)
    results = _upscale_all.with_options(task_runner=get_profile(profile).make_task_runner())(
        list(plan.items), job, work, creds
    )
    entries = tuple(
        ImageEntry(item.source, item.output, outcome.status, outcome.reason)
        for item, outcome in zip(plan.items, results, strict=True)
    )
    failed = [e for e in entries if e.status is ImageStatus.FAILED]
    if failed and (len(failed) == len(entries) or not plan.folder):
        # Nothing was published: the run failed, with the (first) image's own error.
        raise next(o.error for o in results if o.error is not None)
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
            _manifest_entry(item, outcome, job.faces is not None)
            for item, outcome in zip(plan.items, results, strict=True)
        ],
        "failed": [{"source": e.source, "reason": e.reason} for e in failed],
    }
    if job.faces is not None:
        restored = [o.result.faces for o in results if o.result is not None]
        manifest["faces"] = {
            "images_with_faces": sum(1 for n in restored if n),
            "faces": sum(restored),
        }
    if not plan.folder:  # the keys a video manifest has, so archive-style checks read both
        manifest["source_identity"] = plan.items[0].source_identity
        manifest["output_bytes"] = results[0].result.output_bytes  # type: ignore[union-attr]
    write_manifest(plan.manifest, manifest, creds)
    if failed:
        get_run_logger().warning(
            "%d of %d images failed and were not published: %s",
            len(failed),
            len(entries),
            "; ".join(f"{e.source}: {e.reason}" for e in failed),
            extra=CLI_REPORTS_IT,
        )
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


@dataclass(frozen=True)
class _Outcome:
    """What became of one image: its result, or the error that stopped it."""

    status: ImageStatus
    result: ImageResult | None = None
    reason: str = ""
    error: BaseException | None = None


#: Errors that concern one image only (its bytes, its key): the folder goes on without it.
#: Anything else (the model, credentials, a bug) fails the run as before.
PER_IMAGE_ERRORS = (MediaError, ObjectNotFoundError)


def _manifest_entry(item: ImageItem, outcome: _Outcome, faces_on: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "source": item.source,
        "source_identity": item.source_identity,
        "output": item.output,
        "status": outcome.status.value,
    }
    if outcome.result is None:
        entry["reason"] = outcome.reason
        return entry
    result = outcome.result
    entry.update(
        output_bytes=result.output_bytes,
        width=result.width,
        height=result.height,
        channels=result.channels,
        bit_depth=result.bit_depth,
    )
    if faces_on:
        entry["faces"] = result.faces
    return entry


@flow(name="upscale-image-set")
def _upscale_all(
    items: list[ImageItem], job: UpscaleJob, work_dir: str, credentials_block: str | None
) -> list[_Outcome]:
    """One task per image on the profile's task runner. An image whose output is missing is
    recomputed even if a cache record exists (a record without its output is not trusted).
    An image that fails with a per-image error (:data:`PER_IMAGE_ERRORS`) is reported as
    FAILED with its reason; the others carry on."""
    task = upscale_image.with_options(
        result_storage=result_storage_for(work_dir, credentials_block)
    )
    futures = []
    for item in items:
        runner = task if item.output_exists else task.with_options(refresh_cache=True)
        futures.append(runner.submit(item.source, item.output, job, item.key, credentials_block))
    wait(futures)
    outcomes = []
    for future in futures:
        try:
            result = future.result()
        except PER_IMAGE_ERRORS as exc:
            reason = " ".join(str(exc).split())
            outcomes.append(_Outcome(ImageStatus.FAILED, reason=reason, error=exc))
            continue
        status = ImageStatus.CACHED if future.state.name == "Cached" else ImageStatus.COMPUTED
        outcomes.append(_Outcome(status, result))
    return outcomes
