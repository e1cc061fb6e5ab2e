"""The output lease: one run per output; a dead run's lease is taken over (and reported)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vsrflow.lease import LeaseRecord, OutputLease, OutputLockedError, lease_location
from vsrflow.locations import Locations

OUTPUT = "/videos/out.mp4"


def _plant(work: Path, owner: str, pid: int, renewed_at: float, host: str | None = None) -> None:
    path = Path(lease_location(Locations(), str(work), OUTPUT))
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "owner": owner,
        "host": host or socket.gethostname(),
        "pid": pid,
        "renewed_at": renewed_at,
    }
    path.write_text(json.dumps(record))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_holder_blocks_a_second_run(tmp_path: Path) -> None:
    _plant(tmp_path, "run-a", os.getpid(), time.time())
    with pytest.raises(OutputLockedError, match="run-a"):
        OutputLease(Locations(), str(tmp_path), OUTPUT, "run-b").acquire()


def test_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    _plant(tmp_path, "run-a", _dead_pid(), time.time())
    lease = OutputLease(Locations(), str(tmp_path), OUTPUT, "run-b")
    dead = lease.acquire()
    try:
        assert isinstance(dead, LeaseRecord) and dead.owner == "run-a"
        stored = json.loads(Path(lease_location(Locations(), str(tmp_path), OUTPUT)).read_text())
        assert stored["owner"] == "run-b" and stored["pid"] == os.getpid()
    finally:
        lease.release()
    assert not Path(lease_location(Locations(), str(tmp_path), OUTPUT)).exists()


def test_a_holder_on_another_host_expires_after_the_ttl(tmp_path: Path) -> None:
    _plant(tmp_path, "run-a", 1, time.time() - 5, host="elsewhere")
    with pytest.raises(OutputLockedError):
        OutputLease(Locations(), str(tmp_path), OUTPUT, "run-b", ttl_s=30).acquire()
    lease = OutputLease(Locations(), str(tmp_path), OUTPUT, "run-b", ttl_s=2)
    assert lease.acquire().owner == "run-a"  # 5 s old > 2 s TTL
    lease.release()


def test_the_lease_is_renewed_while_held(tmp_path: Path) -> None:
    lease = OutputLease(Locations(), str(tmp_path), OUTPUT, "run-a", interval_s=0.2)
    assert lease.acquire() is None
    path = Path(lease_location(Locations(), str(tmp_path), OUTPUT))
    first = json.loads(path.read_text())["renewed_at"]
    time.sleep(0.7)
    assert json.loads(path.read_text())["renewed_at"] > first
    lease.release()
