"""The upscale-video flow: probe -> plan -> upscale batches (mapped) -> assemble -> publish.

The flow only composes tasks; every I/O step (lease, probe, planning with the chunk check,
batches, assembly, clean-up, report) is a task with its own retries and state in the UI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL
from pydantic import Field

from deployments.profiles import Profile, get_profile
from flows.batches import upscale_batches
from flows.params import (
    CredentialsParam,
    KeepChunksParam,
    ProfileParam,
    SettingsParam,
    VideoOutput,
    VideoSource,
    WorkDirParam,
    form_descriptions,
)
from tasks.artifacts import publish_face_crop, publish_report, start_progress
from tasks.lease import acquire_lease, release_lease
from tasks.media import assemble_output, plan_job, probe_source
from tasks.preflight import preflight_video
from tasks.upscale import clean_work_dir
from vsrflow import PIPELINE_VERSION, storage
from vsrflow.compare import middle_frame
from vsrflow.job import JobPlan, UpscaleJob
from vsrflow.lease import OutputLease
from vsrflow.media.assemble import AssemblyReport
from vsrflow.media.probe import MediaInfo
from vsrflow.procmem import peak_rss_mb, return_large_frees
from vsrflow.report import FaceSummary, MediaSide, RunSummary, face_crop_location, worker_label
from vsrflow.results import BatchOutcome, VideoResult
from vsrflow.settings import UpscaleSettings

WORK_DIR_ENV = "VSRFLOW_WORK_DIR"
#: Names a Prefect global concurrency limit (the deployments set vsrflow-gpu): each run holds
#: one slot of it while its batches run. Unset (the CLI): no limit is consulted.
GPU_LIMIT_ENV = "VSRFLOW_GPU_LIMIT"


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
    if not compute.runs_batches_here:
        # Flat memory however long the film; not where frames are upscaled (see procmem).
        return_large_frees()
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
    with _gpu_slot(), compute.make_task_runner() as runner:
        outcome = upscale_batches(
            runner, plan, job, work, credentials_block, compute.batch_resources, progress
        )
    timings["upscale"] = time.perf_counter() - t0
    results = outcome.results
    workers = tuple(sorted({f"{r.host}/{r.slurm_job_id or '-'}" for r in results}))
    faces = _face_summary(job, outcome, output_path)
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
        # Archive properties (SAR, HDR, captions, timecode, chroma) and what was done (issue 10).
        "properties": plan.properties_description(),
    }
    if faces is not None:
        manifest["faces"] = faces.manifest()
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
    if faces is not None and faces.crop is not None:
        samples = [r.face_sample for r in results if r.face_sample]
        best = max((r for r in results if r.face_sample), key=lambda r: r.face_largest)
        crop = publish_face_crop(
            samples, best.face_sample, output_path, credentials_block, not keep_chunks,
            return_state=True,
        )  # fmt: skip
        if not crop.is_completed():  # the output is published: a missing crop is a warning
            logger.warning("face crop not published: %s", crop.message)
            faces = dataclasses.replace(faces, crop=None)
    if not keep_chunks:  # published and verified: nothing left to resume
        clean_work_dir(work, output_path, [b.key for b in plan.batches], credentials_block)
    logger.info(
        "published %s: %d frames, %d batches computed, %d cached",
        report.path,
        report.frames,
        outcome.computed,
        outcome.cached,
    )
    summary = _run_summary(info, plan, job, compute.name, outcome, report, timings, faces)
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
        window=outcome.window,
        flow_peak_rss_mb=peak_rss_mb(),
    )


def _run_summary(
    info: MediaInfo,
    plan: JobPlan,
    job: UpscaleJob,
    profile: str,
    outcome: BatchOutcome,
    report: AssemblyReport,
    timings: dict[str, float],
    faces: FaceSummary | None = None,
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
        faces=faces,
        interlace=plan.interlace.description if plan.interlace else "",
        interlace_warnings=plan.interlace.warnings if plan.interlace else (),
        properties=tuple(plan.properties_description()),
    )


def _fields_of(info: MediaInfo) -> dict[str, object]:
    """The source's field analysis for the manifest (verdict and evidence counts)."""
    fields = info.video.fields
    return {"detected": fields.summary()} if fields is not None else {}


def _face_summary(job: UpscaleJob, outcome: BatchOutcome, output_path: str) -> FaceSummary | None:
    """Face restoration counts over every batch (None when it was off); the crop location is
    set when some batch restored a face (its crop is copied there after publishing)."""
    if job.faces is None:
        return None
    results = outcome.results
    return FaceSummary(
        restorer=job.faces.label,
        frames=sum(r.frames for r in results),
        frames_with_faces=sum(r.face_frames for r in results),
        faces=sum(r.faces for r in results),
        crop=face_crop_location(output_path) if any(r.face_sample for r in results) else None,
    )
