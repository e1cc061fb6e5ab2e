"""A run never destroys its input, fails before compute in one line, and cleans up after a
killed run (issue 13, items 1, 9 and 10).

* The source survives every spelling of "the same file" (same path, relative and absolute,
  ``./d/../a.mp4``, a symbolic link, a hard link) through the ``vsrflow`` command: exit 2, one
  line, source bytes unchanged; the same for S3 (same key, ``x/../`` spelling; another
  endpoint is another object) and for the flow itself (a deployment run skips the CLI's
  check); an image folder into itself or a subfolder is refused.
* An output that is an existing folder, a read-only output folder or work dir, and a work dir
  that is a file fail before any compute, in one line. Read-only: tests run as root here,
  where ``chmod 0o555`` does not stop writes, so the folder is bind-mounted read-only in a
  private mount namespace (``unshare -m``) around the command; as a normal user chmod is
  used; a root without CAP_SYS_ADMIN skips, saying so.
* An expected failure inside the flow prints exactly one ``vsrflow: error:`` line.
* kill -9 of the command leaves no Prefect temporary server behind, and the next run removes
  the chunk scratch the killed one left; a killed weights download's ``.part`` is removed by
  the next fetch; scratch of a live process is never touched.
* A folder with a corrupt image publishes the others, names it in the JSON summary and the
  manifest, and exits 3 (partial).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import infra
import pytest
from PIL import Image

from vsrflow import safety, scratch, storage
from vsrflow.models import weights as weights_mod
from vsrflow.models.registry import get_spec
from vsrflow.storage import S3Config

CLIP = "carphone_176x144_2997fps_noaudio.mp4"


# --------------------------------------------------------------------------------------------
# Helpers


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The run failed with exit 2 and exactly one stderr line, ``vsrflow: error: ...``."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsrflow: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def _scratch_in(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if scratch.MARK in p.name]
    except OSError:
        return []


@pytest.fixture(scope="module")
def weights_dir(shared_model: Callable[[str], Path]) -> Path:
    return shared_model("realesr-animevideov3.pth").parent


@pytest.fixture
def clip(tmp_path: Path, shared_media: Callable[[str], Path]) -> Path:
    path = tmp_path / "a.mp4"
    shutil.copyfile(shared_media(CLIP), path)
    return path


@pytest.fixture(scope="module")
def prefect_env() -> dict[str, str]:
    """The suite's Prefect server (one server for every CLI run here, instead of one
    temporary server per command)."""
    try:
        return infra.ensure_prefect()
    except infra.InfraUnavailable as exc:
        pytest.skip(f"Prefect server cannot run here: {exc}")


# --------------------------------------------------------------------------------------------
# The core checks (no Prefect)


def test_every_spelling_of_the_same_file_is_the_same_location(tmp_path: Path) -> None:
    source = tmp_path / "a.mp4"
    source.write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "link.mp4").symlink_to(source)
    os.link(source, tmp_path / "hard.mp4")
    (tmp_path / "dirlink").symlink_to(tmp_path)
    spellings = [
        str(source),
        "a.mp4",
        "./d/../a.mp4",
        str(tmp_path / "link.mp4"),
        str(tmp_path / "hard.mp4"),
        str(tmp_path / "dirlink" / "a.mp4"),
    ]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for spelling in spellings:
            assert safety.same_location("a.mp4", spelling), spelling
            with pytest.raises(safety.UnsafeOutputError, match="is the input"):
                safety.check_video_job("a.mp4", spelling, str(tmp_path / "w"))
        assert not safety.same_location("a.mp4", "b.mp4")
        assert not safety.same_location("a.mp4", "d/a.mp4")
        # A side file of the output would be the source.
        with pytest.raises(safety.UnsafeOutputError, match="written beside the output"):
            safety.check_not_overwriting_input(
                "a.mp4.manifest.json", "a.mp4", side_suffixes=safety.VIDEO_SIDE_FILES
            )
    finally:
        os.chdir(cwd)


def test_s3_identity_includes_the_endpoint_and_collapses_dot_segments() -> None:
    one = S3Config(endpoint_url="http://127.0.0.1:8333")
    same = S3Config(endpoint_url="HTTP://127.0.0.1:8333/")
    other = S3Config(endpoint_url="http://127.0.0.1:9333")
    uri = "s3://bucket/videos/a.mp4"
    assert safety.location_identity(uri, one) == safety.location_identity(uri, same)
    assert safety.location_identity(uri, one) != safety.location_identity(uri, other)
    assert safety.location_identity(uri, S3Config()) == "s3://aws/bucket/videos/a.mp4"
    assert safety.same_location(uri, "s3://bucket/videos/x/../a.mp4", one)
    assert safety.same_location(uri, "s3://bucket//videos/./a.mp4", one)
    assert not safety.same_location(uri, "s3://bucket/videos/a.mkv", one)
    assert not safety.same_location(uri, "s3://other-bucket/videos/a.mp4", one)
    assert not safety.same_location(uri, "/bucket/videos/a.mp4", one)
    with pytest.raises(safety.UnsafeOutputError):
        safety.check_video_job(uri, "s3://bucket/videos/x/../a.mp4", "s3://bucket/w/", one)


def test_an_output_folder_in_or_equal_to_the_input_folder_is_refused(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (tmp_path / "photos-link").symlink_to(photos)
    for output in (photos, photos / "x4", photos / "a" / "b", tmp_path / "photos-link" / "x4"):
        with pytest.raises(safety.UnsafeOutputError, match="input folder"):
            safety.check_folder_not_inside_input(str(photos), str(output))
    safety.check_folder_not_inside_input(str(photos), str(tmp_path / "photos_x4"))
    safety.check_folder_not_inside_input(str(photos / "sub"), str(photos))  # above: fine
    for output in ("s3://bkt/in/", "s3://bkt/in", "s3://bkt/in/x4/"):
        with pytest.raises(safety.UnsafeOutputError):
            safety.check_folder_not_inside_input("s3://bkt/in/", output, S3Config())
    safety.check_folder_not_inside_input("s3://bkt/in/", "s3://bkt/in-x4/", S3Config())
    safety.check_folder_not_inside_input("s3://bkt/in/", "s3://ckt/in/", S3Config())


def test_writability_names_the_file_in_the_way(tmp_path: Path) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(safety.NotWritableError, match="is a file, not a folder"):
        safety.check_directory_writable(str(afile), "work dir")
    with pytest.raises(safety.NotWritableError, match="is a file, so"):
        safety.check_directory_writable(str(afile / "w" / "x"), "work dir")
    with pytest.raises(safety.NotWritableError, match="existing folder"):
        safety.check_output_file_writable(str(tmp_path))
    with pytest.raises(safety.NotWritableError, match="is a file"):
        safety.check_output_file_writable(str(afile / "out.mp4"))
    safety.check_directory_writable(str(tmp_path / "new" / "deeper"), "work dir")
    assert not (tmp_path / "new").exists()  # checked, not created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no probe file left


# --------------------------------------------------------------------------------------------
# Scratch of dead runs


def test_sweep_removes_only_the_scratch_of_dead_or_long_gone_owners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = scratch.machine_id()
    dead = tmp_path / f".out.mp4.{scratch.MARK}{machine}-{_dead_pid()}-abc"
    live = tmp_path / f".out.mp4.{scratch.MARK}{machine}-{os.getpid()}-abc"
    foreign_old = tmp_path / f".c.mp4.{scratch.MARK}00000000-1-old"
    foreign_new = tmp_path / f".c.mp4.{scratch.MARK}00000000-1-new"
    unrelated = tmp_path / ".something-else"
    for path in (dead, live, foreign_old, foreign_new, unrelated):
        path.mkdir()
        (path / "chunk.mp4").write_bytes(b"partial")
    old = time.time() - 7 * 3600
    for path in (foreign_old, foreign_old / "chunk.mp4", unrelated):
        os.utime(path, (old, old))
    monkeypatch.delenv(scratch.STALE_ENV, raising=False)
    removed = scratch.sweep(tmp_path)
    assert sorted(removed) == sorted([dead, foreign_old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live, foreign_new, unrelated)
    )
    assert scratch.sweep(tmp_path) == []  # once per directory and process
    monkeypatch.setenv(scratch.STALE_ENV, "0")
    assert scratch.sweep(tmp_path, once=False) == [foreign_new]  # the age is configurable
    assert live.exists()  # a live process's scratch is never touched, however old


def test_locations_scratch_is_owner_tagged_and_cleans_up_dead_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vsrflow.locations import Locations

    monkeypatch.setenv("VSRFLOW_SCRATCH_DIR", str(tmp_path / "root"))
    (tmp_path / "root").mkdir()
    left = tmp_path / "root" / f"{scratch.MARK}{scratch.machine_id()}-{_dead_pid()}-x"
    left.mkdir()
    beside = tmp_path / "out" / f".o.png.{scratch.MARK}{scratch.machine_id()}-{_dead_pid()}-y"
    beside.mkdir(parents=True)
    locations = Locations()
    with locations.scratch("a.png") as path:
        assert scratch.owner_tag() in path.parent.name
        assert not left.exists()
    with locations.scratch_for(str(tmp_path / "out" / "o.png")) as path:
        assert scratch.owner_tag() in path.parent.name and path.parent.name.startswith(".o.png.")
        assert not beside.exists()
    assert list((tmp_path / "root").iterdir()) == []
    assert list((tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------------------------
# Through the command: refused before any compute, in one line, source untouched


def test_the_source_survives_every_same_file_spelling_through_the_cli(
    clip: Path, tmp_path: Path
) -> None:
    before = _sha(clip)
    (tmp_path / "d").mkdir()
    (tmp_path / "link.mp4").symlink_to(clip)
    os.link(clip, tmp_path / "hard.mp4")
    for output in ("a.mp4", str(clip), "./d/../a.mp4", "link.mp4", "hard.mp4"):
        result = _cli("upscale", "a.mp4", "-o", output, "--content", "anime", cwd=tmp_path)
        _one_error_line(result, "is the input", "Choose another output path")
        assert _sha(clip) == before, output
    assert not (tmp_path / ".vsrflow-work").exists()  # refused before anything was written


def test_bad_output_locations_fail_before_compute_in_one_line(clip: Path, tmp_path: Path) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    (tmp_path / "outdir").mkdir()
    cases = [
        (("-o", "outdir"), "is an existing folder"),
        (("-o", "f/out.mp4"), "is a file, not a folder"),
        (("-o", "o.mp4", "--work-dir", "f"), "work dir f"),
        (("-o", "o.mp4", "--work-dir", "f/w"), "is a file, so"),
    ]
    for args, words in cases:
        started = time.monotonic()
        result = _cli("upscale", "a.mp4", *args, "--content", "anime", cwd=tmp_path)
        _one_error_line(result, words)
        assert time.monotonic() - started < 60, args  # no Prefect server, no compute
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "f", "outdir"]
    assert list((tmp_path / "outdir").iterdir()) == []


def _read_only_prefix(folder: Path) -> tuple[str, ...]:
    """A command prefix under which ``folder`` is read-only (see the module docstring)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ()
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, str(folder), "sh", "-c", f"! touch {folder}/x"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0 or (folder / "x").exists():
        pytest.skip(
            "running as root, where chmod 0o555 does not stop writes, and a read-only bind "
            f"mount in a private namespace is not allowed here: {probe.stderr.decode()[-200:]}"
        )
    return ("unshare", "-m", "sh", "-c", script, str(folder))


