"""A warm runner: one process that has imported Prefect, torch and the flows once and forks a
child for each ``vsrflow upscale``, so a run after the first does not wait for imports.

Why: with the background Prefect server running, a short clip's ``vsrflow upscale`` still
spent 4.8 s outside its upscale stage on a 2-core AVX2 machine, about 2.5 s of it importing
(Prefect 1.2-1.6 s, the flow modules 0.8 s, the CLI's own 0.5 s; torch on top for the local
profile). A fork of a process that has already imported them starts in milliseconds.

How: the ``vsrflow`` console script (:mod:`vsrflow.launch`, standard library only) connects to
the runner's Unix socket and hands over its arguments, working directory, umask, environment
and its stdin/stdout/stderr themselves (``SCM_RIGHTS``). The runner forks; the child adopts
all of them and runs ``flows.cli.main`` as the command would have, writing straight to the
user's terminal, and sends its exit status back (so does the runner when it reaps the child:
a job killed by a signal still reports one). The command forwards
Ctrl-C/SIGTERM/SIGHUP to the child's process group, and Ctrl-Z stops the group with the
command until ``fg``/``bg`` continues it; the child stops its group when the
command dies (its connection closes), so ``kill -9`` of ``vsrflow`` still stops the job.

One runner per environment: its socket is named by a hash of the environment (less a few
shell variables), the Python executable and the code (every project module's size and
mtime, the site-packages folder's mtime), so a changed ``PYTHONPATH``, an edited
module or an upgraded package starts a new runner instead of running stale code. Prefect's
settings and log levels, which it reads when imported, are re-read in the child after the
command's environment and directory are adopted (``flows.cli``).

Safety: the socket lives in a 0700 folder of the user's (``$XDG_RUNTIME_DIR`` or /tmp
``/vsrflow-<uid>``; records and logs in ``<PREFECT_HOME>/vsrflow-runners/``) and the runner
serves only its own user (``SO_PEERCRED``). It stops after the background server's idle time
(``VSRFLOW_SERVER_IDLE_MINUTES``, default 60) without a job, when its socket is removed or
replaced, and on ``vsrflow server stop``; jobs it forked run on. ``VSRFLOW_WARM=0`` turns it
off (then every run imports everything itself, as ``python -m flows.cli`` always does).

Framework-free: only the standard library is imported here; the runner process imports the
flows by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import importlib
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

#: ``VSRFLOW_WARM=0`` turns the warm runner off.
WARM_ENV = "VSRFLOW_WARM"
RUNNERS_DIR = "vsrflow-runners"
#: What the runner imports before it serves: everything a local ``vsrflow upscale`` imports
#: on its way to the upscale stage (the CLI, the flows, Prefect's engines, the model stack).
PRELOAD = (
    "flows.cli",
    "flows.upscale_video",
    "flows.upscale_images",
    "tasks.upscale",
    "deployments.profiles",
    "prefect.client.orchestration",
    "prefect.flow_engine",
    "prefect.task_engine",
    "vsrflow.engine",
    "vsrflow.models",
    "spandrel",
    "tqdm",
)
#: Shell and session bookkeeping that differs between two prompts, terminals or ssh logins of
#: the same user and affects no import: not part of the key (the job still gets its values).
_VOLATILE_ENV = frozenset(
    {"PWD", "OLDPWD", "SHLVL", "_", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "SSH_AUTH_SOCK",
     "TMUX_PANE", "WINDOWID", "TERM_SESSION_ID", "XDG_SESSION_ID", "COLUMNS", "LINES"}
)  # fmt: skip
#: Runners kept per PREFECT_HOME; starting one more stops the least recently used.
MAX_RUNNERS = 2
#: How long a command waits for a runner still importing before it runs the job itself.
START_TIMEOUT_S = 120.0
#: The project's packages whose modules the runner has imported.
_PACKAGES = ("vsrflow", "flows", "tasks", "deployments")
_HEADER = struct.Struct("!I")
#: AF_UNIX paths are limited to 108 bytes; a longer one means no warm runner (runs import).
_MAX_SOCKET_PATH = 100
#: Grace between SIGTERM and SIGKILL when the command that started a job is gone.
_ORPHAN_GRACE_S = 10.0
_POLL_S = 0.5
IDLE_ENV = "VSRFLOW_SERVER_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 60.0


def runners_dir(env: Mapping[str, str]) -> Path:
    """Where the runners of this ``PREFECT_HOME`` keep their sockets and records."""
    home = Path(env.get("PREFECT_HOME") or "~/.prefect").expanduser().absolute()
    return home / RUNNERS_DIR


def code_stamp(root: Path | None = None) -> str:
    """What the runner's imports depend on besides the environment: the interpreter, the
    project's modules under ``root`` (this checkout or install; a digest of every module's
    name, size and mtime) and the installed packages (site-packages' mtime changes when pip
    adds or removes one)."""
    import sysconfig

    root = root or Path(__file__).resolve().parent.parent
    modules = hashlib.sha256()
    for package in _PACKAGES:
        for folder, subfolders, files in os.walk(root / package):
            subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    info = os.stat(path)
                    modules.update(f"{path}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    parts = [sys.executable, sys.version, modules.hexdigest()]
    with contextlib.suppress(OSError):
        parts.append(str(os.stat(sysconfig.get_path("purelib")).st_mtime_ns))
    return "\n".join(parts)


def process_identity() -> str:
    """What a job inherits from its process rather than its environment: niceness, CPU
    affinity (torch sizes its thread pool from it), resource limits and cgroup (memory
    limits). A forked job gets the runner's, so a runner serves only commands with its own:
    ``nice``, ``taskset``, ``ulimit`` or a cgroup scope mean another runner."""
    import resource

    limits = [
        (name, resource.getrlimit(getattr(resource, name)))
        for name in sorted(dir(resource))
        if name.startswith("RLIMIT_")
    ]
    try:
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        cgroup = ""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    return json.dumps([nice, sorted(os.sched_getaffinity(0)), limits, cgroup])


def runner_key(env: Mapping[str, str], stamp: str, identity: str = "") -> str:
    """The name of the runner that may serve a command with this environment, code and
    process identity."""
    kept = sorted((k, v) for k, v in env.items() if k not in _VOLATILE_ENV)
    return hashlib.sha256(json.dumps([stamp, identity, kept]).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class RunnerPaths:
    """Where one runner lives: its socket in a short private folder (``AF_UNIX`` paths are
    limited to 108 bytes, and a ``PREFECT_HOME`` can be longer), its record, log and lock in
    the ``PREFECT_HOME`` it serves (where ``vsrflow server status|stop`` find it)."""

    socket: Path
    folder: Path

    @property
    def key(self) -> str:
        return self.socket.stem

    @property
    def record(self) -> Path:
        return self.folder / f"{self.key}.json"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.key}.log"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.key}.lock"

    @property
    def failed(self) -> Path:
        """Written when this runner could not serve; why, for whoever looks."""
        return self.folder / f"{self.key}.failed"

    def starting(self, pid: int) -> Path:
        """The record of runner ``pid`` written by the command that started it, until the
        runner writes its own: ``vsrflow server stop`` right after a run finds it too."""
        return self.folder / f"{self.key}.starting-{pid}.json"


def _socket_folder(env: Mapping[str, str]) -> Path | None:
    """``$XDG_RUNTIME_DIR`` (else ``$TMPDIR`` or /tmp) ``/vsrflow-<uid>``, made 0700; None
    when it is not a folder of this user's (someone else made it first: no warm runs)."""
    base = env.get("XDG_RUNTIME_DIR") or env.get("TMPDIR") or "/tmp"
    folder = Path(base) / f"vsrflow-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return None
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(folder, 0o700)
    except OSError:
        return None
    return folder


