"""The archive catalogue: which videos under a prefix still need upscaling, and who does them.

Framework-free: the archive flows (``flows/archive.py``) call these functions and pass in the
two things only Prefect knows (how to launch a run, what state a run is in).

* :func:`list_candidates` lists the videos under a source prefix (``s3://bucket/prefix/`` or
  a local directory) whose names match glob patterns, skipping hidden paths (work dirs,
  claims, partial uploads) and anything under the target prefix.
* :func:`output_for` maps a source to its output under the target prefix, keeping the
  relative path (``.mp4``/``.mkv``/``.mov`` kept, other containers become ``.mkv``).
* :func:`check_done` decides "already done" from the manifest the upscale flow writes beside
  each output: done when the output exists and the manifest's ``source_identity`` equals
  :meth:`Locations.identity` of the source now (sha256 locally, ETag+size on S3) and its
  ``parameters`` equal the ones requested.
* :class:`ClaimStore` / :func:`claim` make launching idempotent across overlapping runs: a
  video is launched only by whoever *creates* its claim object, and creation is atomic (S3
  ``PutObject`` with ``If-None-Match: *``; locally ``O_CREAT | O_EXCL``). See :func:`claim`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

from vsrflow import storage
from vsrflow.errors import ObjectNotFoundError, StorageError
from vsrflow.locations import Locations
from vsrflow.storage import S3Config

#: Containers the upscale flow can write; sources in other containers get ``.mkv`` outputs.
OUTPUT_SUFFIXES: Final = (".mp4", ".mkv", ".mov")
FALLBACK_SUFFIX: Final = ".mkv"
DEFAULT_PATTERNS: Final = ("*.mp4", "*.mkv", "*.mov")
MANIFEST_SUFFIX: Final = ".manifest.json"
CLAIMS_DIR: Final = ".vsrflow-claims"
#: Manifest parameters that say *where* a video ran, not *what* came out: never compared.
PLACEMENT_PARAMETERS: Final = frozenset({"profile"})

RunState = Literal["active", "completed", "failed", "missing"]


@dataclass(frozen=True)
class Candidate:
    """One source video found under a prefix."""

    location: str  #: s3://bucket/key or a local path
    relative: str  #: path below the source prefix, "/"-separated
    size: int
    #: A cheap content version for claim keys: the S3 ETag, or mtime_ns for a local file.
    version: str
    modified: float  #: epoch seconds (LastModified / mtime)


def _s3_config(locations: Locations) -> S3Config:
    return locations.s3 if locations.s3 is not None else S3Config.from_env()


def normalize_prefix(prefix: str) -> str:
    """``s3://b/videos`` -> ``s3://b/videos/`` (a "directory", so ``videos2/`` is not in
    it); local prefixes are returned as given."""
    if storage.is_s3_uri(prefix):
        bucket, key = storage.parse_s3_uri(prefix, require_key=False)
        key = key.strip("/")
        return f"s3://{bucket}/{key}/" if key else f"s3://{bucket}/"
    return prefix


def _inside(location: str, prefix: str) -> bool:
    if storage.is_s3_uri(location) != storage.is_s3_uri(prefix):
        return False
    if storage.is_s3_uri(prefix):
        return location.startswith(normalize_prefix(prefix))
    try:
        Path(location).resolve().relative_to(Path(prefix).resolve())
    except ValueError:
        return False
    return True


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    """Glob match, case-insensitive: on the file name, or on the relative path for patterns
    that contain a ``/``."""
    name = PurePosixPath(relative).name.lower()
    for pattern in patterns:
        target = relative.lower() if "/" in pattern else name
        if fnmatch.fnmatchcase(target, pattern.lower()):
            return True
    return False


def _hidden(relative: str) -> bool:
    """Work dirs, claims, partial uploads, dotfiles: never sources."""
    return any(part.startswith(".") for part in PurePosixPath(relative).parts)


def list_candidates(
    locations: Locations,
    source_prefix: str,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    *,
    exclude_prefixes: Iterable[str] = (),
    min_age_s: float = 0.0,
    now: float | None = None,
) -> list[Candidate]:
    """Videos under ``source_prefix`` matching ``patterns``, oldest first (then by path).

    Hidden paths and anything inside ``exclude_prefixes`` (pass the target prefix when it is
    nested in the source) are left out, and so are files modified less than ``min_age_s``
    seconds ago (a local file still being copied). A missing local directory or bucket
    raises; an empty prefix gives an empty list.
    """
    if not patterns:
        raise ValueError("patterns must name at least one glob, e.g. *.mp4")
    now = time.time() if now is None else now
    excluded = [p for p in exclude_prefixes if p]
    found: list[Candidate] = []
    if storage.is_s3_uri(source_prefix):
        prefix = normalize_prefix(source_prefix)
        key_prefix = storage.parse_s3_uri(prefix, require_key=False)[1]
        for info in storage.list_objects(prefix, _s3_config(locations)):
            relative = storage.parse_s3_uri(info.uri)[1][len(key_prefix) :]
            found.append(
                Candidate(
                    info.uri,
                    relative,
                    info.size,
                    info.etag,
                    info.last_modified.timestamp(),
                )
            )
    else:
        root = Path(source_prefix)
        if not root.is_dir():
            raise FileNotFoundError(f"source directory not found: {source_prefix}")
        for path in root.rglob("*"):
            if not path.is_file():
                continue
            stat = path.stat()
            found.append(
                Candidate(
                    str(path),
                    path.relative_to(root).as_posix(),
                    stat.st_size,
                    str(stat.st_mtime_ns),
                    stat.st_mtime,
                )
            )
    selected = [
        c
        for c in found
        if c.size > 0
        and not _hidden(c.relative)
        and _matches(c.relative, patterns)
        and not any(_inside(c.location, p) for p in excluded)
        and now - c.modified >= min_age_s
    ]
    return sorted(selected, key=lambda c: (c.modified, c.relative))


def output_for(candidate: Candidate, target_prefix: str) -> str:
    """Where ``candidate``'s output goes: the same relative path under ``target_prefix``;
    the container is kept when the flow can write it, else ``.mkv`` (holds any stream)."""
    relative = PurePosixPath(candidate.relative)
    if relative.suffix.lower() not in OUTPUT_SUFFIXES:
        relative = relative.with_suffix(FALLBACK_SUFFIX)
    if storage.is_s3_uri(target_prefix):
        return normalize_prefix(target_prefix) + relative.as_posix()
    return str(Path(target_prefix).joinpath(*relative.parts))


def manifest_location(output: str) -> str:
    """The manifest the upscale flow writes beside each output."""
    return output + MANIFEST_SUFFIX


@dataclass(frozen=True)
class DoneCheck:
    done: bool
    reason: str


def check_done(
    locations: Locations,
    source: str,
    output: str,
    parameters: Mapping[str, Any],
    *,
    source_size: int | None = None,
) -> DoneCheck:
    """Is ``output`` an upscale of the current ``source`` made with ``parameters``?

    Compares the manifest beside the output with the source's identity now and with every
    requested parameter except placement ones (``profile``: where it ran does not change
    what came out). A missing, unreadable or different manifest, or a missing output, means
    "not done" with the reason; storage failures other than "not there" raise.
    """
    manifest_at = manifest_location(output)
    if not locations.exists(manifest_at):
        return DoneCheck(False, "no manifest")
    try:
        manifest = locations.read_json(manifest_at)
    except (ObjectNotFoundError, FileNotFoundError):
        return DoneCheck(False, "no manifest")
    except (StorageError, ValueError) as exc:
        return DoneCheck(False, f"unreadable manifest ({exc})")
    if not isinstance(manifest, dict):
        return DoneCheck(False, "unreadable manifest (not an object)")
    if not locations.exists(output):
        return DoneCheck(False, "manifest without output")
    recorded_size = manifest.get("source_bytes")
    if source_size is not None and recorded_size is not None and recorded_size != source_size:
        return DoneCheck(False, f"source size changed ({recorded_size} -> {source_size} bytes)")
    if manifest.get("source_identity") != locations.identity(source):
        return DoneCheck(False, "source content changed")
    recorded = manifest.get("parameters") or {}
    differing = sorted(
        name
        for name, value in parameters.items()
        if name not in PLACEMENT_PARAMETERS and recorded.get(name, _MISSING) != value
    )
    if differing:
        return DoneCheck(False, "parameters differ: " + ", ".join(differing))
    return DoneCheck(True, "done")


_MISSING = object()


# --------------------------------------------------------------------------------------------
# Claims


class ClaimStore:
    """Claim objects under ``<root>/.vsrflow-claims/``: ``create`` is atomic (only one caller
    ever succeeds for a name), ``write`` overwrites (only the creator does that)."""

    def __init__(self, locations: Locations, root: str) -> None:
        self._locations = locations
        self._dir = (
            normalize_prefix(root) + CLAIMS_DIR
            if storage.is_s3_uri(root)
            else str(Path(root) / CLAIMS_DIR)
        )

    def location(self, name: str) -> str:
        return self._locations.join(self._dir, name)

    def create(self, name: str, record: Mapping[str, Any]) -> bool:
        """Write ``record`` under ``name`` unless something is there; True if we wrote it."""
        where = self.location(name)
        body = json.dumps(dict(record), sort_keys=True, indent=2).encode()
        if storage.is_s3_uri(where):
            # PutObject with If-None-Match: * (False on 412, or on 409 for a concurrent
            # conditional write of the same key that lost).
            return storage.put_if_absent(where, body, _s3_config(self._locations)) is not None
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        return True

    def read(self, name: str) -> dict[str, Any] | None:
        """The record, ``None`` if absent; ``{}`` while a local claim is being written."""
        where = self.location(name)
        try:
            if storage.is_s3_uri(where):
                document = self._locations.read_json(where)
            else:
                text = Path(where).read_text(encoding="utf-8")
                document = json.loads(text) if text.strip() else {}
        except (ObjectNotFoundError, FileNotFoundError):
            return None
        except ValueError:
            return {}
        return document if isinstance(document, dict) else {}

    def write(self, name: str, record: Mapping[str, Any]) -> None:
        self._locations.write_json(self.location(name), dict(record))

    def remove(self, name: str) -> None:
        self._locations.remove(self.location(name))


def claim_digest(output: str, version: str, parameters: Mapping[str, Any]) -> str:
    """Names one piece of work: this output, from this version of the source, with these
    parameters. A re-uploaded source or a parameter change is new work with new claims."""
    payload = json.dumps(
        [output, version, {k: v for k, v in parameters.items() if k not in PLACEMENT_PARAMETERS}],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Claim:
    """What :func:`claim` decided for one video.

    kind: ``new`` (we created the claim: launch), ``recover`` (a claim whose creator
    vanished before recording its run: launch again with the same idempotency key, which
    returns that run if it was created), ``busy`` (another live claim or run has it),
    ``exhausted`` (``max_attempts`` runs ended without the video being done).
    """

    kind: Literal["new", "recover", "busy", "exhausted"]
    name: str
    attempt: int
    flow_run_id: str | None = None

    @property
    def idempotency_key(self) -> str:
        return f"vsrflow-claim:{self.name}"


def claim(
    store: ClaimStore,
    digest: str,
    record: Mapping[str, Any],
    run_state: Callable[[str], RunState],
    *,
    max_attempts: int = 3,
    grace_s: float = 600.0,
    now: float | None = None,
) -> Claim:
    """Claim the next attempt at the work ``digest`` names, atomically.

    Attempt ``n`` is the object ``<digest>.<n>.json``. Whoever creates it launches the run
    (idempotency key = claim name) and records the run id in it. Someone who finds it
    already there reads it: a run that is still scheduled or running means busy; a run
    that ended (failed, crashed, cancelled, or completed without a matching manifest) or
    that the API no longer knows moves on to attempt ``n + 1`` (again only one creator). A
    claim with no run id is busy for ``grace_s`` seconds (its creator is about to launch),
    then recoverable. Callers must re-check :func:`check_done` after a ``new`` claim: the
    run that freed the previous attempt may just have finished the video.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, not {max_attempts}")
    now = time.time() if now is None else now
    for attempt in range(1, max_attempts + 1):
        name = f"{digest}.{attempt}.json"
        if store.create(name, {**record, "attempt": attempt, "claimed_at": now}):
            return Claim("new", name, attempt)
        existing = store.read(name)
        if existing is None:  # removed between our create and read: try this attempt again
            if store.create(name, {**record, "attempt": attempt, "claimed_at": now}):
                return Claim("new", name, attempt)
            existing = store.read(name) or {}
        run_id = existing.get("flow_run_id")
        if not run_id:
            claimed_at = existing.get("claimed_at")
            if isinstance(claimed_at, int | float) and now - claimed_at >= grace_s:
                return Claim("recover", name, attempt)
            return Claim("busy", name, attempt)
        if run_state(str(run_id)) == "active":
            return Claim("busy", name, attempt, str(run_id))
    return Claim("exhausted", f"{digest}.{max_attempts}.json", max_attempts)


def release_unused(store: ClaimStore, claimed: Claim) -> None:
    """Give back a ``new`` claim that will not be launched (the video turned out done)."""
    with contextlib.suppress(StorageError, OSError):
        store.remove(claimed.name)
