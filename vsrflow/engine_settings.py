"""How frames are pushed through the model: the engine's settings, free of torch.

Kept apart from ``vsrflow.engine`` so the CLI, the flows' forms and the planner can read the
defaults (which bench/run.py measured to be the fastest within the fidelity bounds) without
importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    #: Opt-in ``torch.compile`` of the model (inductor), compiled once per process and reused
    #: by every batch that process runs. Costs seconds on the first call (and per new input
    #: shape); see bench/README.md for when it pays off.
    compile: bool = False
    #: Memory one pass may use, in GiB; 0 = automatic (80 % of the free GPU memory, half the
    #: available RAM on CPU). Frames that would not fit go through in fewer per pass, then in
    #: tiles (vsrflow.memory).
    max_memory_gb: float = 0.0

    def identity(self) -> dict[str, object]:
        """What can change output pixels (part of the batch cache key)."""
        identity: dict[str, object] = {
            "precision": self.precision,
            "tile": self.tile,
            "tile_pad": self.tile_pad,
            "pre_pad": self.pre_pad,
        }
        if self.compile:  # fused kernels round differently; absent when off (keys unchanged)
            identity["compile"] = True
        if self.max_memory_gb:  # a budget can force tiles; absent when automatic
            identity["max_memory_gb"] = self.max_memory_gb
        return identity


#: The defaults as one value (what the flows' forms and the CLI show).
ENGINE_DEFAULTS = EngineSettings()
