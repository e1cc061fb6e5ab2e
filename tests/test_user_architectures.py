"""Any weights file spandrel recognises is accepted, not just the Real-ESRGAN registry.

No SwinIR/Swin2SR/HAT weights can be downloaded here, so each test builds a small model of
that architecture with spandrel's own class, saves its state dict as a user ``.pth`` file, and
runs it through the whole user path: resolve (hash), load (weights_only), engine (tiles).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from spandrel.architectures.HAT import HAT
from spandrel.architectures.Swin2SR import Swin2SR
from spandrel.architectures.SwinIR import SwinIR

from vsrflow.engine import EngineSettings, Upscaler
from vsrflow.models import load_model, resolve_weights

SMALL = {
    "embed_dim": 24,
    "depths": [2],
    "num_heads": [2],
    "window_size": 8,
    "upscale": 2,
    "upsampler": "pixelshuffle",
    "img_size": 32,
}


@pytest.mark.parametrize(
    ("name", "factory"),
    [
        ("SwinIR", lambda: SwinIR(**SMALL)),
        ("Swin2SR", lambda: Swin2SR(**SMALL)),
        (
            "HAT",
            lambda: HAT(
                embed_dim=24,
                depths=[2],
                num_heads=[2],
                window_size=8,
                upscale=2,
                upsampler="pixelshuffle",
                img_size=32,
                compress_ratio=2,
                squeeze_factor=4,
                overlap_ratio=0.5,
            ),
        ),
    ],
)
def test_user_transformer_weights_load_and_upscale(
    name: str, factory: object, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = factory()  # type: ignore[operator]
    weights = tmp_path / f"my-{name.lower()}.pth"
    torch.save({"params": model.state_dict()}, weights)

    resolved = resolve_weights(str(weights))
    assert resolved.spec is None and len(resolved.sha256) == 64
    loaded = load_model(resolved)
    assert loaded.descriptor.architecture.name == name
    assert loaded.scale == 2

    frames = np.random.default_rng(0).integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    tiled = Upscaler(
        loaded.descriptor,
        settings=EngineSettings(precision="fp32", tile=16, tile_pad=8, micro_batch=2),
    )
    out = tiled.upscale(frames)
    assert out.shape == (2, 48, 80, 3) and out.dtype == np.uint8

    # Untiled, the engine equals a plain fp32 forward of spandrel's descriptor.
    whole = Upscaler(loaded.descriptor, settings=EngineSettings(precision="fp32")).upscale(frames)
    with torch.inference_mode():
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        plain = (loaded.descriptor(x).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1)
    assert np.abs(whole.astype(int) - plain.numpy()).max() <= 1
