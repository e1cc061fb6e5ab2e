"""The shared Prefect server (scripts/prefect) with a real server: health, and a flow run in
another process that reports to it (no temporary server of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import infra
import pytest

FLOW = """
import sys
from prefect import flow
from prefect.runtime import flow_run

@flow(name=sys.argv[1])
def smoke(x: int) -> int:
    print("FLOW_RUN_ID", flow_run.get_id(), flush=True)
    return x + 1

assert smoke(41) == 42
"""


@pytest.fixture(scope="module")
def prefect_env() -> dict[str, str]:
    return infra.ensure_prefect()


def api_get(env: dict[str, str], path: str):
    with urllib.request.urlopen(env["PREFECT_API_URL"] + path, timeout=10) as resp:
        assert resp.status == 200
        return json.load(resp)


def test_health(prefect_env: dict[str, str]) -> None:
    assert prefect_env["PREFECT_API_URL"].startswith("http://127.0.0.1:")
    assert prefect_env["PREFECT_API_URL"].endswith("/api")
    assert api_get(prefect_env, "/health") is True


def test_flow_run_in_subprocess_completes_on_the_server(
    prefect_env: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "smoke_flow.py"
    script.write_text(FLOW)
    name = f"vsrflow-infra-smoke-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **prefect_env,
        "PREFECT_HOME": str(tmp_path / "client-home"),  # keep ~/.prefect untouched
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), name],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "temporary server" not in output.lower(), output  # it used ours
    run_id = next(
        line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FLOW_RUN_ID")
    )
    flow_run = api_get(prefect_env, f"/flow_runs/{run_id}")
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    flow = api_get(prefect_env, f"/flows/{flow_run['flow_id']}")
    assert flow["name"] == name
    assert time.monotonic() - t0 < 180


def test_start_is_idempotent(prefect_env: dict[str, str]) -> None:
    t0 = time.monotonic()
    again = infra.start("prefect")
    assert again.status == "already running"
    assert again.env == prefect_env
    assert time.monotonic() - t0 < 10
