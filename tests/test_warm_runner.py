"""The warm runner behind the ``vsrflow`` console script (issue 11 item 3: a CLI that starts in
seconds): the first command leaves a runner that has imported Prefect, the flows and torch;
later commands are its forked children, with the command's own directory, environment,
streams, exit status and signals, and the same output bytes as a cold run.

Each test has its own PREFECT_HOME (so its own runners and background server), stopped at the
end whatever happens. The commands run as ``python -m vsrflow.launch``, the console script's
code, so a stale installed script cannot hide a change here.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path

import av
import media_fixtures as mf
import pytest

from vsrflow import background_server, warm_runner

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "prefect-home"
    yield path
    warm_runner.stop_all({"PREFECT_HOME": str(path)})
    background_server.stop(path)


def _env(home: Path, shared_model: Callable[[str], Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "VSRFLOW_SERVER")}
    env.pop(warm_runner.WARM_ENV, None)
    # The CLI picks Prefect's log level (WARNING, INFO with -v); the runner imported Prefect
    # without one, so a child that did not adopt its command's level would print INFO lines.
    env.pop("PREFECT_LOGGING_LEVEL", None)
    return {
        **env,
        "PREFECT_HOME": str(home),
        "VSRFLOW_MODEL_PATH": str(shared_model("realesr-animevideov3.pth").parent),
        "PYTHONPATH": str(REPO),
        **extra,
    }


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vsrflow.launch", *args]


def _vsrflow(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=400,
        check=False,
    )  # fmt: skip


def _upscale_args(clip: str, out: str, *extra: str) -> list[str]:
    return ["upscale", clip, "-o", out, "--content", "anime", "--no-progress", *extra,
            "--batch-frames", "8"]  # fmt: skip


def _serving(env: dict[str, str], timeout_s: float = 180.0) -> dict[str, object]:
    """The runner of ``env`` once it has finished its imports (its log says so)."""
    paths = warm_runner.runner_paths(env)
    assert paths is not None
    log, path = paths.log, paths.socket
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runners = [r for r in warm_runner.running(env) if r["socket"] == str(path)]
        if runners and log.is_file() and "serving" in log.read_text():
            return runners[0]
        time.sleep(0.25)
    raise AssertionError(f"no warm runner served within {timeout_s} s: {_read(log)}")


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else "(no log)"


def _jobs(env: dict[str, str]) -> list[int]:
    """Pids of the jobs the runner forked, from its log, in order."""
    paths = warm_runner.runner_paths(env)
    assert paths is not None
    lines = _read(paths.log).splitlines()
    return [int(line.split()[-1]) for line in lines if line.startswith("job ")]


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _alive(pid: int) -> bool:
    return background_server._alive(pid)


def _gone(pid: int, timeout_s: float = 30.0) -> bool:
    """Whether ``pid`` has ended within ``timeout_s`` (a job reports before it exits)."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def test_the_console_script_is_the_launcher() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "vsrflow"]
    assert script.value == "vsrflow.launch:run"


