"""The CLI's background Prefect server: started once, reused by later runs, stopped on demand
or after its idle timeout (issue 11 item 3: a temporary server per run cost 6-10 s).

Each test has its own PREFECT_HOME (its own database and server record) and no
PREFECT_API_URL, as a user's first runs have; servers are stopped at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import media_fixtures as mf
import pytest

from vsrflow import background_server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "prefect-home"
    yield path
    background_server.stop(path)


def _env(home: Path, shared_model: Callable[[str], Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.pop("VSRFLOW_SERVER", None)
    return {
        **env,
        "PREFECT_HOME": str(home),
        "VSRFLOW_MODEL_PATH": str(shared_model("realesr-animevideov3.pth").parent),
        **extra,
    }


def _vsrflow(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def _upscale(env: dict[str, str], clip: Path, out: Path) -> subprocess.CompletedProcess[str]:
    args = ["upscale", str(clip), "-o", str(out), "--content", "anime", "--no-progress"]
    return _vsrflow(env, *args, "--batch-frames", "8", cwd=out.parent)


def _servers_of(home: Path) -> list[int]:
    """Background server processes serving ``home`` (whoever started them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vsrflow.background_server" in b" ".join(argv) and str(home).encode() in argv:
            found.append(int(entry.name))
    return found


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_the_second_run_reuses_the_server_the_first_one_started(
    home: Path, no_audio_clip: mf.FixtureInfo, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    env = _env(home, shared_model)
    first = _upscale(env, no_audio_clip.path, tmp_path / "one.mp4")
    assert first.returncode == 0, first.stderr[-3000:]
    state = background_server.read_state(home)
    assert state is not None and background_server.healthy(state.api_url)
    assert _servers_of(home) == [state.pid]  # outlived the command that started it

    second = _upscale(env, no_audio_clip.path, tmp_path / "two.mp4")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "started a Prefect server" not in second.stderr
    assert _servers_of(home) == [state.pid]  # the same one, no second server
    assert background_server.read_state(home) == state
    frames = no_audio_clip.frame_count
    assert _frames(tmp_path / "two.mp4") == _frames(tmp_path / "one.mp4") == frames

    status = json.loads(_vsrflow(env, "server", "status", cwd=tmp_path).stdout)
    assert status["running"] and status["healthy"] and status["pid"] == state.pid
    stopped = _vsrflow(env, "server", "stop", cwd=tmp_path)
    assert stopped.returncode == 0 and state.api_url in stopped.stdout
    assert _servers_of(home) == []
    assert json.loads(_vsrflow(env, "server", "status", cwd=tmp_path).stdout)["running"] is False


def test_an_idle_server_stops_itself_but_never_during_a_run(
    home: Path, no_audio_clip: mf.FixtureInfo, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Idle timeout 0.1 min (6 s): the run takes longer than that, so only the run's
    keep-alive keeps the server up; once the run is over it stops within seconds."""
    env = _env(home, shared_model, VSRFLOW_SERVER_IDLE_MINUTES="0.1")
    run = _upscale(env, no_audio_clip.path, tmp_path / "out.mp4")
    assert run.returncode == 0, run.stderr[-3000:]
    assert _frames(tmp_path / "out.mp4") == no_audio_clip.frame_count
    deadline = time.monotonic() + 60
    while _servers_of(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _servers_of(home) == []
    assert not background_server.state_path(home).exists()


def test_a_temporary_server_is_not_kept(
    home: Path, no_audio_clip: mf.FixtureInfo, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    env = _env(home, shared_model, VSRFLOW_SERVER="temporary")
    run = _upscale(env, no_audio_clip.path, tmp_path / "out.mp4")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "started a Prefect server" not in run.stderr
    assert background_server.read_state(home) is None and _servers_of(home) == []


def test_a_new_server_waits_for_its_late_record_then_stops_when_it_is_removed(
    tmp_path: Path,
) -> None:
    """The command writes the record after starting the server: a server whose record is late
    (a command descheduled on a loaded machine) must not take that for "stop" (it did, in
    CI); once its record named it, a removed record stops it. A stand-in server
    (``http.server`` on 127.0.0.1) under the same watcher."""
    home = tmp_path / "home"
    home.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "vsrflow.background_server", "serve", str(home),
               "http.server", "--bind", "127.0.0.1", str(port)]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        time.sleep(3 * background_server._POLL_S)  # three looks at a missing record
        assert server.poll() is None, "stopped before its record was written"
        state = background_server.ServerState(
            pid=server.pid, port=port, api_url=f"http://127.0.0.1:{port}/api",
            started=time.time(), idle_minutes=0,
        )  # fmt: skip
        background_server.state_path(home).write_text(json.dumps(state.__dict__))
        time.sleep(2 * background_server._POLL_S)
        assert server.poll() is None, "stopped although its record names it"
        background_server.state_path(home).unlink()
        assert server.wait(timeout=30) != 0  # stopped itself (SIGTERM)
    finally:
        server.kill()
        server.wait()
