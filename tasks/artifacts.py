"""Per-run artifacts: the summary, the before/after image and batch progress.

Thin Prefect publishing over :mod:`vsrflow.report` (markdown, progress text) and
:mod:`vsrflow.compare` (the image). Keys derive from the output location
(``upscale-<name>-<hash>``, ``...-progress``, ``...-compare``), so reruns for one output are
versions of the same artifacts in the UI.

Links: an s3:// output gets a presigned GET URL valid ``LINK_EXPIRES_S`` (a bearer credential
by design: it goes into the artifact only, never into a log line, a return value or a task
parameter; like every SigV4 presigned URL it names the access key *id*, never the secret); a
local output is shown by path and its comparison image embedded as a data: URI, which both
Prefect UIs render in markdown and image artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterName,
)
from prefect.client.schemas.sorting import ArtifactSort

from tasks.retry import TRANSIENT_RETRIES
from tasks.storage import locations_for
from vsrflow import storage
from vsrflow.compare import data_uri, make_comparison, read_frame_at
from vsrflow.errors import redact_urls, redacting
from vsrflow.images import local_copy
from vsrflow.locations import Locations
from vsrflow.media.probe import VideoParams
from vsrflow.report import (
    BatchCounts,
    ComparisonNote,
    RunSummary,
    artifact_key,
    face_crop_location,
    output_name,
    parse_progress,
    progress_description,
    render_summary,
)
from vsrflow.storage import S3Config

#: How long the presigned links in the summary stay valid.
LINK_EXPIRES_S = 24 * 3600
#: Largest data: URI embedded in an artifact (the Prefect database holds it).
EMBED_LIMIT = 300_000


def compare_location(output_path: str) -> str:
    """The before/after PNG sits beside its output: ``<output>.compare.png``."""
    return output_path + ".compare.png"


def progress_key(output_path: str) -> str:
    return artifact_key(output_path, "progress")


# --------------------------------------------------------------------------------------------
# Progress


def start_progress(output_path: str, total: int) -> UUID:
    """Create the run's progress artifact at 0 % (call from the flow run it belongs to)."""
    counts = BatchCounts(done=0, total=total)
    return create_progress_artifact(
        counts.percent, key=progress_key(output_path), description=progress_description(counts)
    )


def report_progress(artifact_id: UUID, counts: BatchCounts) -> None:
    update_progress_artifact(artifact_id, counts.percent, description=progress_description(counts))


def read_progress_artifact(client: SyncPrefectClient, flow_run_name: str) -> BatchCounts | None:
    """The batch counts of the flow run named ``flow_run_name`` (the CLI names its runs
    uniquely), from its progress artifact; None before the batch stage starts."""
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name])), limit=1
    )
    if not runs:
        return None
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id]),
            type=ArtifactFilterType(any_=["progress"]),
        ),
        sort=ArtifactSort.UPDATED_DESC,
        limit=1,
    )
    return parse_progress(artifacts[0].description) if artifacts else None


# --------------------------------------------------------------------------------------------
# Summary and comparison


def _presigned(locations: Locations, location: str) -> str:
    config = locations.s3 if locations.s3 is not None else S3Config.from_env()
    return storage.presigned_get(location, config, expires_s=LINK_EXPIRES_S)


def _model_label(model: str) -> str:
    name = output_name(model)
    return name.rsplit(".", 1)[0] if name.endswith((".pth", ".safetensors")) else name


def _comparison(
    summary: RunSummary,
    video: VideoParams,
    frame_index: int,
    time_s: float,
    locations: Locations,
) -> tuple[ComparisonNote, str | None]:
    """Build and store the before/after PNG; returns the note for the summary and the image's
    URL for an image artifact (presigned for S3, a data: URI for a small local one)."""
    output = summary.output.location
    with redacting():
        source_frame = read_frame_at(
            locations.readable(video.path), time_s, stream_index=video.index, colour=video.colour
        )
        output_frame = read_frame_at(locations.readable(output), time_s, colour=video.colour)
    label = _model_label(summary.model)
    comparison = make_comparison(
        source_frame, output_frame, model_label=label, frame_index=frame_index, time_s=time_s
    )
    target = compare_location(output)
    with locations.scratch_for(target) as staged:
        staged.write_bytes(comparison.png)
        locations.store(staged, target)
    if locations.is_remote(target):
        url: str | None = _presigned(locations, target)
    else:
        url = data_uri(comparison.png, EMBED_LIMIT)
    caption = comparison.caption(label)
    if url is None:
        caption += " Too large to embed here."
    elif url.startswith("data:image/jpeg"):
        caption += " Shown here as a JPEG (the PNG is too large to embed)."
    return ComparisonNote(caption=caption, src=url, location=target), url


def _face_crop_src(locations: Locations, crop: str) -> str | None:
    if locations.is_remote(crop):
        return _presigned(locations, crop)
    return data_uri(Path(crop).read_bytes(), EMBED_LIMIT)


@task(name="publish-face-crop", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def publish_face_crop(
    samples: list[str],
    best: str,
    output_path: str,
    credentials_block: str | None = None,
    remove_samples: bool = True,
) -> str:
    """Copy the batch crop ``best`` (the largest restored face) to ``<output>.face.png`` and,
    with ``remove_samples``, remove every batch's crop from the work dir (before the work dir
    is cleaned, so its folders end up empty). Returns the crop's location."""
    locations = locations_for(credentials_block)
    target = face_crop_location(output_path)
    with redacting():
        with local_copy(locations, best) as source:
            data = source.read_bytes()
        with locations.scratch_for(target) as staged:
            staged.write_bytes(data)
            locations.store(staged, target)
        if remove_samples:
            for sample in samples:
                locations.remove(sample)
    return target


@task(name="report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def publish_report(
    summary: RunSummary,
    video: VideoParams,
    frame_index: int,
    time_s: float,
    credentials_block: str | None = None,
) -> dict[str, Any]:
    """Publish the summary (markdown) and before/after (image) artifacts of a finished run.

    The comparison is best effort: if it cannot be made, the summary says why and the run
    still succeeds. Returns the artifact keys and the PNG's location (no URL).
    """
    logger = get_run_logger()
    locations = locations_for(credentials_block)
    output = summary.output.location
    key = artifact_key(output)
    note: ComparisonNote
    image_url: str | None = None
    try:
        note, image_url = _comparison(summary, video, frame_index, time_s, locations)
    except Exception as exc:
        reason = redact_urls(f"{type(exc).__name__}: {exc}")
        logger.warning("before/after image skipped: %s", reason)
        note = ComparisonNote(caption=f"No before/after image: {reason}")
    remote = locations.is_remote(output)
    face_src = None
    if summary.faces is not None and summary.faces.crop:
        try:
            face_src = _face_crop_src(locations, summary.faces.crop)
        except Exception as exc:
            logger.warning("face crop not shown: %s", redact_urls(f"{type(exc).__name__}: {exc}"))
    markdown = render_summary(
        summary,
        output_link=_presigned(locations, output) if remote else None,
        link_expires_h=LINK_EXPIRES_S / 3600 if remote else None,
        comparison=note,
        face_crop_src=face_src,
    )
    summary_id = create_markdown_artifact(
        markdown, key=key, description=f"Upscale of {output_name(summary.source.location)}"
    )
    compare_key = None
    if image_url is not None:
        compare_key = artifact_key(output, "compare")
        create_image_artifact(image_url, key=compare_key, description=note.caption)
    logger.info("summary artifact %s published", key)
    return {
        "summary_artifact": key,
        "summary_artifact_id": str(summary_id),
        "compare_artifact": compare_key,
        "compare_png": note.location,
    }
