"""Resource guards end to end: a frame too large for memory finishes in automatic tiles, and
one beyond the output pixel limit is refused in one line, before any upscaling.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "upscale", *args, "--no-progress"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _big_clip(path: Path, side: int) -> Path:
    """One {side}x{side} frame with detail everywhere (a gradient and a checkerboard)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        y, x = np.mgrid[0:side, 0:side]
        rgb = np.stack([(x * 255 // side), (y * 255 // side), ((x // 16 + y // 16) % 2) * 255], -1)
        frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.slow
def test_a_4000x4000_frame_finishes_in_automatic_tiles(shared_model, tmp_path: Path) -> None:
    weights = shared_model("realesr-animevideov3.pth")
    clip = _big_clip(tmp_path / "big.mp4", 4000)
    out = tmp_path / "big_out.mp4"
    # 6 GiB: the x4 output (3 GiB as floats) fits, the whole frame's activations do not.
    result = _cli(
        str(clip),
        "-o",
        str(out),
        "--weights",
        str(weights),
        "--outscale",
        "1",
        "--max-memory",
        "6",
        env={"PREFECT_HOME": str(tmp_path / "prefect")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 1 and (frames[0].width, frames[0].height) == (4000, 4000)


def test_an_output_beyond_the_pixel_limit_is_refused_in_one_line(
    shared_model, tmp_path: Path
) -> None:
    weights = shared_model("realesr-animevideov3.pth")
    clip = _big_clip(tmp_path / "wide.mp4", 512)
    out = tmp_path / "o.mp4"
    result = _cli(
        str(clip),
        "-o",
        str(out),
        "--weights",
        str(weights),
        env={"PREFECT_HOME": str(tmp_path / "prefect"), "VSRFLOW_MAX_OUTPUT_PIXELS": "1000000"},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("vsrflow: error:") and "over the limit of 1 MP" in last, last
    assert not out.exists()


def test_a_12000x12000_png_is_refused_in_one_line(shared_model, tmp_path: Path) -> None:
    from PIL import Image

    weights = shared_model("realesr-animevideov3.pth")
    big = tmp_path / "huge.png"
    Image.new("RGB", (12000, 12000), (40, 90, 160)).save(big, optimize=True)
    assert big.stat().st_size < 1_000_000  # a small file that decodes to 432 MB
    out = tmp_path / "huge_x4.png"
    result = _cli(
        str(big),
        "-o",
        str(out),
        "--weights",
        str(weights),
        env={"PREFECT_HOME": str(tmp_path / "prefect")},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsrflow: error:"), lines
    assert "48000x48000" in lines[0] and "over the limit" in lines[0], lines[0]
    assert not out.exists()
