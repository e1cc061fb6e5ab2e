"""Archive flows: a scheduled backfill of a whole prefix, and a watch for new arrivals.

Both list the videos under a source prefix, skip every video whose output manifest already
matches the source and the requested parameters, and start each remaining video as its own
run of the ``upscale-video`` deployment (``run_deployment``). Those runs queue on the work
pool's ``videos`` queue, whose concurrency limit (and the ``vsrflow-gpu`` global
concurrency limit) decides how many videos run at once; see ``deployments/README.md``.

Launching is idempotent: a video is started only by the run that atomically *creates* its
claim object (S3 conditional PUT ``If-None-Match: *``, or ``O_EXCL`` for a local target),
so overlapping watch runs, a backfill overlapping a watch, or a rerun while earlier runs are
still queued never start one video twice. See :mod:`vsrflow.catalog`.

Every I/O step is a task (listing, one launch per video, waiting, the table artifact), and
each run ends with a table artifact: every candidate video, what happened to it and why, with
a link to its upscale run.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL
from pydantic import Field

from flows.params import (
    CredentialsParam,
    Prefix,
    ProfileParam,
    SettingsParam,
    form_descriptions,
)
from tasks.retry import TRANSIENT_RETRIES
from tasks.storage import locations_for
from vsrflow import catalog
from vsrflow.catalog import Candidate, ClaimStore, RunState
from vsrflow.results import ArchiveEntry, ArchiveResult, VideoStatus
from vsrflow.settings import UpscaleSettings

#: The deployment each video runs as (flow name / deployment name in prefect.yaml).
UPSCALE_DEPLOYMENT = "upscale-video/upscale-video"
POLL_INTERVAL_S = 3.0
ARCHIVE_TAG = "vsrflow-archive"

Kind = Literal["backfill", "watch"]


class ArchiveSetupError(ValueError):
    """A deployment parameter the user still has to set (or set differently)."""


def _run_state(client: SyncPrefectClient) -> Any:
    def state(run_id: str) -> RunState:
        try:
            run = client.read_flow_run(UUID(run_id))
        except (ObjectNotFound, ValueError):
            return "missing"
        if run.state is None or not run.state.is_final():
            return "active"
        return "completed" if run.state.is_completed() else "failed"

    return state


def check_prefixes(kind: Kind, source_prefix: str, target_prefix: str) -> None:
    """Refuse unset or overlapping prefixes with what to set, before touching storage."""
    deployment = "archive-backfill" if kind == "backfill" else "watch-arrivals"
    for name, value, what in (
        ("source_prefix", source_prefix, "the folder or s3://bucket/prefix/ of your videos"),
        ("target_prefix", target_prefix, "where the upscaled videos should go"),
    ):
        if not value:
            raise ArchiveSetupError(
                f"{name} is not set: set it to {what} (Deployments > {deployment} > Edit > "
                "Parameters, or --param on `prefect deployment run`)"
            )
    if catalog.normalize_prefix(source_prefix) == catalog.normalize_prefix(target_prefix):
        raise ArchiveSetupError(
            "target_prefix must differ from source_prefix (the outputs would become inputs)"
        )


@task(
    name="list-videos",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def list_videos(
    source_prefix: str,
    target_prefix: str,
    patterns: list[str],
    min_age_seconds: float,
    credentials_block: str | None,
) -> list[Candidate]:
    """The videos under ``source_prefix`` matching ``patterns`` (outputs excluded)."""
    return catalog.list_candidates(
        locations_for(credentials_block),
        source_prefix,
        patterns,
        exclude_prefixes=[target_prefix],
        min_age_s=min_age_seconds,
    )


@task(
    name="launch-video",
    task_run_name="launch-{candidate.relative}",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def launch_video(
    kind: Kind,
    candidate: Candidate,
    target_prefix: str,
    child_parameters: dict[str, Any],
    expected: dict[str, Any],
    credentials_block: str | None,
    upscale_deployment: str,
    max_attempts: int,
    claim_grace_seconds: float,
) -> ArchiveEntry:
    """Skip the video if its output is up to date, else claim it (only one run ever wins a
    claim) and start it as a run of ``upscale_deployment``."""
    logger = get_run_logger()
    locations = locations_for(credentials_block)
    output = catalog.output_for(candidate, target_prefix)
    check = catalog.check_done(
        locations, candidate.location, output, expected, source_size=candidate.size
    )
    entry = ArchiveEntry(candidate.location, output, VideoStatus.UP_TO_DATE, check.reason)
    if check.done:
        return entry
    store = ClaimStore(locations, target_prefix)
    digest = catalog.claim_digest(output, candidate.version, expected)
    record = {
        "source": candidate.location,
        "source_version": candidate.version,
        "output": output,
        "parameters": expected,
        "claimed_by": str(flow_run.id) if flow_run.id else None,
        "kind": kind,
        "flow_run_id": None,
    }
    with get_client(sync_client=True) as client:
        claimed = catalog.claim(
            store,
            digest,
            record,
            _run_state(client),
            max_attempts=max_attempts,
            grace_s=claim_grace_seconds,
        )
    if claimed.kind == "busy":
        logger.info("skip %s: claimed by another run (%s)", candidate.location, claimed.name)
        return ArchiveEntry(
            candidate.location,
            output,
            VideoStatus.CLAIMED_ELSEWHERE,
            f"claim {claimed.name}",
            claimed.flow_run_id,
            claimed.attempt,
        )
    if claimed.kind == "exhausted":
        return ArchiveEntry(
            candidate.location,
            output,
            VideoStatus.GAVE_UP,
            f"{max_attempts} attempts ended without a finished output",
        )
    if claimed.kind == "new":
        # The run that freed the previous attempt may have just finished this video.
        again = catalog.check_done(
            locations, candidate.location, output, expected, source_size=candidate.size
        )
        if again.done:
            catalog.release_unused(store, claimed)
            return ArchiveEntry(candidate.location, output, VideoStatus.UP_TO_DATE, "done")
    run = run_deployment(
        upscale_deployment,
        parameters={**child_parameters, "input_path": candidate.location, "output_path": output},
        timeout=0,
        idempotency_key=claimed.idempotency_key,
        tags=[ARCHIVE_TAG, f"vsrflow-{kind}"],
        flow_run_name=f"{kind}: {candidate.relative}",
    )
    store.write(claimed.name, {**record, "attempt": claimed.attempt, "flow_run_id": str(run.id)})
    logger.info(
        "launched %s -> %s as run %s (%s; attempt %d)",
        candidate.location,
        output,
        run.id,
        check.reason,
        claimed.attempt,
    )
    return ArchiveEntry(
        candidate.location, output, VideoStatus.LAUNCHED, check.reason, str(run.id), claimed.attempt
    )


@task(name="wait-for-runs", cache_policy=NO_CACHE)
def wait_for_runs(run_ids: list[str]) -> dict[str, str]:
    """Poll until every run is final; returns run id -> final state name."""
    pending = {UUID(r) for r in run_ids}
    states: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        while pending:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(pending)))
            )
            for run in runs:
                if run.state is not None and run.state.is_final():
                    states[str(run.id)] = run.state.name
                    pending.discard(run.id)
            if pending:
                time.sleep(POLL_INTERVAL_S)
    return states


def run_link(flow_run_id: str | None) -> str:
    """The UI page of a flow run (its id alone when no UI URL is configured)."""
    if not flow_run_id:
        return ""
    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else flow_run_id


@task(name="publish-archive-table", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def publish_table(kind: Kind, target_prefix: str, entries: list[ArchiveEntry]) -> str:
    """A table artifact: every candidate video, its status and why, a link to its run."""
    key = f"archive-{kind}-{catalog.claim_digest(target_prefix, kind, {})[:12]}"
    rows = [
        {
            "video": e.source,
            "status": e.status.value,
            "reason": e.reason,
            "output": e.output,
            "flow run": run_link(e.flow_run_id),
        }
        for e in entries
    ]
    counts = {s.value: sum(e.status is s for e in entries) for s in VideoStatus}
    description = f"{kind} of {len(entries)} videos: " + ", ".join(
        f"{n} {status}" for status, n in counts.items() if n
    )
    create_table_artifact(rows, key=key, description=description or f"{kind}: no videos")
    return key


def process_prefix(
    kind: Kind,
    *,
    source_prefix: str,
    target_prefix: str,
    patterns: list[str],
    settings: UpscaleSettings,
    profile: str,
    credentials_block: str,
    max_videos: int,
    upscale_deployment: str,
    wait: bool,
    max_attempts: int,
    min_age_seconds: float,
    claim_grace_seconds: float,
) -> ArchiveResult:
    """List, skip what is done, claim and launch the rest (at most ``max_videos``)."""
    logger = get_run_logger()
    check_prefixes(kind, source_prefix, target_prefix)
    creds = credentials_block or None
    candidates = list_videos(source_prefix, target_prefix, patterns, min_age_seconds, creds)
    child = {
        "settings": settings.model_dump(mode="json"),
        "profile": profile,
        "credentials_block": credentials_block,
    }
    expected = settings.decisive_parameters()
    entries: list[ArchiveEntry] = []
    launched = 0
    for candidate in candidates:
        if launched >= max_videos:
            output = catalog.output_for(candidate, target_prefix)
            entries.append(ArchiveEntry(candidate.location, output, VideoStatus.NOT_STARTED))
            continue
        entry = launch_video(
            kind,
            candidate,
            target_prefix,
            child,
            expected,
            creds,
            upscale_deployment,
            max_attempts,
            claim_grace_seconds,
        )
        launched += entry.status is VideoStatus.LAUNCHED
        entries.append(entry)
    logger.info(
        "%s: %d candidates; %s",
        kind,
        len(candidates),
        ", ".join(f"{s.value}: {sum(e.status is s for e in entries)}" for s in VideoStatus),
    )
    failed: list[ArchiveEntry] = []
    if wait and launched:
        states = wait_for_runs(
            [e.flow_run_id for e in entries if e.flow_run_id and e.status is VideoStatus.LAUNCHED]
        )
        finished = []
        for e in entries:
            if e.status is VideoStatus.LAUNCHED and e.flow_run_id in states:
                state = states[e.flow_run_id]
                status = VideoStatus.COMPLETED if state == "Completed" else VideoStatus.FAILED
                e = ArchiveEntry(e.source, e.output, status, state, e.flow_run_id, e.attempt)
                if status is VideoStatus.FAILED:
                    failed.append(e)
            finished.append(e)
        entries = finished
    artifact = publish_table(kind, target_prefix, entries)
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {launched} videos did not complete: "
            + "; ".join(f"{e.source} ({e.reason}, run {e.flow_run_id})" for e in failed)
        )
    return ArchiveResult(kind, len(candidates), tuple(entries), artifact)


# Parameter types shared by both flows (each carries its form description).
SourcePrefix = Annotated[
    Prefix,
    Field(
        description="Where the source videos are: s3://bucket/prefix/ or a local folder "
        "(searched recursively; hidden paths such as .vsrflow-work are skipped). Must be set."
    ),
]
TargetPrefix = Annotated[
    Prefix,
    Field(
        description="Where the outputs go, keeping each video's relative path: s3://bucket/"
        "prefix/ or a local folder. <output>.manifest.json and the claims "
        "(.vsrflow-claims/) are written there too. Must be set."
    ),
]
Patterns = Annotated[
    list[str],
    Field(
        min_length=1,
        max_length=32,
        description="File name patterns selecting the videos (case-insensitive), e.g. *.mp4; "
        "a pattern with a / matches the path below the source prefix.",
    ),
]
DeploymentParam = Annotated[
    str,
    Field(
        pattern=r"^\S+/\S+$",
        description="The deployment each video runs as: <flow name>/<deployment name>.",
    ),
]
AttemptsParam = Annotated[
    int,
    Field(
        ge=1,
        le=10,
        description="Runs started per video (1-10) before it is left alone (failed, crashed "
        "or cancelled runs count).",
    ),
]
GraceParam = Annotated[
    float,
    Field(
        ge=10.0,
        le=86400.0,
        description="Seconds (10-86400) a claim without a recorded run counts as taken (its "
        "creator is launching); after that another run may launch it (same idempotency key, "
        "so never twice).",
    ),
]
DEFAULT_PATTERNS = ["*.mp4", "*.mkv", "*.mov"]


@flow(name="archive-backfill", log_prints=True)
@form_descriptions
def archive_backfill(
    source_prefix: SourcePrefix = "",
    target_prefix: TargetPrefix = "",
    patterns: Patterns = DEFAULT_PATTERNS,
    settings: SettingsParam = UpscaleSettings(),  # noqa: B008 (frozen; Prefect copies it)
    max_videos: Annotated[
        int,
        Field(ge=1, le=10000, description="At most this many videos (1-10000) start per run."),
    ] = 20,
    profile: ProfileParam = "local",
    credentials_block: CredentialsParam = "",
    upscale_deployment: DeploymentParam = UPSCALE_DEPLOYMENT,
    wait: Annotated[
        bool,
        Field(
            description="Wait for the started runs and fail if any of them failed (the run "
            "then shows the night's outcome); off: return once they are queued."
        ),
    ] = True,
    max_attempts: AttemptsParam = 3,
    claim_grace_seconds: GraceParam = 600.0,
) -> ArchiveResult:
    """Upscale every video under a prefix that has no up-to-date output yet, each as its own
    upscale-video run (at most max_videos per run; reruns skip finished videos)."""
    return process_prefix(
        "backfill",
        source_prefix=source_prefix,
        target_prefix=target_prefix,
        patterns=patterns,
        settings=settings,
        profile=profile,
        credentials_block=credentials_block,
        max_videos=max_videos,
        upscale_deployment=upscale_deployment,
        wait=wait,
        max_attempts=max_attempts,
        min_age_seconds=0.0,
        claim_grace_seconds=claim_grace_seconds,
    )


@flow(name="watch-arrivals", log_prints=True)
@form_descriptions
def watch_arrivals(
    source_prefix: SourcePrefix = "",
    target_prefix: TargetPrefix = "",
    patterns: Patterns = DEFAULT_PATTERNS,
    settings: SettingsParam = UpscaleSettings(),  # noqa: B008 (frozen; Prefect copies it)
    max_videos: Annotated[
        int,
        Field(ge=1, le=1000, description="At most this many new videos (1-1000) start per check."),
    ] = 10,
    min_age_seconds: Annotated[
        float,
        Field(
            ge=0.0,
            le=86400.0,
            description="Ignore files modified less than this many seconds ago (0-86400; e.g. "
            "60 for a local folder that files are copied into; S3 objects appear whole).",
        ),
    ] = 0.0,
    profile: ProfileParam = "local",
    credentials_block: CredentialsParam = "",
    upscale_deployment: DeploymentParam = UPSCALE_DEPLOYMENT,
    wait: Annotated[
        bool,
        Field(
            description="Wait for the started runs (off: return as soon as they are queued, "
            "so the next check is not held up)."
        ),
    ] = False,
    max_attempts: AttemptsParam = 3,
    claim_grace_seconds: GraceParam = 600.0,
) -> ArchiveResult:
    """Pick up new videos under a prefix (the upload-trigger pattern, on an interval
    schedule): each new or changed video is started exactly once, however runs overlap."""
    return process_prefix(
        "watch",
        source_prefix=source_prefix,
        target_prefix=target_prefix,
        patterns=patterns,
        settings=settings,
        profile=profile,
        credentials_block=credentials_block,
        max_videos=max_videos,
        upscale_deployment=upscale_deployment,
        wait=wait,
        max_attempts=max_attempts,
        min_age_seconds=min_age_seconds,
        claim_grace_seconds=claim_grace_seconds,
    )
