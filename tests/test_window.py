"""Issue 11: bounded submission, batch sizing for long sources, clean-up, the local-gpus profile.

The window is checked two ways: from the flow's own record (``VideoResult.window``) and from
outside, by counting the unfinished tasks the Dask scheduler holds whenever a batch starts
(a flow that submitted every batch at once would show all of them there). The cluster grows
mid-run as adaptive Slurm scaling makes it grow, and the window must follow it. Clean-up and
resume are judged by the files left in the work dir and the computed/cached counts of a
rerun; the ``local-gpus`` profile by decoded frames against a ``local`` run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import media_fixtures as mf
import numpy as np
import pytest
from distributed import LocalCluster, Scheduler, get_worker
from distributed.deploy.spec import SpecCluster

from flows.upscale_video import upscale_video
from vsrflow.errors import MediaError
from vsrflow.media.probe import VideoInfo, probe
from vsrflow.plan import DEFAULT_MAX_BATCHES, Batch, plan_batches
from vsrflow.results import VideoResult
from vsrflow.settings import UpscaleSettings
from vsrflow.window import WINDOW_PER_SLOT, WindowLog, window_size, worker_slots

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# worker_slots / window_size / WindowLog


def _worker(nthreads: int, **resources: float) -> dict[str, Any]:
    """One entry of ``scheduler_info()["workers"]`` (the keys worker_slots reads, plus the
    neighbours a real entry carries, which it must ignore)."""
    return {
        "type": "Worker",
        "id": "w",
        "host": "127.0.0.1",
        "nthreads": nthreads,
        "resources": dict(resources),
        "memory_limit": 0,
        "metrics": {"executing": 0, "in_memory": 0},
    }


def test_worker_slots_count_threads_without_batch_resources() -> None:
    workers = [_worker(1), _worker(4), _worker(2, GPU=1)]
    assert worker_slots(workers) == 7
    assert worker_slots(workers, {}) == 7
    assert worker_slots([]) == 0


def test_worker_slots_count_gpus_not_threads_with_batch_resources() -> None:
    # Slurm workers: 4 cores each, one GPU; a two-GPU worker; a CPU-only worker that holds no
    # GPU (probe/plan helpers): it runs no batch however many threads it has.
    workers = [_worker(4, GPU=1), _worker(4, GPU=1), _worker(8, GPU=2), _worker(16)]
    assert worker_slots(workers, {"GPU": 1}) == 4
    assert worker_slots(workers, {"GPU": 2}) == 1  # only the two-GPU worker fits one
    # Several resources: the scarcest one decides.
    both = [_worker(1, GPU=2, MEM=1), _worker(1, GPU=1, MEM=4)]
    assert worker_slots(both, {"GPU": 1, "MEM": 1}) == 2


def test_worker_slots_follow_a_real_cluster_as_workers_join() -> None:
    """The shapes of a real scheduler, scaled up then down, as the flow reads them."""
    with (
        LocalCluster(
            processes=False,
            n_workers=1,
            threads_per_worker=2,
            resources={"GPU": 1},
            dashboard_address=None,
        ) as cluster,
        cluster.get_client() as client,
    ):

        def slots(resources: dict[str, float] | None) -> int:
            return worker_slots(client.scheduler_info(n_workers=-1)["workers"].values(), resources)

        assert (slots({"GPU": 1}), slots(None)) == (1, 2)
        cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        assert (slots({"GPU": 1}), slots(None)) == (3, 6)
        assert window_size(slots({"GPU": 1})) == 6
        cluster.scale(2)
        _wait_until(lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == 2)
        assert (slots({"GPU": 1}), slots(None)) == (2, 4)


def _wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_window_size_is_per_slot_and_never_zero() -> None:
    assert WINDOW_PER_SLOT == 2
    assert window_size(0) == 2  # Slurm jobs still pending: something for adapt to see
    assert window_size(1) == 2
    assert window_size(4) == 8
    assert window_size(3, per_slot=1) == 3


def test_window_log_keeps_the_peak_per_slot_count_and_is_json() -> None:
    log = WindowLog()
    for slots, in_flight in [(0, 1), (0, 2), (1, 2), (3, 4), (3, 6), (3, 5), (2, 4)]:
        log.record(slots, in_flight)
    assert log.submitted == 7
    assert log.peaks == {0: 2, 1: 2, 3: 6, 2: 4}
    assert log.max_in_flight == 6
    data = json.loads(json.dumps(log.as_dict()))
    assert data == {
        "per_slot": 2,
        "submitted": 7,
        "max_in_flight": 6,
        "peaks": {"0": 2, "1": 2, "2": 4, "3": 6},
    }
    assert WindowLog().as_dict()["max_in_flight"] == 0


# --------------------------------------------------------------------------------------------
# Batch sizing of long sources (batching.max_batches)


@pytest.fixture(scope="module")
def real_video(no_audio_clip: mf.FixtureInfo) -> VideoInfo:
    """A probed VideoInfo whose timestamps the tests replace with long synthetic ones."""
    return probe(no_audio_clip.path).video


def _long(video: VideoInfo, frames: int, rate: Fraction) -> VideoInfo:
    """``frames`` frames at constant ``rate`` in a 1/90000 time base (an MPEG-TS clock)."""
    tick = Fraction(90000) / rate
    assert tick.denominator == 1
    pts = tuple(i * int(tick) for i in range(frames))
    return dataclasses.replace(
        video, pts=pts, time_base=Fraction(1, 90000), average_rate=rate, keyframe_pts=pts[::48]
    )


def _plan(video: VideoInfo, **kwargs: Any) -> list[Batch]:
    return plan_batches(video, source_id="film", settings_identity={"m": 1}, **kwargs)


def _assert_exact_cover(batches: list[Batch], video: VideoInfo) -> None:
    assert [b.index for b in batches] == list(range(len(batches)))
    assert batches[0].start == 0 and batches[-1].end == len(video.pts)
    assert batches[-1].end_pts is None
    for a, b in itertools.pairwise(batches):
        assert a.end == b.start  # no gap, no overlap
        assert a.end_pts == b.start_pts == video.pts[b.start]
    for b in batches:
        assert b.start_pts == video.pts[b.start]
    assert len({b.key for b in batches}) == len(batches)


def test_a_two_hour_film_becomes_300_batches_of_24_seconds(real_video: VideoInfo) -> None:
    film = _long(real_video, 2 * 3600 * 24, Fraction(24))
    batches = _plan(film, seconds_per_batch=4.0, max_batches=DEFAULT_MAX_BATCHES)
    assert len(batches) == 300
    assert {b.frame_count for b in batches} == {24 * 24}
    seconds = {(b.end_pts or film.pts[-1] + 3750) - b.start_pts for b in batches}
    assert seconds == {24 * 90000}
    _assert_exact_cover(batches, film)
    # The policy is overridable: no cap gives 1,800 batches of 4 s, a cap of 1,000 at most
    # 1,000 batches, an explicit frame count is taken as given.
    assert len(_plan(film, seconds_per_batch=4.0, max_batches=None)) == 1800
    capped = _plan(film, seconds_per_batch=4.0, max_batches=1000)
    assert len(capped) <= 1000 and len(capped) == -(-len(film.pts) // capped[0].frame_count)
    _assert_exact_cover(capped, film)
    assert len(_plan(film, frames_per_batch=96, max_batches=300)) == 1800
    with pytest.raises(ValueError, match="max_batches"):
        _plan(film, seconds_per_batch=4.0, max_batches=0)


@pytest.mark.parametrize(
    ("frames", "rate"),
    [
        (24, Fraction(24)),
        (10 * 60 * 24, Fraction(24)),
        (300 * 4 * 24, Fraction(24)),  # exactly 300 x 4 s
        (35964, Fraction(30000, 1001)),  # 20 minutes of NTSC
        (300 * 4 * 50 - 1, Fraction(50)),
    ],
)
def test_sources_up_to_300_batches_keep_their_batch_keys(
    real_video: VideoInfo, frames: int, rate: Fraction
) -> None:
    video = _long(real_video, frames, rate)
    capped = _plan(video, seconds_per_batch=4.0, max_batches=DEFAULT_MAX_BATCHES)
    uncapped = _plan(video, seconds_per_batch=4.0, max_batches=None)
    assert [b.key for b in capped] == [b.key for b in uncapped]
    assert len(capped) <= DEFAULT_MAX_BATCHES
    _assert_exact_cover(capped, video)


def test_a_source_just_over_the_cap_gets_longer_batches_not_more(real_video: VideoInfo) -> None:
    video = _long(real_video, 300 * 4 * 24 + 24, Fraction(24))  # one second over 20 minutes
    assert len(_plan(video, seconds_per_batch=4.0, max_batches=None)) == 301
    capped = _plan(video, seconds_per_batch=4.0, max_batches=300)
    assert len(capped) <= 300
    _assert_exact_cover(capped, video)


def test_the_max_batches_setting_reaches_the_plan() -> None:
    settings = UpscaleSettings.model_validate({"batching": {"max_batches": 0}})
    assert settings.batching.max_batches_or_none is None
    assert UpscaleSettings().batching.max_batches_or_none == DEFAULT_MAX_BATCHES


# --------------------------------------------------------------------------------------------
# In-process flow runs (a LocalCluster of threads in this process, as the local profile)


@pytest.fixture(scope="module")
def model_path(shared_model: Callable[[str], Path]) -> str:
    return str(shared_model("realesr-animevideov3.pth"))


def _settings(model: str, frames: int = 2) -> UpscaleSettings:
    return UpscaleSettings.model_validate(
        {"model": {"weights_path": model}, "batching": {"frames": frames}}
    )


def _decoded(path: Path | str) -> tuple[list[int], list[np.ndarray]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return [f.pts for f in frames], [f.to_ndarray(format="rgb24") for f in frames]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def growing_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A profile like ``local`` (one worker in this process) that tests scale, with batches
    holding GPU=1 as on Slurm: each worker has two threads but one GPU, so it is one batch
    slot (a window counting threads would let twice as many batches in)."""
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "profiles:\n"
        "  window-test:\n"
        "    batch_resources: {GPU: 1}\n"
        "    task_runner:\n"
        "      cluster_class: distributed.LocalCluster\n"
        "      cluster_kwargs:\n"
        "        processes: false\n"
        "        n_workers: 1\n"
        "        threads_per_worker: 2\n"
        "        resources: {GPU: 1}\n"
        "        dashboard_address: null\n"
    )
    monkeypatch.setenv("VSRFLOW_PROFILES", str(profiles))
    return "window-test"


