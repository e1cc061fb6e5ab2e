"""A Dask cluster of one worker process per GPU of this machine (the ``local-gpus`` profile).

Several GPUs in one machine are the layout the original Real-ESRGAN video script served
with one process per GPU; Slurm gives each worker job its own ``CUDA_VISIBLE_DEVICES``, and
this does the same without Slurm: worker ``i`` is started (by its Dask nanny) with
``CUDA_VISIBLE_DEVICES`` naming only device ``i``, so it sees one GPU as ``cuda:0``, loads the
model once and keeps it, and advertises the Dask resource ``GPU=1``, so it runs one batch at
a time exactly as a Slurm worker does. dask-cuda's ``LocalCUDACluster`` does the same but
brings a heavy dependency for this one environment variable.

Without GPUs (CI, a laptop) it starts ``n_workers`` (the profile: ``$VSRFLOW_LOCAL_WORKERS``)
CPU worker processes (default 1) with the cores split between them (``OMP_NUM_THREADS``:
torch's intra-op threads; Dask's nanny would otherwise pin every worker to one thread),
which proves the same wiring.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from distributed import Nanny, Scheduler, SpecCluster

_DEV_GPU = re.compile(r"nvidia\d+$")


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs),
    found without initialising CUDA: ``CUDA_VISIBLE_DEVICES`` when set (an entry that is
    not a device, such as ``-1``, ends the list as it does for CUDA), else the NVIDIA
    driver's device list."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        devices = []
        for entry in (e.strip() for e in given.split(",")):
            if not entry or entry.startswith("-"):
                break
            devices.append(entry)
        return devices
    driver = Path("/proc/driver/nvidia/gpus")
    count = len(list(driver.iterdir())) if driver.is_dir() else 0
    if not count and Path("/dev").is_dir():
        count = sum(1 for p in Path("/dev").iterdir() if _DEV_GPU.fullmatch(p.name))
    return [str(i) for i in range(count)]


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, as a container or cgroup sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_environments(n_workers: int = 0) -> list[dict[str, str]]:
    """The environment of each worker process: its GPU and its share of the cores.

    ``n_workers`` (0: one per visible GPU, else 1): with GPUs, at most one worker per GPU
    (the first ``n_workers`` of them); without, that many CPU workers."""
    gpus = visible_gpus()
    if gpus:
        count = min(n_workers, len(gpus)) if n_workers > 0 else len(gpus)
        devices: list[str] = gpus[:count]
    else:
        count = max(n_workers, 1)
        devices = [""] * count  # "": no GPU visible, the engine's "auto" picks the CPU
    threads = str(max(1, cpu_count() // count))
    return [
        {"CUDA_VISIBLE_DEVICES": device, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        for device in devices
    ]


class LocalGPUCluster(SpecCluster):
    """One nanny-managed worker process per GPU (see the module docstring), scheduler in
    this process, everything on 127.0.0.1. ``n_workers``: as for :func:`worker_environments`
    (the profile passes ``$VSRFLOW_LOCAL_WORKERS``).

    ``memory_limit``: per worker, Dask's syntax ("8GB"); 0 = none (Dask's default would be
    RAM x threads / cores, which on a many-core GPU node kills a worker holding a few 4K
    frames)."""

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        resources: dict[str, float] | None = None,
        memory_limit: str | int = 0,
        host: str = "127.0.0.1",
        dashboard_address: str | None = "127.0.0.1:0",
        **kwargs: Any,
    ) -> None:
        workers = {
            f"local-gpu-{i}": {
                "cls": Nanny,
                "options": {
                    "nthreads": 1,
                    "resources": dict(resources or {"GPU": 1}),
                    "env": env,
                    "host": host,
                    "memory_limit": memory_limit,
                    "dashboard_address": None,
                },
            }
            for i, env in enumerate(worker_environments(int(n_workers or 0)))
        }
        scheduler = {
            "cls": Scheduler,
            "options": {"host": host, "dashboard_address": dashboard_address},
        }
        super().__init__(workers=workers, scheduler=scheduler, **kwargs)
