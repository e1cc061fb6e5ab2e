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
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from pydantic import Field

from flows.params import ModelChoice, Prefix, form_descriptions
from flows.upscale_video import Codec, Content, PrecisionChoice
from tasks.storage import locations_for
from vsrflow import catalog
from vsrflow.catalog import Candidate, ClaimStore, RunState
from vsrflow.models import model_for_content

#: The deployment each video runs as (flow name / deployment name in prefect.yaml).
UPSCALE_DEPLOYMENT = "upscale-video/upscale-video"
#: Passed explicitly so a changed flow default never makes finished outputs look stale.
TILE_PAD = 16
POLL_INTERVAL_S = 3.0
ARCHIVE_TAG = "vsrflow-archive"

Kind = Literal["backfill", "watch"]


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


def _wait_all(client: SyncPrefectClient, run_ids: list[str]) -> dict[str, str]:
    """Poll until every run is final; returns run id -> state name."""
    pending = {UUID(r) for r in run_ids}
    states: dict[str, str] = {}
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


def process_prefix(
    kind: Kind,
    *,
    source_prefix: str,
    target_prefix: str,
    patterns: list[str],
    child_parameters: dict[str, Any],
    expected: dict[str, Any],
    max_videos: int,
    credentials_block: str | None,
    upscale_deployment: str,
    wait: bool,
    max_attempts: int,
    min_age_seconds: float,
    claim_grace_seconds: float,
) -> dict[str, Any]:
    """List, skip what is done, claim and launch the rest (at most ``max_videos``)."""
    logger = get_run_logger()
    if catalog.normalize_prefix(source_prefix) == catalog.normalize_prefix(target_prefix):
        raise ValueError("target_prefix must differ from source_prefix (outputs would be inputs)")
    locations = locations_for(credentials_block)
    candidates = catalog.list_candidates(
        locations,
        source_prefix,
        patterns,
        exclude_prefixes=[target_prefix],
        min_age_s=min_age_seconds,
    )
    store = ClaimStore(locations, target_prefix)
    owner = str(flow_run.id) if flow_run.id else None
    launched: list[dict[str, Any]] = []
    done: list[str] = []
    busy: list[dict[str, Any]] = []
    exhausted: list[str] = []
    with get_client(sync_client=True) as client:
        run_state = _run_state(client)
        for candidate in candidates:
            if len(launched) >= max_videos:
                break
            output = catalog.output_for(candidate, target_prefix)
            check = catalog.check_done(
                locations, candidate.location, output, expected, source_size=candidate.size
            )
            if check.done:
                done.append(candidate.location)
                continue
            entry = _launch(
                kind,
                candidate,
                output,
                check.reason,
                store=store,
                locations=locations,
                child_parameters=child_parameters,
                expected=expected,
                owner=owner,
                run_state=run_state,
                upscale_deployment=upscale_deployment,
                max_attempts=max_attempts,
                claim_grace_seconds=claim_grace_seconds,
            )
            if entry["status"] == "launched":
                launched.append(entry)
            elif entry["status"] == "done":
                done.append(candidate.location)
            elif entry["status"] == "exhausted":
                exhausted.append(candidate.location)
            else:
                busy.append(entry)
        summary: dict[str, Any] = {
            "kind": kind,
            "candidates": len(candidates),
            "already_done": len(done),
            "launched": launched,
            "busy": busy,
            "exhausted": exhausted,
        }
        logger.info(
            "%s: %d candidates, %d already done, %d launched, %d claimed elsewhere, "
            "%d gave up after %d attempts",
            kind,
            len(candidates),
            len(done),
            len(launched),
            len(busy),
            len(exhausted),
            max_attempts,
        )
        if wait and launched:
            states = _wait_all(client, [e["flow_run_id"] for e in launched])
            for entry in launched:
                entry["state"] = states[entry["flow_run_id"]]
            failed = [e for e in launched if e["state"] != "Completed"]
            if failed:
                raise RuntimeError(
                    f"{len(failed)} of {len(launched)} videos did not complete: "
                    + "; ".join(
                        f"{e['source']} ({e['state']}, run {e['flow_run_id']})" for e in failed
                    )
                )
    return summary