@dataclasses.dataclass
class Watch:
    """What the batches saw of the scheduler as each one started."""

    grow_at: int | None = None
    grow_to: int = 3
    fail: set[int] = dataclasses.field(default_factory=set)
    #: (batch index, unfinished tasks at the scheduler, whether the cluster had grown yet)
    samples: list[tuple[int, int, bool]] = dataclasses.field(default_factory=list)
    grown: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_UNFINISHED = {"released", "waiting", "queued", "no-worker", "processing"}


def _own_cluster() -> SpecCluster:
    worker = get_worker()
    return next(c for c in list(SpecCluster._instances) if worker in c.workers.values())


def _unfinished_tasks(scheduler: Scheduler) -> int:
    while True:
        try:  # the scheduler's loop mutates its dict while this thread reads it
            return sum(ts.state in _UNFINISHED for ts in list(scheduler.tasks.values()))
        except RuntimeError:
            continue


#: The Watch of the running test (read by :func:`_watched_batch` in the worker threads).
_WATCH: Watch | None = None
#: Where the unwrapped batch function stays reachable by name while the watch is installed.
_UNWRAPPED = "_window_test_unwrapped_run_batch"


def _watched_batch(video: Any, batch: Batch, *args: Any, **kwargs: Any) -> Any:
    """The batch function the upscale task calls, watched: sample the scheduler, grow the
    cluster at one batch, fail chosen batches for good. Module-level so that Dask pickles it
    by reference (see tests/faults.py), the Watch found through the module."""
    import tasks.upscale

    seen = _WATCH
    assert seen is not None
    cluster = _own_cluster()
    with seen.lock:
        seen.samples.append((batch.index, _unfinished_tasks(cluster.scheduler), seen.grown))
        if batch.index == seen.grow_at and not seen.grown:
            seen.grown = True
            cluster.scale(seen.grow_to)
    if batch.index in seen.fail:
        raise MediaError(f"injected: batch {batch.index} cannot be decoded")
    return getattr(tasks.upscale, _UNWRAPPED)(video, batch, *args, **kwargs)


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Watch]:
    """Install :func:`_watched_batch` in this process (the local profile runs batches in
    threads here, as tests/faults.py's ``install`` does)."""
    import tasks.upscale

    global _WATCH
    _WATCH = Watch()
    monkeypatch.setattr(tasks.upscale, _UNWRAPPED, tasks.upscale.run_batch, raising=False)
    monkeypatch.setattr(tasks.upscale, "run_batch", _watched_batch)
    try:
        yield _WATCH
    finally:
        _WATCH = None


