"""The upscale-batch task: retries, a cross-run cache keyed by the batch key, progress.

The cache key is the batch key alone (source content identity, frame range, weights,
settings, pipeline version), so a rerun of the same job - after a crash, or from another
machine sharing the work directory - skips every batch whose chunk was already produced. The
flow re-runs a batch with ``refresh_cache`` when its chunk is gone, so a cached result is never
trusted without its chunk.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.caching import KeyedBy
from tasks.retry import TRANSIENT_RETRIES
from tasks.storage import locations_for
from vsrflow.chunks import ChunkProblem, check_chunk
from vsrflow.engine import Upscaler
from vsrflow.errors import redacting
from vsrflow.job import UpscaleJob
from vsrflow.media.probe import VideoParams
from vsrflow.models import get_model
from vsrflow.pipeline import BatchResult
from vsrflow.pipeline import upscale_batch as run_batch
from vsrflow.plan import Batch, chunk_name
from vsrflow.progress import BatchProgress

_upscalers: dict[tuple[Any, ...], Upscaler] = {}


def chunk_location(work_dir: str, batch: Batch) -> str:
    """Derived from the batch key alone, so any worker or rerun finds any batch's chunk."""
    return locations_for(None).join(work_dir, "chunks", chunk_name(batch))


@task(
    name="remove-chunks",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def remove_chunks(chunks: list[str], credentials_block: str | None = None) -> int:
    """Free the scratch space of a published video (its chunks); returns how many."""
    locations = locations_for(credentials_block)
    for chunk in chunks:
        locations.remove(chunk)
    return len(chunks)


def upscaler_for(job: UpscaleJob) -> Upscaler:
    """One model and one engine per worker process, reused by every batch it runs."""
    model = get_model(job.model, denoise_strength=job.denoise_strength, progress=False)
    key = (model.weights_sha256, job.device, job.engine)
    if key not in _upscalers:
        _upscalers[key] = Upscaler(model.descriptor, settings=job.engine, device=job.device)
    return _upscalers[key]


@task(
    name="upscale-batch",
    task_run_name="batch-{batch.index}",
    **TRANSIENT_RETRIES,
    cache_policy=KeyedBy(parameter="batch", prefix="upscale-batch-"),
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
    with redacting(), locations.scratch_for(target) as staged:
        result = run_batch(
            dataclasses.replace(video, path=locations.readable(video.path)),
            batch,
            upscaler_for(job),
            staged,
            encoder=job.encoder,
            out_size=out_size,
            progress=progress,
        )
        chunk_bytes = staged.stat().st_size
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
