"""Pre-compute checks as tasks: the first thing a run does, so a run that would overwrite its
input or cannot write its output fails in seconds, not after upscaling everything
(:mod:`vsrflow.safety`). Identities of s3:// locations use the endpoint of the run's
credentials (block or environment)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.retry import TRANSIENT_RETRIES
from tasks.storage import locations_for
from vsrflow import safety
from vsrflow.storage import S3Config


def _s3(credentials_block: str | None) -> S3Config:
    locations = locations_for(credentials_block)
    return locations.s3 if locations.s3 is not None else S3Config.from_env()


@task(
    name="preflight-video",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def preflight_video(
    input_path: str, output_path: str, work_dir: str, credentials_block: str | None = None
) -> None:
    """Refuse an output that is the source (any spelling), an output that is a folder, and
    an output folder or work dir that cannot be written."""
    safety.check_video_job(input_path, output_path, work_dir, _s3(credentials_block))


@task(
    name="preflight-images",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def preflight_images(
    input_path: str,
    output_path: str,
    work_dir: str,
    folder: bool,
    credentials_block: str | None = None,
) -> None:
    """Refuse an output folder inside the input folder, an output that is the image, and an
    output location or work dir that cannot be written (``output_path``: the planned output
    file, or the output folder of a folder job)."""
    safety.check_images_job(
        input_path, output_path, work_dir, folder=folder, s3=_s3(credentials_block)
    )