def test_a_read_only_output_folder_or_work_dir_fails_before_compute(
    clip: Path, tmp_path: Path
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    prefix = _read_only_prefix(locked)
    try:
        result = _cli(
            "upscale", "a.mp4", "-o", "locked/out.mp4", "--content", "anime",
            cwd=tmp_path, prefix=prefix,
        )  # fmt: skip
        _one_error_line(result, "cannot create files in", "locked")
        result = _cli(
            "upscale", "a.mp4", "-o", "out.mp4", "--work-dir", "locked/w", "--content", "anime",
            cwd=tmp_path, prefix=prefix,
        )  # fmt: skip
        _one_error_line(result, "work dir locked/w", "cannot create files in")
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []
    assert not (tmp_path / "out.mp4").exists()


def test_an_image_folder_into_itself_or_a_subfolder_is_refused(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(photos / "a.png")
    before = _sha(photos / "a.png")
    for output in ("photos", "photos/x4", "./photos/../photos/", "photos/a.png/.."):
        result = _cli("upscale", "photos", "-o", output, "--content", "anime", cwd=tmp_path)
        _one_error_line(result, "input folder")
    result = _cli("upscale", "photos/a.png", "-o", "photos", "--content", "anime", cwd=tmp_path)
    _one_error_line(result, "is the input")
    assert sorted(p.name for p in photos.iterdir()) == ["a.png"]
    assert _sha(photos / "a.png") == before


# --------------------------------------------------------------------------------------------
# Inside the flow: one line, partial folders


def _small_photos(folder: Path) -> None:
    folder.mkdir()
    Image.new("RGB", (16, 12), (200, 10, 10)).save(folder / "a.png")
    Image.new("RGB", (16, 12), (10, 200, 10)).save(folder / "c.jpg", quality=90)
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)


def test_a_corrupt_image_in_a_folder_is_named_and_the_run_is_partial(
    tmp_path: Path, weights_dir: Path, prefect_env: dict[str, str]
) -> None:
    _small_photos(tmp_path / "photos")
    env = {**prefect_env, "VSRFLOW_MODEL_PATH": str(weights_dir)}
    result = _cli(
        "upscale", "photos", "-o", "out", "--content", "anime", "--no-progress",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsrflow: partial: 1 of 3"), result.stderr
    assert "b.png" in lines[0]
    summary = json.loads(result.stdout)
    assert summary["status"] == "partial"
    assert [f["source"] for f in summary["failed"]] == ["photos/b.png"]
    assert "not an image" in summary["failed"][0]["reason"]
    statuses = {Path(e["source"]).name: e["status"] for e in summary["images"]}
    assert statuses == {"a.png": "computed", "b.png": "failed", "c.jpg": "computed"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file()) == [
        ".vsrflow-manifest.json",
        "a.png",
        "c.jpg",
    ]
    manifest = json.loads((tmp_path / "out" / ".vsrflow-manifest.json").read_text())
    assert [f["source"] for f in manifest["failed"]] == ["photos/b.png"]
    bad = next(e for e in manifest["images"] if e["source"].endswith("b.png"))
    assert bad["status"] == "failed" and "not an image" in bad["reason"]
    with Image.open(tmp_path / "out" / "a.png") as image:
        assert image.size == (64, 48)


def test_an_expected_failure_inside_the_flow_prints_exactly_one_line(
    tmp_path: Path, weights_dir: Path, prefect_env: dict[str, str]
) -> None:
    photos = tmp_path / "photos"
    _small_photos(photos)
    env = {**prefect_env, "VSRFLOW_MODEL_PATH": str(weights_dir)}
    # One image, corrupt: the image task fails in the flow (not in the CLI's own checks).
    result = _cli(
        "upscale", "photos/b.png", "-o", "out", "--content", "anime", "--no-progress",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    _one_error_line(result, "b.png", "not an image")
    # With -v, Prefect's own records are shown too.
    verbose = _cli(
        "upscale", "photos/b.png", "-o", "out", "--content", "anime", "--no-progress", "-v",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert verbose.returncode == 2
    assert "Finished in state Failed" in verbose.stderr


# --------------------------------------------------------------------------------------------
# S3


@pytest.fixture(scope="module")
def bucket(s3_env: dict[str, str]) -> Iterator[str]:
    with infra.temporary_bucket(S3Config.from_env(s3_env).client(), "vsrflow-safety") as name:
        yield name


def test_the_s3_source_survives_the_same_key_through_cli_and_flow(
    s3_env: dict[str, str],
    bucket: str,
    shared_media: Callable[[str], Path],
    tmp_path: Path,
    weights_dir: Path,
    prefect_env: dict[str, str],
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.upscale_video import upscale_video
    from vsrflow.settings import UpscaleSettings

    s3 = S3Config.from_env(s3_env)
    uri = f"s3://{bucket}/videos/a.mp4"
    storage.upload_file(shared_media(CLIP), uri, s3)
    image = tmp_path / "p.png"
    Image.new("RGB", (8, 6)).save(image)
    storage.upload_file(image, f"s3://{bucket}/in/p.png", s3)

    def objects() -> dict[str, str]:
        return {o.uri: o.etag for o in storage.list_objects(f"s3://{bucket}/", s3)}

    before = objects()
    result = _cli("upscale", uri, "-o", uri, "--content", "anime", cwd=tmp_path)
    _one_error_line(result, "is the input")
    # Other spellings of the key: refused as the same object (or as a malformed key).
    for output in (f"s3://{bucket}/videos/x/../a.mp4", f"s3://{bucket}/videos/./a.mp4"):
        _one_error_line(_cli("upscale", uri, "-o", output, "--content", "anime", cwd=tmp_path))
    for output in (f"s3://{bucket}/in/", f"s3://{bucket}/in/x4/"):
        result = _cli("upscale", f"s3://{bucket}/in/", "-o", output, cwd=tmp_path)
        _one_error_line(result, "input folder")
    # A deployment run does not pass through the CLI: the flow's preflight refuses it.
    settings = UpscaleSettings(model={"name": "realesr-animevideov3"})
    with (
        temporary_settings({PREFECT_API_URL: prefect_env["PREFECT_API_URL"]}),
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv("VSRFLOW_MODEL_PATH", str(weights_dir))
        with pytest.raises(safety.UnsafeOutputError, match="is the input"):
            upscale_video(uri, uri, settings)
    assert objects() == before  # nothing written, the source object unchanged


# --------------------------------------------------------------------------------------------
# kill -9


def test_kill_9_of_the_cli_leaves_no_prefect_server_and_the_next_run_cleans_its_scratch(
    clip: Path, tmp_path: Path, weights_dir: Path, prefect_env: dict[str, str]
) -> None:
    env = {
        "VSRFLOW_MODEL_PATH": str(weights_dir),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # its own temporary server database
    }
    args = ["upscale", "a.mp4", "-o", "out.mkv", "--work-dir", "w", "--content", "anime"]
    args += ["--batch-frames", "40", "--no-progress", "--server", "temporary"]
    without_api = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=tmp_path,
        env={**without_api, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = None
    try:

        def guarded_server() -> int | None:
            for pid in _children(cli.pid):
                if "uvicorn" in _cmdline(pid):
                    return pid
            return None

        server = _wait_for(guarded_server, 180, 0.2)
        assert server, "the temporary Prefect server did not start"
        assert "vsrflow.orphan_guard" in _cmdline(server)  # type: ignore[arg-type]
        chunks = tmp_path / "w" / "chunks"
        assert _wait_for(lambda: _scratch_in(chunks), 300), "no batch started"
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(30)
        gone = _wait_for(lambda: not Path(f"/proc/{server}").exists() or _zombie(server), 15)
        assert gone, f"the temporary server {server} outlived its CLI: {_cmdline(server)}"  # type: ignore[arg-type]
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        if server and Path(f"/proc/{server}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)  # type: ignore[arg-type]
    left = _scratch_in(tmp_path / "w" / "chunks")
    assert left and all(f"-{cli.pid}-" in p.name for p in left)
    # The next run (against the suite's server, to save a second temporary one) removes it.
    rerun = _cli(*args, cwd=tmp_path, env={**env, **prefect_env})
    assert rerun.returncode == 0, rerun.stderr
    assert _scratch_in(tmp_path / "w" / "chunks") == []
    assert _scratch_in(tmp_path) == []
    assert (tmp_path / "out.mkv").is_file()


def _zombie(pid: object) -> bool:
    return not scratch.pid_alive(int(pid))  # type: ignore[call-overload]


class _Release(http.server.BaseHTTPRequestHandler):
    """Serves the weights file; ``drip`` sends a few KB then stalls (a download to kill)."""

    body = b""
    drip = False

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.drip:
            self.wfile.write(self.body[:4096])
            self.wfile.flush()
            time.sleep(60)
            return
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _release_server(body: bytes, drip: bool) -> Iterator[str]:
    handler = type("Handler", (_Release,), {"body": body, "drip": drip})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_killed_download_leaves_a_part_file_that_the_next_fetch_removes(
    tmp_path: Path, weights_dir: Path
) -> None:
    spec = get_spec("realesr-animevideov3")
    body = (weights_dir / spec.filename).read_bytes()
    cache = tmp_path / "cache"
    env = {"VSRFLOW_MODEL_CACHE": str(cache), "VSRFLOW_MODEL_PATH": ""}
    with _release_server(body, drip=True) as url:
        fetch = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "models", "fetch", spec.name],
            env={**os.environ, **env, "VSRFLOW_MODEL_BASE_URL": url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            parts = _wait_for(lambda: list(cache.glob("*.part")), 120)
            assert parts, "the download never started"
            os.kill(fetch.pid, signal.SIGKILL)
        finally:
            fetch.kill()
            fetch.wait()
    assert [p.name for p in cache.glob("*.part")] == [p.name for p in parts]  # type: ignore[union-attr]
    live = cache / f".{spec.filename}.{scratch.owner_tag()}live.part"  # this process: alive
    live.write_bytes(b"in progress")
    with _release_server(body, drip=False) as url:
        result = _cli(
            "models", "fetch", spec.name, cwd=tmp_path,
            env={**env, "VSRFLOW_MODEL_BASE_URL": url},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in cache.iterdir()) == sorted([spec.filename, live.name])
    assert _sha(cache / spec.filename) == spec.sha256
    weights_mod._sweep_partial_downloads(cache)  # already swept in this process: no-op
    assert live.exists()
