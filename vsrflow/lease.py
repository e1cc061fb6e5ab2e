"""A lease on one output: one run at a time, however the output is spelled, and a way to
notice runs that died.

A flow process killed by Slurm, the OOM killer or a reboot never reports back, so its Prefect
run stays "Running" forever (prefect#12969) and nothing stops a second run from racing it for
the same output. Each run therefore holds a small lease record for its output and renews it
every ``interval`` seconds. A new run for the same output takes over a lease whose holder
stopped renewing for ``ttl`` seconds (or, on the same host, whose process is gone) and learns
which run died, so the flow can mark that run Crashed; a live holder makes the new run fail
with a clear error.

**Identity and place.** The lease is keyed on what the run will actually write, not on how
the output was spelled, and it lives beside the output (never in ``--work-dir``, which two
runs may choose differently):

* local: the directory entry ``realpath(dirname(output)) / basename(output)``: symlinked
  directories, ``./x/../out.mp4``, relative and absolute spellings all end up at one entry
  (publishing replaces that entry; a symlink *at* the output is replaced, not followed). The
  lease is the hidden file ``.<name>.vsrflow-lease`` in that real directory, so two mounts of
  one directory (bind mounts, NFS mounted at different paths on Slurm nodes) find the same file;
* S3: the output's endpoint, bucket and key, the key normalised the way SeaweedFS resolves it
  (``a//b``, ``/a/b`` and ``a/./b`` are one object there). The lease is the object
  ``.<name>.vsrflow-lease`` beside the output key, in the output's own bucket on the output's
  endpoint, so any spelling of the endpoint reaches the same lease.

**Atomicity.** Every change is a compare-and-swap on the version that was read:

* S3: create with ``If-None-Match: *``; renew and take over with ``If-Match: <ETag>``; release
  with ``If-Match`` on DELETE, after checking that the record is still ours (servers that
  ignore conditional deletes then only have the window between that GET and the DELETE).
  SeaweedFS 4.48 honours all three atomically (measured: :mod:`vsrflow.storage`).
* local: create with ``link(2)`` of a complete temporary file (fails with EEXIST like
  ``O_EXCL``, and a reader never sees a half-written record; filesystems without hard links
  fall back to ``O_CREAT | O_EXCL``); renew, take over and release under ``flock`` of the lease
  file itself, after checking that the path still names the locked file and that it holds
  the very record that was judged; changes replace the file by ``rename(2)`` or unlink it, so
  a waiter that then gets the lock sees the path moved on and re-reads. A lock dies with its
  process, so a crashed taker never blocks the others.

Two runs that race for one output therefore never both proceed: exactly one creates or takes
over the lease, the others see a live holder. A holder that finds its lease taken over (it
stalled past the TTL) stops renewing, logs it, and fails in :meth:`OutputLease.release`
(and in :meth:`OutputLease.ensure_held`, for code that wants to check before publishing).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Final, Protocol

from vsrflow import storage
from vsrflow.errors import ObjectNotFoundError, VsrflowError
from vsrflow.locations import Locations
from vsrflow.storage import S3Config

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0
DEFAULT_TTL_S = 60.0
#: The lease of ``out.mp4`` is ``.out.mp4.vsrflow-lease`` beside it.
LEASE_SUFFIX: Final = ".vsrflow-lease"
#: Rounds of read-then-swap before giving up on a lease that keeps changing under us.
_MAX_ROUNDS: Final = 50
#: How long to wait for another process's lock on a local lease file (held for a rename).
_LOCK_WAIT_S: Final = 10.0
#: Longer output names are shortened (plus a digest) in the lease's name (NAME_MAX is 255).
_NAME_KEPT: Final = 150


class LeaseError(VsrflowError):
    """The output lease cannot be taken or kept."""


class OutputLockedError(LeaseError):
    """Another live run is producing the same output."""


class LeaseLostError(OutputLockedError):
    """Another run took over this run's lease while it was working (it stalled past the TTL)."""


def _boot_and_pid_namespace() -> str:
    """Where a pid means one process: this kernel boot and this pid namespace (containers
    can share a host name and a kernel but not a pid namespace)."""
    parts = []
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "|".join(parts)


_HERE: Final = _boot_and_pid_namespace()


