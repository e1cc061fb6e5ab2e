"""The batch stage of upscale-video: a bounded window of batch tasks over the profile's cluster.

:func:`upscale_batches` runs inside the upscale-video flow run, over the task runner the flow
opened for the compute profile (its batch tasks are the flow run's own, no subflow: a
subflow cost a second flow run's creation, state changes and heartbeat thread, 0.5-1.5 s of
every run). It keeps at most :data:`vsrflow.window.WINDOW_PER_SLOT` batches in flight per
worker slot (re-read from the Dask scheduler each time a batch finishes, so adaptive scaling
still fills up), takes each batch's result as it finishes, keeps a :class:`BatchRecord` of it
and drops the future; the flow process therefore holds a window of futures, not one per
batch. Cache keys, result storage and the chunk check are those of ``tasks.upscale``: a
rerun recomputes exactly the batches that have no chunk and cache record.
"""

from __future__ import annotations

import collections
import contextlib
import posixpath
import queue
import re
from typing import Any
from uuid import UUID

import dask
from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.utilities.callables import get_call_parameters
from prefect_dask import DaskTaskRunner

from tasks.artifacts import report_progress
from tasks.storage import locations_for, result_storage_for
from tasks.upscale import check_cached_chunk, upscale_batch
from vsrflow.chunks import ChunkProblem
from vsrflow.job import JobPlan, UpscaleJob
from vsrflow.plan import Batch
from vsrflow.report import BatchCounts
from vsrflow.results import BatchOutcome, BatchRecord, BatchResult
from vsrflow.window import WindowLog, window_size, worker_slots

#: How often the flow resubmits a batch whose worker died (scancel, node failure, OOM kill).
#: Task retries cover exceptions inside a task; a lost worker never reports back, so the
#: flow notices through the Dask future and submits the batch again.
WORKER_LOSS_RESUBMITS = 3
_WORKER_LOSS = ("KilledWorker", "CancelledError", "FutureCancelledError", "CommClosedError")


def _is_worker_loss(exc: BaseException) -> bool:
    return type(exc).__name__ in _WORKER_LOSS


#: Prefect's key for a persisted exception: a random uuid4 hex (cache records are named
#: ``upscale-batch-<key>``, never this).
_FAILURE_KEY = re.compile(r"[0-9a-f]{32}")


def _drop_failure_record(
    future: PrefectFuture[BatchResult], work_dir: str, credentials_block: str | None
) -> None:
    """Remove the exception record of a batch that failed for good.

    With persisted results Prefect writes a final failure's exception beside the cache
    records, under a random key (``<work_dir>/results/<uuid hex>``) that no rerun and no
    clean-up can find again: left there, it outlives the job that a later run publishes. The
    flow already holds the exception when it gets here, so nothing needs the record."""
    with contextlib.suppress(Exception):  # best effort: the batch's error is what matters
        data = getattr(future.state, "data", None)
        key = getattr(getattr(data, "metadata", data), "storage_key", None)
        name = posixpath.basename(str(key or "").replace("\\", "/"))
        if _FAILURE_KEY.fullmatch(name):
            locations = locations_for(credentials_block)
            locations.remove(locations.join(work_dir, "results", name))


def _cluster_slots(runner: DaskTaskRunner, batch_resources: dict[str, float]) -> int | None:
    """Batch slots of the Dask cluster behind ``runner`` (None: unknown)."""
    client = getattr(runner, "client", None)
    if client is None:
        return None
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
    except Exception:  # the scheduler is busy or going away: keep the last known count
        return None
    return worker_slots(workers, batch_resources)


def _forget_result(result: BatchResult) -> None:
    """Drop Prefect's dependency links to a finished batch's result.

    Prefect maps the id of every task result (and of each of its fields) to the task's
    state in ``FlowRunContext.run_results``, to find upstream tasks when a result is passed
    to another task; that map lives as long as the flow run. Batch results are never passed
    on (assembly gets :class:`BatchRecord` copies), so their entries would only grow it."""
    context = FlowRunContext.get()
    if context is None:
        return
    for value in (result, *vars(result).values()):
        context.run_results.pop(id(value), None)