def _run(
    source: Path | str,
    output: Path,
    work: Path,
    model: str,
    *,
    profile: str = "local",
    keep_chunks: bool = False,
    frames: int = 2,
) -> VideoResult:
    return upscale_video(
        input_path=str(source),
        output_path=str(output),
        settings=_settings(model, frames),
        profile=profile,
        work_dir=str(work),
        keep_chunks=keep_chunks,
    )


@pytest.mark.slow
def test_the_window_holds_while_workers_join_mid_run_and_the_work_dir_is_cleaned(
    no_audio_clip: mf.FixtureInfo,
    model_path: str,
    tmp_path: Path,
    growing_profile: str,
    watch: Watch,
) -> None:
    """12 batches, one slot (window 2) until batch 3 starts, then three slots (window 6)."""
    watch.grow_at = 3
    output, work = tmp_path / "out.mp4", tmp_path / "work"
    result = _run(no_audio_clip.path, output, work, model_path, profile=growing_profile)

    assert result.batches == 12 == result.batches_computed and result.batches_cached == 0
    assert result.frames == no_audio_clip.frame_count
    assert _decoded(output)[0] == _decoded(no_audio_clip.path)[0]
    assert sorted(i for i, _, _ in watch.samples) == list(range(12))
    # From outside: never more unfinished batches at the scheduler than the window allowed.
    before = [n for _, n, grown in watch.samples if not grown]
    assert before and max(before) <= window_size(1)
    assert max(n for _, n, _ in watch.samples) <= window_size(3)
    # The flow's own record: it saw both cluster sizes and kept within each one's window.
    window = result.window
    peaks = {int(k): v for k, v in window["peaks"].items()}
    assert peaks.get(1) == window_size(1)  # more batches than slots: the window filled
    assert 3 in peaks and window_size(1) < peaks[3] <= window_size(3)
    assert all(v <= window_size(s) for s, v in peaks.items())
    assert window["submitted"] == 12 and window["max_in_flight"] == max(peaks.values())
    # Published and verified: nothing of the job is left in the work dir.
    assert result.chunks_removed
    assert not work.exists() or _files(work) == [], _files(work)


