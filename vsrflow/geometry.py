"""Output frame geometry and the output size limit: what planning needs without a model.

The flow process plans a job (sizes, the pixel limit) but never runs the model, so none of
this imports torch: a flow that only orchestrates stays small and starts fast (issue 11).
"""

from __future__ import annotations

import math
import os

from vsrflow.errors import FrameTooLargeError

#: Largest output frame accepted (pixels), VSRFLOW_MAX_OUTPUT_PIXELS: 16384 x 16384.
DEFAULT_MAX_OUTPUT_PIXELS = 16384 * 16384


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


def max_output_pixels() -> int:
    value = os.environ.get("VSRFLOW_MAX_OUTPUT_PIXELS", "")
    return int(value) if value.isdigit() else DEFAULT_MAX_OUTPUT_PIXELS


def check_output_size(height: int, width: int) -> None:
    """Refuse an output frame beyond the pixel limit (before any memory is spent on it)."""
    limit = max_output_pixels()
    if height * width > limit:
        raise FrameTooLargeError(
            f"the output frame would be {width}x{height} ({height * width / 1e6:.0f} MP), over "
            f"the limit of {limit / 1e6:.0f} MP (VSRFLOW_MAX_OUTPUT_PIXELS): lower outscale or "
            "target_height, or split the picture"
        )
