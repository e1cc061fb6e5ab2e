"""One Prefect API server in the background, started once and shared by later ``vsrflow`` runs.

Why: without ``PREFECT_API_URL`` Prefect starts a temporary server for every process and
stops it at exit. Measured on 2 CPU cores: a trivial flow took 8.8-13.6 s of wall time that
way (fresh database / existing database) against 3.2 s against a running server, of which
about 2 s are Python start-up and imports. So the first ``vsrflow upscale`` starts this
server, detached (its own session, not a child that dies with the command), records it in
``<PREFECT_HOME>/vsrflow-server.json`` and later runs reuse it.

A deliberately shared server is not an orphan of a killed run, but it must not run forever
unnoticed: ``vsrflow server stop`` stops it, ``vsrflow server status`` shows it, and it
stops itself after :data:`DEFAULT_IDLE_MINUTES` without a run (a run touches the state file
every :data:`KEEPALIVE_S` seconds). It also stops when its state file is removed or names
another process, so a stale or replaced record never leaves a second server running.

The server is Prefect's own application (``prefect.server.api.server:create_app``) under
uvicorn, on 127.0.0.1 only, with the UI on and without Prefect's background services (the
scheduler and friends, which a command-line run does not need and which would take CPU
from the model). Framework-free: only the standard library here; the server process
imports Prefect itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vsrflow.errors import VsrflowError

STATE_NAME = "vsrflow-server.json"
LOG_NAME = "vsrflow-server.log"
#: Minutes without a run after which the server stops itself (0: never);
#: ``VSRFLOW_SERVER_IDLE_MINUTES`` overrides.
DEFAULT_IDLE_MINUTES = 60.0
IDLE_ENV = "VSRFLOW_SERVER_IDLE_MINUTES"
#: How often a running command marks the server as in use.
KEEPALIVE_S = 60.0
#: How long to wait for a new server's health check (first start migrates the database:
#: 34 s measured beside a running test suite on 2 cores, over 90 s at a load average of 15).
STARTUP_TIMEOUT_S = 180.0
_POLL_S = 2.0
_GRACE_S = 10.0


class ServerStartError(VsrflowError):
    """The background Prefect server did not come up."""


@dataclass(frozen=True)
class ServerState:
    """What ``<PREFECT_HOME>/vsrflow-server.json`` records about the running server."""

    pid: int
    port: int
    api_url: str
    started: float
    idle_minutes: float


def state_path(home: Path) -> Path:
    return home / STATE_NAME


def idle_minutes() -> float:
    """The idle timeout from the environment (minutes; 0 = never stop by itself)."""
    text = os.environ.get(IDLE_ENV, "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_IDLE_MINUTES
    except ValueError:
        raise VsrflowError(f"{IDLE_ENV} must be a number of minutes, not {text!r}") from None


def _alive(pid: int) -> bool:
    """Running and not a zombie (a killed process can linger as one and pass kill -0)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _is_ours(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"vsrflow.background_server" in cmdline


def read_state(home: Path) -> ServerState | None:
    """The recorded server if it is still running (a stale record is ignored)."""
    try:
        state = ServerState(**json.loads(state_path(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return state if _alive(state.pid) and _is_ours(state.pid) else None


def healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def touch(home: Path) -> None:
    """Mark the server as in use now (resets its idle clock)."""
    with contextlib.suppress(OSError):
        os.utime(state_path(home))


@contextlib.contextmanager
def keepalive(home: Path, idle_minutes: float = DEFAULT_IDLE_MINUTES) -> Iterator[None]:
    """Touch the state file while a run uses the server: every :data:`KEEPALIVE_S` seconds,
    or a quarter of a shorter idle timeout, so a run never outlasts it."""
    stop = threading.Event()
    every = min(KEEPALIVE_S, idle_minutes * 15) if idle_minutes > 0 else KEEPALIVE_S

    def beat() -> None:
        touch(home)
        while not stop.wait(every):
            touch(home)

    thread = threading.Thread(target=beat, name="vsrflow-server-keepalive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        touch(home)


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One starter at a time: two commands started together share one server."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / (STATE_NAME + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure(home: Path, *, idle: float | None = None) -> tuple[ServerState, bool]:
    """The running server of ``home``, or a new one (started, not yet waited for: overlap the
    start-up with other work, then call :func:`wait_healthy`). Returns (state, started)."""
    with _locked(home):
        state = read_state(home)
        if state is not None:
            touch(home)
            return state, False
        idle = idle_minutes() if idle is None else idle
        port = _free_port()
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_UI_ENABLED": "1",
            "PREFECT__SERVER_WEBSERVER_ONLY": "1",  # the UI, but no scheduler or other services
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        command = [sys.executable, "-m", "vsrflow.background_server", "serve", str(home)]
        command += ["uvicorn", "--factory", "prefect.server.api.server:create_app"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        command += ["--lifespan", "on"]
        with open(home / LOG_NAME, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=home,
                start_new_session=True,  # shared: not killed with this command's group
                close_fds=True,
            )
        state = ServerState(
            pid=process.pid,
            port=port,
            api_url=f"http://127.0.0.1:{port}/api",
            started=time.time(),
            idle_minutes=idle,
        )
        path = state_path(home)
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        staged.write_text(json.dumps(state.__dict__))
        os.replace(staged, path)
        return state, True


def wait_healthy(home: Path, state: ServerState, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    """Return once the server answers /health; one-line error if it died or never answered."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(state.api_url):
            return
        if not _alive(state.pid):
            break
        time.sleep(0.1)
    tail = ""
    with contextlib.suppress(OSError):
        lines = (home / LOG_NAME).read_text(errors="replace").strip().splitlines()
        tail = f": {lines[-1]}" if lines else ""
    what = f"did not start within {timeout_s:.0f} s"
    if not _alive(state.pid):
        what = "exited during start-up"
    stop(home)
    raise ServerStartError(
        f"the background Prefect server {what} (log: {home / LOG_NAME}{tail}); "
        "set PREFECT_API_URL to a running server instead"
    )


def stop(home: Path) -> ServerState | None:
    """Stop the recorded server (SIGTERM, then SIGKILL after a grace period); returns what
    was stopped, None if nothing ran."""
    with _locked(home):
        state = read_state(home)
        state_path(home).unlink(missing_ok=True)
    if state is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + _GRACE_S
    while _alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(state.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)
    return state


# -- inside the server process ----------------------------------------------------------------


def _watch(home: Path) -> None:
    """Stop this server when its record is gone or names another process, or when it was
    idle longer than it was told. The record is written by the command that started this
    process, after starting it: until it names this process (at most the start-up timeout),
    a missing or older record means "not written yet", not "stop" (a command descheduled
    for a few seconds on a loaded machine once had its new server stop itself)."""
    me = os.getpid()
    path = state_path(home)
    adopted = False
    born = time.monotonic()
    while True:
        time.sleep(_POLL_S)
        waiting = not adopted and time.monotonic() - born < STARTUP_TIMEOUT_S
        try:
            recorded = json.loads(path.read_text())
            last_used = path.stat().st_mtime
        except (OSError, ValueError):
            if path.exists() or waiting:  # being replaced right now, or not written yet
                continue
            break
        if recorded.get("pid") != me:
            if waiting:
                continue
            break
        adopted = True
        idle_s = float(recorded.get("idle_minutes", 0)) * 60
        if idle_s and time.time() - last_used > idle_s:
            with _locked(home), contextlib.suppress(OSError):
                if json.loads(path.read_text()).get("pid") == me:
                    path.unlink()
            break
    os.kill(me, signal.SIGTERM)  # uvicorn shuts down gracefully (closes the database)
    time.sleep(_GRACE_S)
    os._exit(1)


def _serve(argv: list[str]) -> None:
    """``python -m vsrflow.background_server serve HOME MODULE [ARGS...]``: run MODULE as
    ``__main__`` in this process beside the watcher thread."""
    home, module = Path(argv[0]), argv[1]
    threading.Thread(target=_watch, args=(home,), name="idle-watch", daemon=True).start()
    sys.argv = [module, *argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] != "serve":
        raise SystemExit("usage: python -m vsrflow.background_server serve HOME MODULE [ARGS...]")
    _serve(sys.argv[2:])
