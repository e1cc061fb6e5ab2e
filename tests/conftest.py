"""Session-wide test setup for vsrflow.

Why the environment is set here, at import time: pytest imports this conftest before any test
module, so these defaults are in place before anything imports Prefect (Prefect reads its
settings when first imported). ``setdefault`` keeps whatever a developer or CI exported.

* PREFECT_HOME -> a fresh temp dir, so tests never touch ~/.prefect or a developer's database.
* PREFECT_SERVER_ANALYTICS_ENABLED=false: there is no internet here.
* PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90: the temporary server needs 15-30 s on
  2 cores, more than Prefect's default allows.
* PREFECT_LOGGING_LEVEL=WARNING keeps test output readable.

Shared data (real clips and model weights) lives outside the repository, in
``$VSRFLOW_SHARED_DIR`` (default ``<repo root>/../shared``); tests that need it skip with the
missing path in the reason. Synthetic media is generated once per session by
``media_fixtures`` into a pytest temp dir.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# A test's CLI run without PREFECT_API_URL starts a background Prefect server in its own
# PREFECT_HOME (vsrflow.background_server): it stops itself after this many idle minutes.
os.environ.setdefault("VSRFLOW_SERVER_IDLE_MINUTES", "2")
_PREFECT_HOME_CREATED: str | None = None
if "PREFECT_HOME" not in os.environ:
    _PREFECT_HOME_CREATED = tempfile.mkdtemp(prefix="vsrflow-test-prefect-home-")
    os.environ["PREFECT_HOME"] = _PREFECT_HOME_CREATED
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# pytest's default "prepend" import mode already puts tests/ on sys.path; this keeps
# `import media_fixtures` working under --import-mode=importlib too.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import media_fixtures as mf  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("VSRFLOW_SHARED_DIR", str(REPO_ROOT.parent / "shared")))


def _git_status() -> set[str] | None:
    """``git status --porcelain`` lines (None outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.splitlines())


_STATUS_AT_START: set[str] | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _STATUS_AT_START
    _STATUS_AT_START = _git_status()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the services (Slurm, S3, Prefect server) this session started itself; then the
    suite must have left the checkout as it found it: a test that writes run output, caches
    or result records into the repository (as a cache-policy bug once wrote batch/) fails
    the run, naming the files."""
    import infra

    infra.stop_started()
    after = _git_status()
    if _STATUS_AT_START is None or after is None:
        return
    new = sorted(after - _STATUS_AT_START)
    if new:
        print("\nthe test suite changed the checkout (git status):\n  " + "\n  ".join(new))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the temporary PREFECT_HOME this conftest created (never a user-provided one)."""
    if _PREFECT_HOME_CREATED is not None:
        shutil.rmtree(_PREFECT_HOME_CREATED, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Shared data (read in place, never copied into the repository)


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """The suite's SeaweedFS, its endpoint and keys exported to this process's environment for
    the module (in-process flows use no credentials block); skipped where it cannot run.
    Modules that only need the values override this fixture."""
    import infra

    try:
        env = infra.ensure_s3()
    except infra.InfraUnavailable as exc:
        pytest.skip(f"S3 (SeaweedFS) cannot run here: {exc}")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found: {path} (set VSRFLOW_SHARED_DIR to the shared data dir)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data directory; skips the test when it is absent."""
    return _require(SHARED_DIR, "shared data directory")


@pytest.fixture(scope="session")
def shared_media(shared_dir: Path) -> Callable[[str], Path]:
    """``shared_media("carphone_176x144_2997fps_noaudio.mp4")`` -> path, or skip if missing."""

    def get(name: str) -> Path:
        return _require(shared_dir / "media" / name, "shared media file")

    return get


@pytest.fixture(scope="session")
def shared_model(shared_dir: Path) -> Callable[[str], Path]:
    """``shared_model("realesr-animevideov3.pth")`` -> path, or skip if missing."""

    def get(name: str) -> Path:
        return _require(shared_dir / "models" / name, "shared model file")

    return get


@pytest.fixture(scope="session")
def shared_image(shared_dir: Path) -> Callable[[str], Path]:
    """``shared_image("0014.jpg")`` -> path, or skip if missing."""

    def get(name: str) -> Path:
        return _require(shared_dir / "images" / name, "shared image file")

    return get


# --------------------------------------------------------------------------------------------
# Synthetic media, built once per session


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session temp dir holding every generated media fixture."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def vfr_clip(media_dir: Path) -> mf.FixtureInfo:
    return mf.make_vfr(media_dir / "vfr.mp4")


@pytest.fixture(scope="session")
def rotated_clip(media_dir: Path) -> mf.FixtureInfo:
    return mf.make_rotated(media_dir / "rotated90.mp4")


@pytest.fixture(scope="session")
def tenbit_clip(media_dir: Path) -> mf.FixtureInfo:
    return mf.make_10bit(media_dir / "tenbit.mp4")


@pytest.fixture(scope="session")
def multitrack_clip(media_dir: Path) -> mf.FixtureInfo:
    return mf.make_multitrack(media_dir / "multitrack.mp4")


@pytest.fixture(scope="session")
def multitrack_mkv_clip(media_dir: Path) -> mf.FixtureInfo:
    return mf.make_multitrack_mkv(media_dir / "multitrack.mkv")


@pytest.fixture(scope="session")
def odd_size_clip(media_dir: Path) -> mf.FixtureInfo:
    return mf.make_odd_size(media_dir / "odd_321x181.mp4")


@pytest.fixture(scope="session")
def no_audio_clip(media_dir: Path) -> mf.FixtureInfo:
    return mf.make_no_audio(media_dir / "no_audio.mp4")


@pytest.fixture(scope="session")
def truncated_clip(media_dir: Path) -> mf.FixtureInfo:
    """Faststart mp4 cut to 60%: opens, declares 24 frames, decodes fewer."""
    return mf.make_truncated(media_dir / "truncated.mp4")


@pytest.fixture(scope="session")
def truncated_no_moov_clip(media_dir: Path) -> mf.FixtureInfo:
    """Default (moov at end) mp4 cut to 60%: ``av.open`` raises InvalidDataError."""
    return mf.make_truncated(media_dir / "truncated_no_moov.mp4", faststart=False)


@pytest.fixture(scope="session")
def zero_byte_file(media_dir: Path) -> mf.FixtureInfo:
    return mf.make_zero_byte(media_dir / "zero_byte.mp4")


@pytest.fixture(scope="session")
def not_media_file(media_dir: Path) -> mf.FixtureInfo:
    return mf.make_not_media(media_dir / "not_media.mp4")


@pytest.fixture(scope="session")
def image_set(media_dir: Path) -> mf.ImageSetInfo:
    return mf.make_image_set(media_dir / "images")


@pytest.fixture(scope="session")
def chapters_clip(media_dir: Path) -> mf.FixtureInfo:
    """mp4 with two chapters (see ``media_fixtures.CHAPTERS``) and one AAC track."""
    return mf.make_chapters(media_dir / "chapters.mp4")


@pytest.fixture(scope="session")
def audio_only_file(media_dir: Path) -> mf.FixtureInfo:
    """An AAC-only .m4a: opens, but has no video stream."""
    return mf.make_audio_only(media_dir / "audio_only.m4a")
