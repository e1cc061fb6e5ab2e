"""What every section of the benchmark shares, so that a section module needs only this file
and vsrflow: where the data is, how much work a run does (``Sizes``: full vs ``--quick``), the
targets the table checks, how a run is measured (wall time, our process tree's CPU, everybody
else's CPU, disk, memory; interleaved rounds) and the inputs (the bench clip and its frames, the
weights, a fresh upscaler, the fp32 fidelity reference, child processes of bench/run.py)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from vsrflow.engine import EngineSettings, Upscaler
    from vsrflow.models import LoadedModel


REPO = Path(__file__).resolve().parents[1]
#: The entry point; ``run_child`` starts it again as a child process (``--worker KIND ...``).
RUN_SCRIPT = Path(__file__).resolve().with_name("run.py")
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


def per_frame(samples: list[Sample], n: int) -> dict[str, float]:
    walls = [s.wall / n for s in samples]
    return {
        "best_s_per_frame": round(min(walls), 4),
        "median_s_per_frame": round(statistics.median(walls), 4),
        "cpu_s_per_frame": round(statistics.median([s.cpu / n for s in samples]), 4),
        "foreign_cpu_share_max": round(max(s.foreign_share for s in samples), 2),
    }


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


def warm_up_prefect() -> float:
    """Run a trivial flow: starts Prefect's temporary server, a one-off cost per process."""
    from prefect import flow

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    return timed(warmup)[0].wall


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
    """Run bench/run.py as a child process (``--worker ...``); its last stdout line is JSON."""
    proc = subprocess.run(
        [sys.executable, str(RUN_SCRIPT), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