def _launch(
    kind: Kind,
    candidate: Candidate,
    output: str,
    reason: str,
    *,
    store: ClaimStore,
    locations: Any,
    child_parameters: dict[str, Any],
    expected: dict[str, Any],
    owner: str | None,
    run_state: Any,
    upscale_deployment: str,
    max_attempts: int,
    claim_grace_seconds: float,
) -> dict[str, Any]:
    logger = get_run_logger()
    digest = catalog.claim_digest(output, candidate.version, expected)
    record = {
        "source": candidate.location,
        "source_version": candidate.version,
        "output": output,
        "parameters": expected,
        "claimed_by": owner,
        "kind": kind,
        "flow_run_id": None,
    }
    claimed = catalog.claim(
        store,
        digest,
        record,
        run_state,
        max_attempts=max_attempts,
        grace_s=claim_grace_seconds,
    )
    entry: dict[str, Any] = {
        "source": candidate.location,
        "output": output,
        "claim": claimed.name,
        "attempt": claimed.attempt,
    }
    if claimed.kind == "busy":
        logger.info("skip %s: claimed by another run (%s)", candidate.location, claimed.name)
        return {**entry, "status": "busy", "flow_run_id": claimed.flow_run_id}
    if claimed.kind == "exhausted":
        logger.warning(
            "skip %s: %d attempts ended without a finished output", candidate.location, max_attempts
        )
        return {**entry, "status": "exhausted"}
    if claimed.kind == "new":
        # The run that freed the previous attempt may have just finished this video.
        again = catalog.check_done(
            locations, candidate.location, output, expected, source_size=candidate.size
        )
        if again.done:
            catalog.release_unused(store, claimed)
            return {**entry, "status": "done"}
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
        reason,
        claimed.attempt,
    )
    return {**entry, "status": "launched", "flow_run_id": str(run.id), "reason": reason}


