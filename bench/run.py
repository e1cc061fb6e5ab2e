#!/usr/bin/env python
"""vsrflow performance benchmark: is the pipeline as fast as the model it wraps, and if not, why?

    python bench/run.py              # full run (about 10-14 min on 2 CPU cores)
    python bench/run.py --quick      # smaller inputs, fewer rounds (about 5 min)
    python bench/run.py --no-slurm   # skip the Slurm part
    python bench/run.py --only sweeps,core --results-dir /tmp/b   # some sections only

Everything is measured IN ONE RUN on the SAME frames (a real clip from the shared data, cut to
320x180 so frames resemble SD video), because numbers taken on different days, clips or machine
loads cannot be compared:

1. the pure model forward (frames already in memory as tensors; the pipeline's precision,
   micro-batch and tiles) vs the engine (uint8 in, uint8 out) vs ``vsrflow.pipeline.
   upscale_batch`` (decode, model and encode overlapped) vs the whole Prefect flow
   ``flows.upscale_video.upscale_video`` on the local profile, with Prefect's one-off
   temporary-server startup measured separately by a warm-up flow run;
2. a naive baseline (PNG folders, one fp32 frame at a time, re-encode at the nominal rate),
   the way most upscaling scripts work, for time and peak scratch disk;
3. peak scratch disk / output size, and worker peak RSS for a short vs a 10x longer input,
   each in its own process (streaming means the peak must not grow with the length);
4. sweeps of precision, channels_last, micro-batch, tiles and torch.compile with the fidelity
   bounds the test suite uses (fp32 paths within 2/255 of a plain forward; bf16 >= 45 dB PSNR),
   checking that the ``EngineSettings()`` defaults are the fastest settings within them; and an
   A/B of ``vsrflow.engine.tune_cpu_allocator`` (per process, so in two child processes);
5. per-task orchestration overhead of Prefect + the local Dask task runner;
6. 1 vs 2 Slurm workers on the local single-node Slurm (skipped with a reason if unavailable).

The machine may be shared: other processes can take CPU while we measure. Each timed run
therefore records the share of the machine's CPU used by processes OUTSIDE our process tree
(/proc/stat minus our tree's CPU), variants are timed in interleaved rounds (best and median
reported; the best is the least disturbed), and CPU seconds per frame are reported beside wall
time. Results: a table on stdout, ``bench/results/results.json``, ``results.md`` and
``plot.png`` (drawn with Pillow; matplotlib is not a dependency).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from vsrflow.engine import EngineSettings, Upscaler
    from vsrflow.media.encode import EncoderSettings
    from vsrflow.models import LoadedModel

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/, not the repo, on sys.path
    sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("VSRFLOW_SHARED_DIR", str(REPO.parent / "shared")))
WEIGHTS_NAME = "realesr-animevideov3.pth"
#: The bench clip: a 320x180 window of bikes (real camera footage, 25 fps): SD-like frames.
BENCH_SOURCE = "bikes_640x272_25fps_noaudio.mp4"
BENCH_BOX = (160, 46, 320, 180)  # x, y, width, height
#: The streaming (RSS) clip: carphone 176x144 looped, so 1000 frames stay affordable.
RSS_SOURCE = "carphone_176x144_2997fps_noaudio.mp4"

#: Targets from the issue "Performance: bring the pipeline to the model's own speed".
TARGET_PIPELINE_RATIO = 1.10
TARGET_SCRATCH_RATIO = 1.5
TARGET_TASK_OVERHEAD_S = 0.3
MAX_FP32_DIFF = 2  # 8-bit levels vs a plain untiled fp32 forward (as tests/test_engine.py)
MIN_BF16_PSNR_DB = 45.0
#: A default within this factor of the fastest measured setting counts as the fastest: on a
#: shared 2-core machine, two runs of the SAME setting differ by this much (the sweep measures
#: "default" and its resolved twin "bf16 cl=on mb=4" separately and reports their spread).
NOISE_MARGIN = 1.10


@dataclass(frozen=True)
class Sizes:
    """How much work each section does (full vs --quick)."""

    frames: int  # the bench clip: model / pipeline / flow / baseline / Slurm
    sweep_frames: int  # frames per sweep measurement (a multiple of the largest micro-batch)
    sweep_rounds: int  # interleaved repetitions of each sweep point (fp32 points: one)
    rounds: int  # interleaved repetitions of model / engine / pipeline
    encoder_rounds: int  # interleaved repetitions of the encoder presets and the spare core
    rss_frames: tuple[int, int]
    tasks: int  # trivial Prefect tasks for the orchestration overhead
    alloc_pairs: int  # off/on child-process pairs for the allocator A/B


FULL = Sizes(
    frames=100,
    sweep_frames=8,
    sweep_rounds=3,
    rounds=3,
    encoder_rounds=2,
    rss_frames=(100, 1000),
    tasks=500,
    alloc_pairs=1,
)
QUICK = Sizes(
    frames=24,
    sweep_frames=8,
    sweep_rounds=1,
    rounds=1,
    encoder_rounds=1,
    rss_frames=(50, 500),
    tasks=100,
    alloc_pairs=1,
)


# ------------------------------------------------------------------------------------------
# Measuring: wall, our CPU, everybody else's CPU, disk, memory

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all processes, all cores)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _tree_cpu_s() -> tuple[float, float]:
    """(user, system) CPU seconds of this process and every live descendant, each including
    its reaped children. Descendants count: Prefect's temporary server is a child process
    that nobody waits for, and benchmark children are ours too."""
    parents: dict[int, int] = {}
    times: dict[int, tuple[float, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        times[pid] = ((utime + cutime) / CLOCK_TICKS, (stime + cstime) / CLOCK_TICKS)
    tree, frontier = {os.getpid()}, [os.getpid()]
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    user = sum(times[p][0] for p in tree if p in times)
    system = sum(times[p][1] for p in tree if p in times)
    return user, system


@dataclass
class Sample:
    """One timed run: wall seconds, our process tree's CPU seconds (user/system) and the share
    of the machine's CPU that processes outside our tree used meanwhile (0 = quiet machine)."""

    wall: float
    user: float
    system: float
    foreign_share: float

    @property
    def cpu(self) -> float:
        return self.user + self.system


@contextlib.contextmanager
def measured() -> Iterator[list[Sample]]:
    """``with measured() as out: ...`` appends one Sample to ``out`` when the block ends."""
    out: list[Sample] = []
    busy0, (user0, sys0) = _machine_busy_s(), _tree_cpu_s()
    t0 = time.perf_counter()
    yield out
    wall = time.perf_counter() - t0
    user1, sys1 = _tree_cpu_s()
    user, system = max(0.0, user1 - user0), max(0.0, sys1 - sys0)
    foreign = max(0.0, _machine_busy_s() - busy0 - user - system)
    share = min(1.0, foreign / max(wall * (os.cpu_count() or 1), 1e-9))
    out.append(Sample(wall, user, system, share))


def timed(fn: Callable[[], Any]) -> tuple[Sample, Any]:
    with measured() as out:
        value = fn()
    return out[0], value


def dir_bytes(paths: list[Path]) -> int:
    """Apparent size of every file under ``paths`` (files vanish while we scan: ignored)."""
    total = 0
    for root in paths:
        if root.is_file():
            with contextlib.suppress(OSError):
                total += root.stat().st_size
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(dirpath, name)).st_size
    return total


class DiskSampler(threading.Thread):
    """Peak bytes on disk under ``paths``, sampled every ``period`` s while a run goes on.

    A peak shorter than the period can be missed; callers that can account exactly (the
    baseline's PNG folders only grow) report the larger of both."""

    def __init__(self, paths: list[Path], period: float = 0.02) -> None:
        super().__init__(daemon=True, name="disk-sampler")
        self.paths = paths
        self.period = period
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, dir_bytes(self.paths))
            self._halt.wait(self.period)

    def __enter__(self) -> DiskSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, dir_bytes(self.paths))


