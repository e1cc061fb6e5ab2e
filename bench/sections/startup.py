"""Section 9, "startup": what a user waits for besides the model (issue 11 item 3).

- control flows: wall time of ``import flows.archive`` in a fresh interpreter, and whether
  torch or spandrel came with it (they must not: a watch run lists a bucket every minute);
  the same for ``flows.upscale_video`` (the flow process plans and orchestrates; only the
  processes that run batches load the model);
- the CLI on a short clip: its wall time minus the flow's upscale stage, with Prefect's
  per-run temporary server (``--server temporary``), with the background server's first run
  (it starts the server) and with a later run (it reuses it), all cold (``python -m
  flows.cli``: every run imports Prefect, the flows and torch); then the ``vsrflow`` console
  script's first run (cold, it leaves a warm runner starting) and, once that runner serves,
  later runs (forked from it: :mod:`vsrflow.warm_runner`). In a cold run the model preload
  imports torch beside the flow, so part of that import is inside the upscale stage; the
  warm rows are the fairer "fixed cost", and their wall time is given too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, SHARED, WEIGHTS_NAME
from vsrflow.procmem import proc_status_mb

#: Targets from issue 11: control flow import, CLI fixed cost after the first run.
TARGET_IMPORT_S = 1.5
TARGET_CLI_FIXED_S = 3.0

_IMPORT_PROBE = (
    "import importlib, json, sys, time; t = time.perf_counter(); "
    "importlib.import_module(sys.argv[1]); "
    "print(json.dumps({'seconds': time.perf_counter() - t, "
    "'torch': 'torch' in sys.modules, 'spandrel': 'spandrel' in sys.modules}))"
)


def _import(module: str, home: Path) -> dict[str, Any]:
    """Best of three fresh interpreters importing ``module``: seconds, and whether torch or
    spandrel came with it."""
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", _IMPORT_PROBE, module],
                cwd=REPO,
                env=_env(home),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for _ in range(3)
    ]
    return {
        "seconds": round(min(r["seconds"] for r in runs), 3),
        "imports_torch": any(r["torch"] or r["spandrel"] for r in runs),
    }


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "VSRFLOW_SERVER")}
    env.update(
        PREFECT_HOME=str(home),
        VSRFLOW_MODEL_PATH=str(SHARED / "models"),
        PYTHONPATH=str(REPO),
    )
    return env


#: The cold CLI (imports everything in every run) and the console script's code (a warm
#: runner's child when one serves the environment).
COLD = (sys.executable, "-m", "flows.cli")
LAUNCHER = (sys.executable, "-m", "vsrflow.launch")


def _cli_run(
    clip: Path, out: Path, env: dict[str, str], *extra: str, cli: tuple[str, ...] = COLD
) -> dict[str, float]:
    command = [*cli, "upscale", str(clip), "-o", str(out)]
    command += ["--weights", str(SHARED / "models" / WEIGHTS_NAME), "--no-progress", *extra]
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=out.parent, env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"vsrflow upscale failed: {done.stderr[-2000:]}")
    stages = json.loads(done.stdout)["seconds"]
    return {
        "wall_s": round(wall, 2),
        "upscale_s": round(stages["upscale"], 2),
        "fixed_s": round(wall - stages["upscale"], 2),
    }


def _wait_for_warm_runner(env: dict[str, str], timeout_s: float = 300.0) -> int:
    """The pid of the runner the console script's first run started, once it has done its
    imports."""
    from vsrflow import warm_runner

    paths = warm_runner.runner_paths(env)
    if paths is None:
        raise RuntimeError("no place for a warm runner's socket here")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if paths.log.is_file() and "serving" in paths.log.read_text():
            return int(json.loads(paths.record.read_text())["pid"])
        time.sleep(0.2)
    raise RuntimeError(f"the warm runner did not serve within {timeout_s:.0f} s")


def run_startup(clip: Path, scratch: Path) -> dict[str, Any]:
    control = _import("flows.archive", scratch / "import-home")
    # The floor under it: Prefect's own import, as ``from prefect import flow`` triggers it.
    prefect_floor = _import("prefect.main", scratch / "import-home")
    # What the CLI and a deployment run import: planning and orchestration, no model.
    video = _import("flows.upscale_video", scratch / "import-home")
    home = scratch / "startup-home"
    env = _env(home)
    try:
        temporary = _cli_run(clip, scratch / "startup-temporary.mp4", env, "--server", "temporary")
        first = _cli_run(clip, scratch / "startup-first.mp4", env)
        later = _cli_run(clip, scratch / "startup-later.mp4", env)
        launcher_first = _cli_run(clip, scratch / "startup-launch.mp4", env, cli=LAUNCHER)
        runner = _wait_for_warm_runner(env)
        warm = min(
            (_cli_run(clip, scratch / f"startup-warm{i}.mp4", env, cli=LAUNCHER) for i in (1, 2)),
            key=lambda run: run["fixed_s"],
        )
        # What an idle runner holds (its children share these pages until they write them).
        runner_rss_mb = round(proc_status_mb("VmRSS", runner), 1)
    finally:
        subprocess.run(
            [sys.executable, "-m", "flows.cli", "server", "stop"],
            cwd=REPO,
            env=env,
            capture_output=True,
            check=False,
        )
    return {
        "control_flow_import_s": control["seconds"],
        "control_flow_imports_torch": control["imports_torch"],
        "prefect_import_s": prefect_floor["seconds"],
        "video_flow_import_s": video["seconds"],
        "video_flow_imports_torch": video["imports_torch"],
        "cli_temporary_server": temporary,
        "cli_background_first": first,
        "cli_background_later": later,
        "cli_launcher_first": launcher_first,
        "cli_warm_runner": warm,
        "warm_runner_idle_rss_mb": runner_rss_mb,
        "targets": {"import_s": TARGET_IMPORT_S, "cli_fixed_s": TARGET_CLI_FIXED_S},
    }