@pytest.mark.slow
def test_a_failed_run_keeps_what_resume_needs_and_the_rerun_computes_only_the_rest(
    no_audio_clip: mf.FixtureInfo,
    model_path: str,
    tmp_path: Path,
    watch: Watch,
) -> None:
    output, work = tmp_path / "out.mp4", tmp_path / "work"
    watch.fail = {7}
    with pytest.raises(MediaError, match="injected: batch 7"):
        _run(no_audio_clip.path, output, work, model_path)
    assert not output.exists()
    # The batches that finished kept their chunk and their cache record; the listing and
    # progress files of the job are there for the CLI's bar and a rerun.
    chunks = {p.stem for p in (work / "chunks").glob("*.mp4")}
    names = [p.name for p in (work / "results").iterdir()]
    # Only cache records: the failed batch's exception record (a random key nothing would
    # find again) is not left behind.
    assert all(n.startswith("upscale-batch-") for n in names), names
    records = {n.removeprefix("upscale-batch-") for n in names}
    done = chunks & records
    assert len(done) >= 7  # batches 0-6 at least; with a window of 2, at most 8 of 12 start
    assert len(done) < 12 and sorted(i for i, _, _ in watch.samples)[-1] <= 8
    assert list((work / "progress").glob("batch-*.json"))

    watch.fail = set()
    rerun = _run(no_audio_clip.path, output, work, model_path, keep_chunks=True)
    assert rerun.batches_cached == len(done)
    assert rerun.batches_computed == 12 - len(done)
    assert rerun.frames == no_audio_clip.frame_count
    assert _decoded(output)[0] == _decoded(no_audio_clip.path)[0]
    # keep_chunks: every chunk and record stays for the next rerun.
    assert not rerun.chunks_removed
    assert len(list((work / "chunks").glob("*.mp4"))) == 12
    third = _run(no_audio_clip.path, tmp_path / "out.mp4", work, model_path)
    assert third.batches_cached == 12 and third.batches_computed == 0
    assert not work.exists() or _files(work) == [], _files(work)