def proc_status_mb(name: str) -> float:
    """VmRSS (resident) or VmHWM (peak resident) of this process in MB.

    Not ``getrusage().ru_maxrss``: Linux carries it across fork+exec, so a child started by a
    1.3 GB benchmark process reports at least 1.3 GB whatever it does itself (measured)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def per_frame(samples: list[Sample], n: int) -> dict[str, float]:
    walls = [s.wall / n for s in samples]
    return {
        "best_s_per_frame": round(min(walls), 4),
        "median_s_per_frame": round(statistics.median(walls), 4),
        "cpu_s_per_frame": round(statistics.median([s.cpu / n for s in samples]), 4),
        "foreign_cpu_share_max": round(max(s.foreign_share for s in samples), 2),
    }


# ------------------------------------------------------------------------------------------
# Inputs


def prepare_environment(scratch: Path) -> list[str]:
    """Set Prefect/vsrflow variables BEFORE anything imports Prefect (it reads them once).

    The local profile runs on Prefect's temporary server in a private PREFECT_HOME, offline (no
    analytics), with the startup timeout 2 cores need. An exported PREFECT_API_URL would send
    the local runs to another server, so it is removed (and reported)."""
    removed = [k for k in ("PREFECT_API_URL", "VSRFLOW_WORK_DIR") if os.environ.pop(k, None)]
    os.environ["PREFECT_HOME"] = str(scratch / "prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["VSRFLOW_MODEL_PATH"] = str(SHARED / "models")
    return removed


def make_clip(
    source: Path, target: Path, frames: int, box: tuple[int, int, int, int] | None = None
) -> Path:
    """Write ``frames`` frames of ``source`` (cropped to ``box``; looped from the start when the
    source is shorter) as a near-lossless h264 mp4 at a constant 25 fps."""
    import av

    written = 0
    with av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "12", "preset": "fast"})
        stream.pix_fmt = "yuv420p"
        while written < frames:
            with av.open(str(source)) as src:
                for frame in src.decode(video=0):
                    rgb = frame.to_ndarray(format="rgb24")
                    if box is not None:
                        x, y, w, h = box
                        rgb = rgb[y : y + h, x : x + w]
                    if written == 0:
                        stream.height, stream.width = rgb.shape[:2]
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                    vf = vf.reformat(format="yuv420p")
                    vf.pts, vf.time_base = written, Fraction(1, 25)
                    out.mux(stream.encode(vf))
                    written += 1
                    if written == frames:
                        break
        out.mux(stream.encode(None))
    return target


def load_frames(path: Path, count: int | None = None) -> np.ndarray:
    """The clip's frames as (N, H, W, 3) uint8, decoded exactly as the pipeline decodes them."""
    from vsrflow.media.decode import decode_range
    from vsrflow.media.probe import probe

    info = probe(str(path))
    video = info.video.params(info.path)
    frames = []
    start = info.video.pts[0]
    for frame in decode_range(
        video.path, video.index, start, None, colour=video.colour, bit_depth=8
    ):
        frames.append(frame.rgb)
        if count is not None and len(frames) == count:
            break
    return np.stack(frames)


def get_weights() -> LoadedModel:
    from vsrflow.models import get_model

    return get_model(str(SHARED / "models" / WEIGHTS_NAME), progress=False)


def fresh_upscaler(model: LoadedModel, settings: EngineSettings, device: str = "cpu") -> Upscaler:
    """An Upscaler on its OWN copy of the model: Upscaler converts the (per-process shared)
    module to channels_last in place, which would leak into other configurations."""
    from vsrflow.engine import Upscaler

    return Upscaler(copy.deepcopy(model.descriptor), settings=settings, device=device)