def _process_start(pid: int) -> int | None:
    """Start time of a live (not zombie) process in clock ticks after boot; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            fields_ = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields_ or fields_[0] in ("Z", "X"):
        return None
    try:
        return int(fields_[19])  # field 22 of proc(5); the list starts at field 3 (state)
    except (IndexError, ValueError):
        return 0


def _pid_alive(pid: int, started: int = 0) -> bool:
    """True if ``pid`` runs (and, with ``started``, is still the process that started then:
    a recycled pid is not the holder)."""
    start = _process_start(pid)
    if start is None:
        return False
    return not started or not start or start == started


@dataclass(frozen=True)
class LeaseRecord:
    """What a lease file holds. ``token`` is new for every acquisition, so two records of
    one owner (a renewal, a retried task) never compare equal and every version is unique."""

    owner: str
    host: str
    pid: int
    renewed_at: float
    token: str = ""
    output: str = ""
    work_dir: str = ""
    #: Boot id and pid namespace of ``pid`` (empty in leases of older versions).
    where: str = ""
    #: Start time of ``pid`` in clock ticks after boot (0: unknown).
    started: int = 0

    def is_stale(self, now: float, ttl_s: float) -> bool:
        if now - self.renewed_at > ttl_s:
            return True
        if self.host != socket.gethostname() or (self.where and self.where != _HERE):
            return False  # another machine (or container): only the TTL can tell
        return not _pid_alive(self.pid, self.started)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=2).encode()

    @classmethod
    def from_bytes(cls, data: bytes, modified: float) -> LeaseRecord:
        """Parse a lease; an unreadable one (cut by a crash, being written by a filesystem
        without hard links) counts as renewed when it was last modified, so it blocks for a
        TTL and is then taken over like any dead holder's."""
        known = {f.name for f in fields(cls)}
        try:
            document = json.loads(data)
            record = cls(**{k: v for k, v in document.items() if k in known})
            return replace(
                record,
                pid=int(record.pid),
                renewed_at=float(record.renewed_at),
                started=int(record.started),
            )
        except (ValueError, TypeError, AttributeError):
            return cls(owner="(unreadable lease)", host="", pid=0, renewed_at=modified)


# --------------------------------------------------------------------------------------------
# Identity and place


def _s3_config(locations: Locations) -> S3Config:
    return locations.s3 if locations.s3 is not None else S3Config.from_env()


def _normalized_key(key: str) -> str:
    """``a//b``, ``/a/b``, ``a/./b`` -> ``a/b`` (SeaweedFS stores them as one object; on AWS
    they differ, and treating them as one output is only ever too careful)."""
    return posixpath.normpath("/" + key).lstrip("/")


def _local_entry(output: str) -> Path:
    """The directory entry a run for ``output`` writes: its real directory plus its name.
    No lexical normalisation first: ``x/..`` must go through a symlinked ``x`` the way the
    kernel does."""
    joined = os.path.join(os.getcwd(), os.fspath(output))
    directory, name = os.path.split(joined)
    if name in ("", ".", ".."):
        return Path(os.path.realpath(joined))
    return Path(os.path.realpath(directory or "/")) / name


def output_identity(locations: Locations, output: str) -> str:
    """The canonical identity of ``output``: a real local path, or ``s3://bucket/key`` with
    the normalised key and the endpoint it is on."""
    if locations.is_remote(output):
        bucket, key = storage.parse_s3_uri(output)
        config = _s3_config(locations)
        return f"s3://{bucket}/{_normalized_key(key)} at {config.endpoint_label}"
    return str(_local_entry(output))


def _lease_name(name: str) -> str:
    if len(name) > _NAME_KEPT:
        name = name[:_NAME_KEPT] + "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return f".{name}{LEASE_SUFFIX}"


def lease_location(locations: Locations, output: str) -> str:
    """Where the lease of ``output`` lives: ``.<name>.vsrflow-lease`` beside the real output
    (local) or beside the normalised key in the output's bucket (S3)."""
    if locations.is_remote(output):
        bucket, key = storage.parse_s3_uri(output)
        directory, name = posixpath.split(_normalized_key(key))
        lease_key = posixpath.join(directory, _lease_name(name)) if directory else _lease_name(name)
        return f"s3://{bucket}/{lease_key}"
    entry = _local_entry(output)
    return str(entry.parent / _lease_name(entry.name))


# --------------------------------------------------------------------------------------------
# Stores: read a version, create, swap or delete only that version


class _Store(Protocol):
    def read(self) -> tuple[LeaseRecord, Any] | None: ...
    def create(self, body: bytes) -> Any | None: ...
    def replace(self, version: Any, body: bytes) -> Any | None: ...
    def delete(self, version: Any) -> bool: ...