def runner_paths(env: Mapping[str, str], stamp: str | None = None) -> RunnerPaths | None:
    """The runner that may serve a command with ``env`` (None: no place for its socket)."""
    folder = _socket_folder(env)
    if folder is None:
        return None
    key = runner_key(env, stamp or code_stamp(), process_identity())
    sock = folder / f"{key}.sock"
    if len(os.fsencode(sock)) > _MAX_SOCKET_PATH:
        return None
    return RunnerPaths(socket=sock, folder=runners_dir(env))


def wanted(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """Whether this command may be served warm: ``upscale`` on Linux, not turned off, and
    not ``--server temporary`` (that run's Prefect server must die with the command)."""
    if sys.platform != "linux" or env.get(WARM_ENV, "1") == "0":
        return False
    if not argv or argv[0] != "upscale":
        return False
    server = env.get("VSRFLOW_SERVER", "")
    for i, arg in enumerate(argv):
        name, equals, value = arg.partition("=")
        # argparse takes any unambiguous prefix: --se, --ser, ... (--s is ambiguous)
        if len(name) >= 4 and "--server".startswith(name):
            server = value if equals else (argv[i + 1] if i + 1 < len(argv) else "")
    return server != "temporary"


# -- in the command ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """How a job ended: its exit status, or the signal that ended it (then the command ends
    by the same signal, as a cold one would: a shell loop stops on Ctrl-C)."""

    code: int
    signal: int | None = None


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_warm(argv: Sequence[str], path: Path) -> Finished | None:
    """Run ``vsrflow ARGV`` in the runner listening at ``path``; how it ended, or None when
    no runner took the job (nothing ran: the caller runs it itself)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fspath(path))
        request = json.dumps(
            {"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask()}
        ).encode()
        socket.send_fds(sock, [_HEADER.pack(len(request))], [0, 1, 2])
        sock.sendall(request)
    except OSError:
        sock.close()
        return None
    with sock, sock.makefile("rb") as replies:
        # Until the job is forked (the runner may still be importing), a signal ends this
        # command: the runner then finds the connection closed and never releases the job.
        def interrupted(signum: int, _frame: object) -> None:
            raise _Interrupted(signum)

        before = _install(_FORWARDED, interrupted)
        try:
            sock.settimeout(START_TIMEOUT_S)
            started = _reply(replies)
        except _Interrupted as stop:
            return Finished(128 + stop.signum, stop.signum)
        finally:
            for kind, handler in before.items():
                signal.signal(kind, handler)
        if started is None or "pid" not in started:
            return None  # the runner stopped, or was still importing: nothing ran
        sock.settimeout(None)
        undo = _forward_signals(int(started["pid"]))
        try:
            finished = _reply(replies)
        finally:
            undo()
    if finished is None or not ("exit" in finished or "signal" in finished):
        print("vsrflow: error: the warm runner stopped during the run", file=sys.stderr)
        return Finished(1)
    if finished.get("signal"):
        return Finished(128 + int(finished["signal"]), int(finished["signal"]))
    return Finished(int(finished["exit"]))


def exit_as(finished: Finished) -> NoReturn:
    """End this command as the job ended: its status, or killed by its signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    if finished.signal:
        signal.signal(finished.signal, signal.SIG_DFL)
        os.kill(os.getpid(), finished.signal)
    os._exit(finished.code)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reply(replies: Any) -> dict[str, Any] | None:
    """The runner's next line; None at EOF, on a broken connection or a timeout."""
    try:
        line = replies.readline()
    except OSError:
        return None
    return json.loads(line) if line else None


def _forward_signals(group: int) -> Any:
    """Send Ctrl-C, SIGTERM and SIGHUP to the job's process group (the terminal delivers
    them to this command only: the job runs in the runner's session), and make Ctrl-Z stop
    the job with the command and ``fg``/``bg`` resume it. Returns an undo."""

    def forward(signum: int, _frame: object) -> None:
        _signal_group(group, signum)

    def suspend(_signum: int, _frame: object) -> None:
        # The job first (SIGSTOP: its own group may ignore a terminal stop), then this
        # command by the default action, which returns only once it is continued; then the
        # job goes on too. Where the kernel drops the stop (an orphaned process group) the
        # command never stopped and the job is continued at once.
        _signal_group(group, signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)
        finally:
            signal.signal(signal.SIGTSTP, suspend)
            _signal_group(group, signal.SIGCONT)

    before = _install(_FORWARDED, forward)
    before.update(_install((signal.SIGTSTP,), suspend))

    def undo() -> None:
        for kind, handler in before.items():
            signal.signal(kind, handler)

    return undo


def _install(kinds: Sequence[signal.Signals], handler: Any) -> dict[signal.Signals, Any]:
    """``handler`` for each of ``kinds`` the user has not ignored (``nohup`` ignores SIGHUP:
    then the job must not get it either, as a cold run would not); the previous handlers."""
    before = {}
    for kind in kinds:
        previous = signal.getsignal(kind)
        if previous != signal.SIG_IGN:
            before[kind] = signal.signal(kind, handler)
    return before


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def start_in_background(env: Mapping[str, str], paths: RunnerPaths) -> None:
    """Start the runner at ``paths`` (detached: its own session, output to its log) unless
    one is starting or running, or one for this key could not serve before (its imports
    failed: every command would start another doomed one). Keeps at most
    :data:`MAX_RUNNERS`: the least recently used other runner is stopped to make room."""
    if paths.failed.exists():
        return
    paths.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(paths.folder, 0o700)
    others = [r for r in running(env) if r.get("socket") != os.fspath(paths.socket)]
    others.sort(key=lambda r: float(r.get("last_used", r.get("started", 0))))
    for state in others[: max(0, len(others) - MAX_RUNNERS + 1)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(state["pid"]), signal.SIGTERM)
    command = [sys.executable, "-m", "vsrflow.warm_runner", "serve"]
    with open(paths.log, "ab") as log:
        runner = subprocess.Popen(
            [*command, os.fspath(paths.socket), os.fspath(paths.folder)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=paths.folder,
            start_new_session=True,
            close_fds=True,
        )
    state = {**_new_record(runner.pid, paths.socket), "starting": True}
    _write_record(paths.starting(runner.pid), state)


# -- records: status and stop -----------------------------------------------------------------


def running(env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The runners of this ``PREFECT_HOME`` that are alive (one record each, starting ones
    included): pid, socket, started, jobs."""
    from vsrflow.background_server import _alive

    found: dict[int, dict[str, Any]] = {}
    for record in sorted(runners_dir(env).glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(record.read_text())
            pid = int(state["pid"])
            if _alive(pid) and _is_runner(pid):
                if pid not in found or found[pid].get("starting"):
                    found[pid] = state  # its own record over the starting one
            elif ".starting-" in record.name:
                record.unlink()  # a runner killed before it wrote its own
    return list(found.values())


def stop_all(env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Stop every runner of this ``PREFECT_HOME`` (jobs they started run on)."""
    from vsrflow.background_server import _alive

    stopped = running(env)
    for state in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(state["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + _ORPHAN_GRACE_S
    while any(_alive(int(s["pid"])) for s in stopped) and time.monotonic() < deadline:
        time.sleep(0.05)
    return stopped


def _is_runner(pid: int) -> bool:
    try:
        return b"vsrflow.warm_runner" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# -- the runner process ---------------------------------------------------------------------------


class _Stop(BaseException):
    """SIGTERM: leave the serve loop and clean up (a BaseException: a stop during the
    imports is no failed import, and no library's ``except Exception`` swallows it)."""


def _idle_seconds() -> float:
    text = os.environ.get(IDLE_ENV, "")
    try:
        return max(0.0, float(text)) * 60 if text else DEFAULT_IDLE_MINUTES * 60
    except ValueError:
        return DEFAULT_IDLE_MINUTES * 60


#: The runner's lock: held for its lifetime, closed (not unlocked) in every child so that a job
#: still running does not keep a new runner for the same key from starting.
_lock_file: Any = None


def serve(paths: RunnerPaths) -> None:
    """Listen at the socket (bound before the imports, so a command arriving meanwhile waits
    for them instead of importing everything itself), import :data:`PRELOAD`, then fork a
    child per job until idle, stopped, or the socket is gone."""
    global _lock_file
    path, record = paths.socket, paths.record
    starting = paths.starting(os.getpid())
    _lock_file = open(paths.lock, "a")  # noqa: SIM115  # held for the lifetime
    try:
        fcntl.flock(_lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        starting.unlink(missing_ok=True)
        return  # another runner for this key is starting or serving
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.fspath(path))
    os.chmod(path, 0o600)
    listener.listen(16)
    inode = os.stat(path).st_ino
    me = os.getpid()

    def stop(_signum: int, _frame: object) -> None:
        raise _Stop

    state = _new_record(me, path)
    try:
        signal.signal(signal.SIGTERM, stop)
        _write_record(record, state)
        starting.unlink(missing_ok=True)
        started = time.perf_counter()
        try:
            for module in PRELOAD:
                importlib.import_module(module)
        except Exception as exc:  # a broken install: say so once, run cold from now on
            paths.failed.write_text(f"import failed: {traceback.format_exc()}")
            print(f"warm runner: not serving, import failed: {exc!r}", flush=True)
            return
        extra = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if extra:  # forking a process with Python threads could deadlock its children
            paths.failed.write_text(f"imports started threads {extra}")
            print(f"warm runner: not serving, imports started threads {extra}", flush=True)
            return
        gc.collect()
        gc.freeze()  # the children share the imported objects' pages instead of copying them
        print(f"warm runner {me}: imports took {time.perf_counter() - started:.2f} s,"
              f" serving {path}", flush=True)  # fmt: skip
        _serve_loop(listener, path, inode, record, state)
    except _Stop:
        pass
    finally:
        if os.getpid() != me:  # never in a job: it ends in _run_job; belt and braces
            os._exit(1)
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:
                path.unlink()
        starting.unlink(missing_ok=True)  # written after this runner's own record: a late one
        with contextlib.suppress(OSError, ValueError):
            if json.loads(record.read_text()).get("pid") == me:
                record.unlink()


def _new_record(pid: int, socket_path: Path) -> dict[str, Any]:
    """What ``vsrflow server status|stop`` read of a runner that has served no job yet."""
    now = time.time()
    return {"pid": pid, "socket": os.fspath(socket_path), "started": now, "last_used": now,
            "jobs": 0}  # fmt: skip


def _write_record(record: Path, state: dict[str, Any]) -> None:
    staged = record.with_name(f".{record.name}.{os.getpid()}")
    staged.write_text(json.dumps(state))
    os.replace(staged, record)


def _serve_loop(
    listener: socket.socket, path: Path, inode: int, record: Path, state: dict[str, Any]
) -> None:
    jobs: dict[int, socket.socket] = {}  # child pid -> its command's connection
    try:
        _serve_jobs(listener, path, inode, record, state, jobs)
    finally:
        # Jobs run on without the runner; a stopped one (Ctrl-Z) would die on the SIGHUP
        # the kernel sends a group orphaned with stopped members: continue them first.
        for pid in jobs:
            _signal_group(pid, signal.SIGCONT)


def _serve_jobs(
    listener: socket.socket,
    path: Path,
    inode: int,
    record: Path,
    state: dict[str, Any],
    jobs: dict[int, socket.socket],
) -> None:
    last_active = time.monotonic()
    idle_s = _idle_seconds()
    listener.settimeout(_POLL_S)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            conn = None
        if conn is not None:
            pid = _start_job(conn, listener, jobs)
            if pid is not None:
                state["jobs"] += 1
                state["last_used"] = time.time()
                _write_record(record, state)
                print(f"job {state['jobs']}: pid {pid}", flush=True)
        for pid, ending in _reaped(jobs):
            done = jobs.pop(pid)
            if ending is not None:
                with contextlib.suppress(OSError):
                    done.sendall(json.dumps(ending).encode() + b"\n")
            done.close()
        for pid, connection in jobs.items():
            if _closed(connection):  # a stopped job cannot see its command die: wake it
                _signal_group(pid, signal.SIGCONT)
        if jobs or conn is not None:
            last_active = time.monotonic()
        elif idle_s and time.monotonic() - last_active > idle_s:
            print("idle: stopping", flush=True)
            return
        try:
            if os.stat(path).st_ino != inode:
                return  # replaced by another runner's socket
        except OSError:
            return  # removed


def _closed(connection: socket.socket) -> bool:
    """Whether the command at the other end is gone (it sends nothing after its request)."""
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _reaped(jobs: Mapping[int, socket.socket]) -> list[tuple[int, dict[str, int] | None]]:
    """Every finished job and how it ended ({"exit": n} or {"signal": n}; None: reaped
    elsewhere, nothing known)."""
    finished: list[tuple[int, dict[str, int] | None]] = []
    for pid in list(jobs):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished.append((pid, None))
            continue
        if done:
            if os.WIFSIGNALED(status):
                finished.append((pid, {"signal": os.WTERMSIG(status)}))
            else:
                finished.append((pid, {"exit": os.waitstatus_to_exitcode(status)}))
    return finished


_JOB_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _start_job(
    conn: socket.socket, listener: socket.socket, jobs: dict[int, socket.socket]
) -> int | None:
    """Read one command's request and fork its child; the child's pid (its process group
    too), or None for a refused or broken request.

    The child waits on a pipe until the runner has told the command its pid: the command's
    first reply is always the pid (a job failing in a millisecond cannot overtake it), and a
    command gone meanwhile never gets a job it cannot see. Signals are blocked across the
    fork so that none reaches the child while it still has the runner's handlers."""
    fds: list[int] = []
    try:
        conn.settimeout(10.0)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] != os.getuid():
            raise PermissionError("another user")
        header, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
        if len(header) != _HEADER.size or len(fds) != 3:
            raise ValueError("malformed request")
        request = json.loads(_read_exactly(conn, _HEADER.unpack(header)[0]))
        conn.settimeout(None)
    except (OSError, ValueError) as exc:
        print(f"refused a request: {exc}", flush=True)
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    release_r, release_w = os.pipe()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _JOB_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            os.close(release_w)
            _run_job(conn, fds, request, release_r, mask, [listener, *jobs.values()])
        os.close(release_r)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        for fd in fds:
            os.close(fd)
        try:
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            os.write(release_w, b"go")
        except OSError:
            pass  # the command is gone: the child sees the pipe close unreleased and exits
        os.close(release_w)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    jobs[pid] = conn
    return pid


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise ValueError("request cut short")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _run_job(
    conn: socket.socket,
    fds: list[int],
    request: dict[str, Any],
    release: int,
    mask: set[signal.Signals],
    inherited: list[socket.socket],
) -> NoReturn:
    """In the forked child: wait to be released, become the command (its streams,
    directory, umask, environment, arguments, default signal handling), run the CLI and its
    exit hooks, report how it ended and exit the same way. Never returns."""
    code, killed_by = 1, None
    ran = False
    try:
        from vsrflow import procmem  # standard library only, like this module

        procmem.note_forked()  # the runner's pages are not this job's memory
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _lock_file.close()
        for sock in inherited:
            sock.close()
        os.setpgid(0, 0)
        if not os.read(release, 2):
            os._exit(0)  # not released: the command is gone, nothing runs
        os.close(release)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        argv = [str(arg) for arg in request["argv"]]
        sys.argv = ["vsrflow", *argv]
        with contextlib.suppress(AttributeError, ValueError):
            sys.stdout.reconfigure(line_buffering=os.isatty(1))  # type: ignore[union-attr]
        threading.Thread(target=_stop_when_orphaned, args=(conn,), daemon=True).start()
        from flows import cli

        ran = True
        code = int(cli.main(argv, prefect_imported=True))
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        if exc.code is None or isinstance(exc.code, int):
            code = int(exc.code or 0)
        else:
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:  # as a cold command: the traceback, then death by SIGINT
        traceback.print_exc()
        killed_by = signal.SIGINT
    except BaseException:  # a bug: its traceback, status 1 (never back into the serve loop)
        traceback.print_exc()
    finally:
        if ran:
            with contextlib.suppress(BaseException):
                from flows import cli

                cli.run_exit_hooks()  # Prefect's log/event workers drain, Dask clusters close
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        # Also said by the runner once it reaps this child; said here too so the command
        # gets it even if the runner was stopped meanwhile (the first one read counts).
        ending = {"signal": int(killed_by)} if killed_by else {"exit": code}
        with contextlib.suppress(BaseException):
            conn.sendall(json.dumps(ending).encode() + b"\n")
        os._exit(128 + killed_by if killed_by else code)


def _stop_when_orphaned(conn: socket.socket) -> None:
    """The command is this job's owner: when it dies (``kill -9`` included) its connection
    closes, and the job stops as it would have died with it: SIGTERM to the job's group,
    SIGKILL after a grace period."""
    with contextlib.suppress(OSError):
        while conn.recv(1):
            pass
    _signal_group(0, signal.SIGTERM)  # 0: this job's own group
    time.sleep(_ORPHAN_GRACE_S)
    _signal_group(0, signal.SIGKILL)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve":
        raise SystemExit("usage: python -m vsrflow.warm_runner serve SOCKET RECORD_FOLDER")
    serve(RunnerPaths(socket=Path(sys.argv[2]), folder=Path(sys.argv[3])))
