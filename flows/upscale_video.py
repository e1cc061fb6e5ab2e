"""The upscale-video flow: probe -> plan -> upscale batches (mapped) -> assemble -> publish."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

import dask
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Crashed
from pydantic import Field

from deployments.profiles import Profile, get_profile
from flows.params import Location, ModelChoice, form_descriptions
from tasks.artifacts import publish_report, report_progress, start_progress
from tasks.media import assemble_output, plan_job, probe_source
from tasks.storage import locations_for, result_storage_for
from tasks.upscale import chunk_is_present, upscale_batch
from vsrflow import PIPELINE_VERSION, storage
from vsrflow.compare import middle_frame
from vsrflow.engine_settings import ENGINE_DEFAULTS
from vsrflow.job import JobPlan, UpscaleJob
from vsrflow.lease import OutputLease
from vsrflow.locations import Locations
from vsrflow.media.assemble import AssemblyReport
from vsrflow.media.encode import EncoderSettings
from vsrflow.media.probe import MediaInfo
from vsrflow.models import model_for_content
from vsrflow.pipeline import BatchResult
from vsrflow.plan import Batch
from vsrflow.report import BatchCounts, MediaSide, RunSummary, worker_label

WORK_DIR_ENV = "VSRFLOW_WORK_DIR"
#: Names a Prefect global concurrency limit (the deployments set vsrflow-gpu): each run holds
#: one slot of it while its batches run. Unset (the CLI): no limit is consulted.
GPU_LIMIT_ENV = "VSRFLOW_GPU_LIMIT"
#: How often the flow resubmits a batch whose worker died (scancel, node failure, OOM kill).
#: Task retries cover exceptions inside a task; a lost worker never reports back, so the
#: flow notices through the Dask future and submits the batch again.
WORKER_LOSS_RESUBMITS = 3
_WORKER_LOSS = ("KilledWorker", "CancelledError", "FutureCancelledError", "CommClosedError")

Content = Literal["anime", "real", "general"]
Codec = Literal["h264", "hevc", "av1", "prores", "ffv1"]
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]


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
) -> dict[str, Any]:
    """Submit every batch to the profile's task runner; count cached vs computed batches and
    update the progress artifact ``progress_artifact_id`` (if given) as each one finishes."""
    logger = get_run_logger()
    task = upscale_batch.with_options(
        result_storage=result_storage_for(work_dir, credentials_block)
    )

    def submit(batch: Batch, refresh: bool) -> PrefectFuture[BatchResult]:
        runner = task.with_options(refresh_cache=True) if refresh else task
        with dask.annotate(resources=batch_resources or {}):
            return runner.submit(plan.video, batch, job, plan.out_size, work_dir, credentials_block)

    # A cache record without its chunk must not be trusted: recompute and overwrite it.
    futures = {
        b.index: submit(b, not chunk_is_present(work_dir, b, credentials_block))
        for b in plan.batches
    }
    resubmits = dict.fromkeys(futures, 0)
    results: dict[int, BatchResult] = {}
    cached = 0
    batches = {b.index: b for b in plan.batches}
    while len(results) < len(plan.batches):
        # Resubmitted futures join the next round; the others are handled as they finish.
        pending = {id(f): i for i, f in futures.items() if i not in results}
        for future in as_completed([futures[i] for i in pending.values()]):
            index = pending[id(future)]
            try:
                results[index] = future.result()
                cached += future.state.name == "Cached"
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
    ordered = [results[b.index] for b in plan.batches]
    return {
        "results": ordered,
        "cached": cached,
        "computed": len(ordered) - cached,
        "resubmitted": sum(resubmits.values()),
    }


@flow(name="upscale-video", log_prints=True)
@form_descriptions
def upscale_video(
    input_path: Annotated[
        Location,
        Field(
            description="Source video: a local path or s3://bucket/key (mp4, mkv, mov, webm...)."
        ),
    ],
    output_path: Annotated[
        Location,
        Field(
            description="Where to publish: a local path or s3://bucket/key; .mp4, "
            ".mkv or .mov. A manifest JSON is written beside it."
        ),
    ],
    content: Annotated[
        Content,
        Field(
            description="Content preset picking the model when `model` is empty: anime -> "
            "realesr-animevideov3, real -> RealESRGAN_x4plus, general -> "
            "realesr-general-x4v3."
        ),
    ] = "anime",
    model: Annotated[
        ModelChoice | None,
        Field(
            description="Registry model name (see `vsrflow models list`) or a path to a "
            "spandrel-compatible .pth/.safetensors file; overrides `content`."
        ),
    ] = None,
    denoise_strength: Annotated[
        float,
        Field(
            ge=0.0,
            le=1.0,
            description="realesr-general-x4v3 only: 1 = no extra "
            "denoising, 0 = strongest (wdn blend).",
        ),
    ] = 1.0,
    outscale: Annotated[
        float | None,
        Field(gt=0.0, le=16.0, description="Final scale factor; the model's own scale when empty."),
    ] = None,
    target_height: Annotated[
        int | None,
        Field(
            ge=16,
            le=8640,
            description="Final height in pixels (aspect kept); exclusive with outscale.",
        ),
    ] = None,
    codec: Annotated[Codec, Field(description="Output video codec.")] = "h264",
    crf: Annotated[
        int | None,
        Field(
            ge=0,
            le=63,
            description="Quality (lower is better); codec default when empty (h264: 18).",
        ),
    ] = None,
    encoder_preset: Annotated[
        str | None,
        Field(
            description="Encoder speed preset; codec default when empty (h264: veryfast, "
            "measured in bench/). x264/x265: ultrafast..veryslow; svt-av1: 0..13."
        ),
    ] = None,
    precision: Annotated[
        PrecisionChoice,
        Field(description="auto = fp16 on CUDA, bf16 on CPUs with native bf16, else fp32."),
    ] = "auto",
    tile: Annotated[
        int,
        Field(
            ge=0,
            le=4096,
            description="Tile size in input pixels, 0 = whole frames. "
            "Use on GPUs with little memory.",
        ),
    ] = ENGINE_DEFAULTS.tile,
    tile_pad: Annotated[
        int, Field(ge=0, le=256, description="Overlap around each tile.")
    ] = ENGINE_DEFAULTS.tile_pad,
    micro_batch: Annotated[
        int, Field(ge=1, le=64, description="Frames per forward pass.")
    ] = ENGINE_DEFAULTS.micro_batch,
    compile_model: Annotated[
        bool,
        Field(
            description="torch.compile the model once per worker process: measured +9-25 % "
            "frames/s on CPU after 2-12 s of compiling; pays off from a few hundred frames "
            "per worker (bench/README.md)."
        ),
    ] = ENGINE_DEFAULTS.compile,
    batch_frames: Annotated[
        int | None,
        Field(ge=1, description="Frames per batch (one task each); overrides batch_seconds."),
    ] = None,
    batch_seconds: Annotated[
        float, Field(gt=0.0, le=3600.0, description="Seconds of video per batch.")
    ] = 4.0,
    profile: Annotated[
        str, Field(description="Compute profile from deployments/profiles.yaml (local, ...).")
    ] = "local",
    work_dir: Annotated[
        str | None,
        Field(
            description="Chunks, cached results and progress; default "
            "$VSRFLOW_WORK_DIR or .vsrflow-work beside the output."
        ),
    ] = None,
    credentials_block: Annotated[
        str | None,
        Field(
            description="Name of a saved prefect-aws AwsCredentials block for "
            "s3:// locations (endpoint URL for S3-compatible "
            "stores in its client parameters); empty: the AWS_* "
            "environment."
        ),
    ] = None,
    keep_chunks: Annotated[
        bool,
        Field(
            description="Keep batch chunks after publishing (a rerun then recomputes "
            "nothing); off frees the scratch space."
        ),
    ] = False,
) -> dict[str, Any]:
    """Upscale a video: exact frames and timestamps, every audio/subtitle stream kept."""
    work = work_dir or default_work_dir(output_path)
    job = UpscaleJob(
        model=model or model_for_content(content),
        denoise_strength=denoise_strength,
        outscale=outscale,
        target_height=target_height,
        engine=dataclasses.replace(
            ENGINE_DEFAULTS,
            precision=precision,
            tile=tile,
            tile_pad=tile_pad,
            micro_batch=micro_batch,
            compile=compile_model,
        ),
        encoder=EncoderSettings(codec=codec, quality=crf, speed=encoder_preset),
    )
    compute = get_profile(profile)
    if compute.needs_api_server and not PREFECT_API_URL.value():
        raise ValueError(
            f"profile {profile!r} runs batches in separate worker processes: start a Prefect "
            "server and set PREFECT_API_URL (workers must report to one real server)"
        )
    locations = locations_for(credentials_block)
    lease = OutputLease(locations, work, output_path, owner=str(flow_run.id))
    dead = lease.acquire()
    if dead is not None:
        mark_crashed(
            dead.owner,
            f"its process stopped renewing the lease on {output_path}; run {flow_run.id} took over",
        )
    try:
        return _run_job(
            input_path,
            output_path,
            job,
            compute,
            work,
            locations,
            credentials_block,
            batch_frames,
            batch_seconds,
            keep_chunks,
        )
    finally:
        lease.release()


def _gpu_slot() -> contextlib.AbstractContextManager[object]:
    """One slot of the global concurrency limit named by $VSRFLOW_GPU_LIMIT while batches
    run (waits for a free slot; a limit that does not exist is skipped with a warning)."""
    name = os.environ.get(GPU_LIMIT_ENV)
    return concurrency(name, occupy=1) if name else contextlib.nullcontext()


def mark_crashed(flow_run_id: str, reason: str) -> None:
    """Mark a flow run whose process died as Crashed (it would stay "Running" forever)."""
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        try:
            stale = client.read_flow_run(UUID(flow_run_id))
        except (ObjectNotFound, ValueError):
            return
        if stale.state is not None and not stale.state.is_final():
            client.set_flow_run_state(stale.id, Crashed(message=reason), force=True)
            logger.warning("marked run %s Crashed: %s", flow_run_id, reason)


def _run_job(
    input_path: str,
    output_path: str,
    job: UpscaleJob,
    compute: Profile,
    work: str,
    locations: Locations,
    credentials_block: str | None,
    batch_frames: int | None,
    batch_seconds: float,
    keep_chunks: bool,
) -> dict[str, Any]:
    """probe -> plan -> upscale batches -> assemble + publish, with timings and a manifest."""
    logger = get_run_logger()
    timings: dict[str, float] = {}
    profile = compute.name
    t0 = time.perf_counter()
    info = probe_source(input_path, credentials_block)
    timings["probe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = plan_job(
        info,
        job,
        output_path,
        work,
        credentials_block,
        frames_per_batch=batch_frames,
        seconds_per_batch=batch_seconds,
    )
    timings["plan"] = time.perf_counter() - t0
    logger.info(
        "%d frames in %d batches -> %dx%d with %s on profile %s",
        plan.frame_count,
        len(plan.batches),
        *plan.out_size,
        job.model,
        profile,
    )

    t0 = time.perf_counter()
    progress = start_progress(output_path, len(plan.batches))
    with _gpu_slot():
        outcome = upscale_batches.with_options(task_runner=compute.make_task_runner())(
            plan, job, work, credentials_block, compute.batch_resources, progress
        )
    timings["upscale"] = time.perf_counter() - t0
    results: list[BatchResult] = outcome["results"]

    manifest = {
        "vsrflow_pipeline": PIPELINE_VERSION,
        "source": input_path,
        "source_identity": plan.source_sha256,
        "source_bytes": info.size_bytes,
        "parameters": {
            "model": job.model,
            "denoise_strength": job.denoise_strength,
            "outscale": job.outscale,
            "target_height": job.target_height,
            "codec": job.encoder.codec,
            "crf": job.encoder.quality,
            "encoder_preset": job.encoder.speed,
            "precision": job.engine.precision,
            "tile": job.engine.tile,
            "tile_pad": job.engine.tile_pad,
            "micro_batch": job.engine.micro_batch,
            "compile_model": job.engine.compile,
            "profile": profile,
        },
        "weights_sha256": plan.weights_sha256,
        "out_size": list(plan.out_size),
        "batches": len(plan.batches),
        "batches_cached": outcome["cached"],
        "batches_computed": outcome["computed"],
        "workers": sorted({f"{r.host}/{r.slurm_job_id or '-'}" for r in results}),
    }
    t0 = time.perf_counter()
    report = assemble_output(
        info,
        [r.chunk for r in results],
        output_path,
        credentials_block,
        {**manifest, "seconds": {k: round(v, 3) for k, v in timings.items()}},
    )
    timings["assemble"] = time.perf_counter() - t0
    if not keep_chunks:
        for result in results:
            locations.remove(result.chunk)
    logger.info(
        "published %s: %d frames, %d batches computed, %d cached",
        report.path,
        report.frames,
        outcome["computed"],
        outcome["cached"],
    )
    summary = _run_summary(info, plan, job, profile, outcome, report, timings)
    frame_index, frame_time = middle_frame(info.video.pts, info.video.time_base)
    published = publish_report(
        summary, plan.video, frame_index, frame_time, credentials_block, return_state=True
    )
    if published.is_completed():
        artifacts = published.result()
    else:  # the output is published: a missing report must not fail the run
        logger.warning("run report not published: %s", published.message)
        artifacts = {}
    return {
        **manifest,
        "output": report.path,
        "frames": report.frames,
        "size_bytes": report.size_bytes,
        "batch_results": [dataclasses.asdict(r) for r in results],
        "resubmitted": outcome["resubmitted"],
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "work_dir": work,
        "artifacts": artifacts,
    }


def _run_summary(
    info: MediaInfo,
    plan: JobPlan,
    job: UpscaleJob,
    profile: str,
    outcome: dict[str, Any],
    report: AssemblyReport,
    timings: dict[str, float],
) -> RunSummary:
    """What the summary artifact shows (framework-free data; rendering is in vsrflow.report)."""
    video = info.video
    fps = float(video.average_rate) if video.average_rate else None
    results: list[BatchResult] = outcome["results"]
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
        # Timestamps are kept frame for frame (verified at assembly): same rate as the source.
        output=MediaSide(
            report.path, report.size_bytes, *plan.out_size, report.frames, fps, video.is_vfr
        ),
        model=job.model,
        weights_sha256=plan.weights_sha256,
        profile=profile,
        codec=job.encoder.codec,
        seconds={k: round(v, 3) for k, v in timings.items()},
        batches=len(plan.batches),
        cached=outcome["cached"],
        computed=outcome["computed"],
        resubmitted=outcome["resubmitted"],
        workers=tuple(sorted({worker_label(r.host, r.slurm_job_id) for r in results})),
    )
