"""The output lease: one run per output, however spelled and whatever the work dir; created,
taken over and released atomically (local files and real SeaweedFS); a dead run's lease is
taken over (and reported); a non-holder never removes it.

The races release many contenders at once behind a barrier, round after round: processes on
local files (flock and link(2) are per process), threads on S3.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import infra
import pytest

from vsrflow import storage
from vsrflow.lease import (
    LeaseLostError,
    LeaseRecord,
    OutputLease,
    OutputLockedError,
    lease_location,
    output_identity,
)
from vsrflow.locations import Locations
from vsrflow.storage import S3Config

LOCAL = Locations()


def _record(owner: str, pid: int, renewed_at: float, host: str | None = None) -> dict[str, Any]:
    return {
        "owner": owner,
        "host": host or socket.gethostname(),
        "pid": pid,
        "renewed_at": renewed_at,
    }


def _plant(output: Path, owner: str, pid: int, renewed_at: float, host: str | None = None) -> Path:
    path = Path(lease_location(LOCAL, str(output)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_record(owner, pid, renewed_at, host)))
    return path


def _stored(output: Path) -> dict[str, Any]:
    return json.loads(Path(lease_location(LOCAL, str(output))).read_text())


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- local: holders, takeover, renewal --------------------------------------------------------


def test_the_lease_lives_beside_the_output_not_in_the_work_dir(tmp_path: Path) -> None:
    tmp_path = tmp_path.resolve()
    output = tmp_path / "videos" / "out.mp4"
    lease = OutputLease(LOCAL, str(output), "run-a", work_dir=str(tmp_path / "work"))
    assert lease.acquire() is None
    try:
        assert lease.location == str(tmp_path / "videos" / ".out.mp4.vsrflow-lease")
        assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [".out.mp4.vsrflow-lease"]
        stored = _stored(output)
        assert stored["owner"] == "run-a" and stored["output"] == str(output)
        assert stored["work_dir"] == str(tmp_path / "work")
        assert not (tmp_path / "work").exists()
    finally:
        lease.release()
    assert list((tmp_path / "videos").iterdir()) == []


def test_a_live_holder_blocks_a_second_run(tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    _plant(output, "run-a", os.getpid(), time.time())
    with pytest.raises(OutputLockedError, match="run-a"):
        OutputLease(LOCAL, str(output), "run-b").acquire()
    assert _stored(output)["owner"] == "run-a"


def test_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    _plant(output, "run-a", _dead_pid(), time.time())
    lease = OutputLease(LOCAL, str(output), "run-b")
    dead = lease.acquire()
    try:
        assert isinstance(dead, LeaseRecord) and dead.owner == "run-a"
        stored = _stored(output)
        assert stored["owner"] == "run-b" and stored["pid"] == os.getpid()
    finally:
        lease.release()
    assert not Path(lease.location).exists()


def test_a_holder_on_another_host_expires_after_the_ttl(tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    _plant(output, "run-a", 1, time.time() - 5, host="elsewhere")
    with pytest.raises(OutputLockedError):
        OutputLease(LOCAL, str(output), "run-b", ttl_s=30).acquire()
    lease = OutputLease(LOCAL, str(output), "run-b", ttl_s=2)
    assert lease.acquire().owner == "run-a"  # 5 s old > 2 s TTL
    lease.release()


def test_an_unreadable_lease_blocks_for_a_ttl_after_its_mtime(tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    path = _plant(output, "x", 0, 0)
    path.write_bytes(b"")  # cut by a crash
    with pytest.raises(OutputLockedError, match="unreadable"):
        OutputLease(LOCAL, str(output), "run-b").acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    lease = OutputLease(LOCAL, str(output), "run-b")
    assert lease.acquire().owner == "(unreadable lease)"
    lease.release()


def test_the_lease_is_renewed_while_held(tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    lease = OutputLease(LOCAL, str(output), "run-a", interval_s=0.2)
    assert lease.acquire() is None
    first = _stored(output)["renewed_at"]
    time.sleep(0.7)
    assert _stored(output)["renewed_at"] > first
    lease.release()


def test_a_retried_acquire_of_the_same_run_takes_its_own_lease_back(tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    _plant(output, "run-a", os.getpid(), time.time())
    lease = OutputLease(LOCAL, str(output), "run-a")
    assert lease.acquire() is None  # not a dead run: nothing to mark Crashed
    lease.release()
    assert not Path(lease.location).exists()


def test_without_hard_links_the_create_is_still_exclusive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*_: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    output = tmp_path / "out.mp4"
    first = OutputLease(LOCAL, str(output), "run-a")
    assert first.acquire() is None
    with pytest.raises(OutputLockedError, match="run-a"):
        OutputLease(LOCAL, str(output), "run-b").acquire()
    first.release()
    assert list(tmp_path.iterdir()) == []


# --- local: spellings and work dirs -----------------------------------------------------------


@pytest.fixture
def spelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """``real/out.mp4`` and spellings of it from ``tmp_path``: relative, absolute, through a
    symlinked directory, through ``x/..`` with ``x`` a symlink into ``real/sub``, with ``//``
    and ``/./``."""
    tmp_path = tmp_path.resolve()
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    (tmp_path / "x").symlink_to(real / "sub", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    spellings = [
        "real/out.mp4",
        str(real / "out.mp4"),
        "link/out.mp4",
        str(tmp_path / "link" / "out.mp4"),
        "./x/../out.mp4",
        "real//out.mp4",
        "./real/./out.mp4",
    ]
    return real / "out.mp4", spellings


def test_every_spelling_of_one_output_has_one_identity_and_one_lease(
    spelled: tuple[Path, list[str]], tmp_path: Path
) -> None:
    target, spellings = spelled
    tmp_path = tmp_path.resolve()
    assert {output_identity(LOCAL, s) for s in spellings} == {str(target)}
    assert {lease_location(LOCAL, s) for s in spellings} == {
        str(target.parent / ".out.mp4.vsrflow-lease")
    }
    # Lexically "x/../out.mp4" is tmp_path/out.mp4; the kernel (and the lease) go through x.
    assert output_identity(LOCAL, str(tmp_path / "out.mp4")) != str(target)


def test_runs_with_different_spellings_and_work_dirs_collide(
    spelled: tuple[Path, list[str]], tmp_path: Path
) -> None:
    target, spellings = spelled
    holder = OutputLease(LOCAL, spellings[0], "run-0", work_dir=str(tmp_path / "work-0"))
    assert holder.acquire() is None
    try:
        for i, spelling in enumerate(spellings[1:], 1):
            other = OutputLease(LOCAL, spelling, f"run-{i}", work_dir=str(tmp_path / f"w{i}"))
            with pytest.raises(OutputLockedError, match="run-0") as info:
                other.acquire()
            assert "work-0" in str(info.value)  # names where the holder keeps its chunks
    finally:
        holder.release()
    assert not any(p.name.endswith(".vsrflow-lease") for p in target.parent.iterdir())


# --- local: a barrier-synchronised race of processes -----------------------------------------

PROCESSES = 4
ROUNDS = 200
STALE_EVERY = 4  # every 4th round races for a dead holder's lease instead of a free one


def _race_worker(
    index: int, spelling: str, cwd: str, barrier: Any, results: Any, rounds: int
) -> None:
    os.chdir(cwd)
    for round_ in range(rounds):
        lease = OutputLease(LOCAL, spelling, f"p{index}-r{round_}", work_dir=f"work-{index}")
        held = False
        barrier.wait()
        try:
            dead = lease.acquire()
            held = True
            results.put((round_, index, "won", dead.owner if dead else None))
        except OutputLockedError:
            results.put((round_, index, "locked", None))
        except Exception as exc:  # reported, not hidden: the parent fails the test
            results.put((round_, index, f"error: {exc!r}", None))
        barrier.wait()  # everyone has tried
        barrier.wait()  # the parent has checked the lease file
        if held:
            lease.release()
        barrier.wait()  # released


def test_racing_processes_never_both_hold_one_output(
    spelled: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """PROCESSES processes with different spellings and work dirs, released together by a
    barrier, ROUNDS times: exactly one wins each round, for a free lease and for a dead
    holder's (stale takeover)."""
    target, spellings = spelled
    location = Path(lease_location(LOCAL, str(target)))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_race_worker,
            args=(i, spellings[i % len(spellings)], str(tmp_path), barrier, results, ROUNDS),
        )
        for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    try:
        for round_ in range(ROUNDS):
            stale = round_ % STALE_EVERY == STALE_EVERY - 1
            if stale:
                _plant(target, f"dead-{round_}", 1, time.time() - 3600, host="elsewhere")
            barrier.wait(timeout=120)
            barrier.wait(timeout=120)
            got = [results.get(timeout=60) for _ in range(PROCESSES)]
            winners = [(i, dead) for (r, i, outcome, dead) in got if outcome == "won"]
            assert all(r == round_ for (r, _, _, _) in got)
            assert not [o for (_, _, o, _) in got if o not in ("won", "locked")], got
            assert len(winners) == 1, f"round {round_}: {got}"
            ((winner, dead),) = winners
            assert dead == (f"dead-{round_}" if stale else None)
            assert json.loads(location.read_text())["owner"] == f"p{winner}-r{round_}"
            barrier.wait(timeout=120)
            barrier.wait(timeout=120)
            assert not location.exists()
    except BaseException:
        barrier.abort()  # a failed round must not leave the workers waiting
        raise
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert all(w.exitcode == 0 for w in workers)
    assert sorted(p.name for p in target.parent.iterdir()) == ["sub"]  # no temporary files


