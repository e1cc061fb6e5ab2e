"""Turn a model name or file into a local, sha256-verified weights file.

Workers on a cluster must never run on half-downloaded or silently swapped weights, and
must not all hit GitHub at once. So: look in user-managed directories first (strict: a
wrong hash there is the user's mistake and is reported, never overwritten), then in a
shared cache (a corrupt file there is ours and is re-downloaded), and download only as a
last resort, into a temp file that is renamed into place only once its hash matches.

The download is our own ``_download``/``_stream`` rather than
``torch.hub.download_url_to_file``. That function does have a progress bar, a temp file
renamed into place, a sha256 check (``hash_prefix`` accepts the full digest) and works with
plain http:// mirrors, but (read and measured on torch 2.14.1) it opens the URL without a
timeout, so a mirror that stalls mid-transfer holds a worker forever (still blocked after
5 s in the measurement; only a process-wide ``socket.setdefaulttimeout`` would change that);
a transfer cut short shows up only as ``RuntimeError: invalid hash value`` instead of "closed
after N of M bytes"; it does not fsync before the rename; and its bar carries no file name.
Keeping ours costs about 70 lines; tests pin the timeout, the cut transfer and the bar's label.

Environment:

``VSRFLOW_MODEL_PATH``
    ``os.pathsep``-separated directories searched first for ``spec.filename``.
``VSRFLOW_MODEL_CACHE``
    Download cache directory (default ``~/.cache/vsrflow/models``).
``VSRFLOW_MODEL_BASE_URL``
    Replaces ``https://github.com/xinntao/Real-ESRGAN/releases/download/`` for mirrors and
    tests; the release path below it (``v0.2.5.0/<file>.pth``) is kept.
``VSRFLOW_DOWNLOAD_DEADLINE_S``
    Longest a whole download may take (default 3600 s).
``VSRFLOW_DOWNLOAD_MIN_SPEED``, ``VSRFLOW_DOWNLOAD_SPEED_WINDOW_S``
    A mirror that delivers fewer than MIN_SPEED bytes/s (default 10240) over the last WINDOW
    seconds (default 30) is given up on: the per-read timeout alone never fires on a mirror
    that drips a byte at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO, Final

from tqdm import tqdm

from vsrflow.errors import (
    ModelError,
    UnknownModelError,
    WeightsDownloadError,
    WeightsHashMismatchError,
    WeightsNotFoundError,
)
from vsrflow.hashing import clear_hash_memo, file_sha256
from vsrflow.models.registry import ModelSpec, get_spec, list_specs
from vsrflow.scratch import owner_tag, sweep

ENV_MODEL_PATH: Final = "VSRFLOW_MODEL_PATH"
ENV_MODEL_CACHE: Final = "VSRFLOW_MODEL_CACHE"
ENV_MODEL_BASE_URL: Final = "VSRFLOW_MODEL_BASE_URL"

#: File types :mod:`vsrflow.models.loader` can read without executing pickled code.
WEIGHT_SUFFIXES: Final = (".pth", ".safetensors")

_CHUNK: Final = 1 << 20  # 1 MiB: hashing and download block size
_DOWNLOAD_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class ResolvedWeights:
    """A local weights file whose sha256 has been checked (or computed, for user files)."""

    path: Path
    sha256: str
    #: The registry entry, or ``None`` for a user-supplied file.
    spec: ModelSpec | None

    @property
    def name(self) -> str:
        """Registry name, or the file stem for user files."""
        return self.spec.name if self.spec is not None else self.path.stem


# --- locations -------------------------------------------------------------------------


def default_search_path() -> tuple[Path, ...]:
    """Directories from ``VSRFLOW_MODEL_PATH`` (empty entries ignored)."""
    raw = os.environ.get(ENV_MODEL_PATH, "")
    return tuple(Path(p).expanduser() for p in raw.split(os.pathsep) if p)


def default_cache_dir() -> Path:
    """``VSRFLOW_MODEL_CACHE``, else ``~/.cache/vsrflow/models``."""
    raw = os.environ.get(ENV_MODEL_CACHE)
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "vsrflow" / "models"


def download_url(spec: ModelSpec) -> str:
    """``spec.url``, or the same release path under ``VSRFLOW_MODEL_BASE_URL``."""
    base = os.environ.get(ENV_MODEL_BASE_URL)
    if not base:
        return spec.url
    return base.rstrip("/") + "/" + spec.release_path


def _is_path_like(model: str) -> bool:
    return os.sep in model or "/" in model or model.lower().endswith(WEIGHT_SUFFIXES)


# --- public API ------------------------------------------------------------------------


def resolve_weights(
    model: str | os.PathLike[str],
    *,
    cache_dir: Path | None = None,
    search_path: Sequence[Path] | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> ResolvedWeights:
    """Return a verified local file for a registry name or a user weights file.

    A registry name is looked up in ``search_path`` (default ``VSRFLOW_MODEL_PATH``), then
    in ``cache_dir`` (default ``VSRFLOW_MODEL_CACHE`` or ``~/.cache/vsrflow/models``), and
    downloaded into the cache when missing or corrupt there and ``allow_download`` is true.
    Anything else is treated as a path to a ``.pth``/``.safetensors`` file and hashed.
    """
    if isinstance(model, os.PathLike) or (model not in _registry_names() and _is_path_like(model)):
        return _resolve_user_file(Path(model))
    spec = get_spec(model)  # raises UnknownModelError with suggestions
    dirs = default_search_path() if search_path is None else tuple(search_path)
    cache = default_cache_dir() if cache_dir is None else cache_dir

    for directory in dirs:
        candidate = directory / spec.filename
        if candidate.is_file():
            actual = file_sha256(candidate)
            if actual != spec.sha256:
                raise WeightsHashMismatchError(
                    f"{candidate} (on the model search path) is not the {spec.name} release file:"
                    f" expected sha256 {spec.sha256}, got {actual}. Replace or remove it."
                )
            return ResolvedWeights(candidate, actual, spec)

    _sweep_partial_downloads(cache)
    cached = cache / spec.filename
    if cached.is_file():
        actual = file_sha256(cached)
        if actual == spec.sha256:
            return ResolvedWeights(cached, actual, spec)
        if not allow_download:
            raise WeightsHashMismatchError(
                f"cached {cached} is corrupt: expected sha256 {spec.sha256}, got {actual};"
                " downloads are disabled, so it was not replaced"
            )
    elif not allow_download:
        where = ", ".join(str(d) for d in (*dirs, cache))
        raise WeightsNotFoundError(
            f"weights for {spec.name} ({spec.filename}) not found in {where} and downloads are"
            f" disabled; run `vsrflow models fetch {spec.name}` or put the file in a directory"
            f" listed in {ENV_MODEL_PATH}"
        )
    return ResolvedWeights(_download(spec, cache, progress=progress), spec.sha256, spec)


def fetch_weights(
    name: str,
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> ResolvedWeights:
    """Make sure registry model ``name`` is in the cache (for ``vsrflow models fetch``).

    The search path is ignored on purpose: fetching is how a cache is pre-filled, e.g. on a
    login node before jobs that run with downloads disabled. ``force`` re-downloads even a
    valid cached file.
    """
    spec = get_spec(name)
    cache = default_cache_dir() if cache_dir is None else cache_dir
    _sweep_partial_downloads(cache)
    cached = cache / spec.filename
    if not force and cached.is_file() and file_sha256(cached) == spec.sha256:
        return ResolvedWeights(cached, spec.sha256, spec)
    return ResolvedWeights(_download(spec, cache, progress=progress), spec.sha256, spec)


# --- internals -------------------------------------------------------------------------


def _registry_names() -> set[str]:
    return {s.name for s in list_specs()}


def _resolve_user_file(path: Path) -> ResolvedWeights:
    path = path.expanduser()
    if not path.is_file():
        raise UnknownModelError(f"weights file {path} does not exist (and is no registry name)")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ModelError(
            f"{path}: unsupported weights file type {path.suffix!r};"
            f" use one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    return ResolvedWeights(path, file_sha256(path), None)


def _is_partial_download(name: str) -> bool:
    """``.<file>.<random>.part``: a download this module started (untagged: older versions)."""
    return name.startswith(".") and name.endswith(".part")


def _sweep_partial_downloads(cache: Path) -> None:
    """Remove the ``.part`` files of downloads whose process died (kill -9, node lost): the
    owner-tagged ones whose PID is gone, untagged ones by age (:mod:`vsrflow.scratch`)."""
    if cache.is_dir():
        sweep(cache, legacy=_is_partial_download)


def fetch_hint(name: str, otherwise: str) -> str:
    """The one-command step that puts registry weights where every run finds them (workers
    are often offline: clusters, air-gapped hosts), or what to pass instead (``otherwise``,
    e.g. "your own file with --weights")."""
    return (
        f"Fetch them once on a machine that can reach the release: `vsrflow models fetch"
        f" {name}` (into {ENV_MODEL_CACHE}), or copy the release file into a directory of"
        f" {ENV_MODEL_PATH}, or pass {otherwise}."
    )


def _download(spec: ModelSpec, cache: Path, *, progress: bool) -> Path:
    """Stream ``spec`` into ``cache`` atomically; return the final path.

    Concurrent downloads of the same file by several workers are safe: each writes its own
    temp file and ``os.replace`` of identical verified bytes is atomic.
    """
    url = download_url(spec)
    if not url.startswith(("https://", "http://", "file://")):
        raise WeightsDownloadError(f"refusing to download {spec.name} from {url}: bad scheme")
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / spec.filename
    _sweep_partial_downloads(cache)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{spec.filename}.{owner_tag()}", suffix=".part", dir=cache
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream(url, out, spec, progress=progress)
            out.flush()
            os.fsync(out.fileno())
        if actual != spec.sha256:
            raise WeightsHashMismatchError(
                f"download of {spec.name} from {url} has the wrong sha256:"
                f" expected {spec.sha256}, got {actual}; nothing was saved"
            )
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return final


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise WeightsDownloadError(f"{name}={value!r} is not a number") from None


class _Pace:
    """Gives up on a transfer that takes too long overall or crawls (see the module doc)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.deadline_s = _env_float("VSRFLOW_DOWNLOAD_DEADLINE_S", 3600.0)
        self.min_speed = _env_float("VSRFLOW_DOWNLOAD_MIN_SPEED", 10240.0)
        self.window_s = _env_float("VSRFLOW_DOWNLOAD_SPEED_WINDOW_S", 30.0)
        self.started = time.monotonic()
        self.window_start = self.started
        self.window_bytes = 0

    def check(self, received: int, chunk: int) -> None:
        now = time.monotonic()
        if now - self.started > self.deadline_s:
            raise WeightsDownloadError(
                f"{self.label}: not finished after {self.deadline_s:.0f} s "
                f"({received} bytes; VSRFLOW_DOWNLOAD_DEADLINE_S)"
            )
        self.window_bytes += chunk
        elapsed = now - self.window_start
        if elapsed >= self.window_s:
            speed = self.window_bytes / elapsed
            if speed < self.min_speed:
                raise WeightsDownloadError(
                    f"{self.label}: stalled at {speed:.0f} bytes/s over {elapsed:.0f} s "
                    f"(below VSRFLOW_DOWNLOAD_MIN_SPEED={self.min_speed:.0f}) after "
                    f"{received} bytes"
                )
            self.window_start, self.window_bytes = now, 0


