"""A lease on one output: one run at a time, and a way to notice runs that died.

A flow process killed by Slurm, the OOM killer or a reboot never reports back, so its Prefect
run stays "Running" forever (prefect#12969) and nothing stops a second run from racing it for
the same output. Each run therefore holds a small lease file in the work directory and renews
it every ``interval`` seconds. A new run for the same output takes over a lease whose holder
stopped renewing (or, on the same host, whose process is gone) and learns which run died, so
the flow can mark that run Crashed; a live holder makes the new run fail with a clear error.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass

from vsrflow.errors import VsrflowError
from vsrflow.locations import Locations

DEFAULT_INTERVAL_S = 10.0
DEFAULT_TTL_S = 60.0


class OutputLockedError(VsrflowError):
    """Another live run is producing the same output."""


@dataclass(frozen=True)
class LeaseRecord:
    owner: str
    host: str
    pid: int
    renewed_at: float

    def is_stale(self, now: float, ttl_s: float) -> bool:
        if now - self.renewed_at > ttl_s:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def lease_location(locations: Locations, work_dir: str, output: str) -> str:
    digest = hashlib.sha256(output.encode()).hexdigest()[:16]
    return locations.join(work_dir, "leases", f"{digest}.json")


class OutputLease:
    """Hold the lease on ``output`` for ``owner`` (a flow run id) while a run works on it."""

    def __init__(
        self,
        locations: Locations,
        work_dir: str,
        output: str,
        owner: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self._locations = locations
        self._location = lease_location(locations, work_dir, output)
        self._output = output
        self._owner = owner
        self._interval_s = interval_s
        self._ttl_s = ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> LeaseRecord | None:
        if not self._locations.exists(self._location):
            return None
        try:
            return LeaseRecord(**self._locations.read_json(self._location))
        except (ValueError, TypeError):
            return None

    def _write(self) -> None:
        record = LeaseRecord(self._owner, socket.gethostname(), os.getpid(), time.time())
        self._locations.write_json(self._location, asdict(record))

    def acquire(self) -> LeaseRecord | None:
        """Take the lease; returns the dead holder's record when one was taken over."""
        previous = self._read()
        if (
            previous is not None
            and previous.owner != self._owner
            and not previous.is_stale(time.time(), self._ttl_s)
        ):
            raise OutputLockedError(
                f"{self._output} is being produced by run {previous.owner} on "
                f"{previous.host} (lease renewed {time.time() - previous.renewed_at:.0f} s "
                "ago); wait for it or cancel it"
            )
        self._write()
        current = self._read()
        if current is None or current.owner != self._owner:
            raise OutputLockedError(f"another run took the lease on {self._output} first")
        self._thread = threading.Thread(target=self._renew, name="lease", daemon=True)
        self._thread.start()
        return previous if previous is not None and previous.owner != self._owner else None

    def _renew(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._write()
            except VsrflowError:
                continue  # a storage hiccup; the TTL leaves room for the next renewal

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._locations.remove(self._location)