# --- local: losing the lease, and release by a non-holder -----------------------------------


def test_release_by_a_run_that_lost_the_lease_leaves_it_to_the_new_holder(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.mp4"
    stalled = OutputLease(LOCAL, str(output), "run-a", interval_s=3600)
    assert stalled.acquire() is None
    # run-a stops renewing (suspended, storage down): with a TTL of 0 it is stale at once.
    taker = OutputLease(LOCAL, str(output), "run-b", ttl_s=0)
    assert taker.acquire().owner == "run-a"
    with pytest.raises(LeaseLostError, match="run-b"):
        stalled.release()
    assert _stored(output)["owner"] == "run-b"  # not deleted by the non-holder
    taker.release()
    assert not Path(taker.location).exists()


def test_a_renewer_that_finds_its_lease_taken_stops_and_the_run_fails(tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    holder = OutputLease(LOCAL, str(output), "run-a", interval_s=0.1)
    assert holder.acquire() is None
    taker = OutputLease(LOCAL, str(output), "run-b", ttl_s=0)
    taker.acquire()
    deadline = time.monotonic() + 5
    while holder.held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not holder.held
    with pytest.raises(LeaseLostError, match="run-b"):
        holder.ensure_held()
    time.sleep(0.3)
    assert _stored(output)["owner"] == "run-b"  # the renewer did not write over it
    with pytest.raises(LeaseLostError):
        holder.release()
    taker.release()


# --- S3 (SeaweedFS) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> S3Config:
    return S3Config.from_env(infra.ensure_s3())


@pytest.fixture(scope="module")
def bucket(s3: S3Config) -> Iterator[str]:
    with infra.temporary_bucket(s3.client(), "vsrflow-lease") as name:
        yield name


def _s3_record(s3: S3Config, uri: str) -> dict[str, Any]:
    return storage.get_json(uri, s3)


def test_s3_spellings_and_endpoint_spellings_share_one_lease(s3: S3Config, bucket: str) -> None:
    d = f"t-{uuid.uuid4().hex[:8]}"
    assert s3.endpoint_url is not None
    port = s3.endpoint_url.rsplit(":", 1)[1].rstrip("/")
    other_endpoint = Locations(
        S3Config.from_env(infra.ensure_s3(), endpoint_url=f"http://localhost:{port}/")
    )
    spellings = [
        (Locations(s3), f"s3://{bucket}/{d}/out.mp4"),
        (Locations(s3), f"s3://{bucket}//{d}/out.mp4"),
        (Locations(s3), f"s3://{bucket}/{d}//out.mp4"),
        (Locations(s3), f"s3://{bucket}/{d}/./out.mp4"),
        (other_endpoint, f"s3://{bucket}/{d}/out.mp4"),
    ]
    expected = f"s3://{bucket}/{d}/.out.mp4.vsrflow-lease"
    assert {lease_location(loc, out) for loc, out in spellings} == {expected}
    holder = OutputLease(spellings[0][0], spellings[0][1], "run-0", work_dir="w0")
    assert holder.acquire() is None
    try:
        for i, (locations, spelling) in enumerate(spellings[1:], 1):
            with pytest.raises(OutputLockedError, match="run-0"):
                OutputLease(locations, spelling, f"run-{i}", work_dir=f"w{i}").acquire()
        assert _s3_record(s3, expected)["owner"] == "run-0"
    finally:
        holder.release()
    assert not storage.exists(expected, s3)


def _thread_race(
    s3: S3Config, output: str, threads: int, round_: int
) -> list[tuple[str, OutputLease, LeaseRecord | None]]:
    barrier = threading.Barrier(threads)
    outcomes: list[tuple[str, OutputLease, LeaseRecord | None]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        lease = OutputLease(Locations(s3), output, f"t{i}-r{round_}", work_dir=f"w{i}")
        barrier.wait()
        try:
            dead = lease.acquire()
            outcome = ("won", lease, dead)
        except OutputLockedError:
            outcome = ("locked", lease, None)
        except Exception as exc:
            outcome = (f"error: {exc!r}", lease, None)
        with lock:
            outcomes.append(outcome)

    pool = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return outcomes


#: SeaweedFS serialises conditional writes of one key: losers wait up to ~1 s per contender
#: (measured: 8 at once took up to 3 s), so fewer threads keep the 50 rounds short.
S3_THREADS = 4
S3_ROUNDS = 50


def test_s3_racing_threads_never_both_hold_one_output(s3: S3Config, bucket: str) -> None:
    output = f"s3://{bucket}/race-{uuid.uuid4().hex[:8]}/out.mp4"
    location = lease_location(Locations(s3), output)
    for round_ in range(S3_ROUNDS):
        stale = round_ % 2 == 1
        if stale:
            storage.put_json(location, _record(f"dead-{round_}", 1, 0, host="elsewhere"), s3)
        outcomes = _thread_race(s3, output, S3_THREADS, round_)
        assert sorted(o for o, _, _ in outcomes) == ["locked"] * (S3_THREADS - 1) + ["won"], (
            outcomes
        )
        ((lease, dead),) = [(lease, dead) for o, lease, dead in outcomes if o == "won"]
        assert (dead.owner if dead else None) == (f"dead-{round_}" if stale else None)
        assert _s3_record(s3, location)["owner"] == lease._owner
        lease.release()
        assert not storage.exists(location, s3)


def test_s3_release_by_a_non_holder_and_renewal_after_a_takeover(s3: S3Config, bucket: str) -> None:
    output = f"s3://{bucket}/lost-{uuid.uuid4().hex[:8]}/out.mp4"
    holder = OutputLease(Locations(s3), output, "run-a", interval_s=0.2)
    assert holder.acquire() is None
    taker = OutputLease(Locations(s3), output, "run-b", ttl_s=0)
    assert taker.acquire().owner == "run-a"
    deadline = time.monotonic() + 10
    while holder.held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not holder.held  # the renewal's If-Match failed: it stopped
    with pytest.raises(LeaseLostError, match="run-b"):
        holder.release()
    assert _s3_record(s3, taker.location)["owner"] == "run-b"
    taker.release()
    assert not storage.exists(taker.location, s3)
