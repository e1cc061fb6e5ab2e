"""The inference engine: RGB frames in, upscaled RGB frames out.

One code path serves GPU and CPU: frames go to the device as integers and come back as
integers (the uint8/uint16 conversion happens on the device, which is what stalls peers'
GPUs when done on the CPU), micro-batches of frames share each forward pass, large frames are
cut into overlapping tiles whose padding is discarded so there are no seams, and precision is
fp16 on CUDA, bf16 autocast on CPUs with native bf16, fp32 otherwise or on request.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class EngineSettings:
    """How frames are pushed through the model (none of this changes the model's weights)."""

    precision: Precision = "auto"
    #: Tile edge in input pixels; 0 = whole frames. Tiles bound memory for large frames.
    tile: int = 0
    #: Context around each tile that is computed and thrown away so tiles stitch seamlessly.
    tile_pad: int = 16
    #: Reflection padding at the right/bottom edge (Real-ESRGAN's pre_pad) against edge artefacts.
    pre_pad: int = 0
    #: Frames per forward pass.
    micro_batch: int = 4
    channels_last: bool = True

    def identity(self) -> dict[str, object]:
        """What can change output pixels (part of the batch cache key)."""
        return {
            "precision": self.precision,
            "tile": self.tile,
            "tile_pad": self.tile_pad,
            "pre_pad": self.pre_pad,
        }


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
        settings: EngineSettings = EngineSettings(),
        device: str | torch.device | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.settings = settings
        self.precision = resolve_precision(settings.precision, self.device, descriptor)
        self.scale = descriptor.scale
        if self.precision == "fp16":
            # Models are shared per process (vsrflow.models.get_model): convert a copy.
            descriptor = copy.deepcopy(descriptor).half()
        descriptor = descriptor.to(self.device).eval()
        if settings.channels_last:
            descriptor.model.to(memory_format=torch.channels_last)
        self._descriptor = descriptor
        self._compute_dtype = torch.float16 if self.precision == "fp16" else torch.float32

    def _autocast(self) -> AbstractContextManager[object]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return self._descriptor(x).float()

    def _forward_tiled(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s, pad = self.scale, self.settings.tile_pad
        if self.settings.tile <= 0 or (h <= self.settings.tile and w <= self.settings.tile):
            return self._forward(x)
        out = torch.empty((n, c, h * s, w * s), dtype=torch.float32, device=x.device)
        for y0, y1, x0, x1 in tile_windows(h, w, self.settings.tile):
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
        results = []
        for start in range(0, frames.shape[0], max(1, self.settings.micro_batch)):
            part = frames[start : start + max(1, self.settings.micro_batch)]
            results.append(self._upscale_batch(part, peak, out_dtype, out_size))
        out = np.concatenate(results, axis=0)
        return out.astype(np.uint16) if frames.dtype == np.uint16 else out

    def _upscale_batch(
        self,
        frames: np.ndarray,
        peak: float,
        out_dtype: torch.dtype,
        out_size: tuple[int, int] | None,
    ) -> np.ndarray:
        source = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.type == "cuda":
            source = source.pin_memory()
        x = source.to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).to(self._compute_dtype) / peak
        pre_pad = self.settings.pre_pad
        if pre_pad:
            x = F.pad(x, (0, pre_pad, 0, pre_pad), mode="reflect")
        y = self._forward_tiled(x)
        if pre_pad:
            y = y[:, :, : y.shape[2] - pre_pad * self.scale, : y.shape[3] - pre_pad * self.scale]
        if out_size is not None and tuple(out_size) != tuple(y.shape[2:]):
            y = F.interpolate(
                y, size=tuple(out_size), mode="bicubic", align_corners=False, antialias=True
            )
        y = (y.clamp_(0.0, 1.0) * peak).round_().to(out_dtype)
        return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def output_geometry(
    width: int,
    height: int,
    model_scale: int,
    *,
    outscale: float | None = None,
    target_height: int | None = None,
    even: bool = True,
) -> tuple[int, int]:
    """Final (width, height): model scale by default, an arbitrary ``outscale`` factor, or a
    ``target_height`` with the aspect ratio kept; rounded to even sizes when ``even``."""
    if outscale is not None and target_height is not None:
        raise ValueError("give outscale or target_height, not both")
    if target_height is not None:
        if target_height <= 0:
            raise ValueError("target_height must be positive")
        factor = target_height / height
    elif outscale is not None:
        if outscale <= 0:
            raise ValueError("outscale must be positive")
        factor = outscale
    else:
        factor = float(model_scale)
    out_w, out_h = width * factor, height * factor
    if even:
        return max(2, 2 * math.floor(out_w / 2 + 0.5)), max(2, 2 * math.floor(out_h / 2 + 0.5))
    return max(1, round(out_w)), max(1, round(out_h))