def test_a_later_run_is_a_warm_child_with_the_commands_directory_environment_and_bytes(
    home: Path, no_audio_clip: mf.FixtureInfo, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    env = _env(home, shared_model)
    (tmp_path / "clip.mp4").write_bytes(no_audio_clip.path.read_bytes())
    cold = _vsrflow(env, *_upscale_args("clip.mp4", "cold.mp4"), cwd=tmp_path)
    assert cold.returncode == 0, cold.stderr[-3000:]
    assert _jobs(env) == []  # the first command ran itself, and left a runner starting
    runner = _serving(env)

    # Relative paths: the child works in the command's directory, not the runner's.
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    warm = _vsrflow(env, *_upscale_args("../clip.mp4", "warm.mp4"), cwd=workdir)
    assert warm.returncode == 0, warm.stderr[-3000:]
    (job,) = _jobs(env)
    assert job != runner["pid"] and _gone(job)
    summary = json.loads(warm.stdout)
    assert summary["frames"] == no_audio_clip.frame_count
    # The job's own peak memory, not the ~780 MB of imports it shares with the runner
    # (measured: cold 878 MB with the model in the flow process, warm 135, runner 776).
    runner_mb = _status_kb(int(runner["pid"]), "VmRSS") / 1024
    cold_mb = json.loads(cold.stdout)["flow_peak_rss_mb"]
    assert 10 < summary["flow_peak_rss_mb"] < min(runner_mb, cold_mb) / 2, (runner_mb, cold_mb)
    # Prefect's log level came from this command (WARNING unless -v), not from the runner's
    # import: no INFO lines on the console.
    assert "Beginning flow run" not in warm.stderr and "| INFO" not in warm.stderr
    assert (workdir / "warm.mp4").read_bytes() == (tmp_path / "cold.mp4").read_bytes()
    assert _frames(workdir / "warm.mp4") == no_audio_clip.frame_count

    # -v on a terminal: Prefect's INFO lines, in colour, as a cold run prints them (its
    # console handler was built when the runner imported Prefect, with a log file as stderr).
    code, terminal = _on_a_terminal(
        env, *_upscale_args("../clip.mp4", "verbose.mp4", "-v"), cwd=workdir
    )
    assert code == 0, terminal[-3000:]
    assert "Beginning flow run" in terminal and "\x1b[" in terminal
    assert len(_jobs(env)) == 2

    # An expected failure keeps its one line and exit status 2; argparse's usage error too.
    # Each is said once: the job ran once, not again cold after a reply out of order.
    missing = _vsrflow(env, *_upscale_args("nothere.mp4", "x.mp4"), cwd=workdir)
    assert missing.returncode == 2
    assert missing.stderr.count("vsrflow: error: input not found: nothere.mp4") == 1
    usage = _vsrflow(env, "upscale", "clip.mp4", cwd=tmp_path)
    assert usage.returncode == 2 and usage.stderr.count("required: -o/--output") == 1
    assert len(_jobs(env)) == 4
    served = warm_runner.running(env)
    assert [(r["pid"], r["jobs"]) for r in served] == [(runner["pid"], 4)]


def _status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def _on_a_terminal(env: dict[str, str], *args: str, cwd: Path) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as stdout and stderr: its status and output."""
    import pty

    leader, follower = pty.openpty()
    command = subprocess.Popen(
        _command(*args), cwd=cwd, env={**env, "COLUMNS": "160"},  # not in the runner's key
        stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every writer closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return command.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_a_changed_environment_gets_its_own_runner(
    home: Path, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Prefect and torch read part of the environment when imported: a runner serves only
    commands with its own (less the shell's PWD/OLDPWD/SHLVL/_)."""
    env = _env(home, shared_model)
    other = {**env, "OMP_NUM_THREADS": "1"}
    same = {**env, "PWD": "/somewhere", "OLDPWD": "/else", "SHLVL": "7", "_": "/bin/x"}
    assert warm_runner.runner_paths(env) == warm_runner.runner_paths(same)
    assert warm_runner.runner_paths(env) != warm_runner.runner_paths(other)
    usage = ["upscale", "in.mp4"]  # refused by argparse: quick, and enough to start a runner
    assert _vsrflow(env, *usage, cwd=tmp_path).returncode == 2
    first = _serving(env)
    assert _vsrflow(other, *usage, cwd=tmp_path).returncode == 2
    second = _serving(other)
    pids = sorted([int(first["pid"]), int(second["pid"])])
    assert pids[0] != pids[1]
    assert sorted(r["pid"] for r in warm_runner.running(env)) == pids  # both of this home
    sockets = [Path(str(r["socket"])) for r in (first, second)]
    for private in (warm_runner.runners_dir(env), sockets[0].parent):
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
    for sock in sockets:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600

    # A third environment: at most two runners per PREFECT_HOME, the least recently used
    # one (the first) makes room.
    third_env = {**env, "OMP_NUM_THREADS": "2"}
    assert _vsrflow(third_env, *usage, cwd=tmp_path).returncode == 2
    third = _serving(third_env)
    assert _gone(int(first["pid"]))
    kept = sorted([int(second["pid"]), int(third["pid"])])
    assert sorted(r["pid"] for r in warm_runner.running(env)) == kept
    assert not sockets[0].exists()

    stopped = _vsrflow(env, "server", "stop", cwd=tmp_path)
    assert stopped.returncode == 0 and "stopped 2 warm runner(s)" in stopped.stdout
    assert warm_runner.running(env) == [] and not any(_alive(p) for p in kept)
    assert not any(sock.exists() for sock in sockets)


def test_nice_affinity_and_limits_are_part_of_the_key() -> None:
    """A job inherits its process attributes from the runner, not from its command: a
    command run under ``nice`` (or taskset, ulimit, another cgroup) needs its own runner."""
    probe = [sys.executable, "-c", "from vsrflow import warm_runner; "
             "print(warm_runner.process_identity())"]  # fmt: skip
    plain = subprocess.run(probe, capture_output=True, text=True, check=True, cwd=REPO).stdout
    niced = subprocess.run(
        ["nice", "-n", "3", *probe], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert plain == warm_runner.process_identity() + "\n"
    assert niced != plain


def test_a_runner_that_could_not_serve_is_not_started_again(
    home: Path, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """A runner whose imports failed leaves a marker: later commands run cold without
    starting another doomed one (each would import torch and Prefect beside the run)."""
    env = _env(home, shared_model)
    paths = warm_runner.runner_paths(env)
    assert paths is not None
    paths.folder.mkdir(parents=True)
    paths.failed.write_text("import failed: ...")
    assert _vsrflow(env, "upscale", "in.mp4", cwd=tmp_path).returncode == 2
    time.sleep(2)
    assert warm_runner.running(env) == [] and not paths.log.exists()


def test_server_stop_right_after_a_start_stops_the_starting_runner(
    home: Path, shared_model: Callable[[str], Path]
) -> None:
    """A runner takes a second or more to write its own record (Python's start, then the
    socket): ``vsrflow server stop`` in that window found nothing, and the runner it missed
    then served for an hour. The command that starts one records it at once."""
    env = _env(home, shared_model)
    paths = warm_runner.runner_paths(env)
    assert paths is not None
    warm_runner.start_in_background(env, paths)
    stopped = warm_runner.stop_all(env)  # at once: the runner is still starting up
    assert len(stopped) == 1 and stopped[0].get("starting") is True
    assert _gone(int(stopped[0]["pid"]), 10)
    assert warm_runner.running(env) == []
    assert not list(paths.folder.glob("*.json"))  # no record of it is left
    assert "serving" not in _read(paths.log)
    assert not paths.failed.exists()  # a stop is no failure: the next run starts one again


def test_server_stop_during_a_runners_imports_is_no_failed_import(
    home: Path, shared_model: Callable[[str], Path]
) -> None:
    """A stop while the runner imports (its own record written, torch and Prefect loading)
    ends it cleanly; taken for a failed import it would have turned warm runs off for good."""
    env = _env(home, shared_model)
    paths = warm_runner.runner_paths(env)
    assert paths is not None
    warm_runner.start_in_background(env, paths)
    deadline = time.monotonic() + 60
    while not paths.record.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert paths.record.exists(), _read(paths.log)
    (stopped,) = warm_runner.stop_all(env)
    assert _gone(int(stopped["pid"]), 30), _read(paths.log)
    assert not paths.failed.exists(), paths.failed.read_text()
    assert not paths.record.exists() and not paths.socket.exists()
    assert "serving" not in _read(paths.log) and "Traceback" not in _read(paths.log)


def test_an_edited_or_added_module_changes_the_code_stamp(tmp_path: Path) -> None:
    """A runner never runs code older than the checkout: the key covers every module."""
    for package in ("vsrflow", "flows", "tasks", "deployments"):
        (tmp_path / package / "__pycache__").mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("")
    module = tmp_path / "vsrflow" / "engine.py"
    module.write_text("x = 1\n")
    stamp = warm_runner.code_stamp(tmp_path)
    assert warm_runner.code_stamp(tmp_path) == stamp
    (tmp_path / "vsrflow" / "__pycache__" / "engine.cpython-311.pyc").write_bytes(b"")
    assert warm_runner.code_stamp(tmp_path) == stamp  # bytecode caches are not code
    info = module.stat()
    os.utime(module, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    assert warm_runner.code_stamp(tmp_path) != stamp
    os.utime(module, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert warm_runner.code_stamp(tmp_path) == stamp
    (tmp_path / "flows" / "new_flow.py").write_text("")
    assert warm_runner.code_stamp(tmp_path) != stamp
    assert warm_runner.code_stamp() != stamp  # this checkout


@pytest.mark.parametrize(
    ("argv", "env", "served"),
    [
        (["upscale", "a.mp4", "-o", "b.mp4"], {}, True),
        (["upscale", "a.mp4", "-o", "b.mp4", "--server", "temporary"], {}, False),
        (["upscale", "a.mp4", "-o", "b.mp4", "--server=temporary"], {}, False),
        (["upscale", "a.mp4", "-o", "b.mp4", "--serv", "temporary"], {}, False),  # argparse
        (["upscale", "a.mp4", "-o", "b.mp4", "--se=temporary"], {}, False),  # prefixes
        (["upscale", "a.mp4", "-o", "b.mp4"], {"VSRFLOW_SERVER": "temporary"}, False),
        (["upscale", "a", "-o", "b", "--server", "background"], {"VSRFLOW_SERVER": "temporary"},
         True),
        (["upscale", "a.mp4", "-o", "b.mp4"], {"VSRFLOW_WARM": "0"}, False),
        (["probe", "a.mp4"], {}, False),
        ([], {}, False),
    ],
)  # fmt: skip
def test_which_commands_are_served_warm(argv: list[str], env: dict[str, str], served: bool) -> None:
    assert warm_runner.wanted(argv, env) is served


def _start_job(
    env: dict[str, str], clip: Path, out: Path, **popen: object
) -> tuple[subprocess.Popen[bytes], int]:
    """A warm upscale started in the background, and its job's pid once the runner forked."""
    before = len(_jobs(env))
    command = subprocess.Popen(
        _command(*_upscale_args(str(clip), str(out))), cwd=out.parent, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen,  # type: ignore[call-overload]
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(_jobs(env)) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    jobs = _jobs(env)
    assert len(jobs) == before + 1, "the runner did not fork a job"
    return command, jobs[-1]


def _state(pid: int) -> str:
    """A process's state letter from /proc (T: stopped), "" once it is gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat_line.rsplit(")", 1)[1].split()[0]


def _becomes(pid: int, wanted: Callable[[str], bool], timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    state = _state(pid)
    while not wanted(state) and time.monotonic() < deadline:
        time.sleep(0.1)
        state = _state(pid)
    return state


def test_ctrl_z_stops_the_job_with_the_command_and_fg_continues_both(
    home: Path, no_audio_clip: mf.FixtureInfo, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """Ctrl-Z reaches the command only (the job runs in the runner's session): without the
    forwarding the job would upscale on, its terminal output scrolling over the shell's."""
    env = _env(home, shared_model)
    assert _vsrflow(env, "upscale", "in.mp4", cwd=tmp_path).returncode == 2
    _serving(env)
    out = tmp_path / "suspended.mp4"
    # A process group of its own, as a shell's job control gives each command line (a
    # stop signal to an orphaned group is dropped by the kernel).
    command, job = _start_job(env, no_audio_clip.path, out, process_group=0)
    time.sleep(2)  # into the flow run
    assert _state(job) not in ("", "T") and command.poll() is None, "the job ended early"
    command.send_signal(signal.SIGTSTP)
    assert _becomes(command.pid, lambda s: s == "T") == "T"
    assert _becomes(job, lambda s: s == "T") == "T"  # the job stopped too
    time.sleep(1)
    assert _state(job) == "T" and not out.exists()  # and stays stopped
    command.send_signal(signal.SIGCONT)  # what `fg` sends
    assert _becomes(job, lambda s: s != "T") != "T"  # running again (or already done)
    _, err = command.communicate(timeout=300)
    assert command.returncode == 0, err.decode()[-2000:]
    assert _frames(out) == no_audio_clip.frame_count

    # kill -9 of a suspended command: the stopped job cannot see its connection close; the
    # runner continues it, and it stops itself as after any kill of its command.
    killed = tmp_path / "suspended-then-killed.mp4"
    command, job = _start_job(env, no_audio_clip.path, killed, process_group=0)
    time.sleep(2)
    command.send_signal(signal.SIGTSTP)
    assert _becomes(job, lambda s: s == "T") == "T"
    command.kill()
    command.wait(timeout=10)
    assert _gone(job, 60) and not killed.exists()


def test_ctrl_c_and_kill_of_the_command_stop_its_job_and_stopping_the_runner_does_not(
    home: Path, no_audio_clip: mf.FixtureInfo, shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    env = _env(home, shared_model)
    assert _vsrflow(env, "upscale", "in.mp4", cwd=tmp_path).returncode == 2
    runner = _serving(env)

    # Ctrl-C reaches the command only (the job is in the runner's session): it is forwarded.
    command, job = _start_job(env, no_audio_clip.path, tmp_path / "interrupted.mp4")
    time.sleep(2)  # into the flow run
    command.send_signal(signal.SIGINT)
    _, err = command.communicate(timeout=60)
    # As a cold command: the traceback, then death by SIGINT (a shell loop stops there).
    assert command.returncode == -signal.SIGINT, err.decode()[-2000:]
    assert "KeyboardInterrupt" in err.decode()
    assert _gone(job) and not (tmp_path / "interrupted.mp4").exists()

    # kill -9 of the command: its connection closes and the job stops itself.
    command, job = _start_job(env, no_audio_clip.path, tmp_path / "killed.mp4")
    time.sleep(2)
    command.kill()
    command.wait(timeout=10)
    assert _gone(job)
    assert not (tmp_path / "killed.mp4").exists()
    assert _alive(int(runner["pid"]))  # the runner serves on
    assert warm_runner.running(env)[0]["pid"] == runner["pid"]

    # `vsrflow server stop` during a job: the runner goes, the job finishes and its command
    # still gets the exit status (from the job itself).
    command, job = _start_job(env, no_audio_clip.path, tmp_path / "outlived.mp4")
    assert [r["pid"] for r in warm_runner.stop_all(env)] == [runner["pid"]]
    _, err = command.communicate(timeout=300)
    assert command.returncode == 0, err.decode()[-2000:]
    assert _frames(tmp_path / "outlived.mp4") == no_audio_clip.frame_count