# --------------------------------------------------------------------------------------------
# clean_work_dir on its own: exactly one job's files go


def _touch(path: str | Path, text: str = "x") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_clean_work_dir_removes_one_jobs_files_and_leaves_another_jobs(tmp_path: Path) -> None:
    from tasks.upscale import FACE_SAMPLE_SUFFIX, clean_work_dir, job_files

    work = str(tmp_path / ".vsrflow-work")
    mine, theirs = ["a" * 64, "b" * 64], ["c" * 64]
    out, other_out = str(tmp_path / "mine.mp4"), str(tmp_path / "theirs.mp4")
    for path in job_files(work, out, mine) + job_files(work, other_out, theirs):
        _touch(path)
    # A batch killed while rewriting its progress file leaves the staging copy behind; the
    # rerun that publishes must sweep it too, and only this job's.
    progress = Path(work) / "progress"
    staged_mine = _touch(progress / f".batch-{mine[0]}.json.1f2e3d4c")
    staged_theirs = _touch(progress / f".batch-{theirs[0]}.json.5a6b7c8d")
    listed = job_files(work, out, mine)
    assert str(staged_mine) in listed and str(staged_theirs) not in listed
    faces = [p for p in listed if p.endswith(FACE_SAMPLE_SUFFIX)]
    assert len(faces) == 2 and all(Path(p).exists() for p in faces)
    removed = clean_work_dir.fn(work, out, mine)
    assert removed == len(listed)
    assert not any(Path(p).exists() for p in listed)
    assert sorted(_files(Path(work))) == sorted(
        str(Path(p).relative_to(work)) for p in job_files(work, other_out, theirs)
    )
    assert staged_theirs.exists()
    # Missing files (an earlier clean-up, a batch that stored no face sample) are no error;
    # once the last job's files are gone the folders go too.
    assert clean_work_dir.fn(work, out, mine) == len(listed) - 1  # the staging copy is gone
    clean_work_dir.fn(work, other_out, theirs)
    assert not Path(work).exists()


# --------------------------------------------------------------------------------------------
# The local-gpus profile: one worker process per GPU; on CPU, N processes


