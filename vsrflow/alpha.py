"""Alpha planes through the engine: shared by still images and video batches.

Alpha is upscaled separately from colour, so colour never bleeds into transparency: through
the model as a three-channel gray image (what Real-ESRGAN does: sharp edges), or bicubic
(smooth, cheaper). Flattening composites colour over black before upscaling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from vsrflow.engine import Upscaler

AlphaMode = Literal["model", "bicubic"]


def _peak(dtype: np.dtype) -> float:
    return 255.0 if dtype == np.uint8 else 65535.0


def resize_planes(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of (N, H, W) integer planes to (N, H', W') (``size`` = (H', W'))."""
    import torch  # here, not at the top: planning code imports this module without torch
    import torch.nn.functional as F

    peak = _peak(planes.dtype)
    t = torch.from_numpy(planes.astype(np.float32) / peak)[:, None]
    out = F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True)
    return (out[:, 0].clamp(0, 1) * peak).round().numpy().astype(planes.dtype)


def upscale_alpha(
    planes: np.ndarray, upscaler: Upscaler, out_size: tuple[int, int], mode: str = "model"
) -> np.ndarray:
    """Upscale (N, H, W) alpha planes to (N, H', W') (``out_size`` = (H', W')), same dtype.

    ``model``: each plane goes through the model as gray RGB and the mean of the three
    output channels is the alpha; ``bicubic``: :func:`resize_planes`."""
    if mode == "bicubic":
        return resize_planes(planes, out_size)
    if mode != "model":
        raise ValueError(f"unknown alpha mode {mode!r}: use model or bicubic")
    gray = np.repeat(planes[..., None], 3, axis=-1)
    up = upscaler.upscale(gray, out_size=out_size)
    return up.mean(axis=-1).round().astype(planes.dtype)


def flatten_over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite (..., H, W, 3) colour over black with (..., H, W) alpha; same dtype."""
    peak = _peak(rgb.dtype)
    weight = alpha.astype(np.float32)[..., None] / peak
    return (rgb.astype(np.float32) * weight).round().clip(0, peak).astype(rgb.dtype)
