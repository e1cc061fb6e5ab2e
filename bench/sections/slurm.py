"""Section 6, "slurm": the user's command with ``--profile slurm`` on the local single-node
Slurm and one Prefect server, with 1 and then 2 worker jobs (skipped with a reason where Slurm
is not available). Kept apart: it is the only section that needs services outside this
process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, SHARED, WEIGHTS_NAME


def _squeue(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %T %j"], env=env, capture_output=True, text=True, check=False
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


def run_slurm(clip: Path, frames: int, scratch: Path) -> dict[str, Any]:
    """The user's command with ``--profile slurm`` against the local single-node Slurm and one
    Prefect server (the environment tests/test_cluster.py uses: 1 core per worker job), first
    with 1 worker job, then 2. The same clip, cut into 4 batches so 2 workers can share them."""
    if shutil.which("sbatch") is None:
        return {"skipped": "sbatch not found: Slurm is not installed here"}
    sys.path.insert(0, str(REPO / "tests"))
    import infra

    try:
        base = {**os.environ, **infra.ensure_slurm(), **infra.ensure_prefect()}
    except infra.InfraUnavailable as exc:
        return {"skipped": f"Slurm is not available here: {str(exc).splitlines()[0]}"}
    except (infra.InfraError, subprocess.TimeoutExpired) as exc:
        return {"skipped": f"Slurm or the Prefect server did not start: {str(exc)[:300]}"}
    base.pop("PREFECT_HOME", None)  # the real server, never a temporary one
    logs = scratch / "slurm-logs"
    logs.mkdir(exist_ok=True)
    base.update(
        VSRFLOW_SLURM_CORES="1",
        VSRFLOW_SLURM_MEMORY="3GB",
        VSRFLOW_SLURM_WALLTIME="00:20:00",
        VSRFLOW_SCHEDULER_HOST="127.0.0.1",
        VSRFLOW_DASHBOARD_ADDRESS="127.0.0.1:0",
        VSRFLOW_SLURM_LOG_DIR=str(logs),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    waited = 0
    while _squeue(base) and waited < 180:  # somebody else's jobs hold the node: wait a bit
        time.sleep(2)
        waited += 2
    foreign_jobs = _squeue(base)
    batch_frames = max(1, frames // 4)
    runs: dict[str, Any] = {}
    for workers in (1, 2):
        env = {
            **base,
            "VSRFLOW_SLURM_MIN_JOBS": str(workers),
            "VSRFLOW_SLURM_MAX_JOBS": str(workers),
        }
        out = scratch / f"slurm-{workers}" / "out.mp4"
        cmd = [
            sys.executable, "-m", "flows.cli", "upscale", str(clip), "-o", str(out),
            "--model", str(SHARED / "models" / WEIGHTS_NAME), "--profile", "slurm",
            "--batch-frames", str(batch_frames), "--work-dir", str(out.parent / "work"),
            "--no-progress",
        ]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(
            cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900, check=False
        )
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            runs[str(workers)] = {"error": proc.stderr[-1500:]}
            print(f"  slurm: {workers} worker(s) FAILED", flush=True)
            continue
        summary = json.loads(proc.stdout[proc.stdout.index("{") :])
        busy: dict[str, float] = {}
        for b in summary["batch_results"]:
            worker = f"{b['host']}/{b['slurm_job_id']}"
            busy[worker] = busy.get(worker, 0.0) + b["seconds_total"]
        runs[str(workers)] = {
            "wall_s": round(wall, 2),
            "upscale_stage_s": summary["seconds"].get("upscale"),
            "flow_seconds": summary["seconds"],
            "workers_seen": summary.get("workers"),
            "batches": summary.get("batches"),
            "model_seconds_per_batch": [
                round(b["seconds_model"], 2) for b in summary["batch_results"]
            ],
            # Seconds each worker spent inside batches; the rest of the upscale stage is Slurm
            # job start, worker start-up (imports, model load) and scheduling.
            "busiest_worker_s": round(max(busy.values()), 2),
        }
        print(f"  slurm: {workers} worker(s): {wall:.1f} s", flush=True)
        deadline = time.monotonic() + 60
        while _squeue(base) and time.monotonic() < deadline:  # let the jobs end
            time.sleep(1)
    result: dict[str, Any] = {
        "frames": frames,
        "batch_frames": batch_frames,
        "cores_per_worker_job": 1,
        "waited_for_foreign_jobs_s": waited,
        "foreign_jobs_at_start": foreign_jobs,
        "runs": runs,
    }
    one, two = runs.get("1", {}), runs.get("2", {})
    if "wall_s" in one and "wall_s" in two:
        result["speedup_wall"] = round(one["wall_s"] / two["wall_s"], 2)
        result["speedup_upscale_stage"] = round(one["upscale_stage_s"] / two["upscale_stage_s"], 2)
        result["speedup_busiest_worker"] = round(
            one["busiest_worker_s"] / two["busiest_worker_s"], 2
        )
    return result