def test_worker_environments_give_each_worker_its_gpu_and_a_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deployments.local_gpus import cpu_count, visible_gpus, worker_environments

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert visible_gpus() == ["0", "1", "2"]
    envs = worker_environments()
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2"]
    assert {e["OMP_NUM_THREADS"] for e in envs} == {str(max(1, cpu_count() // 3))}
    assert [e["CUDA_VISIBLE_DEVICES"] for e in worker_environments(2)] == ["0", "1"]
    assert len(worker_environments(8)) == 3  # never more workers than GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5d1c,-1,3")  # -1 ends the list, as in CUDA
    assert visible_gpus() == ["GPU-5d1c"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    cpu = worker_environments(2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in cpu] == ["", ""]
    assert {e["OMP_NUM_THREADS"] for e in cpu} == {str(max(1, cpu_count() // 2))}
    assert len(worker_environments(0)) == 1


@pytest.fixture(scope="module")
def prefect_server() -> dict[str, str]:
    import infra

    try:
        return infra.ensure_prefect()
    except infra.InfraUnavailable as exc:
        pytest.skip(f"a Prefect server cannot run here: {exc}")


def _cli_run(
    env: dict[str, str], source: Path, output: Path, model: str, *extra: str, frames: int = 4
) -> dict[str, Any]:
    """``vsrflow upscale`` as a user runs it; its JSON summary."""
    command = [
        sys.executable,
        "-c",
        _CLI_WITH_MODULE_REPORT,
        "upscale",
        str(source),
        "-o",
        str(output),
        "--weights",
        model,
        "--batch-frames",
        str(frames),
        "--no-progress",
        *extra,
    ]
    done = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    report = [line for line in done.stderr.splitlines() if line.startswith("[")]
    summary["flow_process_modules"] = json.loads(report[-1])
    return summary


#: ``vsrflow upscale`` (flows.cli.main, what the console script runs), then, as the last line
#: on stderr, which of torch and spandrel the flow process imported.
_CLI_WITH_MODULE_REPORT = (
    "import json, sys; from flows.cli import main; code = main(sys.argv[1:]); "
    "print(json.dumps(sorted(m for m in ('torch', 'spandrel') if m in sys.modules)), "
    "file=sys.stderr); sys.exit(code)"
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_local_gpus_with_two_cpu_workers_matches_local(
    prefect_server: dict[str, str],
    no_audio_clip: mf.FixtureInfo,
    model_path: str,
    tmp_path: Path,
) -> None:
    env = {**os.environ, **prefect_server, "CUDA_VISIBLE_DEVICES": "", "VSRFLOW_LOCAL_WORKERS": "2"}
    env.pop("PREFECT_HOME", None)  # the real server, never a temporary one
    local = _cli_run(env, no_audio_clip.path, tmp_path / "local.mp4", model_path)
    gpus = _cli_run(
        env, no_audio_clip.path, tmp_path / "gpus.mp4", model_path, "--profile", "local-gpus"
    )
    assert local["profile"] == "local" and gpus["profile"] == "local-gpus"
    # The local profile runs batches in the flow process; local-gpus only orchestrates there,
    # so the model (torch, spandrel) is loaded by the workers alone.
    assert local["flow_process_modules"] == ["spandrel", "torch"]
    assert gpus["flow_process_modules"] == []
    assert gpus["batches"] == local["batches"] == 6 == gpus["batches_computed"]
    # Two worker processes holding GPU=1 each: the flow saw two batch slots.
    assert set(gpus["window"]["peaks"]) == {"2"}, gpus["window"]
    assert gpus["window"]["max_in_flight"] == window_size(2)
    assert set(local["window"]["peaks"]) == {"1"}
    local_pts, local_frames = _decoded(tmp_path / "local.mp4")
    gpus_pts, gpus_frames = _decoded(tmp_path / "gpus.mp4")
    assert gpus_pts == local_pts == _decoded(no_audio_clip.path)[0]
    assert all(np.array_equal(a, b) for a, b in zip(local_frames, gpus_frames, strict=True))
    assert _sha256(tmp_path / "gpus.mp4") == _sha256(tmp_path / "local.mp4")


# --------------------------------------------------------------------------------------------
# Resume after a kill, with the window in place: the user's command, SIGKILLed mid-run


def _finished(work: Path) -> set[str]:
    """Batch keys with both a chunk and a cache record (what a rerun may take as done)."""
    results = work / "results"
    if not results.is_dir():
        return set()
    records = {p.name.removeprefix("upscale-batch-") for p in results.glob("upscale-batch-*")}
    return {key for key in records if (work / "chunks" / f"{key}.mp4").is_file()}


@pytest.mark.slow
def test_a_killed_run_resumes_computing_exactly_the_missing_batches(
    prefect_server: dict[str, str],
    no_audio_clip: mf.FixtureInfo,
    model_path: str,
    tmp_path: Path,
) -> None:
    import signal
    import time

    env = {**os.environ, **prefect_server, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PREFECT_HOME", None)
    output, work = tmp_path / "out.mp4", tmp_path / "work"
    args = [str(no_audio_clip.path), "-o", str(output), "--weights", model_path]
    args += ["--batch-frames", "2", "--work-dir", str(work), "--no-progress"]
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "upscale", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and len(_finished(work)) < 3:
        time.sleep(0.1)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    done = _finished(work)
    assert 3 <= len(done) < 12 and not output.exists()

    rerun = _cli_run(env, no_audio_clip.path, output, model_path, "--work-dir", str(work), frames=2)
    assert rerun["batches"] == 12
    assert rerun["batches_cached"] == len(done)
    assert rerun["batches_computed"] == 12 - len(done)
    assert rerun["window"]["max_in_flight"] <= window_size(1)
    assert _decoded(output)[0] == _decoded(no_audio_clip.path)[0]
    assert rerun["frames"] == no_audio_clip.frame_count
    assert not work.exists() or _files(work) == [], _files(work)


# --------------------------------------------------------------------------------------------
# S3 work dirs: removed after success, kept after a failure


@pytest.mark.slow
def test_an_s3_work_dir_is_kept_after_a_failure_and_removed_after_success(
    s3_env: dict[str, str],
    no_audio_clip: mf.FixtureInfo,
    model_path: str,
    watch: Watch,
) -> None:
    import infra

    from vsrflow import storage
    from vsrflow.storage import S3Config

    s3 = S3Config.from_env()
    with infra.temporary_bucket(s3.client(), "vsrflow-window") as bucket:
        source, output = f"s3://{bucket}/in/clip.mp4", f"s3://{bucket}/out/clip_x4.mp4"
        work = f"s3://{bucket}/out/.vsrflow-work"
        storage.upload_file(no_audio_clip.path, source, s3)

        def keys() -> list[str]:
            prefix = f"s3://{bucket}/out/.vsrflow-work/"
            return sorted(o.uri.removeprefix(prefix) for o in storage.list_objects(prefix, s3))

        def run() -> VideoResult:
            return upscale_video(input_path=source, output_path=output,
                                 settings=_settings(model_path, 8))  # fmt: skip

        watch.fail = {1}
        with pytest.raises(MediaError, match="injected: batch 1"):
            run()
        assert not storage.exists(output, s3)
        left = keys()
        chunks = {
            k.removeprefix("chunks/").removesuffix(".mp4") for k in left if k.endswith(".mp4")
        }
        records = {k.removeprefix("results/upscale-batch-") for k in left if "/upscale-" in k}
        assert all(k.startswith(("chunks/", "results/upscale-batch-")) for k in left), left
        done = chunks & records
        assert 1 <= len(done) <= 2  # batch 0, perhaps batch 2 (in the window); never batch 1

        watch.fail = set()
        rerun = run()
        assert rerun.work_dir == work
        assert rerun.batches == 3
        assert (rerun.batches_cached, rerun.batches_computed) == (len(done), 3 - len(done))
        assert rerun.frames == no_audio_clip.frame_count and rerun.chunks_removed
        assert keys() == []
        assert storage.exists(output, s3)
