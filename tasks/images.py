"""Image tasks: plan a job (list, identify, key), upscale one image per task run (cached by
content and settings), write the job's manifest. Sources and outputs are local paths or
s3:// URIs; credentials come from the named AwsCredentials block (see tasks.storage)."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from tasks.caching import KeyedBy
from tasks.retry import TRANSIENT_RETRIES, retry_transient
from tasks.storage import locations_for
from tasks.upscale import face_processor_for, upscaler_for
from vsrflow import PIPELINE_VERSION, safety
from vsrflow.errors import redacting
from vsrflow.faces.facts import check_face_job
from vsrflow.images import ImageResult, is_image_folder, pair_images, upscale_image_at
from vsrflow.job import UpscaleJob
from vsrflow.locations import Locations
from vsrflow.models import model_facts
from vsrflow.storage import S3Config

#: Threads identifying sources and checking outputs while planning (HEAD requests on S3,
#: sha256 of local files): enough to hide round trips, few enough for any endpoint.
PLAN_THREADS = 8


@dataclass(frozen=True)
class ImageItem:
    """One image of a job: where it comes from and goes, its cache key, and whether its
    output exists (a cache record for a missing output is not trusted)."""

    source: str
    output: str
    source_identity: str
    key: str
    output_exists: bool


@dataclass(frozen=True)
class ImagesPlan:
    items: tuple[ImageItem, ...]
    folder: bool
    #: The output file, or the output folder of a folder job.
    output: str
    manifest: str
    #: sha256 of the resolved (downloaded and verified, if need be) weights.
    weights_sha256: str


def image_key(
    source_identity: str, output: str, settings_identity: dict[str, object], weights: str
) -> str:
    """The cache key of one image: its content (:meth:`Locations.identity`: sha256 of a local
    file, ETag + size of an object), the output location, weights and every setting that
    changes the pixels or the file (``UpscaleSettings.output_identity()``)."""
    payload = [
        PIPELINE_VERSION,
        source_identity,
        output,
        PurePosixPath(output).suffix.lower(),
        weights,
        settings_identity,
    ]
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()


def _item(
    locations: Locations, pair: tuple[str, str], identity: dict[str, object], weights: str
) -> ImageItem:
    source, output = pair
    source_identity = locations.identity(source)
    return ImageItem(
        source,
        output,
        source_identity,
        image_key(source_identity, output, identity, weights),
        locations.exists(output),
    )


@task(
    name="plan-images",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def plan_images(
    input_path: str,
    output_path: str,
    job: UpscaleJob,
    settings_identity: dict[str, object],
    credentials_block: str | None = None,
) -> ImagesPlan:
    """List the images (one file, a folder or an s3:// prefix), pair them with outputs,
    resolve the weights (download + verify if needed; with faces on, the face restorer's
    too, whose sha256 joins every image key), identify each source and check which
    outputs exist. A missing source, an output folder inside the input folder or an output
    that is one of the sources (any spelling, hard links too: :mod:`vsrflow.safety`) fails
    here, before any compute, with one message (no URL, no secret)."""
    locations = locations_for(credentials_block)
    s3 = locations.s3 if locations.s3 is not None else S3Config.from_env()
    with redacting():
        if is_image_folder(input_path):
            safety.check_folder_not_inside_input(input_path, output_path, s3)
        pairs = pair_images(locations, input_path, output_path)
        safety.check_image_pairs(pairs.pairs, s3)
    weights = model_facts(job.model, denoise_strength=job.denoise_strength).weights_sha256
    if job.faces is not None:  # refused here in one line, before any image is upscaled
        settings_identity = {**settings_identity, "faces.weights": check_face_job(job.faces)}
    with redacting(), ThreadPoolExecutor(min(PLAN_THREADS, len(pairs.pairs))) as pool:
        items = tuple(
            pool.map(lambda p: _item(locations, p, settings_identity, weights), pairs.pairs)
        )
    return ImagesPlan(items, pairs.folder, pairs.output, pairs.manifest, weights)


def _image_run_name() -> str:
    source = str(task_run.parameters.get("source", ""))
    return f"image-{PurePosixPath(source).name}"


@task(
    name="upscale-image",
    task_run_name=_image_run_name,
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=retry_transient,
    cache_policy=KeyedBy(parameter="key", prefix="upscale-image-"),
    persist_result=True,
)
def upscale_image(
    source: str, output: str, job: UpscaleJob, key: str, credentials_block: str | None = None
) -> ImageResult:
    """Upscale ``source`` into ``output`` (local or s3://): the source is read whole (a scratch
    copy for S3), the output published atomically (S3: temporary key -> verify -> copy)."""
    faces = None
    if job.faces is not None:
        faces = face_processor_for(job.faces, device=job.device, precision=job.engine.precision)
    with redacting():
        return upscale_image_at(
            source,
            output,
            upscaler_for(job),
            locations=locations_for(credentials_block),
            outscale=job.outscale,
            target_height=job.target_height,
            alpha_mode=job.alpha_mode,  # type: ignore[arg-type]
            faces=faces,
        )


@task(
    name="write-manifest",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def write_manifest(
    location: str, document: dict[str, Any], credentials_block: str | None = None
) -> str:
    """Write the job's manifest JSON (local: scratch + rename; S3: one PUT)."""
    with redacting():
        locations_for(credentials_block).write_json(location, document)
    return location
