"""Section 5, "orchestration": Prefect + the local Dask task runner's overhead per task,
measured on trivial tasks submitted the way the flow submits its batches."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import timed, warm_up_prefect


def run_orchestration(n_tasks: int, scratch: Path) -> dict[str, Any]:
    """``n_tasks`` trivial tasks submitted the way ``upscale_batches`` submits batches (all at
    once, then waited on) through the local profile's DaskTaskRunner, with the batch task's
    options: retries, a key-based cache policy, results persisted to local storage. Each task's
    "model" is a 1x identity (a copy of one 320x180 frame), timed inside the task; overhead per
    task = (time from first submit to last result - summed work) / tasks."""
    from prefect import flow, task
    from prefect.cache_policies import CachePolicy
    from prefect.futures import wait

    from deployments.profiles import get_profile

    server_s = warm_up_prefect()  # no-op if the flow section already started the server
    frame = np.zeros((180, 320, 3), np.uint8)

    @dataclass
    class KeyPolicy(CachePolicy):
        def compute_key(
            self,
            task_ctx: Any,
            inputs: dict[str, Any],
            flow_parameters: dict[str, Any],
            **kwargs: Any,
        ) -> str | None:
            return f"bench-{inputs['token']}-{inputs['index']}"

    @task(
        name="bench-trivial-batch",
        retries=2,
        retry_delay_seconds=2,
        cache_policy=KeyPolicy(),
        persist_result=True,
        result_storage=scratch / "orchestration-results",
    )
    def trivial_batch(index: int, token: str) -> float:
        t = time.perf_counter()
        frame.copy()
        return time.perf_counter() - t

    @flow(name="bench-orchestration")
    def many(n: int, token: str) -> dict[str, float]:
        t = time.perf_counter()
        futures = [trivial_batch.submit(i, token) for i in range(n)]
        wait(futures)
        work = sum(f.result() for f in futures)
        return {"task_phase_s": time.perf_counter() - t, "work_s": work}

    runner = get_profile("local").make_task_runner()
    sample, result = timed(lambda: many.with_options(task_runner=runner)(n_tasks, uuid.uuid4().hex))
    return {
        "tasks": n_tasks,
        "server_warmup_s": round(server_s, 2),
        "total_s": round(sample.wall, 2),
        "task_phase_s": round(result["task_phase_s"], 2),
        "work_s": round(result["work_s"], 4),
        "overhead_s_per_task": round((result["task_phase_s"] - result["work_s"]) / n_tasks, 4),
        "overhead_s_per_task_incl_flow_and_cluster_start": round(
            (sample.wall - result["work_s"]) / n_tasks, 4
        ),
        "cpu_s_per_task": round(sample.cpu / n_tasks, 4),
        "foreign_cpu_share": round(sample.foreign_share, 2),
    }
