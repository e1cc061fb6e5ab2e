"""Fault injection for the tests, kept out of the product code.

A fault wraps ``vsrflow.pipeline.upscale_batch`` (the core function the upscale-batch task
calls) so that chosen batches fail once: ``fail`` raises inside the task (proves task
retries), ``crash`` kills the worker process outright as an OOM kill or a node failure would
(proves the flow's recovery from lost workers / Dask's KilledWorker). Each fault fires once
per batch key: a marker file in ``marker_dir`` records that it fired (and lets the test check
that it really did).

In-process (the local profile runs batches in threads): :func:`install` with pytest's
monkeypatch. In other processes (Slurm workers): put ``tests/fault_hooks`` on PYTHONPATH and
set the variables of :func:`subprocess_env`; its ``sitecustomize`` installs the same wrapper
when each Python process starts.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

HOOKS_DIR = Path(__file__).with_name("fault_hooks")
KIND_ENV = "VSRFLOW_TEST_FAULT"
BATCHES_ENV = "VSRFLOW_TEST_FAULT_BATCHES"
MARKERS_ENV = "VSRFLOW_TEST_FAULT_MARKERS"
#: Where the unwrapped function stays reachable by name while a fault is installed.
UNWRAPPED = "_unwrapped_upscale_batch"


def faulty(module: str, original: str, kind: str, batches: set[int], marker_dir: Path) -> Any:
    """The function ``module.original`` wrapped so that each batch in ``batches`` fails once
    with ``kind``.

    The wrapper holds the *name* of the unwrapped function, not the function: Dask pickles
    task code by value, and a function found under another name than its own would travel by
    value too, with private copies of its module's globals (the pipeline's queue sentinel
    then no longer matches). Looked up in the process that runs the batch, it is that
    process's own function."""

    def wrapper(video: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        marker = marker_dir / f"{batch.key}.{kind}.json"
        if batch.index in batches and not marker.exists():
            marker_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"batch": batch.index, "fault": kind}))
            if kind == "crash":
                os._exit(70)
            raise RuntimeError(f"injected failure of batch {batch.index}")
        unwrapped = getattr(importlib.import_module(module), original)
        return unwrapped(video, batch, *args, **kwargs)

    return wrapper


def install(monkeypatch: Any, kind: str, batches: set[int], marker_dir: Path) -> None:
    """Make ``batches`` fail once in this process (the task module's reference is patched)."""
    import tasks.upscale

    monkeypatch.setattr(tasks.upscale, UNWRAPPED, tasks.upscale.run_batch, raising=False)
    wrapper = faulty("tasks.upscale", UNWRAPPED, kind, batches, marker_dir)
    monkeypatch.setattr(tasks.upscale, "run_batch", wrapper)


def subprocess_env(kind: str, batches: set[int], marker_dir: Path) -> dict[str, str]:
    """Environment that makes every Python process started with it inject the fault."""
    path = os.pathsep.join(p for p in (str(HOOKS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": path,
        KIND_ENV: kind,
        BATCHES_ENV: ",".join(str(b) for b in sorted(batches)),
        MARKERS_ENV: str(marker_dir),
    }
