"""Section 2, "baseline": the naive way most upscaling scripts work (PNG folders, one fp32
frame at a time, re-encoded at the nominal frame rate), timed with its peak scratch disk, as the
yardstick the pipeline is compared with."""

from __future__ import annotations

import copy
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import DiskSampler, dir_bytes, measured, per_frame

if TYPE_CHECKING:
    from vsrflow.models import LoadedModel


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
