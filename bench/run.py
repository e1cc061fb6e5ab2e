#!/usr/bin/env python
"""vsrflow performance benchmark: is the pipeline as fast as the model it wraps, and if not, why?

    python bench/run.py              # full run (about 10-14 min on 2 CPU cores)
    python bench/run.py --quick      # smaller inputs, fewer rounds (about 5 min)
    python bench/run.py --no-slurm   # skip the Slurm part
    python bench/run.py --only sweeps,core --results-dir /tmp/b   # some sections only
    python bench/run.py --only feature --feature-films-only --merge   # section 10's films

Everything is measured IN ONE RUN on the SAME frames (a real clip from the shared data, cut to
320x180 so frames resemble SD video), because numbers taken on different days, clips or machine
loads cannot be compared:

1. the pure model forward (frames already in memory as tensors; the pipeline's precision,
   micro-batch and tiles) vs the engine (uint8 in, uint8 out) vs ``vsrflow.pipeline.
   upscale_batch`` (decode, model and encode overlapped) vs the whole Prefect flow
   ``flows.upscale_video.upscale_video`` on the local profile, with Prefect's one-off
   temporary-server startup measured separately by a warm-up flow run;
2. a naive baseline (PNG folders, one fp32 frame at a time, re-encode at the nominal rate),
   the way most upscaling scripts work, for time and peak scratch disk;
3. peak scratch disk / output size, and worker peak RSS for a short vs a 10x longer input,
   each in its own process (streaming means the peak must not grow with the length);
4. sweeps of precision, channels_last, micro-batch, tiles and torch.compile with the fidelity
   bounds the test suite uses (fp32 paths within 2/255 of a plain forward; bf16 >= 45 dB PSNR),
   checking that the ``EngineSettings()`` defaults are the fastest settings within them; and an
   A/B of ``vsrflow.engine.tune_cpu_allocator`` (per process, so in two child processes);
5. per-task orchestration overhead of Prefect + the local Dask task runner;
6. 1 vs 2 Slurm workers on the local single-node Slurm (skipped with a reason if unavailable);
9. start-up: control flow import time (without torch), and the CLI's wall time minus its upscale
   stage with a temporary Prefect server per run vs the background server it starts once;
10. a feature-length film (2 hours at 32x18; 30 minutes with --quick) and a quarter of it
   through the CLI: flow-process peak RSS (must not grow with the length), batches, window,
   frames exact;
11. worker memory: a worker's peak RSS against a plain decode -> forward -> encode loop's at
   the same settings (640x272 x4; the peer's fp32 one frame per pass, and the defaults).

The machine may be shared: other processes can take CPU while we measure. Each timed run
therefore records the share of the machine's CPU used by processes OUTSIDE our process tree
(/proc/stat minus our tree's CPU), variants are timed in interleaved rounds (best and median
reported; the best is the least disturbed), and CPU seconds per frame are reported beside wall
time. Results: a table on stdout, ``bench/results/results.json``, ``results.md`` and
``plot.png`` (drawn with Pillow; matplotlib is not a dependency).

This file is the entry point only: it parses the command line, prepares the inputs, runs the
sections in order and writes the reports, and it is what child processes run (``--worker
KIND ...``). The measuring lives in ``bench/common.py`` and ``bench/rig.py``, each section in
``bench/sections/<name>.py``, the table, JSON and plot in ``bench/report.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/, not the repo, on sys.path
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402  (needs REPO on sys.path)
    BENCH_BOX,
    BENCH_SOURCE,
    FULL,
    QUICK,
    SHARED,
    WEIGHTS_NAME,
    get_weights,
    load_frames,
    make_clip,
    prepare_environment,
)
from bench.report import machine_info, write_reports  # noqa: E402
from bench.sections.alloc import run_alloc_ab, worker_alloc  # noqa: E402
from bench.sections.baseline import run_baseline  # noqa: E402
from bench.sections.encoder import run_encoders  # noqa: E402
from bench.sections.feature import run_feature  # noqa: E402
from bench.sections.orchestration import run_orchestration  # noqa: E402
from bench.sections.rss import run_rss, worker_rss  # noqa: E402
from bench.sections.slurm import run_slurm  # noqa: E402
from bench.sections.speed import run_speed  # noqa: E402
from bench.sections.startup import run_startup  # noqa: E402
from bench.sections.sweeps import run_sweeps, worker_compile_cold  # noqa: E402
from bench.sections.workermem import run_workermem, worker_pipeline, worker_plain  # noqa: E402

SECTIONS = (
    "sweeps", "alloc", "core", "flow", "encoder", "baseline", "rss", "orchestration", "slurm",
    "startup", "feature", "workermem",
)  # fmt: skip
#: "core" (model / engine / pipeline) and "flow" are timed together, in the same rounds.
_RUN_ORDER = (
    "sweeps", "alloc", "speed", "encoder", "baseline", "rss", "orchestration", "slurm",
    "startup", "feature", "workermem",
)  # fmt: skip


def merge_earlier(results: dict[str, Any], earlier_path: Path) -> None:
    """Add the sections of an earlier results.json that ``results`` lacks, each labelled
    with the run it was measured in (``merged_sections``: section -> that run); likewise
    section 10's 320x180 run when this one measured the films only (``measured_in``)."""
    if not earlier_path.is_file():
        return
    earlier = json.loads(earlier_path.read_text())
    labels = earlier.get("merged_sections", {})
    merged: dict[str, str] = {}
    for key in SECTIONS:
        if key in earlier and key not in results:
            results[key] = earlier[key]
            merged[key] = labels.get(key, f"{earlier['mode']} run of {earlier['started']}")
    results["merged_sections"] = merged
    feature, earlier_feature = results.get("feature", {}), earlier.get("feature", {})
    if "sd" not in feature and "runs" in feature and "sd" in earlier_feature:
        origin = labels.get("feature", f"{earlier['mode']} run of {earlier['started']}")
        feature["sd"] = {"measured_in": origin, **earlier_feature["sd"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer rounds")
    parser.add_argument("--no-slurm", action="store_true", help="skip Slurm 1 vs 2 workers")
    parser.add_argument("--only", help=f"comma-separated sections of: {','.join(SECTIONS)}")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the sections of the results dir's earlier run that this run does not measure "
        "(each section's ratios still come from one run; the report names each section's run)",
    )
    parser.add_argument(
        "--feature-films-only",
        action="store_true",
        help="section 10 without its 320x180 orchestration run; with --merge the earlier "
        "run's is kept, labelled as such",
    )
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker
        if kind == "alloc":
            print(json.dumps(worker_alloc(Path(rest[0]), int(rest[1]))))
        elif kind == "compile-cold":
            print(json.dumps(worker_compile_cold(Path(rest[0]))))
        elif kind == "rss":
            print(json.dumps(worker_rss(Path(rest[0]), Path(rest[1]))))
        elif kind in ("mem-plain", "mem-pipeline"):
            child = worker_plain if kind == "mem-plain" else worker_pipeline
            print(json.dumps(child(Path(rest[0]), Path(rest[1]), rest[2], int(rest[3]))))
        return 0
    if not (SHARED / "models" / WEIGHTS_NAME).exists():
        print(f"bench: shared data not found in {SHARED} (set VSRFLOW_SHARED_DIR)", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    wanted = set(args.only.split(",")) if args.only else set(SECTIONS)
    if unknown := wanted - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="vsrflow-bench-"))
    removed = prepare_environment(scratch)
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_info(),
        "sizes": dataclasses.asdict(sizes),
        "environment_removed": removed,
    }
    try:
        source = SHARED / "media" / BENCH_SOURCE
        clip = make_clip(source, scratch / "bench-clip.mp4", sizes.frames, BENCH_BOX)
        warm_clip = make_clip(source, scratch / "warm-clip.mp4", 8, BENCH_BOX)
        results["clip"] = {
            "source": BENCH_SOURCE,
            "crop_xywh": list(BENCH_BOX),
            "frames": sizes.frames,
            "fps": 25,
            "output_wh": [BENCH_BOX[2] * 4, BENCH_BOX[3] * 4],
        }
        frames = load_frames(clip)
        model = get_weights()
        jobs: dict[str, Callable[[], dict[str, Any]]] = {
            "sweeps": lambda: run_sweeps(model, clip, frames, sizes, args.quick),
            "alloc": lambda: run_alloc_ab(clip, sizes),
            "speed": lambda: run_speed(
                model, clip, warm_clip, frames, sizes, scratch, "flow" in wanted
            ),
            "encoder": lambda: run_encoders(model, clip, frames, sizes, scratch),
            "baseline": lambda: run_baseline(model, clip, scratch),
            "rss": lambda: run_rss(sizes, scratch),
            "orchestration": lambda: run_orchestration(sizes.tasks, scratch),
            "slurm": lambda: run_slurm(clip, sizes.frames, scratch),
            "startup": lambda: run_startup(warm_clip, scratch),
            "feature": lambda: run_feature(scratch, args.quick, sd=not args.feature_films_only),
            "workermem": lambda: run_workermem(scratch, args.quick),
        }
        for name in _RUN_ORDER:
            keys = ["core", "flow"] if name == "speed" else [name]
            keys = [k for k in keys if k in wanted]
            if not keys:
                continue
            if name == "slurm" and args.no_slurm:
                results[name] = {"skipped": "--no-slurm"}
                continue
            print(f"[{time.perf_counter() - started:5.0f} s] {'+'.join(keys)}", flush=True)
            try:
                outcome = jobs[name]()
                results.update(outcome if name == "speed" else {name: outcome})
            except Exception as exc:  # one broken section must not lose the others
                for key in keys:
                    results[key] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.merge:
        merge_earlier(results, args.results_dir / "results.json")
    print("\n" + write_reports(results, args.results_dir))
    print(f"\nsaved {args.results_dir}/results.json, results.md, plot.png")
    return 1 if any(isinstance(v, dict) and "error" in v for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
