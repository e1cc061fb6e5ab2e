"""Shared by the deployment tests: the environment a user's shell would have, one
``deployments/setup.sh`` per session (pool, queues, limit, ``prefect deploy --all``), a real
``prefect worker start`` subprocess, tiny distinct clips, and Prefect API helpers.

Everything talks to the one Prefect server and SeaweedFS that ``tests/infra.py`` starts on
127.0.0.1; the pool is the real ``vsrflow-local`` from ``prefect.yaml``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import av
import infra
import media_fixtures as mf

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PREFECT = str(VENV_BIN / "prefect")
POOL = "vsrflow-local"
SHARED = Path(os.environ.get("VSRFLOW_SHARED_DIR", str(REPO.parent / "shared")))
BLOCK = "vsrflow-test-archive-s3"
_SECRETS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "VSRFLOW_S3_ACCESS_KEY",
    "VSRFLOW_S3_SECRET_KEY",
)


def user_env() -> dict[str, str]:
    """What the user's shell has: PREFECT_API_URL, the checkout, the weights, the S3
    endpoint (credentials come from a Prefect block, never from the worker's environment)."""
    env = {**os.environ, **infra.ensure_prefect()}
    env.update(
        {
            "VSRFLOW_REPO": str(REPO),
            "VSRFLOW_MODEL_PATH": str(SHARED / "models"),
            "VSRFLOW_S3_ENDPOINT": infra.ensure_s3()["VSRFLOW_S3_ENDPOINT"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            # Pick up scheduled runs within 2 s (default 10 s) to keep the tests short.
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    for name in _SECRETS:
        env.pop(name, None)
    return env


@functools.cache
def deploy() -> str:
    """``bash deployments/setup.sh`` once per session (it ends with ``prefect --no-prompt
    deploy --all`` from the repo root); returns its output."""
    env = user_env()
    proc = subprocess.run(
        ["bash", "deployments/setup.sh"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"deployments/setup.sh failed ({proc.returncode}):\n{output}")
    return output


@functools.cache
def save_credentials_block() -> str:
    """A prefect-aws AwsCredentials block for the test SeaweedFS (the documented pattern)."""
    s3 = infra.ensure_s3()
    code = (
        "import os, sys\n"
        "from prefect_aws import AwsCredentials\n"
        "from prefect_aws.client_parameters import AwsClientParameters\n"
        "AwsCredentials(aws_access_key_id=os.environ['AWS_ACCESS_KEY_ID'],\n"
        "  aws_secret_access_key=os.environ['AWS_SECRET_ACCESS_KEY'], region_name='us-east-1',\n"
        "  aws_client_parameters=AwsClientParameters(endpoint_url=os.environ[\n"
        "    'VSRFLOW_S3_ENDPOINT'], config={'s3': {'addressing_style': 'path'},\n"
        "    'signature_version': 's3v4'})).save(sys.argv[1], overwrite=True)\n"
    )
    env = {**user_env(), **s3}
    subprocess.run([sys.executable, "-c", code, BLOCK], env=env, check=True, timeout=120)
    return BLOCK


@contextlib.contextmanager
def api() -> Iterator[Any]:
    """A sync Prefect client on the test server (this process keeps its own settings)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: infra.ensure_prefect()["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        yield client


def cancel_leftover_runs() -> int:
    """Cancel runs still waiting in the pool from an earlier, interrupted session, so a new
    worker does not spend the video slot on them."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    live = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
    with api() as client:
        runs = client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[POOL])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=live))
            ),
        )
        for run in runs:
            client.set_flow_run_state(run.id, Cancelled(message="left over"), force=True)
    return len(runs)


class Worker:
    """``prefect worker start --pool vsrflow-local --type process`` in its own session;
    ``stop()`` ends exactly that process group."""

    def __init__(self, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.env = env or user_env()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        cancel_leftover_runs()
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def prefect_cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PREFECT, *args],
        cwd=REPO,
        env=env or user_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def make_clip(path: Path, offset: int, frames: int = 12) -> Path:
    """A tiny distinct h264 clip (64x48, ``frames`` frames at 24 fps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = mf.WIDTH, mf.HEIGHT, "yuv420p"
        for i in range(frames):
            rgb = mf.pattern_rgb(i + offset)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def decoded_frames(path_or_url: str) -> tuple[int, tuple[int, int]]:
    """(frame count, (width, height)) of the first video stream, by decoding it."""
    count, size = 0, (0, 0)
    with av.open(path_or_url) as container:
        for frame in container.decode(video=0):
            count += 1
            size = (frame.width, frame.height)
    return count, size


def deployment_id(name: str) -> UUID:
    with api() as client:
        return client.read_deployment_by_name(name).id


def runs_of(deployment: str, input_prefix: str) -> list[Any]:
    """Flow runs of ``deployment`` whose input_path starts with ``input_prefix``."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    did = deployment_id(deployment)
    with api() as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[did]))
        )
    return [r for r in runs if str(r.parameters.get("input_path", "")).startswith(input_prefix)]


def wait_final(run_ids: list[UUID], timeout: float = 300) -> dict[UUID, str]:
    """Poll until every run is in a final state; run id -> state name."""
    deadline = time.monotonic() + timeout
    states: dict[UUID, str] = {}
    with api() as client:
        while time.monotonic() < deadline:
            for run_id in run_ids:
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    states[run_id] = state.name
            if len(states) == len(run_ids):
                return states
            time.sleep(1)
    raise AssertionError(f"runs not final after {timeout} s: {set(run_ids) - set(states)}")


def table_rows(run_id: UUID) -> list[dict[str, Any]]:
    """The rows of the table artifact a flow run published (the archive flows' outcome)."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )

    with api() as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                type=ArtifactFilterType(any_=["table"]),
            )
        )
    assert len(found) == 1, f"run {run_id} published {len(found)} table artifacts"
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def run_logs(run_id: UUID, wait_for: str | None = None, timeout: float = 60) -> str:
    """The run's log messages. Logs are shipped in batches and may land after the run is
    final: with ``wait_for``, poll until a message containing it has arrived."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    with api() as client:
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
            text = "\n".join(log.message for log in logs)
            if wait_for is None or wait_for in text or time.monotonic() > deadline:
                return text
            time.sleep(1)
