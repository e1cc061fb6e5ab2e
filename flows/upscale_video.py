"""The upscale-video flow: probe -> plan -> upscale batches (mapped) -> assemble -> publish.

The flow only composes tasks; every I/O step (lease, probe, planning with the chunk check,
batches, assembly, clean-up, report) is a task with its own retries and state in the UI.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Annotated
from uuid import UUID

import dask
from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL
from pydantic import Field

from deployments.profiles import Profile, get_profile
from flows.params import (
    CredentialsParam,
    KeepChunksParam,
    ProfileParam,
    VideoOutput,
    VideoSource,
    WorkDirParam,
    form_descriptions,
)
from tasks.artifacts import publish_report, report_progress, start_progress
from tasks.lease import acquire_lease, release_lease
from tasks.media import assemble_output, plan_job, probe_source
from tasks.preflight import preflight_video
from tasks.storage import result_storage_for
from tasks.upscale import check_cached_chunk, remove_chunks, upscale_batch
from vsrflow import PIPELINE_VERSION, storage
from vsrflow.chunks import ChunkProblem
from vsrflow.compare import middle_frame
from vsrflow.job import JobPlan, UpscaleJob
from vsrflow.lease import OutputLease
from vsrflow.media.assemble import AssemblyReport
from vsrflow.media.probe import MediaInfo
from vsrflow.pipeline import BatchResult
from vsrflow.plan import Batch
from vsrflow.report import BatchCounts, MediaSide, RunSummary, worker_label
from vsrflow.results import BatchOutcome, VideoResult
from vsrflow.settings import UpscaleSettings

WORK_DIR_ENV = "VSRFLOW_WORK_DIR"
#: Names a Prefect global concurrency limit (the deployments set vsrflow-gpu): each run holds
#: one slot of it while its batches run. Unset (the CLI): no limit is consulted.
GPU_LIMIT_ENV = "VSRFLOW_GPU_LIMIT"
#: How often the flow resubmits a batch whose worker died (scancel, node failure, OOM kill).
#: Task retries cover exceptions inside a task; a lost worker never reports back, so the
#: flow notices through the Dask future and submits the batch again.
WORKER_LOSS_RESUBMITS = 3
_WORKER_LOSS = ("KilledWorker", "CancelledError", "FutureCancelledError", "CommClosedError")

SettingsParam = Annotated[
    UpscaleSettings,
    Field(
        description="What the output will be: model, size, precision and tiles, codec and "
        "quality, batch length. Every field has a tested default."
    ),
]


def default_work_dir(output_path: str) -> str:
    """``$VSRFLOW_WORK_DIR``, else ``.vsrflow-work`` beside the output (same disk or bucket,
    found again by a rerun, which is what makes resuming after a crash work)."""
    if os.environ.get(WORK_DIR_ENV):
        return os.environ[WORK_DIR_ENV]
    if storage.is_s3_uri(output_path):
        bucket, key = storage.parse_s3_uri(output_path)
        parent = key.rsplit("/", 1)[0] if "/" in key else ""
        return storage.join_uri(f"s3://{bucket}", *[p for p in (parent, ".vsrflow-work") if p])
    return str(Path(output_path).parent / ".vsrflow-work")


def _is_worker_loss(exc: BaseException) -> bool:
    return type(exc).__name__ in _WORKER_LOSS


@flow(name="upscale-batches", log_prints=True)
def upscale_batches(
    plan: JobPlan,
    job: UpscaleJob,
    work_dir: str,
    credentials_block: str | None = None,
    batch_resources: dict[str, float] | None = None,
    progress_artifact_id: UUID | None = None,
) -> BatchOutcome:
    """Submit every batch to the profile's task runner; count cached vs computed batches and
    update the progress artifact ``progress_artifact_id`` (if given) as each one finishes.

    A batch whose chunk planning did not find is recomputed even if a cache record exists
    (a record without its chunk must not be trusted)."""
    logger = get_run_logger()
    task = upscale_batch.with_options(
        result_storage=result_storage_for(work_dir, credentials_block)
    )

    def submit(batch: Batch, refresh: bool) -> PrefectFuture[BatchResult]:
        runner = task.with_options(refresh_cache=True) if refresh else task
        with dask.annotate(resources=batch_resources or {}):
            return runner.submit(plan.video, batch, job, plan.out_size, work_dir, credentials_block)

    futures = {b.index: submit(b, b.index not in plan.present_chunks) for b in plan.batches}
    resubmits = dict.fromkeys(futures, 0)
    results: dict[int, BatchResult] = {}
    cached = 0
    bad_chunks: list[ChunkProblem] = []
    batches = {b.index: b for b in plan.batches}
    while len(results) < len(plan.batches):
        # Resubmitted futures join the next round; the others are handled as they finish.
        pending = {id(f): i for i, f in futures.items() if i not in results}
        for future in as_completed([futures[i] for i in pending.values()]):
            index = pending[id(future)]
            try:
                result = future.result()
                if future.state.name == "Cached":
                    problem = check_cached_chunk(result, credentials_block)
                    if problem is not None:  # never trusted: recomputed, named in the summary
                        logger.warning("recomputing %s", problem.describe())
                        bad_chunks.append(problem)
                        futures[index] = submit(batches[index], True)
                        continue
                    cached += 1
                results[index] = result
            except Exception as exc:
                if not _is_worker_loss(exc) or resubmits[index] >= WORKER_LOSS_RESUBMITS:
                    raise
                resubmits[index] += 1
                logger.warning(
                    "batch %d lost its worker (%s); resubmitting", index, type(exc).__name__
                )
                futures[index] = submit(batches[index], True)
                continue
            if progress_artifact_id is not None:
                counts = BatchCounts(
                    len(results), len(plan.batches), cached, sum(resubmits.values())
                )
                report_progress(progress_artifact_id, counts)
    ordered = tuple(results[b.index] for b in plan.batches)
    return BatchOutcome(
        ordered,
        cached,
        len(ordered) - cached,
        sum(resubmits.values()),
        tuple(p.describe() for p in bad_chunks),
    )


@flow(name="upscale-video", log_prints=True)
@form_descriptions
def upscale_video(
    input_path: Annotated[
        VideoSource,
        Field(
            description="Source video: a local path or s3://bucket/key (mp4, mkv, mov, "
            "webm, ts...)."
        ),
    ],
    output_path: Annotated[
        VideoOutput,
        Field(
            description="Where to publish: a local path or s3://bucket/key ending in .mp4, "
            ".mkv, .mov or .webm. <output>.manifest.json is written beside it."
        ),
    ],
    settings: SettingsParam = UpscaleSettings(),  # noqa: B008 (frozen; Prefect copies it)
    profile: ProfileParam = "local",
    work_dir: WorkDirParam = "",
    credentials_block: CredentialsParam = "",
    keep_chunks: KeepChunksParam = False,
) -> VideoResult:
    """Upscale a video: exact frames and timestamps, every audio/subtitle stream kept."""
    work = work_dir or default_work_dir(output_path)
    creds = credentials_block or None
    compute = get_profile(profile)
    if compute.needs_api_server and not PREFECT_API_URL.value():
        raise ValueError(
            f"profile {profile!r} runs batches in separate worker processes: start a Prefect "
            "server and set PREFECT_API_URL (workers must report to one real server)"
        )
    preflight_video(input_path, output_path, work, creds)  # before the lease: it writes
    lease = acquire_lease(output_path, work, str(flow_run.id), creds)
    try:
        return _run_job(input_path, output_path, settings, compute, work, creds, keep_chunks, lease)
    finally:
        release_lease(lease)


def _gpu_slot() -> contextlib.AbstractContextManager[object]:
    """One slot of the global concurrency limit named by $VSRFLOW_GPU_LIMIT while batches
    run (waits for a free slot; a limit that does not exist is skipped with a warning)."""
    name = os.environ.get(GPU_LIMIT_ENV)
    return concurrency(name, occupy=1) if name else contextlib.nullcontext()


def _run_job(
    input_path: str,
    output_path: str,
    settings: UpscaleSettings,
    compute: Profile,
    work: str,
    credentials_block: str | None,
    keep_chunks: bool,
    lease: OutputLease,
) -> VideoResult:
    """probe -> plan -> upscale batches -> assemble + publish, with timings and a manifest."""
    logger = get_run_logger()
    job = UpscaleJob.from_settings(settings)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    info = probe_source(input_path, credentials_block)
    timings["probe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = plan_job(info, settings, output_path, work, credentials_block)
    timings["plan"] = time.perf_counter() - t0
    logger.info(
        "%d frames in %d batches -> %dx%d with %s on profile %s",
        plan.frame_count,
        len(plan.batches),
        *plan.out_size,
        job.model,
        compute.name,
    )

    t0 = time.perf_counter()
    progress = start_progress(output_path, len(plan.batches))
    with _gpu_slot():
        outcome = upscale_batches.with_options(task_runner=compute.make_task_runner())(
            plan, job, work, credentials_block, compute.batch_resources, progress
        )
    timings["upscale"] = time.perf_counter() - t0
    results = outcome.results
    workers = tuple(sorted({f"{r.host}/{r.slurm_job_id or '-'}" for r in results}))
    manifest = {
        "vsrflow_pipeline": PIPELINE_VERSION,
        "source": input_path,
        "source_identity": plan.source_sha256,
        "source_bytes": info.size_bytes,
        "model": job.model,
        "parameters": {**settings.parameters(), "profile": compute.name},
        "weights_sha256": plan.weights_sha256,
        "out_size": list(plan.out_size),
        "batches": len(plan.batches),
        "batches_cached": outcome.cached,
        "batches_computed": outcome.computed,
        "recomputed_bad_chunks": list(outcome.bad_chunks),
        "workers": list(workers),
        "alpha": plan.alpha_description(),
        "interlace": {**_fields_of(info), **plan.interlace_description()},
    }
    lease.ensure_held()  # a run whose lease was taken over must not publish over the taker
    t0 = time.perf_counter()
    report = assemble_output(
        plan.output_media(info),  # deinterlaced: the planned output pts, not the source's
        [r.chunk for r in results],
        output_path,
        credentials_block,
        {**manifest, "seconds": {k: round(v, 3) for k, v in timings.items()}},
    )
    timings["assemble"] = time.perf_counter() - t0
    if not keep_chunks:
        remove_chunks([r.chunk for r in results], credentials_block)
    logger.info(
        "published %s: %d frames, %d batches computed, %d cached",
        report.path,
        report.frames,
        outcome.computed,
        outcome.cached,
    )
    summary = _run_summary(info, plan, job, compute.name, outcome, report, timings)
    frame_index, frame_time = middle_frame(info.video.pts, info.video.time_base)
    published = publish_report(
        summary, plan.video, frame_index, frame_time, credentials_block, return_state=True
    )
    if published.is_completed():
        artifacts = published.result()
    else:  # the output is published: a missing report must not fail the run
        logger.warning("run report not published: %s", published.message)
        artifacts = {}
    return VideoResult(
        output=report.path,
        source=input_path,
        frames=report.frames,
        size_bytes=report.size_bytes,
        out_size=plan.out_size,
        model=job.model,
        weights_sha256=plan.weights_sha256,
        parameters=manifest["parameters"],
        profile=compute.name,
        batches=len(plan.batches),
        batches_cached=outcome.cached,
        batches_computed=outcome.computed,
        resubmitted=outcome.resubmitted,
        bad_chunks=outcome.bad_chunks,
        workers=workers,
        seconds={k: round(v, 3) for k, v in timings.items()},
        work_dir=work,
        chunks_removed=not keep_chunks,
        batch_results=results,
        artifacts=artifacts,
    )


def _run_summary(
    info: MediaInfo,
    plan: JobPlan,
    job: UpscaleJob,
    profile: str,
    outcome: BatchOutcome,
    report: AssemblyReport,
    timings: dict[str, float],
) -> RunSummary:
    """What the summary artifact shows (framework-free data; rendering is in vsrflow.report)."""
    video = info.video
    fps = float(video.average_rate) if video.average_rate else None
    results = outcome.results
    return RunSummary(
        source=MediaSide(
            info.path,
            info.size_bytes,
            video.width,
            video.height,
            video.frame_count,
            fps,
            video.is_vfr,
        ),
        # Timestamps are kept frame for frame (verified at assembly): same rate as the source,
        # unless deinterlacing planned others (field rate, inverse telecine).
        output=MediaSide(
            report.path,
            report.size_bytes,
            *plan.out_size,
            report.frames,
            float(plan.video.output_rate) if plan.video.output_rate else None,
            video.is_vfr,
        ),
        model=job.model,
        weights_sha256=plan.weights_sha256,
        profile=profile,
        codec=job.encoder.codec,
        seconds={k: round(v, 3) for k, v in timings.items()},
        batches=len(plan.batches),
        cached=outcome.cached,
        computed=outcome.computed,
        resubmitted=outcome.resubmitted,
        workers=tuple(sorted({worker_label(r.host, r.slurm_job_id) for r in results})),
        bad_chunks=outcome.bad_chunks,
        interlace=plan.interlace.description if plan.interlace else "",
        interlace_warnings=plan.interlace.warnings if plan.interlace else (),
    )


def _fields_of(info: MediaInfo) -> dict[str, object]:
    """The source's field analysis for the manifest (verdict and evidence counts)."""
    fields = info.video.fields
    return {"detected": fields.summary()} if fields is not None else {}