def _stream(url: str, out: BinaryIO, spec: ModelSpec, *, progress: bool) -> str:
    """Copy ``url`` into ``out`` as bytes arrive (up to 1 MiB per read), returning the sha256
    of what was written; gives up on a crawling or endless transfer (:class:`_Pace`)."""
    digest = hashlib.sha256()
    pace = _Pace(f"downloading {spec.name} from {url} failed")
    request = urllib.request.Request(url, headers={"User-Agent": "vsrflow"})
    announced: int | None = None
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            announced = int(length) if length and length.isdigit() else None
            with tqdm(
                total=announced or spec.size_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=spec.filename,
                disable=not progress,
                leave=False,
            ) as bar:
                # read1: what has arrived (a drip must not block inside one 1 MiB read).
                while chunk := response.read1(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
                    received += len(chunk)
                    pace.check(received, len(chunk))
    except urllib.error.HTTPError as exc:
        raise WeightsDownloadError(
            f"downloading {spec.name} from {url} failed: HTTP {exc.code} {exc.reason}"
        ) from exc
    except urllib.error.URLError as exc:
        raise WeightsDownloadError(
            f"downloading {spec.name} from {url} failed: {exc.reason}"
        ) from exc
    except (OSError, HTTPException) as exc:
        raise WeightsDownloadError(f"downloading {spec.name} from {url} failed: {exc}") from exc
    # http.client's read(amt) returns b"" on an early close instead of raising
    # IncompleteRead, so a cut transfer has to be detected here.
    if announced is not None and received != announced:
        raise WeightsDownloadError(
            f"downloading {spec.name} from {url} failed: connection closed after"
            f" {received} of {announced} bytes"
        )
    return digest.hexdigest()


__all__ = [
    "ENV_MODEL_BASE_URL",
    "ENV_MODEL_CACHE",
    "ENV_MODEL_PATH",
    "WEIGHT_SUFFIXES",
    "ResolvedWeights",
    "clear_hash_memo",
    "default_cache_dir",
    "default_search_path",
    "download_url",
    "fetch_hint",
    "fetch_weights",
    "file_sha256",
    "resolve_weights",
]