def upscale_batches(
    runner: DaskTaskRunner,
    plan: JobPlan,
    job: UpscaleJob,
    work_dir: str,
    credentials_block: str | None = None,
    batch_resources: dict[str, float] | None = None,
    progress_artifact_id: UUID | None = None,
) -> BatchOutcome:
    """Run every batch through ``runner`` (the profile's, started by the calling flow run), a
    window at a time; count cached vs computed batches and update the progress artifact
    ``progress_artifact_id`` (if given) as each one finishes.

    A batch whose chunk planning did not find is recomputed even if a cache record exists
    (a record without its chunk must not be trusted)."""
    logger = get_run_logger()
    resources = dict(batch_resources or {})
    task = upscale_batch.with_options(
        result_storage=result_storage_for(work_dir, credentials_block)
    )
    finished: queue.SimpleQueue[PrefectFuture[BatchResult]] = queue.SimpleQueue()
    in_flight: dict[PrefectFuture[BatchResult], Batch] = {}
    # Batches not submitted yet, in order; a resubmitted batch goes back to the front.
    waiting: collections.deque[tuple[Batch, bool]] = collections.deque(
        (b, b.index not in plan.present_chunks) for b in plan.batches
    )
    records: dict[int, BatchRecord] = {}
    resubmits: dict[int, int] = {}
    bad_chunks: list[ChunkProblem] = []
    cached = 0
    log = WindowLog()
    slots = 0

    def submit(batch: Batch, refresh: bool) -> None:
        batch_task = task.with_options(refresh_cache=True) if refresh else task
        arguments = (plan.video, batch, job, plan.out_size, work_dir, credentials_block)
        with dask.annotate(resources=resources):
            future = runner.submit(batch_task, get_call_parameters(task.fn, arguments, {}))
        in_flight[future] = batch
        future.add_done_callback(finished.put)
        log.record(slots, len(in_flight))

    def fill() -> None:
        nonlocal slots
        known = _cluster_slots(runner, resources)
        slots = slots if known is None else known
        while waiting and len(in_flight) < window_size(slots, log.per_slot):
            submit(*waiting.popleft())

    fill()
    while in_flight:
        future = finished.get()
        batch = in_flight.pop(future)
        try:
            result = future.result()
            if future.state.name == "Cached":
                problem = check_cached_chunk(result, credentials_block)
                if problem is not None:  # never trusted: recomputed, named in the summary
                    logger.warning("recomputing %s", problem.describe())
                    bad_chunks.append(problem)
                    waiting.appendleft((batch, True))
                    fill()
                    continue
                cached += 1
            records[batch.index] = BatchRecord.of(result)
            _forget_result(result)
        except Exception as exc:
            lost = resubmits.get(batch.index, 0)
            if not _is_worker_loss(exc) or lost >= WORKER_LOSS_RESUBMITS:
                _drop_failure_record(future, work_dir, credentials_block)
                raise
            resubmits[batch.index] = lost + 1
            logger.warning(
                "batch %d lost its worker (%s); resubmitting", batch.index, type(exc).__name__
            )
            waiting.appendleft((batch, True))
        fill()
        if progress_artifact_id is not None and batch.index in records:
            counts = BatchCounts(len(records), len(plan.batches), cached, sum(resubmits.values()))
            report_progress(progress_artifact_id, counts)
    window: dict[str, Any] = log.as_dict()
    logger.info("submission window: %s", window)
    ordered = tuple(records[b.index] for b in plan.batches)
    return BatchOutcome(
        ordered,
        cached,
        len(ordered) - cached,
        sum(resubmits.values()),
        tuple(p.describe() for p in bad_chunks),
        window,
    )