class _S3Store:
    """Versions are ETags; every change is a conditional request."""

    def __init__(self, uri: str, config: S3Config) -> None:
        self._uri = uri
        self._config = config

    def read(self) -> tuple[LeaseRecord, str] | None:
        try:
            data, info = storage.get_bytes(self._uri, self._config)
        except ObjectNotFoundError:
            return None
        return LeaseRecord.from_bytes(data, info.last_modified.timestamp()), info.etag

    def create(self, body: bytes) -> str | None:
        return storage.put_if_absent(self._uri, body, self._config)

    def replace(self, version: str, body: bytes) -> str | None:
        return storage.put_if_match(self._uri, body, version, self._config)

    def delete(self, version: str) -> bool:
        # Check first: a server that ignores If-Match on DELETE then only has the window
        # between this GET and the DELETE.
        current = self.read()
        if current is None or current[1] != version:
            return False
        return storage.delete_if_match(self._uri, version, self._config)


#: A local version: the file (device, inode) and its exact content.
_LocalVersion = tuple[int, int, bytes]

_NO_HARD_LINKS: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV})


class _LocalStore:
    """Versions are (device, inode, content); changes happen under flock of that file."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def _scratch(self, body: bytes) -> tuple[Path, os.stat_result]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f"{self._path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body)
            return tmp, os.fstat(fd)
        finally:
            os.close(fd)

    def read(self) -> tuple[LeaseRecord, _LocalVersion] | None:
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            data = _read_all(fd)
        finally:
            os.close(fd)
        return LeaseRecord.from_bytes(data, st.st_mtime), (st.st_dev, st.st_ino, data)

    def create(self, body: bytes) -> _LocalVersion | None:
        tmp, st = self._scratch(body)
        try:
            os.link(tmp, self._path)
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            return self._create_exclusive(body)
        finally:
            tmp.unlink(missing_ok=True)
        return st.st_dev, st.st_ino, body

    def _create_exclusive(self, body: bytes) -> _LocalVersion | None:
        """For filesystems without hard links: O_EXCL, then the content (a reader in between
        sees an empty lease, which counts as live until a TTL after its mtime)."""
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, body)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return st.st_dev, st.st_ino, body

    def _swap(self, version: _LocalVersion, body: bytes | None) -> _LocalVersion | None:
        """Under the lock of the file the path names: if it is still ``version``, replace it
        with ``body`` (or unlink it when ``body`` is None)."""
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fd = os.open(self._path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                _lock(fd, deadline, self._path)
                held = os.fstat(fd)
                try:
                    named = os.stat(self._path)
                except FileNotFoundError:
                    return None
                if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
                    continue  # replaced between open and lock: lock the current file
                if (held.st_dev, held.st_ino, _read_all(fd)) != version:
                    return None
                if body is None:
                    os.unlink(self._path)
                    return version
                tmp, st = self._scratch(body)
                try:
                    os.replace(tmp, self._path)
                finally:
                    tmp.unlink(missing_ok=True)
                return st.st_dev, st.st_ino, body
            finally:
                os.close(fd)  # releases the lock

    def replace(self, version: _LocalVersion, body: bytes) -> _LocalVersion | None:
        return self._swap(version, body)

    def delete(self, version: _LocalVersion) -> bool:
        return self._swap(version, None) is not None


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _lock(fd: int, deadline: float, path: Path) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise OutputLockedError(
                    f"the lease file {path} stayed locked for {_LOCK_WAIT_S:.0f} s by another "
                    "process (a stopped vsrflow run?); retry"
                ) from None
            time.sleep(0.005)


def _store_for(locations: Locations, location: str) -> _Store:
    if locations.is_remote(location):
        return _S3Store(location, _s3_config(locations))
    return _LocalStore(Path(location))


# --------------------------------------------------------------------------------------------
# The lease

#: The holder reported when a renewal finds the lease gone (removed by hand).
_GONE: Final = LeaseRecord(owner="(none: the lease was removed)", host="", pid=0, renewed_at=0)


class OutputLease:
    """Hold the lease on ``output`` for ``owner`` (a flow run id) while a run works on it.

    ``work_dir`` is only recorded (it names where the holder keeps its chunks, in the
    message another run gets); it does not decide where the lease is.
    """

    def __init__(
        self,
        locations: Locations,
        output: str,
        owner: str,
        *,
        work_dir: str = "",
        interval_s: float = DEFAULT_INTERVAL_S,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self._output = output
        self.identity = output_identity(locations, output)
        self.location = lease_location(locations, output)
        self._store = _store_for(locations, self.location)
        self._owner = owner
        self._work_dir = work_dir
        self._interval_s = interval_s
        self._ttl_s = ttl_s
        self._token = uuid.uuid4().hex
        self._version: Any = None
        self._lost: LeaseRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> LeaseRecord:
        pid = os.getpid()
        return LeaseRecord(
            owner=self._owner,
            host=socket.gethostname(),
            pid=pid,
            renewed_at=time.time(),
            token=self._token,
            output=self.identity,
            work_dir=self._work_dir,
            where=_HERE,
            started=_process_start(pid) or 0,
        )

    def _named(self) -> str:
        if self._output == self.identity:
            return self._output
        return f"{self._output} ({self.identity})"

    def _locked_message(self, holder: LeaseRecord) -> str:
        age = time.time() - holder.renewed_at
        where = f", work dir {holder.work_dir}" if holder.work_dir else ""
        return (
            f"{self._named()} is being produced by run {holder.owner} on {holder.host or '?'} "
            f"(lease {self.location} renewed {age:.0f} s ago{where}); wait for it or cancel it"
        )

    def _take(self) -> LeaseRecord | None:
        """One acquisition; returns the dead holder's record when one was taken over."""
        for _ in range(_MAX_ROUNDS):
            found = self._store.read()
            if found is None:
                version = self._store.create(self._record().to_bytes())
                if version is not None:
                    self._version = version
                    return None
                continue  # another run created it first: judge its record
            previous, version = found
            ours = previous.owner == self._owner  # an earlier attempt of this very run
            if not ours and not previous.is_stale(time.time(), self._ttl_s):
                raise OutputLockedError(self._locked_message(previous))
            new = self._store.replace(version, self._record().to_bytes())
            if new is not None:
                self._version = new
                return None if ours else previous
            # Renewed, taken over or released meanwhile: judge the new state.
        raise OutputLockedError(
            f"the lease on {self._named()} ({self.location}) kept changing while this run "
            f"tried to take it ({_MAX_ROUNDS} rounds); another run is competing for it, retry"
        )

    def acquire(self) -> LeaseRecord | None:
        """Take the lease; returns the dead holder's record when one was taken over.
        Raises OutputLockedError while a live run holds it."""
        if self._thread is not None:
            raise RuntimeError("this lease was acquired already")
        try:
            previous = self._take()
        except OSError as exc:
            raise LeaseError(
                f"cannot take the lease on {self._named()} at {self.location}: "
                f"{exc.strerror or exc} (the output's directory must be writable)"
            ) from exc
        self._thread = threading.Thread(target=self._renew, name="lease", daemon=True)
        self._thread.start()
        return previous

    def _renew(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                new = self._store.replace(self._version, self._record().to_bytes())
            except (VsrflowError, OSError) as exc:
                log.warning("could not renew the lease %s (retrying): %s", self.location, exc)
                continue  # a storage hiccup; the TTL leaves room for the next renewal
            if new is not None:
                self._version = new
                continue
            self._lost = self._current_holder() or _GONE
            log.error(
                "run %s lost its lease on %s: it is now held by run %s on %s; this run will fail",
                self._owner,
                self._named(),
                self._lost.owner,
                self._lost.host,
            )
            return

    def _current_holder(self) -> LeaseRecord | None:
        with contextlib.suppress(VsrflowError, OSError):
            found = self._store.read()
            return None if found is None else found[0]
        return None

    def _lost_error(self, holder: LeaseRecord) -> LeaseLostError:
        return LeaseLostError(
            f"run {self._owner} lost its lease on {self._named()} while working: run "
            f"{holder.owner} on {holder.host or '?'} holds it now (this run stopped renewing "
            f"for more than {self._ttl_s:.0f} s); check the output before trusting it"
        )

    @property
    def held(self) -> bool:
        return self._version is not None and self._lost is None

    def ensure_held(self) -> None:
        """Raise LeaseLostError if another run took this lease over."""
        if self._lost is not None:
            raise self._lost_error(self._lost)

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still this run's; raise
        LeaseLostError if another run took it over meanwhile (its lease stays)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.ensure_held()
        if self._version is None:
            return
        version, self._version = self._version, None
        if not self._store.delete(version):
            holder = self._current_holder()
            if holder is not None and holder.token != self._token:
                self._lost = holder  # taken over after the last renewal: it stays theirs
                raise self._lost_error(holder)
