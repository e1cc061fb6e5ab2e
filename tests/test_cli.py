"""The ``vsrflow`` command as users run it: a subprocess, real files, exit codes."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import media_fixtures as mf
import pytest

from vsrflow.engine_settings import EngineSettings

REPO = Path(__file__).resolve().parents[1]


def _vsrflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def models_dir(shared_dir: Path) -> Path:
    path = shared_dir / "models" / "realesr-animevideov3.pth"
    if not path.is_file():
        pytest.skip(f"shared model not found: {path}")
    return path.parent


def test_upscale_video_by_registry_name_from_the_search_path(
    no_audio_clip: mf.FixtureInfo, models_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.mkv"
    result = _vsrflow(
        "upscale",
        str(no_audio_clip.path),
        "-o",
        str(output),
        "--content",
        "anime",
        "--batch-frames",
        "12",
        "--compile",
        "--no-progress",
        env={"VSRFLOW_MODEL_PATH": str(models_dir), "VSRFLOW_MODEL_CACHE": str(tmp_path / "c")},
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["model"] == summary["parameters"]["model.name"] == "realesr-animevideov3"
    # --compile reached the engine: the defaults came from the settings, compile on top.
    assert summary["parameters"]["engine.compile_model"] is True
    assert summary["parameters"]["engine.micro_batch"] == EngineSettings().micro_batch
    assert summary["frames"] == no_audio_clip.frame_count
    with av.open(str(output)) as container:
        assert container.format.name.startswith("matroska")
        frames = list(container.decode(video=0))
    assert len(frames) == no_audio_clip.frame_count
    assert (frames[0].width, frames[0].height) == (
        no_audio_clip.width * 4,
        no_audio_clip.height * 4,
    )
    assert not (tmp_path / "c").exists()  # found in the search path: nothing downloaded


def test_bad_input_exits_2_with_one_clear_line(
    not_media_file: mf.FixtureInfo, tmp_path: Path
) -> None:
    result = _vsrflow(
        "upscale", str(not_media_file.path), "-o", str(tmp_path / "o.mp4"), "--no-progress"
    )
    assert result.returncode == 2
    assert "vsrflow: error:" in result.stderr and "not a media file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_probe_prints_json(vfr_clip: mf.FixtureInfo) -> None:
    result = _vsrflow("probe", str(vfr_clip.path))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["video"]["frames"] == vfr_clip.frame_count
    assert info["video"]["vfr"] is True


#: The console script's entry point with two exit hooks registered first: one of threading's
#: (where Prefect's log and event workers drain) and one of atexit's (Dask, logging).
_RUN_WITH_HOOKS = (
    "import atexit, sys, threading; "
    "threading._register_atexit(lambda: print('threading hook', flush=True)); "
    "atexit.register(lambda: print('atexit hook', flush=True)); "
    "sys.argv = ['vsrflow', *sys.argv[1:]]; "
    "from flows.cli import run; run()"
)


@pytest.mark.parametrize("refused", [False, True], ids=["probe", "refused-upscale"])
def test_the_console_script_runs_every_exit_hook_and_keeps_the_exit_status(
    vfr_clip: mf.FixtureInfo, refused: bool
) -> None:
    """``run`` skips Python's teardown with os._exit: the hooks must still run, in the
    interpreter's order, after the output, and the status must be main()'s."""
    argv = ["probe", str(vfr_clip.path)]
    if refused:  # an output folder that cannot be created: the one-line refusal, status 2
        argv = ["upscale", str(vfr_clip.path), "-o", "/proc/vsrflow/out.mp4", "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-c", _RUN_WITH_HOOKS, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == (2 if refused else 0), done.stderr
    lines = done.stdout.splitlines()
    assert lines[-2:] == ["threading hook", "atexit hook"], done.stdout[-500:]
    if not refused:
        assert json.loads("\n".join(lines[:-2]))["video"]["frames"] == vfr_clip.frame_count
    else:
        assert "vsrflow: error:" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def release_server(models_dir: Path) -> Iterator[str]:
    """Serve ../shared/models under the release path layout on 127.0.0.1."""
    root = models_dir.parent / "release-layout"
    handler: Callable[..., http.server.SimpleHTTPRequestHandler]

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            name = path.rsplit("/", 1)[-1]
            return str(models_dir / name)

        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_models_fetch_downloads_and_verifies(release_server: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {
        "VSRFLOW_MODEL_BASE_URL": release_server,
        "VSRFLOW_MODEL_CACHE": str(cache),
        "VSRFLOW_MODEL_PATH": "",
    }
    result = _vsrflow("models", "fetch", "realesr-animevideov3", env=env)
    assert result.returncode == 0, result.stderr
    assert "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d" in result.stdout
    assert (cache / "realesr-animevideov3.pth").stat().st_size == 2_504_012
    listing = _vsrflow("models", "list", env=env)
    assert listing.returncode == 0
    line = next(x for x in listing.stdout.splitlines() if x.startswith("realesr-animevideov3 "))
    assert "cached" in line


def test_an_api_that_never_answers_fails_in_seconds_in_one_line(
    no_audio_clip: mf.FixtureInfo, tmp_path: Path
) -> None:
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts, never answers
    try:
        started = time.monotonic()
        result = _vsrflow(
            "upscale",
            str(no_audio_clip.path),
            "-o",
            str(tmp_path / "o.mp4"),
            "--no-progress",
            env={"PREFECT_API_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/api"},
        )
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsrflow: error: the Prefect API at"), lines
    assert "does not answer" in lines[0] and elapsed < 30
    assert not (tmp_path / "o.mp4").exists()