def _upscale_settings(
    content: str,
    model: str | None,
    denoise_strength: float,
    outscale: float | None,
    target_height: int | None,
    codec: str,
    crf: int | None,
    encoder_preset: str | None,
    precision: str,
    tile: int,
    profile: str,
    credentials_block: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parameters for each upscale-video run, what its manifest must then record)."""
    if outscale is not None and target_height is not None:
        raise ValueError("outscale and target_height are exclusive: set one of them")
    child = {
        "content": content,
        "model": model,
        "denoise_strength": denoise_strength,
        "outscale": outscale,
        "target_height": target_height,
        "codec": codec,
        "crf": crf,
        "encoder_preset": encoder_preset,
        "precision": precision,
        "tile": tile,
        "tile_pad": TILE_PAD,
        "profile": profile,
        "credentials_block": credentials_block,
    }
    expected = {
        "model": model or model_for_content(content),
        "denoise_strength": denoise_strength,
        "outscale": outscale,
        "target_height": target_height,
        "codec": codec,
        "crf": crf,
        "encoder_preset": encoder_preset,
        "precision": precision,
        "tile": tile,
        "tile_pad": TILE_PAD,
    }
    return child, expected


# Parameter types shared by both flows (each carries its form description).
SourcePrefix = Annotated[
    Prefix,
    Field(
        description="Where the source videos are: s3://bucket/prefix/ or a local directory "
        "(searched recursively; hidden paths such as .vsrflow-work are skipped)."
    ),
]
TargetPrefix = Annotated[
    Prefix,
    Field(
        description="Where the outputs go, keeping each video's relative path: s3://bucket/"
        "prefix/ or a local directory. <output>.manifest.json and the claims "
        "(.vsrflow-claims/) are written there too."
    ),
]
Patterns = Annotated[
    list[str],
    Field(
        min_length=1,
        max_length=32,
        description="File name globs selecting the videos (case-insensitive), e.g. *.mp4; a "
        "glob with a / matches the path below the source prefix.",
    ),
]
ContentParam = Annotated[
    Content,
    Field(
        description="Content preset picking the model when `model` is empty: anime -> "
        "realesr-animevideov3, real -> RealESRGAN_x4plus, general -> realesr-general-x4v3."
    ),
]
ModelParam = Annotated[
    ModelChoice | None,
    Field(
        description="Registry model name or a .pth/.safetensors file on the workers; "
        "overrides `content`."
    ),
]
DenoiseParam = Annotated[
    float,
    Field(ge=0.0, le=1.0, description="realesr-general-x4v3 only: 1 = no extra denoising."),
]
OutscaleParam = Annotated[
    float | None,
    Field(gt=0.0, le=16.0, description="Final scale factor; the model's own scale when empty."),
]
TargetHeightParam = Annotated[
    int | None,
    Field(ge=16, le=8640, description="Final height in pixels; exclusive with outscale."),
]
CodecParam = Annotated[Codec, Field(description="Output video codec.")]
CrfParam = Annotated[
    int | None,
    Field(ge=0, le=63, description="Quality (lower is better); codec default when empty."),
]
PresetParam = Annotated[
    str | None,
    Field(
        max_length=32,
        description="Encoder speed preset (x264/x265: ultrafast..veryslow); codec default "
        "when empty.",
    ),
]
PrecisionParam = Annotated[
    PrecisionChoice,
    Field(description="auto = fp16 on CUDA, bf16 on CPUs with native bf16, else fp32."),
]
TileParam = Annotated[
    int, Field(ge=0, le=4096, description="Tile size in input pixels, 0 = whole frames.")
]
ProfileParam = Annotated[
    str,
    Field(
        min_length=1,
        description="Compute profile of each video run (deployments/profiles.yaml: local, "
        "slurm, ...).",
    ),
]
CredentialsParam = Annotated[
    str | None,
    Field(
        description="Name of a saved prefect-aws AwsCredentials block for s3:// locations "
        "(passed on to every video run); empty: the workers' AWS_* environment."
    ),
]
DeploymentParam = Annotated[
    str,
    Field(
        pattern=r"^[^/\s]+/[^/\s]+$",
        description="The deployment each video runs as: <flow name>/<deployment name>.",
    ),
]
AttemptsParam = Annotated[
    int,
    Field(
        ge=1,
        le=10,
        description="Runs started per video before it is left alone (failed, crashed or "
        "cancelled runs count).",
    ),
]
GraceParam = Annotated[
    float,
    Field(
        ge=10.0,
        le=86400.0,
        description="Seconds a claim without a recorded run counts as taken (its creator is "
        "launching); after that another run may launch it (same idempotency key, so never "
        "twice).",
    ),
]


@flow(name="archive-backfill", log_prints=True)
@form_descriptions
def archive_backfill(
    source_prefix: SourcePrefix,
    target_prefix: TargetPrefix,
    patterns: Patterns = ["*.mp4", "*.mkv", "*.mov"],  # noqa: B006 (Prefect copies defaults)
    content: ContentParam = "anime",
    model: ModelParam = None,
    denoise_strength: DenoiseParam = 1.0,
    outscale: OutscaleParam = None,
    target_height: TargetHeightParam = None,
    codec: CodecParam = "h264",
    crf: CrfParam = None,
    encoder_preset: PresetParam = None,
    precision: PrecisionParam = "auto",
    tile: TileParam = 0,
    max_videos: Annotated[
        int,
        Field(ge=1, le=10000, description="At most this many videos are started per run."),
    ] = 20,
    profile: ProfileParam = "local",
    credentials_block: CredentialsParam = None,
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
) -> dict[str, Any]:
    """Upscale every video under a prefix that has no up-to-date output yet, each as its own
    upscale-video run (at most max_videos per run; reruns skip finished videos)."""
    child, expected = _upscale_settings(
        content,
        model,
        denoise_strength,
        outscale,
        target_height,
        codec,
        crf,
        encoder_preset,
        precision,
        tile,
        profile,
        credentials_block,
    )
    return process_prefix(
        "backfill",
        source_prefix=source_prefix,
        target_prefix=target_prefix,
        patterns=patterns,
        child_parameters=child,
        expected=expected,
        max_videos=max_videos,
        credentials_block=credentials_block,
        upscale_deployment=upscale_deployment,
        wait=wait,
        max_attempts=max_attempts,
        min_age_seconds=0.0,
        claim_grace_seconds=claim_grace_seconds,
    )


@flow(name="watch-arrivals", log_prints=True)
@form_descriptions
def watch_arrivals(
    source_prefix: SourcePrefix,
    target_prefix: TargetPrefix,
    patterns: Patterns = ["*.mp4", "*.mkv", "*.mov"],  # noqa: B006 (Prefect copies defaults)
    content: ContentParam = "anime",
    model: ModelParam = None,
    denoise_strength: DenoiseParam = 1.0,
    outscale: OutscaleParam = None,
    target_height: TargetHeightParam = None,
    codec: CodecParam = "h264",
    crf: CrfParam = None,
    encoder_preset: PresetParam = None,
    precision: PrecisionParam = "auto",
    tile: TileParam = 0,
    max_videos: Annotated[
        int,
        Field(ge=1, le=1000, description="At most this many new videos are started per check."),
    ] = 10,
    min_age_seconds: Annotated[
        float,
        Field(
            ge=0.0,
            le=86400.0,
            description="Ignore files modified less than this many seconds ago (set e.g. 60 "
            "for a local directory files are copied into; S3 objects appear whole).",
        ),
    ] = 0.0,
    profile: ProfileParam = "local",
    credentials_block: CredentialsParam = None,
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
) -> dict[str, Any]:
    """Pick up new videos under a prefix (the upload-trigger pattern, on an interval
    schedule): each new or changed video is started exactly once, however runs overlap."""
    child, expected = _upscale_settings(
        content,
        model,
        denoise_strength,
        outscale,
        target_height,
        codec,
        crf,
        encoder_preset,
        precision,
        tile,
        profile,
        credentials_block,
    )
    return process_prefix(
        "watch",
        source_prefix=source_prefix,
        target_prefix=target_prefix,
        patterns=patterns,
        child_parameters=child,
        expected=expected,
        max_videos=max_videos,
        credentials_block=credentials_block,
        upscale_deployment=upscale_deployment,
        wait=wait,
        max_attempts=max_attempts,
        min_age_seconds=min_age_seconds,
        claim_grace_seconds=claim_grace_seconds,
    )
