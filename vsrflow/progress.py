"""Frame-level progress shared through the work directory.

Batches may run in threads, Dask processes or Slurm jobs on other nodes; the one thing they all
share is the work directory. Each batch rewrites a tiny file with its frame count as it goes,
and the flow writes a listing of the batches of the current output, so the CLI (or anything
else) can show frames done, fps and ETA without talking to the workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path


def _temp_name(path: Path) -> Path:
    """Where :func:`_atomic_write` stages ``path``; a writer killed mid-write leaves it."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")


def _staged_for(entry: str) -> str | None:
    """The name a staging copy made by :func:`_temp_name` stands for, or None for any other
    entry: ``.batch-<key>.json.<random>`` -> ``batch-<key>.json``."""
    if not entry.startswith("."):
        return None
    staged_for, _, suffix = entry[1:].rpartition(".")
    return staged_for if staged_for and suffix else None


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def progress_dir(work_dir: str | os.PathLike[str]) -> Path:
    return Path(work_dir) / "progress"


def batch_progress_path(work_dir: str | os.PathLike[str], key: str) -> Path:
    """Where the batch ``key`` counts its frames."""
    return progress_dir(work_dir) / f"batch-{key}.json"


def listing_path(work_dir: str | os.PathLike[str], output: str) -> Path:
    """Where the flow lists the batches of ``output``; derived from the output name alone."""
    digest = hashlib.sha256(str(output).encode()).hexdigest()[:16]
    return progress_dir(work_dir) / f"job-{digest}.json"


class BatchProgress:
    """Callable handed to the pipeline: adds frames and rewrites the batch's progress file."""

    def __init__(self, work_dir: str | os.PathLike[str], key: str, total: int) -> None:
        self._path = batch_progress_path(work_dir, key)
        self._total = total
        self._done = 0
        self._write()

    def _write(self) -> None:
        _atomic_write(self._path, json.dumps({"done": self._done, "total": self._total}))

    def __call__(self, frames: int) -> None:
        self._done += frames
        self._write()


def job_progress_files(
    work_dir: str | os.PathLike[str], output: str, keys: list[str]
) -> list[Path]:
    """Every progress file of one job: its batches' files, its listing and any staging copy a
    killed writer left behind (``.batch-<key>.json.<random>``), so that cleaning up after a
    published rerun leaves nothing of the job. Other jobs' files in the same folder are not
    listed: they may be mid-run."""
    folder = progress_dir(work_dir)
    own = [batch_progress_path(work_dir, key) for key in keys] + [listing_path(work_dir, output)]
    names = {path.name for path in own}
    files = [folder / name for name in sorted(names)]
    try:
        entries = os.listdir(folder)
    except OSError:
        return files
    files += [folder / entry for entry in entries if _staged_for(entry) in names]
    return files


def write_listing(
    work_dir: str | os.PathLike[str], output: str, keys: list[str], total_frames: int
) -> None:
    _atomic_write(listing_path(work_dir, output), json.dumps({"keys": keys, "total": total_frames}))


@dataclass(frozen=True)
class Snapshot:
    done: int
    total: int


def read_progress(work_dir: str | os.PathLike[str], output: str) -> Snapshot | None:
    """Frames done over all batches of ``output``; None until the flow has planned."""
    try:
        listing = json.loads(listing_path(work_dir, output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    done = 0
    for key in listing["keys"]:
        try:
            state = json.loads(batch_progress_path(work_dir, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        done += int(state.get("done", 0))
    return Snapshot(done=done, total=int(listing["total"]))
