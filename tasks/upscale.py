"""The upscale-batch task: retries, a cross-run cache keyed by the batch key, progress.

The cache key is the batch key alone (source content identity, frame range, weights,
settings, pipeline version), so a rerun of the same job - after a crash, or from another
machine sharing the work directory - skips every batch whose chunk was already produced. The
flow re-runs a batch with ``refresh_cache`` when its chunk is gone, so a cached result is never
trusted without its chunk.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import threading
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.caching import KeyedBy
from tasks.retry import TRANSIENT_RETRIES
from tasks.storage import locations_for
from vsrflow.chunks import ChunkProblem, check_chunk
from vsrflow.errors import redacting
from vsrflow.job import UpscaleJob
from vsrflow.media.probe import VideoParams
from vsrflow.plan import Batch, chunk_name
from vsrflow.progress import BatchProgress, job_progress_files
from vsrflow.results import BatchResult

if TYPE_CHECKING:
    from vsrflow.engine import Upscaler
    from vsrflow.faces.job import FaceJob
    from vsrflow.faces.processor import FaceProcessor

_upscalers: dict[tuple[Any, ...], Upscaler] = {}
#: Cache keys of batch results: ``upscale-batch-<batch key>`` (also their file/object name).
RESULT_PREFIX = "upscale-batch-"
#: A batch's before/after face crop sits beside its chunk: ``<chunk>.face.png``.
FACE_SAMPLE_SUFFIX = ".face.png"


def chunk_location(work_dir: str, batch: Batch) -> str:
    """Derived from the batch key alone, so any worker or rerun finds any batch's chunk."""
    return locations_for(None).join(work_dir, "chunks", chunk_name(batch))


def result_record_location(work_dir: str, key: str) -> str:
    """Where Prefect keeps the cache record of the batch with ``key`` (see
    ``tasks.storage.result_storage_for``: ``<work_dir>/results/<cache key>``)."""
    return locations_for(None).join(work_dir, "results", f"{RESULT_PREFIX}{key}")


def job_files(work_dir: str, output_path: str, keys: list[str]) -> list[str]:
    """Every file one job keeps in ``work_dir`` for resuming: per batch its chunk, the face
    sample beside it (face restoration; normally removed with the run's face crop, but a run
    whose crop failed leaves it), its cache record and (local work dirs) its progress file,
    plus the job's progress listing."""
    locations = locations_for(None)
    files = []
    for key in keys:
        chunk = locations.join(work_dir, "chunks", f"{key}.mp4")
        files += [chunk, chunk + FACE_SAMPLE_SUFFIX, result_record_location(work_dir, key)]
    if not locations.is_remote(work_dir):
        files += [str(path) for path in job_progress_files(work_dir, output_path, keys)]
    return files


@task(
    name="clean-work-dir",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def clean_work_dir(
    work_dir: str, output_path: str, keys: list[str], credentials_block: str | None = None
) -> int:
    """Remove a published job's files from its work dir (chunks, cache records, progress);
    returns how many locations were cleared.

    Only this job's files go: other outputs in the same folder share ``.vsrflow-work`` and
    may be mid-run. Local folders the job's files lived in are removed once empty. Called
    only after the output is published and verified: a failed or killed run keeps all of it,
    which is what a rerun resumes from."""
    locations = locations_for(credentials_block)
    files = job_files(work_dir, output_path, keys)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(locations.remove, files))
    if not locations.is_remote(work_dir):
        for folder in ("chunks", "results", "progress", ""):
            with contextlib.suppress(OSError):  # not empty (another job's files) or gone
                os.rmdir(os.path.join(work_dir, folder))
    return len(files)


def face_processor_for(
    job: FaceJob, *, device: str, precision: str
) -> FaceProcessor:  # imported late: workers without faces never load the face code
    from vsrflow.faces.step import face_processor_for as build

    return build(job, device=device, precision=precision)


