"""How much memory a pass through the model needs, and how to stay inside a budget.

A 4000x4000 frame through a x4 model needs tens of GB of activations; a GPU with less runs
out of memory mid-run, a CPU node swaps or is OOM-killed. Before each pass the engine asks
this module for a plan that fits the budget: fewer frames per pass first (never changes a
pixel), then tiles for a frame that does not fit on its own (tile padding is computed and
discarded, so the seams do not show), and a clear refusal when even the output frame would
not fit.

What a model needs per input pixel is derived from the model itself, as spandrel derives
everything else: one forward pass on a small input, with hooks recording the size of every
layer's output. Peak memory is taken as the two largest activations alive at once (a layer's
input and output) plus the final output, scaled by the pixel count.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from spandrel import ImageModelDescriptor

from vsrflow.errors import FrameTooLargeError

#: Side of the probe input (pixels): large enough for every architecture's padding rules.
_PROBE_SIDE = 32
#: Tile sizes tried, largest first (source pixels).
TILE_CHOICES = (2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 96, 64, 32)
#: Share of the free device memory (or of the available RAM on CPU) a worker plans to use
#: when no budget is given.
AUTO_SHARE_GPU = 0.8
AUTO_SHARE_CPU = 0.5
#: Measured peaks run up to ~17 % above the estimate (uint8/float copies around the pass:
#: 590 MB measured vs 504 MB estimated, 768x768 fp32 animevideov3): plan with this margin.
SAFETY = 1.25


@dataclass(frozen=True)
class PassPlan:
    """How one micro-batch goes through the model."""

    frames_per_pass: int
    #: Tile edge in source pixels; 0 = whole frames.
    tile: int
    estimated_bytes: int


@functools.cache
def _probe(descriptor: ImageModelDescriptor) -> float:
    sizes: list[int] = []

    def record(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    leaves = [m for m in descriptor.model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        parameter = next(descriptor.model.parameters())
        x = torch.zeros(
            (1, descriptor.input_channels, _PROBE_SIDE, _PROBE_SIDE),
            dtype=parameter.dtype,
            device=parameter.device,
        )
        with torch.inference_mode():
            out = descriptor(x)
    finally:
        for hook in hooks:
            hook.remove()
    largest = sorted(sizes, reverse=True)[:2]
    return (sum(largest) + out.numel()) / (_PROBE_SIDE * _PROBE_SIDE)


def values_per_input_pixel(descriptor: ImageModelDescriptor) -> float:
    """Activation values alive at the peak of a forward pass, per input pixel of one frame."""
    return _probe(descriptor)


def auto_budget(device: torch.device) -> int:
    """Bytes a worker may plan for: a share of the free GPU memory, or of the RAM the kernel
    reports available (MemAvailable) on CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * AUTO_SHARE_GPU)
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * AUTO_SHARE_CPU)
    except OSError:
        pass
    return 4 << 30


def plan_pass(
    *,
    frames: int,
    height: int,
    width: int,
    scale: int,
    values_per_pixel: float,
    value_bytes: int,
    budget_bytes: int,
    tile: int,
    tile_pad: int,
) -> PassPlan:
    """Frames per pass and tile size that fit ``budget_bytes``.

    ``tile`` > 0 (the user's choice) is kept; only the frames per pass adapt. Otherwise whole
    frames when they fit, else the largest tile from :data:`TILE_CHOICES` that does. The
    float32 output of the frames in a pass is counted too (it exists whole even when tiled).
    """
    output = 3 * height * scale * width * scale * 4

    def need(n: int, side_h: int, side_w: int) -> int:
        return int(n * SAFETY * (values_per_pixel * side_h * side_w * value_bytes + output))

    def tile_need(n: int, t: int) -> int:
        side = t + 2 * tile_pad
        return need(n, min(side, height), min(side, width))

    if tile > 0:
        for n in range(frames, 0, -1):
            if tile_need(n, tile) <= budget_bytes:
                return PassPlan(n, tile, tile_need(n, tile))
        raise FrameTooLargeError(
            f"one {width}x{height} frame with {tile}-pixel tiles needs about "
            f"{tile_need(1, tile) / 2**30:.1f} GiB, over the memory budget of "
            f"{budget_bytes / 2**30:.1f} GiB: use a smaller tile or a larger max_memory_gb"
        )
    for n in range(frames, 0, -1):
        if need(n, height, width) <= budget_bytes:
            return PassPlan(n, 0, need(n, height, width))
    for t in TILE_CHOICES:
        if t < max(height, width) and tile_need(1, t) <= budget_bytes:
            return PassPlan(1, t, tile_need(1, t))
    raise FrameTooLargeError(
        f"a {width}x{height} frame does not fit the memory budget of "
        f"{budget_bytes / 2**30:.2f} GiB even in {TILE_CHOICES[-1]}-pixel tiles (its output "
        f"alone is {output / 2**30:.2f} GiB): raise max_memory_gb or lower the output size"
    )
