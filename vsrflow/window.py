"""How many batches a flow keeps in flight: a window sized by the cluster's worker slots.

Submitting every batch of a film at once makes the flow process hold one future, one task
run, one serialised copy of the run context and one result per batch until the end (a
2-hour film in 1,800 batches grew the flow to 3.4 GB), and gains nothing: a worker runs one
batch per slot. The flow therefore keeps at most :data:`WINDOW_PER_SLOT` batches in flight
per worker slot and submits the next one as each finishes, so its memory depends on the
cluster's size, not on the film's length.

Two per slot: the batch running plus one queued behind it, so a worker that finishes never
waits for the flow to notice and submit (no idle gap between batches), while a worker lost
mid-run strands at most two batches on it. The slots are read again each time a batch
finishes, so a cluster that scales adaptively (Slurm jobs arriving) gets more batches as it
grows; and since Dask's adaptive target is bounded by the tasks it sees, a window that
grows with the workers lets scaling double up to its maximum instead of stalling.

Framework-free: the flow passes worker descriptions in (Dask's ``scheduler_info()``
shape); nothing here imports Dask or Prefect.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Batches in flight per worker slot (see the module docstring).
WINDOW_PER_SLOT = 2


def worker_slots(
    workers: Iterable[Mapping[str, Any]], batch_resources: Mapping[str, float] | None = None
) -> int:
    """Batches the workers can run at once.

    ``workers``: Dask worker descriptions (``scheduler_info()["workers"].values()``: each
    with ``nthreads`` and ``resources``). With batch resources (``{"GPU": 1}``) a worker
    runs as many batches as its resources allow (one per GPU), whatever its threads; without
    them, one per thread.
    """
    total = 0
    for worker in workers:
        if batch_resources:
            have = worker.get("resources") or {}
            total += min(
                math.floor(float(have.get(name, 0)) / need) if need > 0 else 0
                for name, need in batch_resources.items()
            )
        else:
            total += int(worker.get("nthreads") or 0)
    return total


def window_size(slots: int, per_slot: int = WINDOW_PER_SLOT) -> int:
    """Batches to keep in flight for ``slots`` worker slots. With no worker yet (Slurm jobs
    still pending) as for one slot: a few batches must be queued for adaptive scaling to
    ask for workers at all."""
    return per_slot * max(slots, 1)


@dataclass
class WindowLog:
    """What the window did during one run, small and independent of the batch count.

    ``peaks[slots]``: the most batches in flight right after a submission while the cluster
    had ``slots`` slots (what tests and benchmarks check against ``window_size(slots)``);
    ``submitted``: batch tasks submitted in all (resubmissions included)."""

    per_slot: int = WINDOW_PER_SLOT
    peaks: dict[int, int] = field(default_factory=dict)
    submitted: int = 0

    def record(self, slots: int, in_flight: int) -> None:
        self.submitted += 1
        self.peaks[slots] = max(self.peaks.get(slots, 0), in_flight)

    @property
    def max_in_flight(self) -> int:
        return max(self.peaks.values(), default=0)

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the run result and the manifest-free summary (keys as strings)."""
        return {
            "per_slot": self.per_slot,
            "submitted": self.submitted,
            "max_in_flight": self.max_in_flight,
            "peaks": {str(k): v for k, v in sorted(self.peaks.items())},
        }