def run_batch(*args: Any, **kwargs: Any) -> BatchResult:
    """:func:`vsrflow.pipeline.upscale_batch`, imported on the first call: the pipeline needs
    torch, which only a process that runs batches (a worker) should import. A module
    attribute, so the fault tests can wrap it."""
    from vsrflow.pipeline import upscale_batch

    return upscale_batch(*args, **kwargs)


def preload_model(job: UpscaleJob) -> threading.Thread:
    """Import torch and load ``job``'s model in a daemon thread, now.

    For a process that will run batches itself (the local profile), this overlaps 3-6 s of
    start-up (torch, spandrel, reading the weights) with the Prefect server check, the flow
    run's creation, probing and planning; the first batch then finds the model in
    :func:`vsrflow.models.get_model`'s per-process memo. Weights that are not on this
    machine yet are left to planning, which fetches them once; any failure is left to the
    batch, which reports it."""

    def load() -> None:
        from vsrflow.models import get_model

        with contextlib.suppress(Exception):
            get_model(
                job.model,
                denoise_strength=job.denoise_strength,
                allow_download=False,
                progress=False,
            )

    thread = threading.Thread(target=load, name="vsrflow-preload-model", daemon=True)
    thread.start()
    return thread


def upscaler_for(job: UpscaleJob) -> Upscaler:
    """One model and one engine per worker process, reused by every batch it runs.

    torch and the model code are imported here, on the worker, not when this module is: the
    flow process imports it to submit batches and never runs the model."""
    from vsrflow.engine import Upscaler
    from vsrflow.models import get_model

    model = get_model(job.model, denoise_strength=job.denoise_strength, progress=False)
    key = (model.weights_sha256, job.device, job.engine)
    if key not in _upscalers:
        _upscalers[key] = Upscaler(model.descriptor, settings=job.engine, device=job.device)
    return _upscalers[key]


@task(
    name="upscale-batch",
    task_run_name="batch-{batch.index}",
    **TRANSIENT_RETRIES,
    cache_policy=KeyedBy(parameter="batch", prefix=RESULT_PREFIX),
    persist_result=True,
)
def upscale_batch(
    video: VideoParams,
    batch: Batch,
    job: UpscaleJob,
    out_size: tuple[int, int],
    work_dir: str,
    credentials_block: str | None = None,
) -> BatchResult:
    """Upscale one frame range into a chunk in ``work_dir``; result cached by batch key."""
    locations = locations_for(credentials_block)
    target = chunk_location(work_dir, batch)
    progress = None
    if not locations.is_remote(work_dir):
        progress = BatchProgress(work_dir, batch.key, batch.output_frames)
    faces = None
    if job.faces is not None:
        faces = face_processor_for(job.faces, device=job.device, precision=job.engine.precision)
    with redacting(), locations.scratch_for(target) as staged:
        sample = staged.with_name(staged.name + FACE_SAMPLE_SUFFIX)
        try:
            result = run_batch(
                dataclasses.replace(video, path=locations.readable(video.path)),
                batch,
                upscaler_for(job),
                staged,
                encoder=job.encoder,
                out_size=out_size,
                progress=progress,
                faces=faces,
                face_sample=sample,
            )
            chunk_bytes = staged.stat().st_size
            if result.face_sample:  # stored beside the chunk; the report copies it
                locations.store(sample, target + FACE_SAMPLE_SUFFIX)
                result = dataclasses.replace(result, face_sample=target + FACE_SAMPLE_SUFFIX)
        finally:
            sample.unlink(missing_ok=True)
        locations.store(staged, target)
    return dataclasses.replace(result, chunk=target, chunk_bytes=chunk_bytes)


@task(
    name="check-cached-chunk",
    task_run_name="check-chunk-{result.index}",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def check_cached_chunk(
    result: BatchResult, credentials_block: str | None = None
) -> ChunkProblem | None:
    """Check a chunk reused from the cache before trusting it (size and frame count)."""
    return check_chunk(locations_for(credentials_block), result)
