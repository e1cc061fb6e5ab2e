"""Section "alloc" (reported with the sweeps, part 4): an A/B of
``vsrflow.engine.tune_cpu_allocator``. The tuning is process-wide and one-way, so each side
runs in a fresh child process (``--worker alloc``), with the model in the main thread and in a
thread that already owns a malloc arena (as a Dask worker thread does)."""

from __future__ import annotations

import statistics
import threading
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Sizes,
    get_weights,
    load_frames,
    per_frame,
    run_child,
    timed,
)
from vsrflow.procmem import proc_status_mb


def worker_alloc(clip: Path, count: int) -> dict[str, Any]:
    """Child: engine speed, CPU split and page faults under the inherited environment, with the
    model in the main thread (the CLI, the pipeline called directly) and in a thread that had
    already allocated before (a Dask worker thread: glibc gave it its own malloc arena, whose
    heaps glibc unmaps once they are completely free, so the tuning helps less there)."""
    import resource

    from vsrflow.engine import EngineSettings, Upscaler, tune_cpu_allocator

    frames = load_frames(clip, count)
    upscaler = Upscaler(get_weights().descriptor, settings=EngineSettings(), device="cpu")
    result: dict[str, Any] = {"tuned": tune_cpu_allocator()}

    def measure(where: str) -> None:
        _arena = [np.ones(4096) for _ in range(64)]  # this thread now owns a malloc arena
        upscaler.upscale(frames)
        samples, faults = [], []
        for _ in range(3):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            samples.append(timed(lambda: upscaler.upscale(frames))[0])
            faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / count)
        result[where] = {
            **per_frame(samples, count),
            "system_s_per_frame": round(statistics.median(s.system / count for s in samples), 4),
            "minor_faults_per_frame": round(statistics.median(faults)),
        }

    measure("main_thread")
    thread = threading.Thread(target=measure, args=("worker_thread",))
    thread.start()
    thread.join()
    result["peak_rss_mb"] = round(proc_status_mb("VmHWM"))
    return result


def run_alloc_ab(clip: Path, sizes: Sizes) -> dict[str, Any]:
    """``tune_cpu_allocator`` off vs on, in fresh processes (it is process-wide and one-way)."""
    from vsrflow.engine import MALLOC_TUNING_ENV

    count = 16
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(sizes.alloc_pairs):
        for mode in ("off", "on"):
            env = {MALLOC_TUNING_ENV: "1" if mode == "on" else "0"}
            runs[mode].append(run_child(["--worker", "alloc", str(clip), str(count)], env))
    summary: dict[str, Any] = {"frames": count}
    for mode, results in runs.items():
        summary[mode] = {"tuned": results[0]["tuned"], "peak_rss_mb": results[0]["peak_rss_mb"]}
        for where in ("main_thread", "worker_thread"):
            keys = results[0][where]
            merged = {k: statistics.median([r[where][k] for r in results]) for k in keys}
            merged["best_s_per_frame"] = min(r[where]["best_s_per_frame"] for r in results)
            summary[mode][where] = merged
    for where in ("main_thread", "worker_thread"):
        off, on = summary["off"][where]["cpu_s_per_frame"], summary["on"][where]["cpu_s_per_frame"]
        summary[f"cpu_saving_{where}"] = round(1 - on / off, 3)
    return summary
