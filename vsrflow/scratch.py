"""Scratch files that say who made them, and removal of those a dead run left behind.

Every scratch directory or temporary file vsrflow creates (a chunk or an output before its
rename, an S3 object's local copy, a weights download's ``.part``) carries an *owner tag* in
its name: ``vsrflow-scratch-<machine>-<pid>-``. ``<machine>`` is 8 hex digits of the host
name, the kernel's boot id and the PID namespace, so a PID is only ever compared with the
processes that can actually own it (a Slurm node writing to a shared work dir, a container
with its own PID namespace, or the same host after a reboot get other tags).

:func:`sweep` removes the stale ones in a directory, and runs once per directory and process
just before that process first writes scratch there (the next run cleans up after a killed
one without a separate command). Stale means:

* tagged by this machine: the owner PID is gone (or a zombie). A live process's scratch is
  never touched, however old;
* tagged by another machine (or untagged, for the legacy names a caller passes): nothing in
  it was modified for ``$VSRFLOW_SCRATCH_STALE_S`` seconds (default 6 hours), since a PID on
  another machine cannot be checked from here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

#: Marks scratch names; the owner tag follows it.
MARK: Final = "vsrflow-scratch-"
STALE_ENV: Final = "VSRFLOW_SCRATCH_STALE_S"
DEFAULT_STALE_S: Final = 6 * 3600.0
_TAGGED = re.compile(re.escape(MARK) + r"(?P<machine>[0-9a-f]{8})-(?P<pid>\d+)-")

_swept: set[tuple[str, int]] = set()
_swept_lock = threading.Lock()


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


@functools.cache
def machine_id() -> str:
    """8 hex digits naming this host, boot and PID namespace (see the module docstring)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    text = "|".join((socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), namespace))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def owner_tag() -> str:
    """``vsrflow-scratch-<machine>-<pid>-``: put it in every scratch name this process makes."""
    return f"{MARK}{machine_id()}-{os.getpid()}-"


def stale_after_s() -> float:
    """Seconds after which untagged or foreign scratch counts as abandoned
    (``$VSRFLOW_SCRATCH_STALE_S``)."""
    value = os.environ.get(STALE_ENV, "")
    try:
        return float(value) if value else DEFAULT_STALE_S
    except ValueError:
        raise ValueError(f"{STALE_ENV}={value!r} is not a number of seconds") from None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed process whose parent has
    not reaped it yet still answers ``kill -0``)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _read(f"/proc/{pid}/stat")
    # "pid (comm) S ...": the state follows the last ')' (comm may hold spaces or parens).
    return not stat or stat.rpartition(")")[2].split()[:1] != ["Z"]


def _newest_mtime(path: Path) -> float:
    """Latest modification time of ``path`` and, for a directory, of what is directly in it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def is_stale(
    path: Path, *, legacy: Callable[[str], bool] | None = None, now: float | None = None
) -> bool:
    """Whether ``path`` is scratch a dead or long-gone run left (see the module docstring).

    ``legacy(name)`` marks untagged names that are scratch too (judged by age alone)."""
    match = _TAGGED.search(path.name)
    if match is None and not (legacy is not None and legacy(path.name)):
        return False
    if match is not None and match["machine"] == machine_id():
        return not pid_alive(int(match["pid"]))
    try:
        age = (time.time() if now is None else now) - _newest_mtime(path)
    except OSError:
        return False
    return age > stale_after_s()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def sweep(
    directory: str | os.PathLike[str],
    *,
    legacy: Callable[[str], bool] | None = None,
    once: bool = True,
) -> list[Path]:
    """Remove the stale scratch entries directly in ``directory``; returns what was removed.

    With ``once`` (the default) a directory is swept at most once per process: callers run
    this right before creating scratch, which can happen thousands of times in one run.
    Never raises for a directory that is missing or cannot be listed."""
    directory = Path(directory)
    if once:
        key = (os.path.abspath(directory), os.getpid())
        with _swept_lock:
            if key in _swept:
                return []
            _swept.add(key)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        if is_stale(path, legacy=legacy):
            _remove(path)
            removed.append(path)
    return removed
