"""The inference engine: RGB frames in, upscaled RGB frames out.

One code path serves GPU and CPU: frames go to the device as integers and come back as
integers (the uint8/uint16 conversion happens on the device, which is what stalls peers'
GPUs when done on the CPU), micro-batches of frames share each forward pass, large frames are
cut into overlapping tiles whose padding is discarded so there are no seams, and precision is
fp16 on CUDA, bf16 autocast on CPUs with native bf16, fp32 otherwise or on request.

On CPU two process-wide settings are applied once, when the first CPU Upscaler is made: torch
uses no more threads than the batch scheduler allocated (``limit_cpu_threads``), and glibc keeps
freed activation memory instead of handing it back to the kernel after every forward pass
(``tune_cpu_allocator``). bench/run.py measures both.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor

from vsrflow.engine_settings import ENGINE_DEFAULTS, EngineSettings, Precision
from vsrflow.geometry import check_output_size, output_geometry
from vsrflow.memory import (
    PassPlan,
    auto_budget,
    plan_pass,
    values_per_input_pixel,
)

__all__ = ["EngineSettings", "Precision", "Upscaler", "output_geometry"]

#: Environment switch for ``tune_cpu_allocator`` ("0" leaves glibc's defaults alone).
MALLOC_TUNING_ENV = "VSRFLOW_CPU_MALLOC_TUNING"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Blocks up to this size come from the heap and freed memory up to this much stays there:
#: a layer's activations of an SD pass, so the model stops page-faulting them afresh (bench
#: "alloc": 15,962 -> 169 faults and 0.233 -> 0.211 CPU-s per frame with 256 MB).
_MALLOC_KEEP_BYTES = 128 << 20
#: One heap for every thread. With a heap per thread (glibc's default) each stage thread
#: (decode, model, encode) kept what it had freed: a worker's peak over a plain forward loop
#: (640x272 x4, fp32, 4 frames per pass, bench "workermem") was +365 to +534 MB at 256 or
#: 192 MB kept and +84 to +408 MB at 128 MB; with one heap, +101 to +114 MB at 128 MB (+235 to
#: +867 MB at 256), at the same speed. Without the tuning: +33 MB and ~11 % slower.
_MALLOC_ARENAS = 1


def allocated_cpus() -> int | None:
    """CPUs the batch scheduler allocated to this process, when it says so (Slurm's
    ``--cpus-per-task``, which dask-jobqueue sets from the profile's ``cores``)."""
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


@functools.cache
def limit_cpu_threads() -> int:
    """Use at most the allocated CPUs for torch's intra-op threads; returns the thread count.

    Without CPU binding (TaskPlugin=task/none, containers) torch starts one thread per core
    of the node whatever the job asked for, so two 1-CPU worker jobs on a 2-core node ran 4
    threads: measured 13.3 s per 50 frames per worker, 10.5 s with one thread each. With
    binding torch already sees only its CPUs and this changes nothing.
    """
    allocated = allocated_cpus()
    if allocated is not None and allocated < torch.get_num_threads():
        torch.set_num_threads(allocated)
    return torch.get_num_threads()


@functools.cache
def tune_cpu_allocator() -> bool:
    """Keep freed activation memory in the process instead of returning it to the kernel.

    glibc serves blocks above its mmap threshold (at most 32 MB even after its dynamic
    adjustment) with a fresh ``mmap`` and unmaps them on free, so every forward pass on CPU
    page-faults (and the kernel zeroes) its activations again. Raising the mmap and trim
    thresholds lets the heap reuse that memory. Measured by bench/run.py (2-core Xeon, bf16,
    320x180 -> 1280x720, model in the main thread): 12,000-27,000 -> 0 page faults and
    0.16-0.20 -> 0.12-0.15 CPU-s per frame; peak RSS +~170 MB, flat in the number of frames.
    Threads started from then on share one heap (``M_ARENA_MAX``), so memory one stage thread
    freed serves the next; a thread that already owned a heap keeps it (glibc unmaps such a
    heap once it is entirely free, whatever the thresholds).
    Process-wide, once; a no-op off glibc or when ``VSRFLOW_CPU_MALLOC_TUNING=0``. Returns
    whether the tuning is active.
    """
    if os.environ.get(MALLOC_TUNING_ENV, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(
        mallopt(_M_ARENA_MAX, _MALLOC_ARENAS)
        and mallopt(_M_MMAP_THRESHOLD, _MALLOC_KEEP_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, _MALLOC_KEEP_BYTES)
    )


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bf16 autocast is ~2x faster than fp32."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
                flags = cpuinfo.read()
            return "avx512_bf16" in flags or "amx_bf16" in flags
    except (AttributeError, RuntimeError, OSError):
        return False
    return False


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto'/None: the first visible CUDA device (Slurm sets CUDA_VISIBLE_DEVICES), else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(
    requested: Precision, device: torch.device, descriptor: ImageModelDescriptor
) -> Precision:
    """Pick the concrete precision: fp16 on CUDA, bf16 on capable CPUs, else fp32."""
    if requested == "fp32":
        return "fp32"
    if requested == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        if not descriptor.supports_half:
            raise ValueError(f"{descriptor.architecture.name} does not support fp16")
        return "fp16"
    if requested == "bf16":
        if not descriptor.supports_bfloat16:
            raise ValueError(f"{descriptor.architecture.name} does not support bf16")
        return "bf16"
    if device.type == "cuda" and descriptor.supports_half:
        return "fp16"
    if device.type == "cpu" and descriptor.supports_bfloat16 and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def tile_windows(height: int, width: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the core of each tile, covering the frame exactly once."""
    if tile <= 0:
        yield 0, height, 0, width
        return
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            yield y0, min(y0 + tile, height), x0, min(x0 + tile, width)


class Upscaler:
    """Run one model on batches of frames; create once per process and reuse."""

    def __init__(
        self,
        descriptor: ImageModelDescriptor,
        *,
        settings: EngineSettings = ENGINE_DEFAULTS,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.settings = settings
        self.precision = resolve_precision(settings.precision, self.device, descriptor)
        self.scale = descriptor.scale
        if self.device.type == "cpu":
            limit_cpu_threads()
            tune_cpu_allocator()
        if self.precision == "fp16" or settings.compile:
            # Models are shared per process (vsrflow.models.get_model): change a copy.
            descriptor = copy.deepcopy(descriptor)
            if self.precision == "fp16":
                descriptor = descriptor.half()
        descriptor = descriptor.to(self.device).eval()
        if settings.channels_last:
            descriptor.model.to(memory_format=torch.channels_last)
        if settings.compile:
            # In place on the module, so spandrel's padding/clamping around it still applies.
            descriptor.model.compile()
        self._descriptor = descriptor
        self._compute_dtype = torch.float16 if self.precision == "fp16" else torch.float32
        gib = settings.max_memory_gb
        self.memory_budget = int(gib * 2**30) if gib > 0 else auto_budget(self.device)
        self._values_per_pixel: float | None = None
        #: How the last micro-batch went through the model (frames per pass, tile).
        self.last_plan: PassPlan | None = None

    def plan(self, frames: int, height: int, width: int) -> PassPlan:
        """Frames per pass and tile for ``frames`` frames of ``height`` x ``width`` that fit
        the memory budget (see vsrflow.memory)."""
        if self._values_per_pixel is None:
            self._values_per_pixel = values_per_input_pixel(self._descriptor)
        return plan_pass(
            frames=frames,
            height=height + self.settings.pre_pad,
            width=width + self.settings.pre_pad,
            scale=self.scale,
            values_per_pixel=self._values_per_pixel,
            value_bytes=2 if self.precision == "fp16" else 4,
            budget_bytes=self.memory_budget,
            tile=self.settings.tile,
            tile_pad=self.settings.tile_pad,
        )

    def _autocast(self) -> AbstractContextManager[object]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self._descriptor(x).float()

    def _forward_tiled(self, x: torch.Tensor, tile: int) -> torch.Tensor:
        n, c, h, w = x.shape
        s, pad = self.scale, self.settings.tile_pad
        if tile <= 0 or (h <= tile and w <= tile):
            return self._forward(x)
        out = torch.empty((n, c, h * s, w * s), dtype=torch.float32, device=x.device)
        for y0, y1, x0, x1 in tile_windows(h, w, tile):
            py0, py1 = max(y0 - pad, 0), min(y1 + pad, h)
            px0, px1 = max(x0 - pad, 0), min(x1 + pad, w)
            part = self._forward(x[:, :, py0:py1, px0:px1])
            out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = part[
                :, :, (y0 - py0) * s : (y1 - py0) * s, (x0 - px0) * s : (x1 - px0) * s
            ]
        return out

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height * self.scale, width * self.scale

    @torch.inference_mode()
    def upscale(self, frames: np.ndarray, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8/uint16 -> (N, H', W', 3) of the same dtype.

        ``out_size`` = (H', W') resizes the model output (bicubic, antialiased) on the device;
        default is the model's own scale.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) frames, got shape {frames.shape}")
        if frames.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"expected uint8 or uint16 frames, got {frames.dtype}")
        peak = 255.0 if frames.dtype == np.uint8 else 65535.0
        out_dtype = torch.uint8 if frames.dtype == np.uint8 else torch.int32
        height, width = frames.shape[1:3]
        check_output_size(*self.output_size(height, width))  # what the model produces
        if out_size is not None:
            check_output_size(*out_size)
        plan = self.plan(min(max(1, self.settings.micro_batch), frames.shape[0]), height, width)
        self.last_plan = plan
        results = []
        for start in range(0, frames.shape[0], plan.frames_per_pass):
            part = frames[start : start + plan.frames_per_pass]
            results.append(self._upscale_batch(part, peak, out_dtype, out_size, plan.tile))
        out = results[0] if len(results) == 1 else np.concatenate(results, axis=0)
        return out.astype(np.uint16) if frames.dtype == np.uint16 else out

    def _upscale_batch(
        self,
        frames: np.ndarray,
        peak: float,
        out_dtype: torch.dtype,
        out_size: tuple[int, int] | None,
        tile: int,
    ) -> np.ndarray:
        source = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.type == "cuda":
            source = source.pin_memory()
        x = source.to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).to(self._compute_dtype) / peak
        pre_pad = self.settings.pre_pad
        if pre_pad:
            x = F.pad(x, (0, pre_pad, 0, pre_pad), mode="reflect")
        y = self._forward_tiled(x, tile)
        if pre_pad:
            y = y[:, :, : y.shape[2] - pre_pad * self.scale, : y.shape[3] - pre_pad * self.scale]
        if out_size is not None and tuple(out_size) != tuple(y.shape[2:]):
            y = F.interpolate(
                y, size=tuple(out_size), mode="bicubic", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)  # bicubic overshoots; spandrel already clamped the model output
        # In place: y is ours, and each new full-size float tensor costs an allocation (page
        # faults) and a pass over memory. Same values as (clamp(y) * peak).round().
        y = y.mul_(peak).round_().to(out_dtype)
        return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()