def plain_forward(model: LoadedModel, frames: np.ndarray) -> np.ndarray:
    """The fidelity reference: Real-ESRGAN's own computation, one untiled fp32 forward per
    frame through the raw module, clamped, scaled, rounded (as tests/test_engine.py)."""
    import torch

    net = copy.deepcopy(model.descriptor.model).float().eval()
    out = []
    with torch.inference_mode():
        for frame in frames:
            x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
            y = net(x).clamp(0.0, 1.0)[0].permute(1, 2, 0)
            out.append((y * 255.0).round().to(torch.uint8).numpy())
    return np.stack(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_child(args: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> Any:
    """Run this script as a child process (``--worker ...``); its last stdout line is JSON."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
# Section 4: sweeps and fidelity


@dataclass
class SweepPoint:
    label: str
    settings: EngineSettings
    precision: str
    upscaler: Upscaler
    samples: list[Sample] = field(default_factory=list)
    first_call_s: float = 0.0
    max_diff: int = 0
    psnr_db: float = 0.0

    def best(self) -> float:
        return min(s.wall for s in self.samples)

    @property
    def fidelity_ok(self) -> bool:
        if self.precision == "fp32":
            return self.max_diff <= MAX_FP32_DIFF
        return self.psnr_db >= MIN_BF16_PSNR_DB

    def summary(self, n: int) -> dict[str, Any]:
        return {
            "label": self.label,
            "settings": dataclasses.asdict(self.settings),
            "precision": self.precision,
            **per_frame(self.samples, n),
            "fps": round(n / self.best(), 2),
            "first_call_s": round(self.first_call_s, 2),
            "max_abs_diff_levels": self.max_diff,
            "psnr_db": round(self.psnr_db, 2) if math.isfinite(self.psnr_db) else "inf",
            "fidelity_ok": self.fidelity_ok,
        }


def sweep_configs(quick: bool) -> list[tuple[str, EngineSettings]]:
    """One factor at a time around the defaults, plus channels_last x micro-batch in bf16 (the
    two interact through memory layout), tiles, fp32 (plain and tiled: the fp32 fidelity
    bound), torch.compile (opt-in), and fp16 when a CUDA device exists."""
    import torch

    from vsrflow.engine import EngineSettings

    default = EngineSettings()
    configs: list[tuple[str, EngineSettings]] = [("default", default)]
    for channels_last in (True, False):
        for mb in (1, 2, 4, 8):
            if quick and not channels_last and mb != default.micro_batch:
                continue
            cl = "on" if channels_last else "off"
            configs.append(
                (
                    f"bf16 cl={cl} mb={mb}",
                    dataclasses.replace(
                        default, precision="bf16", channels_last=channels_last, micro_batch=mb
                    ),
                )
            )
    for tile in (128, 64):
        configs.append(
            (f"bf16 tile={tile}", dataclasses.replace(default, precision="bf16", tile=tile))
        )
    for channels_last in (True, False):
        configs.append(
            (
                f"fp32 cl={'on' if channels_last else 'off'} mb={default.micro_batch}",
                dataclasses.replace(default, precision="fp32", channels_last=channels_last),
            )
        )
    configs.append(("fp32 tile=128", dataclasses.replace(default, precision="fp32", tile=128)))
    configs.append(("default + compile", dataclasses.replace(default, compile=True)))
    if torch.cuda.is_available():
        configs.append(("fp16 (cuda)", dataclasses.replace(default, precision="fp16")))
    return configs


def run_sweeps(
    model: LoadedModel, clip: Path, frames: np.ndarray, sizes: Sizes, quick: bool
) -> dict[str, Any]:
    """Frames/s of each setting on the same frames in interleaved rounds (order reversed every
    other round), the fidelity of each against a plain fp32 forward, and whether the defaults
    are the fastest setting within the fidelity bounds."""
    from vsrflow.engine import EngineSettings

    frames = frames[: sizes.sweep_frames]
    n = len(frames)
    t0 = time.perf_counter()
    reference = plain_forward(model, frames)
    reference_s = (time.perf_counter() - t0) / n
    inductor_cache = Path(tempfile.gettempdir()) / f"torchinductor_{os.environ.get('USER', 'root')}"
    cache_was_warm = inductor_cache.exists()

    points: list[SweepPoint] = []
    for label, settings in sweep_configs(quick):
        device = "cuda" if settings.precision == "fp16" else "cpu"
        upscaler = fresh_upscaler(model, settings, device)
        point = SweepPoint(label, settings, upscaler.precision, upscaler)
        t = time.perf_counter()
        out = upscaler.upscale(frames)  # warm-up (compile) and the fidelity check
        point.first_call_s = time.perf_counter() - t
        point.max_diff = int(np.abs(out.astype(np.int16) - reference).max())
        point.psnr_db = psnr(out, reference)
        points.append(point)
        print(f"  sweep: {label}: first call {point.first_call_s:.1f} s", flush=True)

    for round_index in range(sizes.sweep_rounds):
        order = points if round_index % 2 == 0 else points[::-1]
        for point in order:
            if point.precision == "fp32" and point.samples:
                continue  # fp32 is never picked where bf16 is native: one sample is enough
            sample, _ = timed(lambda u=point.upscaler: u.upscale(frames))
            point.samples.append(sample)
        print(f"  sweep: round {round_index + 1}/{sizes.sweep_rounds}", flush=True)

    default = points[0]
    twin = next(
        (
            p
            for p in points[1:]
            if p.settings == dataclasses.replace(default.settings, precision=default.precision)
        ),
        None,
    )
    eligible = [p for p in points if p.fidelity_ok and not p.settings.compile]
    fastest = min(eligible, key=SweepPoint.best)
    compiled = next(p for p in points if p.settings.compile)
    cold_dir = Path(tempfile.mkdtemp(prefix="vsrflow-bench-inductor-"))
    try:
        cold = run_child(
            ["--worker", "compile-cold", str(clip)], {"TORCHINDUCTOR_CACHE_DIR": str(cold_dir)}
        )["first_call_cold_s"]
    finally:
        shutil.rmtree(cold_dir, ignore_errors=True)
    eager = twin or default
    saving = (eager.best() - compiled.best()) / n
    extra = compiled.first_call_s - eager.first_call_s
    return {
        "frames": n,
        "frame_size_hw": list(frames.shape[1:3]),
        "reference_plain_fp32_s_per_frame": round(reference_s, 4),
        "points": [p.summary(n) for p in points],
        "defaults": dataclasses.asdict(EngineSettings()),
        "default_resolves_to": default.precision,
        "noise_default_vs_twin": round(abs(default.best() / twin.best() - 1), 3) if twin else None,
        "fastest_within_bounds": fastest.label,
        "default_over_fastest": round(min(default.best(), eager.best()) / fastest.best(), 3),
        "default_is_fastest_within_noise": min(default.best(), eager.best())
        <= fastest.best() * NOISE_MARGIN,
        "compile": {
            "first_call_s": round(compiled.first_call_s, 2),
            "eager_first_call_s": round(eager.first_call_s, 2),
            "inductor_cache_was_warm": cache_was_warm,
            "eager_s_per_frame": round(eager.best() / n, 4),
            "compiled_s_per_frame": round(compiled.best() / n, 4),
            "saving_s_per_frame": round(saving, 4),
            "break_even_frames": round(extra / saving) if saving > 0 else None,
            "first_call_cold_cache_s": cold,
            "break_even_frames_cold_cache": round((cold - eager.first_call_s) / saving)
            if saving > 0
            else None,
        },
    }


# ------------------------------------------------------------------------------------------
# Allocator A/B (vsrflow.engine.tune_cpu_allocator): per process, so in child processes


def worker_alloc(clip: Path, count: int) -> dict[str, Any]:
    """Child: engine speed, CPU split and page faults under the inherited environment, with the
    model in the main thread (the CLI, the pipeline called directly) and in a thread that had
    already allocated before (a Dask worker thread: glibc gave it its own malloc arena, whose
    heaps glibc unmaps once they are completely free, so the tuning helps less there)."""
    import resource

    from vsrflow.engine import EngineSettings, Upscaler, tune_cpu_allocator

    frames = load_frames(clip, count)
    upscaler = Upscaler(get_weights().descriptor, settings=EngineSettings(), device="cpu")
    result: dict[str, Any] = {"tuned": tune_cpu_allocator()}

    def measure(where: str) -> None:
        _arena = [np.ones(4096) for _ in range(64)]  # this thread now owns a malloc arena
        upscaler.upscale(frames)
        samples, faults = [], []
        for _ in range(3):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            samples.append(timed(lambda: upscaler.upscale(frames))[0])
            faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / count)
        result[where] = {
            **per_frame(samples, count),
            "system_s_per_frame": round(statistics.median(s.system / count for s in samples), 4),
            "minor_faults_per_frame": round(statistics.median(faults)),
        }

    measure("main_thread")
    thread = threading.Thread(target=measure, args=("worker_thread",))
    thread.start()
    thread.join()
    result["peak_rss_mb"] = round(proc_status_mb("VmHWM"))
    return result


def run_alloc_ab(clip: Path, sizes: Sizes) -> dict[str, Any]:
    """``tune_cpu_allocator`` off vs on, in fresh processes (it is process-wide and one-way)."""
    from vsrflow.engine import MALLOC_TUNING_ENV

    count = 16
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(sizes.alloc_pairs):
        for mode in ("off", "on"):
            env = {MALLOC_TUNING_ENV: "1" if mode == "on" else "0"}
            runs[mode].append(run_child(["--worker", "alloc", str(clip), str(count)], env))
    summary: dict[str, Any] = {"frames": count}
    for mode, results in runs.items():
        summary[mode] = {"tuned": results[0]["tuned"], "peak_rss_mb": results[0]["peak_rss_mb"]}
        for where in ("main_thread", "worker_thread"):
            keys = results[0][where]
            merged = {k: statistics.median([r[where][k] for r in results]) for k in keys}
            merged["best_s_per_frame"] = min(r[where]["best_s_per_frame"] for r in results)
            summary[mode][where] = merged
    for where in ("main_thread", "worker_thread"):
        off, on = summary["off"][where]["cpu_s_per_frame"], summary["on"][where]["cpu_s_per_frame"]
        summary[f"cpu_saving_{where}"] = round(1 - on / off, 3)
    return summary


def worker_compile_cold(clip: Path) -> dict[str, Any]:
    """Child with an empty inductor cache (TORCHINDUCTOR_CACHE_DIR set by the parent): what
    ``EngineSettings(compile=True)`` costs on its first call in a fresh worker image."""
    import dataclasses as dc

    from vsrflow.engine import EngineSettings, Upscaler

    frames = load_frames(clip, EngineSettings().micro_batch)
    settings = dc.replace(EngineSettings(), compile=True)
    upscaler = Upscaler(get_weights().descriptor, settings=settings, device="cpu")
    t = time.perf_counter()
    upscaler.upscale(frames)
    return {"first_call_cold_s": round(time.perf_counter() - t, 2)}


# ------------------------------------------------------------------------------------------
# Section 1: model vs engine vs pipeline (same frames, same settings, interleaved rounds)


class BatchRig:
    """The bench clip as ONE batch, ready to time at each layer with the same upscaler: the
    model alone on tensors already in memory, the engine (uint8 in and out), the pipeline
    writing a chunk, and the encoder alone. Chunks go to ``chunks`` and are deleted."""

    def __init__(self, upscaler: Upscaler, clip: Path, frames: np.ndarray, chunks: Path) -> None:
        import torch

        from vsrflow.media.probe import probe
        from vsrflow.plan import plan_batches

        self.upscaler, self.frames, self.chunks = upscaler, frames, chunks
        self.n, self.micro_batch = len(frames), max(1, upscaler.settings.micro_batch)
        self.info = probe(str(clip))
        self.video = self.info.video.params(self.info.path)
        self.batch = plan_batches(
            self.info.video, source_id="bench", settings_identity={}, frames_per_batch=self.n
        )[0]
        self.out_size = (self.video.width * upscaler.scale, self.video.height * upscaler.scale)
        # The model's input as the engine builds it (a permuted uint8 view, float, / 255).
        self.tensors = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        self.peak_disk: list[int] = []
        self.output_bytes: list[int] = []
        chunks.mkdir(parents=True, exist_ok=True)

    def model_only(self) -> None:
        import torch

        with torch.inference_mode():
            for i in range(0, self.n, self.micro_batch):
                self.upscaler._forward_tiled(self.tensors[i : i + self.micro_batch])

    def engine_only(self) -> np.ndarray:
        return self.upscaler.upscale(self.frames)

    def pipeline(self, encoder: EncoderSettings | None = None) -> None:
        from vsrflow.media.encode import EncoderSettings
        from vsrflow.pipeline import upscale_batch

        target = self.chunks / f"{uuid.uuid4().hex}.mp4"
        with DiskSampler([self.chunks]) as disk:
            upscale_batch(
                self.video,
                self.batch,
                self.upscaler,
                target,
                encoder=encoder or EncoderSettings(),
                out_size=self.out_size,
            )
        self.peak_disk.append(disk.peak)
        self.output_bytes.append(target.stat().st_size)
        target.unlink()

    def encode_only(self, upscaled: np.ndarray, encoder: EncoderSettings, path: Path) -> None:
        from vsrflow.media.encode import ChunkEncoder

        out_w, out_h = self.out_size
        with ChunkEncoder(
            path, settings=encoder, width=out_w, height=out_h, bit_depth=8,
            time_base=self.video.time_base, average_rate=self.video.average_rate,
            colour=self.video.colour,
        ) as chunk:  # fmt: skip
            for rgb, pts in zip(upscaled, self.info.video.pts[: self.n], strict=True):
                chunk.write(rgb, pts)

    def decode_only(self) -> int:
        from vsrflow.media.decode import decode_range

        frames_iter = decode_range(
            self.video.path, self.video.index, self.batch.start_pts, self.batch.end_pts,
            colour=self.video.colour, bit_depth=self.video.bit_depth,
        )  # fmt: skip
        return sum(1 for _ in frames_iter)


def interleaved(
    variants: list[tuple[str, Callable[[], Any]]], rounds: int, tag: str
) -> dict[str, list[Sample]]:
    """Time each variant ``rounds`` times, in an order reversed every other round, so slow
    drifts of the machine's load hit every variant alike."""
    samples: dict[str, list[Sample]] = {name: [] for name, _ in variants}
    for round_index in range(rounds):
        for name, fn in variants if round_index % 2 == 0 else variants[::-1]:
            sample = timed(fn)[0]
            samples[name].append(sample)
            print(
                f"  {tag} round {round_index + 1}/{rounds} {name}: {sample.wall:.1f} s", flush=True
            )
    return samples


def run_speed(
    model: LoadedModel,
    clip: Path,
    warm_clip: Path,
    frames: np.ndarray,
    sizes: Sizes,
    scratch: Path,
    with_flow: bool,
) -> dict[str, Any]:
    """Time the layers on the same frames with the default settings in interleaved rounds
    (model, engine, pipeline, flow), plus decode alone and encode alone, from which the
    CPU-bound floor follows: on a CPU the model and the codec share the cores, so overlap can
    hide waiting but not work. Returns {"core": ..., "flow": ...}."""
    import torch

    from vsrflow.engine import EngineSettings
    from vsrflow.media.encode import EncoderSettings

    settings = EngineSettings()
    rig = BatchRig(fresh_upscaler(model, settings), clip, frames, scratch / "core-chunks")
    n = rig.n
    upscaled = rig.engine_only()  # warm-up at this shape; kept for the encode-only run
    variants: list[tuple[str, Callable[[], Any]]] = [
        ("model", rig.model_only),
        ("engine", rig.engine_only),
        ("pipeline", rig.pipeline),
    ]
    flow = FlowBench(clip, warm_clip, scratch) if with_flow else None
    if flow is not None:
        variants.append(("flow", flow.run_once))
    samples = interleaved(variants, sizes.rounds, "speed")
    samples.pop("flow", None)
    encoded = rig.chunks / "encode-only.mp4"
    decode_sample = timed(rig.decode_only)[0]
    encode_sample = timed(lambda: rig.encode_only(upscaled, EncoderSettings(), encoded))[0]
    encoded.unlink()
    result: dict[str, Any] = {name: per_frame(s, n) for name, s in samples.items()}
    m, e, p = result["model"], result["engine"], result["pipeline"]
    cores = os.cpu_count() or 1
    codec_cpu = (decode_sample.cpu + encode_sample.cpu) / n
    floor = max(e["best_s_per_frame"], (e["cpu_s_per_frame"] + codec_cpu) / cores)
    result.update(
        frames=n,
        settings=dataclasses.asdict(settings),
        encoder=EncoderSettings().identity(),
        precision=rig.upscaler.precision,
        torch_threads=torch.get_num_threads(),
        decode_only=per_frame([decode_sample], n),
        encode_only=per_frame([encode_sample], n),
        serial_sum_s_per_frame=round(
            e["best_s_per_frame"] + (decode_sample.wall + encode_sample.wall) / n, 4
        ),
        cpu_bound_floor_s_per_frame=round(floor, 4),
        ratio_pipeline_over_model=round(p["best_s_per_frame"] / m["best_s_per_frame"], 3),
        ratio_pipeline_over_model_median=round(
            p["median_s_per_frame"] / m["median_s_per_frame"], 3
        ),
        ratio_engine_over_model=round(e["best_s_per_frame"] / m["best_s_per_frame"], 3),
        ratio_pipeline_over_cpu_floor=round(p["best_s_per_frame"] / floor, 3),
        # The best ratio any overlap could reach here: the codec's CPU on top of the model's.
        ratio_floor_over_model=round(floor / m["best_s_per_frame"], 3),
        pipeline_peak_disk_bytes=max(rig.peak_disk),
        pipeline_output_bytes=rig.output_bytes[-1],
    )
    speed: dict[str, Any] = {"core": result}
    if flow is not None:
        flow_result = flow.result()
        flow_result["fixed_overhead_s"] = round(
            flow_result["best_total_s"] - p["best_s_per_frame"] * n, 2
        )
        speed["flow"] = flow_result
    return speed


# ------------------------------------------------------------------------------------------
# Section 1b: the encoder's share, and the pipeline when the model has compute of its own

#: x264 presets compared, slowest first; x264's own default (medium) is the reference.
X264_PRESETS = ("medium", "faster", "veryfast", "superfast", "ultrafast")
REFERENCE_PRESET = "medium"
#: A preset may replace the reference as the default when its file at the same CRF is no
#: larger and its PSNR against the model's frames is at most this much lower.
MAX_ENCODER_PSNR_LOSS_DB = 0.5


def run_encoders(
    model: LoadedModel, clip: Path, frames: np.ndarray, sizes: Sizes, scratch: Path
) -> dict[str, Any]:
    """On a CPU the encoder competes with the model for the same cores, so its CPU cost is the
    pipeline's overhead. For each x264 preset at the default CRF: the encoder alone (CPU per
    frame, bytes, PSNR of the decoded chunk against the model's frames) and pipeline / model
    in interleaved rounds; the cheapest preset no larger and at most 0.5 dB worse than x264's
    default must be vsrflow's default. Then the same pipeline with torch on all cores but one,
    which leaves the codec a core of its own, as a GPU node does (the model on the GPU, the
    codec on the CPU): that ratio is what the overlap achieves when work does not compete."""
    import torch

    from vsrflow.engine import EngineSettings
    from vsrflow.media.encode import EncoderSettings

    rig = BatchRig(fresh_upscaler(model, EngineSettings()), clip, frames, scratch / "enc-chunks")
    n = rig.n
    upscaled = rig.engine_only()
    default_preset = EncoderSettings().options().get("preset", "")
    presets: dict[str, dict[str, Any]] = {}
    for preset in X264_PRESETS:
        path = rig.chunks / f"encode-{preset}.mp4"
        sample = timed(
            lambda p=preset, out=path: rig.encode_only(upscaled, EncoderSettings(speed=p), out)
        )[0]
        presets[preset] = {
            "encode_cpu_s_per_frame": round(sample.cpu / n, 4),
            "encode_s_per_frame": round(sample.wall / n, 4),
            "bytes": path.stat().st_size,
            "psnr_db_vs_model_frames": round(psnr(load_frames(path), upscaled), 2),
        }
        path.unlink()
    variants: list[tuple[str, Callable[[], Any]]] = [("model", rig.model_only)]
    variants += [(p, lambda p=p: rig.pipeline(EncoderSettings(speed=p))) for p in X264_PRESETS]
    samples = interleaved(variants, sizes.encoder_rounds, "encoder")
    model_s = min(s.wall for s in samples["model"])
    for preset, record in presets.items():
        record["pipeline"] = per_frame(samples[preset], n)
        record["pipeline_over_model"] = round(min(s.wall for s in samples[preset]) / model_s, 3)
    ref = presets[REFERENCE_PRESET]
    eligible = [
        p
        for p, r in presets.items()
        if r["bytes"] <= ref["bytes"]
        and r["psnr_db_vs_model_frames"]
        >= ref["psnr_db_vs_model_frames"] - MAX_ENCODER_PSNR_LOSS_DB
    ]
    pick = min(eligible, key=lambda p: presets[p]["encode_cpu_s_per_frame"])
    result: dict[str, Any] = {
        "frames": n,
        "crf": EncoderSettings().options().get("crf"),
        "default_preset": default_preset,
        "presets": presets,
        "cheapest_eligible": pick,
        "default_is_cheapest_eligible": default_preset == pick
        or presets.get(default_preset, {}).get("encode_cpu_s_per_frame", math.inf)
        <= presets[pick]["encode_cpu_s_per_frame"] * NOISE_MARGIN,
    }
    threads = torch.get_num_threads()
    if threads < 2:
        result["spare_core"] = {"skipped": f"torch uses {threads} thread: no core to spare"}
        return result
    torch.set_num_threads(threads - 1)
    try:
        rig.model_only()  # warm-up at this thread count
        spare = interleaved(
            [("model", rig.model_only), ("pipeline", rig.pipeline)],
            sizes.encoder_rounds,
            "spare core",
        )
    finally:
        torch.set_num_threads(threads)
    m, p = per_frame(spare["model"], n), per_frame(spare["pipeline"], n)
    result["spare_core"] = {
        "torch_threads": threads - 1,
        "cores": os.cpu_count(),
        "model": m,
        "pipeline": p,
        "pipeline_over_model": round(p["best_s_per_frame"] / m["best_s_per_frame"], 3),
    }
    return result


# ------------------------------------------------------------------------------------------
# Section 1 (flow) and 3 (scratch disk of a real run)


def warm_up_prefect() -> float:
    """Run a trivial flow: starts Prefect's temporary server, a one-off cost per process."""
    from prefect import flow

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    return timed(warmup)[0].wall


class FlowBench:
    """The full Prefect flow on the local profile, timed in the same rounds as the pipeline
    (so both see the same machine load), after two warm-ups reported separately: a trivial flow
    (Prefect's temporary server: a one-off per process) and an upscale flow on 8 frames (loads
    the model into the worker, which every later batch and flow run in that worker reuses)."""

    def __init__(self, clip: Path, warm_clip: Path, scratch: Path) -> None:
        self.clip, self.warm_clip, self.scratch = clip, warm_clip, scratch
        self.samples: list[Sample] = []
        self.stages: list[dict[str, float]] = []
        self.work_peaks: list[int] = []
        self.all_peaks: list[int] = []
        self.summary: dict[str, Any] = {}
        self.server_s = warm_up_prefect()
        print(f"  flow: temporary server + first flow run {self.server_s:.1f} s", flush=True)
        self.warm_s = self._run(self.warm_clip)[0].wall
        print(f"  flow: warm-up upscale flow (model load) {self.warm_s:.1f} s", flush=True)

    def _run(self, source: Path) -> tuple[Sample, dict[str, Any], int, int]:
        from flows.upscale_video import upscale_video
        from vsrflow.engine import EngineSettings

        defaults = EngineSettings()
        tag = uuid.uuid4().hex[:8]
        work, out_dir = self.scratch / f"flow-work-{tag}", self.scratch / f"flow-out-{tag}"
        out_dir.mkdir()
        with DiskSampler([work]) as work_disk, DiskSampler([work, out_dir]) as all_disk:
            sample, summary = timed(
                lambda: upscale_video(
                    input_path=str(source),
                    output_path=str(out_dir / "out.mp4"),
                    model=str(SHARED / "models" / WEIGHTS_NAME),
                    work_dir=str(work),
                    micro_batch=defaults.micro_batch,
                    tile=defaults.tile,
                    tile_pad=defaults.tile_pad,
                )
            )
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        return sample, summary, work_disk.peak, all_disk.peak

    def run_once(self) -> None:
        sample, self.summary, work_peak, all_peak = self._run(self.clip)
        self.samples.append(sample)
        self.stages.append(self.summary["seconds"])
        self.work_peaks.append(work_peak)
        self.all_peaks.append(all_peak)

    def result(self) -> dict[str, Any]:
        output_bytes = int(self.summary["size_bytes"])
        frames = int(self.summary["frames"])
        # Assembly writes the output while every chunk still exists (they are removed after
        # it), so the true peak is at least the work dir's peak plus the output; sampling every
        # 20 ms can miss that moment.
        written = max(max(self.all_peaks), max(self.work_peaks) + output_bytes)
        return {
            "frames": frames,
            "batches": self.summary.get("batches"),
            "temporary_server_startup_s": round(self.server_s, 2),
            "warmup_flow_8_frames_s": round(self.warm_s, 2),
            **per_frame(self.samples, frames),
            "best_total_s": round(min(s.wall for s in self.samples), 2),
            "flow_stage_seconds": self.stages,
            "output_bytes": output_bytes,
            "peak_work_dir_bytes": max(self.work_peaks),
            "peak_work_dir_plus_output_bytes": written,
            "scratch_over_output": round(max(self.work_peaks) / output_bytes, 3),
            "written_over_output": round(written / output_bytes, 3),
        }


# ------------------------------------------------------------------------------------------
# Section 2: the naive baseline


def run_baseline(model: LoadedModel, clip: Path, scratch: Path) -> dict[str, Any]:
    """What most upscaling scripts do: every frame to PNG, one fp32 frame at a time through the
    model from PNG, PNGs out, re-encode the PNG sequence at the nominal frame rate (same x264
    crf 18 / medium as the pipeline)."""
    import av
    import torch
    from PIL import Image

    png_in, png_out = scratch / "baseline-png-in", scratch / "baseline-png-out"
    png_in.mkdir()
    png_out.mkdir()
    output = scratch / "baseline.mp4"
    net = copy.deepcopy(model.descriptor.model).float().eval()
    stages: dict[str, float] = {}
    with DiskSampler([png_in, png_out, output]) as disk, measured() as total:
        t = time.perf_counter()
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or Fraction(25)
            for i, frame in enumerate(container.decode(stream)):
                frame.to_image().save(png_in / f"{i:06d}.png")
        stages["extract_png"] = time.perf_counter() - t

        t = time.perf_counter()
        names = sorted(p.name for p in png_in.glob("*.png"))
        with torch.inference_mode():
            for name in names:
                rgb = np.asarray(Image.open(png_in / name).convert("RGB")).copy()
                x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
                y = net(x).clamp(0.0, 1.0)[0].permute(1, 2, 0)
                Image.fromarray((y * 255.0).round().to(torch.uint8).numpy()).save(png_out / name)
        stages["upscale_fp32_from_png_to_png"] = time.perf_counter() - t

        t = time.perf_counter()
        with av.open(str(output), "w") as container:
            options = {"crf": "18", "preset": "medium"}
            stream = container.add_stream("libx264", rate=rate, options=options)
            stream.width, stream.height = Image.open(png_out / names[0]).size
            stream.pix_fmt = "yuv420p"
            for name in names:
                image = Image.open(png_out / name).convert("RGB")
                container.mux(stream.encode(av.VideoFrame.from_image(image)))
            container.mux(stream.encode(None))
        stages["encode_from_png"] = time.perf_counter() - t
    sample = total[0]
    accounted = dir_bytes([png_in, png_out, output])  # nothing is deleted: the end is the peak
    return {
        "frames": len(names),
        "total_s": round(sample.wall, 2),
        **per_frame([sample], len(names)),
        "stages_s": {k: round(v, 2) for k, v in stages.items()},
        "peak_disk_bytes": max(disk.peak, accounted),
        "png_bytes": dir_bytes([png_in, png_out]),
        "output_bytes": output.stat().st_size,
    }


# ------------------------------------------------------------------------------------------
# Section 3: worker peak RSS, short vs long input


def worker_rss(clip: Path, workdir: Path) -> dict[str, Any]:
    """Child: the whole clip as ONE batch through upscale_batch (the worst case for streaming:
    a batch this long) and this process's peak resident set."""
    from vsrflow.engine import EngineSettings, Upscaler
    from vsrflow.media.encode import EncoderSettings
    from vsrflow.media.probe import probe
    from vsrflow.pipeline import upscale_batch
    from vsrflow.plan import plan_batches

    info = probe(str(clip))
    video = info.video.params(info.path)
    count = info.video.frame_count
    batch = plan_batches(info.video, source_id="rss", settings_identity={}, frames_per_batch=count)[
        0
    ]
    upscaler = Upscaler(get_weights().descriptor, settings=EngineSettings(), device="cpu")
    rss_before = proc_status_mb("VmRSS")
    t = time.perf_counter()
    result = upscale_batch(
        video,
        batch,
        upscaler,
        workdir / f"{uuid.uuid4().hex}.mp4",
        encoder=EncoderSettings(),
        out_size=(video.width * upscaler.scale, video.height * upscaler.scale),
    )
    return {
        "frames": result.frames,
        "seconds": round(time.perf_counter() - t, 2),
        "rss_after_model_load_mb": round(rss_before, 1),
        "peak_rss_mb": round(proc_status_mb("VmHWM"), 1),
        "out_frame_bytes": video.width * video.height * 3 * upscaler.scale**2,
    }


def run_rss(sizes: Sizes, scratch: Path) -> dict[str, Any]:
    short_n, long_n = sizes.rss_frames
    results: dict[str, Any] = {"source": RSS_SOURCE, "short": short_n, "long": long_n}
    for key, n in (("short_run", short_n), ("long_run", long_n)):
        clip = make_clip(SHARED / "media" / RSS_SOURCE, scratch / f"rss-{n}.mp4", n)
        out = scratch / f"rss-out-{n}"
        out.mkdir()
        results[key] = run_child(["--worker", "rss", str(clip), str(out)])
        print(f"  rss: {n} frames: peak {results[key]['peak_rss_mb']} MB", flush=True)
    short, long = results["short_run"], results["long_run"]
    results["growth_mb"] = round(long["peak_rss_mb"] - short["peak_rss_mb"], 1)
    # For scale: what holding the extra upscaled frames in memory would take.
    results["if_frames_were_kept_mb"] = round((long_n - short_n) * long["out_frame_bytes"] / 2**20)
    return results


# ------------------------------------------------------------------------------------------
# Section 5: orchestration overhead per task


def run_orchestration(n_tasks: int, scratch: Path) -> dict[str, Any]:
    """``n_tasks`` trivial tasks submitted the way ``upscale_batches`` submits batches (all at
    once, then waited on) through the local profile's DaskTaskRunner, with the batch task's
    options: retries, a key-based cache policy, results persisted to local storage. Each task's
    "model" is a 1x identity (a copy of one 320x180 frame), timed inside the task; overhead per
    task = (time from first submit to last result - summed work) / tasks."""
    from prefect import flow, task
    from prefect.cache_policies import CachePolicy
    from prefect.futures import wait

    from deployments.profiles import get_profile

    server_s = warm_up_prefect()  # no-op if the flow section already started the server
    frame = np.zeros((180, 320, 3), np.uint8)

    @dataclass
    class KeyPolicy(CachePolicy):
        def compute_key(
            self,
            task_ctx: Any,
            inputs: dict[str, Any],
            flow_parameters: dict[str, Any],
            **kwargs: Any,
        ) -> str | None:
            return f"bench-{inputs['token']}-{inputs['index']}"

    @task(
        name="bench-trivial-batch",
        retries=2,
        retry_delay_seconds=2,
        cache_policy=KeyPolicy(),
        persist_result=True,
        result_storage=scratch / "orchestration-results",
    )
    def trivial_batch(index: int, token: str) -> float:
        t = time.perf_counter()
        frame.copy()
        return time.perf_counter() - t

    @flow(name="bench-orchestration")
    def many(n: int, token: str) -> dict[str, float]:
        t = time.perf_counter()
        futures = [trivial_batch.submit(i, token) for i in range(n)]
        wait(futures)
        work = sum(f.result() for f in futures)
        return {"task_phase_s": time.perf_counter() - t, "work_s": work}

    runner = get_profile("local").make_task_runner()
    sample, result = timed(lambda: many.with_options(task_runner=runner)(n_tasks, uuid.uuid4().hex))
    return {
        "tasks": n_tasks,
        "server_warmup_s": round(server_s, 2),
        "total_s": round(sample.wall, 2),
        "task_phase_s": round(result["task_phase_s"], 2),
        "work_s": round(result["work_s"], 4),
        "overhead_s_per_task": round((result["task_phase_s"] - result["work_s"]) / n_tasks, 4),
        "overhead_s_per_task_incl_flow_and_cluster_start": round(
            (sample.wall - result["work_s"]) / n_tasks, 4
        ),
        "cpu_s_per_task": round(sample.cpu / n_tasks, 4),
        "foreign_cpu_share": round(sample.foreign_share, 2),
    }


# ------------------------------------------------------------------------------------------
# Section 6: Slurm, 1 vs 2 workers


def _squeue(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %T %j"], env=env, capture_output=True, text=True, check=False
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


def run_slurm(clip: Path, frames: int, scratch: Path) -> dict[str, Any]:
    """The user's command with ``--profile slurm`` against the local single-node Slurm and one
    Prefect server (the environment tests/test_cluster.py uses: 1 core per worker job), first
    with 1 worker job, then 2. The same clip, cut into 4 batches so 2 workers can share them."""
    if shutil.which("sbatch") is None:
        return {"skipped": "sbatch not found: Slurm is not installed here"}
    sys.path.insert(0, str(REPO / "tests"))
    import infra

    try:
        base = {**os.environ, **infra.ensure_slurm(), **infra.ensure_prefect()}
    except infra.InfraUnavailable as exc:
        return {"skipped": f"Slurm is not available here: {str(exc).splitlines()[0]}"}
    except (infra.InfraError, subprocess.TimeoutExpired) as exc:
        return {"skipped": f"Slurm or the Prefect server did not start: {str(exc)[:300]}"}
    base.pop("PREFECT_HOME", None)  # the real server, never a temporary one
    logs = scratch / "slurm-logs"
    logs.mkdir(exist_ok=True)
    base.update(
        VSRFLOW_SLURM_CORES="1",
        VSRFLOW_SLURM_MEMORY="3GB",
        VSRFLOW_SLURM_WALLTIME="00:20:00",
        VSRFLOW_SCHEDULER_HOST="127.0.0.1",
        VSRFLOW_DASHBOARD_ADDRESS="127.0.0.1:0",
        VSRFLOW_SLURM_LOG_DIR=str(logs),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    waited = 0
    while _squeue(base) and waited < 180:  # somebody else's jobs hold the node: wait a bit
        time.sleep(2)
        waited += 2
    foreign_jobs = _squeue(base)
    batch_frames = max(1, frames // 4)
    runs: dict[str, Any] = {}
    for workers in (1, 2):
        env = {
            **base,
            "VSRFLOW_SLURM_MIN_JOBS": str(workers),
            "VSRFLOW_SLURM_MAX_JOBS": str(workers),
        }
        out = scratch / f"slurm-{workers}" / "out.mp4"
        cmd = [
            sys.executable, "-m", "flows.cli", "upscale", str(clip), "-o", str(out),
            "--model", str(SHARED / "models" / WEIGHTS_NAME), "--profile", "slurm",
            "--batch-frames", str(batch_frames), "--work-dir", str(out.parent / "work"),
            "--no-progress",
        ]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(
            cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900, check=False
        )
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            runs[str(workers)] = {"error": proc.stderr[-1500:]}
            print(f"  slurm: {workers} worker(s) FAILED", flush=True)
            continue
        summary = json.loads(proc.stdout[proc.stdout.index("{") :])
        busy: dict[str, float] = {}
        for b in summary["batch_results"]:
            worker = f"{b['host']}/{b['slurm_job_id']}"
            busy[worker] = busy.get(worker, 0.0) + b["seconds_total"]
        runs[str(workers)] = {
            "wall_s": round(wall, 2),
            "upscale_stage_s": summary["seconds"].get("upscale"),
            "flow_seconds": summary["seconds"],
            "workers_seen": summary.get("workers"),
            "batches": summary.get("batches"),
            "model_seconds_per_batch": [
                round(b["seconds_model"], 2) for b in summary["batch_results"]
            ],
            # Seconds each worker spent inside batches; the rest of the upscale stage is Slurm
            # job start, worker start-up (imports, model load) and scheduling.
            "busiest_worker_s": round(max(busy.values()), 2),
        }
        print(f"  slurm: {workers} worker(s): {wall:.1f} s", flush=True)
        deadline = time.monotonic() + 60
        while _squeue(base) and time.monotonic() < deadline:  # let the jobs end
            time.sleep(1)
    result: dict[str, Any] = {
        "frames": frames,
        "batch_frames": batch_frames,
        "cores_per_worker_job": 1,
        "waited_for_foreign_jobs_s": waited,
        "foreign_jobs_at_start": foreign_jobs,
        "runs": runs,
    }
    one, two = runs.get("1", {}), runs.get("2", {})
    if "wall_s" in one and "wall_s" in two:
        result["speedup_wall"] = round(one["wall_s"] / two["wall_s"], 2)
        result["speedup_upscale_stage"] = round(one["upscale_stage_s"] / two["upscale_stage_s"], 2)
        result["speedup_busiest_worker"] = round(
            one["busiest_worker_s"] / two["busiest_worker_s"], 2
        )
    return result


# ------------------------------------------------------------------------------------------
# Report


def machine_info() -> dict[str, Any]:
    import av
    import prefect
    import torch

    from vsrflow.engine import cpu_has_native_bf16

    cpu_model = platform.processor()
    with contextlib.suppress(OSError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu_model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lscpu.splitlines()
                if ln.startswith("Model name:")
            ),
            cpu_model,
        )
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        mem_kb = int(meminfo.readline().split()[1])
    with open("/proc/cpuinfo", encoding="ascii") as cpuinfo:
        flags = cpuinfo.read()
    return {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "cpu_features": [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags],
        "memory_gib": round(mem_kb / 2**20, 1),
        "native_bf16": cpu_has_native_bf16(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "av": av.__version__,
        "ffmpeg": getattr(av, "ffmpeg_version_info", None),
        "numpy": np.__version__,
        "prefect": prefect.__version__,
        "kernel": platform.release(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


@dataclass
class Row:
    group: str
    metric: str
    value: str
    target: str = ""
    status: str = ""


def _check(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _fps(timing: dict[str, Any]) -> str:
    s = float(timing["best_s_per_frame"])
    return f"{s:.3f} s/frame ({1 / s:.1f} fps)"


def build_rows(r: dict[str, Any]) -> list[Row]:
    """The summary table: one row per number a reader needs, with its target if it has one."""
    rows: list[Row] = []

    def add(group: str, metric: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append(Row(group, metric, value, target, "" if ok is None else _check(ok)))

    core, flow_r, base = r.get("core"), r.get("flow"), r.get("baseline")
    if core:
        m, e, p = core["model"], core["engine"], core["pipeline"]
        ratio, ratio_med = (
            core["ratio_pipeline_over_model"],
            core["ratio_pipeline_over_model_median"],
        )
        enc, floor = core["encode_only"], core["cpu_bound_floor_s_per_frame"]
        add("1 speed", f"model forward, tensors in memory ({core['precision']})", _fps(m))
        add("1 speed", "engine: uint8 frames in -> uint8 frames out", _fps(e))
        add("1 speed", "pipeline upscale_batch: decode+model+encode overlapped", _fps(p))
        target = f"<= {TARGET_PIPELINE_RATIO}"
        ok = ratio <= TARGET_PIPELINE_RATIO
        add(
            "1 speed",
            "pipeline / model (best; median)",
            f"{ratio:.2f}; {ratio_med:.2f}",
            target,
            ok,
        )
        enc_value = (
            f"{enc['best_s_per_frame']:.3f} s/frame, {enc['cpu_s_per_frame']:.3f} CPU-s/frame"
        )
        opts = core.get("encoder", {}).get("options", {})
        encoder_label = f"libx264 crf {opts.get('crf', '?')} {opts.get('preset', '?')}"
        add("1 speed", f"{encoder_label} (default) encode alone, 1280x720", enc_value)
        floor_value = f"{floor:.3f} s/frame = {core['ratio_floor_over_model']:.2f} x model"
        add("1 speed", "CPU-bound floor: (engine+decode+encode CPU) / cores", floor_value)
        add("1 speed", "pipeline / CPU-bound floor", f"{core['ratio_pipeline_over_cpu_floor']:.2f}")
    if flow_r:
        server, warm = flow_r["temporary_server_startup_s"], flow_r["warmup_flow_8_frames_s"]
        add("1 speed", "Prefect temporary server start (one-off, excluded)", f"{server:.1f} s")
        add("1 speed", "warm-up upscale flow, 8 frames (model load, excluded)", f"{warm:.1f} s")
        flow_value = f"{_fps(flow_r)}, {flow_r['best_total_s']:.1f} s in all"
        add("1 speed", f"flow upscale_video, local profile, {flow_r['frames']} frames", flow_value)
        fixed = flow_r.get("fixed_overhead_s")
        if fixed is not None:
            add("1 speed", "flow time - pipeline time (fixed cost per flow run)", f"{fixed:.1f} s")
        if core:
            flow_s = flow_r["best_s_per_frame"]
            add("1 speed", "flow / model", f"{flow_s / core['model']['best_s_per_frame']:.2f}")
            add(
                "1 speed", "flow / pipeline", f"{flow_s / core['pipeline']['best_s_per_frame']:.2f}"
            )
    enc_r = r.get("encoder")
    if enc_r:
        for preset, rec in enc_r["presets"].items():
            mark = " (default)" if preset == enc_r["default_preset"] else ""
            value = (
                f"encode {rec['encode_cpu_s_per_frame']:.4f} CPU-s/frame, "
                f"{rec['bytes'] / 1e3:.0f} kB, {rec['psnr_db_vs_model_frames']:.2f} dB; "
                f"pipeline / model {rec['pipeline_over_model']:.2f}"
            )
            add("1 encoder", f"x264 crf {enc_r['crf']} {preset}{mark}", value)
        add(
            "1 encoder",
            f"default preset = cheapest no larger than {REFERENCE_PRESET} and within "
            f"{MAX_ENCODER_PSNR_LOSS_DB} dB",
            f"{enc_r['default_preset']} (cheapest such: {enc_r['cheapest_eligible']})",
            "yes",
            enc_r["default_is_cheapest_eligible"],
        )
        spare = enc_r.get("spare_core", {})
        if "skipped" in spare:
            add("1 encoder", "pipeline / model with a core left to the codec", spare["skipped"])
        elif spare:
            ratio = spare["pipeline_over_model"]
            add(
                "1 encoder",
                f"pipeline / model, torch on {spare['torch_threads']} of {spare['cores']} cores "
                "(the codec gets its own core, as beside a GPU)",
                f"{ratio:.2f} ({spare['model']['best_s_per_frame']:.3f} vs "
                f"{spare['pipeline']['best_s_per_frame']:.3f} s/frame)",
                f"<= {TARGET_PIPELINE_RATIO}",
                ratio <= TARGET_PIPELINE_RATIO,
            )
    if base:
        add(
            "2 baseline",
            f"naive PNG baseline (fp32, 1 frame at a time, {base['frames']} frames)",
            _fps(base),
        )
        if core:
            pipe_disk, base_disk = core["pipeline_peak_disk_bytes"], base["peak_disk_bytes"]
            speed = base["best_s_per_frame"] / core["pipeline"]["best_s_per_frame"]
            add("2 baseline", "time: baseline / pipeline", f"{speed:.1f}x")
            mb_in, mb_out = base_disk / 2**20, pipe_disk / 2**20
            disk = f"{base_disk / pipe_disk:.0f}x ({mb_in:.1f} MB vs {mb_out:.2f} MB)"
            add("2 baseline", "peak disk written: baseline / pipeline", disk)
    if flow_r:
        scratch, written = flow_r["scratch_over_output"], flow_r["written_over_output"]
        add(
            "3 disk, memory",
            "flow: peak scratch (work dir) / output",
            f"{scratch:.2f}",
            f"<= {TARGET_SCRATCH_RATIO}",
            scratch <= TARGET_SCRATCH_RATIO,
        )
        add(
            "3 disk, memory",
            "flow: peak of all bytes written (incl. output) / output",
            f"{written:.2f}",
        )
    rss = r.get("rss")
    if rss:
        short, long = rss["short_run"]["peak_rss_mb"], rss["long_run"]["peak_rss_mb"]
        kept = rss["if_frames_were_kept_mb"]
        add(
            "3 disk, memory",
            f"worker peak RSS, {rss['short']} vs {rss['long']} frames, one batch",
            f"{short:.0f} MB vs {long:.0f} MB",
        )
        add(
            "3 disk, memory",
            "RSS growth (holding those frames would take)",
            f"{rss['growth_mb']:+.0f} MB ({kept} MB)",
            "flat",
            rss["growth_mb"] < 0.1 * kept,
        )
    sw = r.get("sweeps")
    if sw:
        for pt in sw["points"]:
            fid = f"{pt['psnr_db']} dB PSNR"
            if pt["precision"] == "fp32":
                fid = f"max diff {pt['max_abs_diff_levels']}/255"
            rows.append(
                Row(
                    "4 sweep",
                    pt["label"],
                    f"{pt['fps']:.2f} fps, {fid}",
                    "",
                    "ok" if pt["fidelity_ok"] else "FIDELITY",
                )
            )
        add("4 sweep", "fastest within the fidelity bounds", sw["fastest_within_bounds"])
        value = (
            f"{sw['default_over_fastest']:.2f} (same setting twice: {sw['noise_default_vs_twin']})"
        )
        add(
            "4 sweep",
            "defaults' time / fastest's (noise)",
            value,
            f"<= {NOISE_MARGIN}",
            sw["default_is_fastest_within_noise"],
        )
        c = sw["compile"]
        saving = f"{c['saving_s_per_frame'] * 1000:+.0f} ms/frame"
        for cache, first, even in (
            ("warm", c["first_call_s"], c["break_even_frames"]),
            ("cold", c["first_call_cold_cache_s"], c["break_even_frames_cold_cache"]),
        ):
            value = f"{first:.1f} s first call; {saving}; break-even {even or 'never'} frames"
            add("4 sweep", f"torch.compile, {cache} inductor cache", value)
    alloc = r.get("alloc")
    if alloc:
        for where in ("main_thread", "worker_thread"):
            off, on = alloc["off"][where], alloc["on"][where]
            add(
                "4 sweep",
                f"malloc tuning off -> on, model in {where.replace('_', ' ')}: "
                "CPU-s/frame (kernel); faults/frame",
                f"{off['cpu_s_per_frame']:.3f} ({off['system_s_per_frame']:.3f}) -> "
                f"{on['cpu_s_per_frame']:.3f} ({on['system_s_per_frame']:.3f}); "
                f"{off['minor_faults_per_frame']:.0f} -> {on['minor_faults_per_frame']:.0f}",
            )
    orch = r.get("orchestration")
    if orch:
        per_task, all_in = (
            orch["overhead_s_per_task"],
            orch["overhead_s_per_task_incl_flow_and_cluster_start"],
        )
        add(
            "5 orchestration",
            f"Prefect + local Dask overhead per task ({orch['tasks']} tasks)",
            f"{per_task:.3f} s",
            f"<= {TARGET_TASK_OVERHEAD_S}",
            per_task <= TARGET_TASK_OVERHEAD_S,
        )
        add("5 orchestration", "same, including flow run and Dask cluster start", f"{all_in:.3f} s")
    sl = r.get("slurm")
    if sl and "skipped" in sl:
        add("6 slurm", "1 vs 2 worker jobs", f"skipped: {sl['skipped']}")
    elif sl:
        for k, run in sl["runs"].items():
            value = f"failed: {run.get('error', '')[-160:]}"
            if "wall_s" in run:
                value = (
                    f"{run['wall_s']:.1f} s wall, upscale stage {run['upscale_stage_s']:.1f} s, "
                    f"busiest worker in batches {run['busiest_worker_s']:.1f} s"
                )
            label = f"{k} worker job(s) x 1 CPU (torch uses 1 thread), {sl['frames']} frames"
            add("6 slurm", label, value)
        if "speedup_wall" in sl:
            speedups = (
                f"{sl['speedup_wall']:.2f}x / {sl['speedup_upscale_stage']:.2f}x / "
                f"{sl['speedup_busiest_worker']:.2f}x"
            )
            add("6 slurm", "speedup 2 vs 1 workers: wall / upscale stage / in batches", speedups)
    return rows


def render_table(rows: list[Row]) -> str:
    lines = ["| part | measurement | value | target | |", "|---|---|---|---|---|"]
    lines += [f"| {r.group} | {r.metric} | {r.value} | {r.target} | {r.status} |" for r in rows]
    return "\n".join(lines)


def render_plot(r: dict[str, Any], path: Path) -> None:
    """Two horizontal bar charts drawn with Pillow: seconds per frame of each layer on the same
    frames, and frames/s of each sweep setting (green: within the fidelity bounds; red:
    outside; grey: torch.compile, opt-in; the defaults are outlined)."""
    from PIL import Image, ImageDraw, ImageFont

    layers: list[tuple[str, float, str, bool]] = []
    core, flow_r, base, sw = r.get("core"), r.get("flow"), r.get("baseline"), r.get("sweeps")
    if core:
        layers += [
            ("model forward", core["model"]["best_s_per_frame"], "#4c72b0", False),
            ("engine (uint8 in/out)", core["engine"]["best_s_per_frame"], "#4c72b0", False),
            ("CPU-bound floor", core["cpu_bound_floor_s_per_frame"], "#8c8c8c", False),
            ("pipeline upscale_batch", core["pipeline"]["best_s_per_frame"], "#55a868", True),
        ]
    if flow_r:
        layers.append(("Prefect flow (local)", flow_r["best_s_per_frame"], "#55a868", False))
    if base:
        layers.append(("naive PNG baseline", base["best_s_per_frame"], "#c44e52", False))
    sweep: list[tuple[str, float, str, bool]] = []
    for pt in sw["points"] if sw else []:
        colour = "#55a868" if pt["fidelity_ok"] else "#c44e52"
        if pt["settings"].get("compile"):
            colour = "#8c8c8c"
        sweep.append((pt["label"], pt["fps"], colour, pt["label"] == "default"))
    encoders: list[tuple[str, float, str, bool]] = []
    enc_r = r.get("encoder")
    for preset, rec in enc_r["presets"].items() if enc_r else []:
        default = preset == enc_r["default_preset"]
        encoders.append((f"x264 {preset}", rec["pipeline_over_model"], "#55a868", default))
    spare = (enc_r or {}).get("spare_core", {})
    if "pipeline_over_model" in spare:
        label = f"default, torch {spare['torch_threads']} thread(s)"
        encoders.append((label, spare["pipeline_over_model"], "#4c72b0", False))

    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=13)
    width, label_w, bar_w, row_h = 1100, 250, 700, 24
    height = 70 + sum(50 + row_h * len(bars) for bars in (layers, sweep, encoders) if bars)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    mach = r["machine"]
    title = f"vsrflow bench ({r['mode']}, {r['started']}): {mach['cpu_model']}, {mach['cpus']} CPUs"
    draw.text((20, 14), f"{title}, torch {mach['torch']}", fill="black", font=font)

    def chart(top: int, heading: str, bars: list[tuple[str, float, str, bool]], unit: str) -> int:
        draw.text((20, top), heading, fill="black", font=font)
        top += 28
        peak = max((b[1] for b in bars), default=1.0) or 1.0
        for i, (label, value, colour, outline) in enumerate(bars):
            y = top + i * row_h
            draw.text((20, y + 4), label, fill="black", font=small)
            x1 = label_w + max(1, int(bar_w * value / peak))
            draw.rectangle(
                (label_w, y + 3, x1, y + row_h - 3),
                fill=colour,
                outline="black" if outline else None,
                width=2 if outline else 0,
            )
            shown = f"{value:.3f}" if unit == "s/frame" else f"{value:.2f}"
            draw.text((x1 + 6, y + 5), f"{shown} {unit}", fill="black", font=small)
        return top + len(bars) * row_h + 22

    top = 50
    if layers:
        frames = core["frames"] if core else (flow_r or base or {}).get("frames", "")
        heading = f"seconds per frame on the same {frames} frames, best of rounds (lower is better)"
        top = chart(top, heading, layers, "s/frame")
    if sweep and sw:
        h, w = sw["frame_size_hw"]
        top = chart(
            top, f"sweep: frames/s, {sw['frames']} frames {w}x{h} (higher is better)", sweep, "fps"
        )
    if encoders:
        heading = "pipeline / model by x264 preset (1.00 = the model's own speed; lower is better)"
        chart(top, heading, encoders, "x")
    image.save(path)


def write_reports(results: dict[str, Any], out_dir: Path) -> str:
    """Print and save the table, the JSON and the plot; return the text printed."""
    clean = {k: v for k, v in results.items() if not (isinstance(v, dict) and "error" in v)}
    rows = build_rows(clean)
    mach = results["machine"]
    header = (
        f"vsrflow bench ({results['mode']}), {results['started']}, {results['duration_s']:.0f} s; "
        f"{mach['cpu_model']}, {mach['cpus']} CPUs ({', '.join(mach['cpu_features'])}), "
        f"torch {mach['torch']}, av {mach['av']}; load average {mach['load_average_at_start']} "
        f"-> {mach['load_average_at_end']}"
    )
    errors = [
        f"section {k} failed: {v['error']}"
        for k, v in results.items()
        if isinstance(v, dict) and "error" in v
    ]
    text = "\n\n".join([header, render_table(rows), *errors])
    out_dir.mkdir(parents=True, exist_ok=True)
    results["table"] = [dataclasses.asdict(row) for row in rows]
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(f"# vsrflow benchmark results\n\n{text}\n")
    render_plot(clean, out_dir / "plot.png")
    return text


SECTIONS = (
    "sweeps", "alloc", "core", "flow", "encoder", "baseline", "rss", "orchestration", "slurm"
)  # fmt: skip
#: "core" (model / engine / pipeline) and "flow" are timed together, in the same rounds.
_RUN_ORDER = (
    "sweeps", "alloc", "speed", "encoder", "baseline", "rss", "orchestration", "slurm"
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer rounds")
    parser.add_argument("--no-slurm", action="store_true", help="skip Slurm 1 vs 2 workers")
    parser.add_argument("--only", help=f"comma-separated sections of: {','.join(SECTIONS)}")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker
        if kind == "alloc":
            print(json.dumps(worker_alloc(Path(rest[0]), int(rest[1]))))
        elif kind == "compile-cold":
            print(json.dumps(worker_compile_cold(Path(rest[0]))))
        elif kind == "rss":
            print(json.dumps(worker_rss(Path(rest[0]), Path(rest[1]))))
        return 0
    if not (SHARED / "models" / WEIGHTS_NAME).exists():
        print(f"bench: shared data not found in {SHARED} (set VSRFLOW_SHARED_DIR)", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    wanted = set(args.only.split(",")) if args.only else set(SECTIONS)
    if unknown := wanted - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="vsrflow-bench-"))
    removed = prepare_environment(scratch)
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_info(),
        "sizes": dataclasses.asdict(sizes),
        "environment_removed": removed,
    }
    try:
        source = SHARED / "media" / BENCH_SOURCE
        clip = make_clip(source, scratch / "bench-clip.mp4", sizes.frames, BENCH_BOX)
        warm_clip = make_clip(source, scratch / "warm-clip.mp4", 8, BENCH_BOX)
        results["clip"] = {
            "source": BENCH_SOURCE,
            "crop_xywh": list(BENCH_BOX),
            "frames": sizes.frames,
            "fps": 25,
            "output_wh": [BENCH_BOX[2] * 4, BENCH_BOX[3] * 4],
        }
        frames = load_frames(clip)
        model = get_weights()
        jobs: dict[str, Callable[[], dict[str, Any]]] = {
            "sweeps": lambda: run_sweeps(model, clip, frames, sizes, args.quick),
            "alloc": lambda: run_alloc_ab(clip, sizes),
            "speed": lambda: run_speed(
                model, clip, warm_clip, frames, sizes, scratch, "flow" in wanted
            ),
            "encoder": lambda: run_encoders(model, clip, frames, sizes, scratch),
            "baseline": lambda: run_baseline(model, clip, scratch),
            "rss": lambda: run_rss(sizes, scratch),
            "orchestration": lambda: run_orchestration(sizes.tasks, scratch),
            "slurm": lambda: run_slurm(clip, sizes.frames, scratch),
        }
        for name in _RUN_ORDER:
            keys = ["core", "flow"] if name == "speed" else [name]
            keys = [k for k in keys if k in wanted]
            if not keys:
                continue
            if name == "slurm" and args.no_slurm:
                results[name] = {"skipped": "--no-slurm"}
                continue
            print(f"[{time.perf_counter() - started:5.0f} s] {'+'.join(keys)}", flush=True)
            try:
                outcome = jobs[name]()
                results.update(outcome if name == "speed" else {name: outcome})
            except Exception as exc:  # one broken section must not lose the others
                for key in keys:
                    results[key] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print("\n" + write_reports(results, args.results_dir))
    print(f"\nsaved {args.results_dir}/results.json, results.md, plot.png")
    return 1 if any(isinstance(v, dict) and "error" in v for v in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
