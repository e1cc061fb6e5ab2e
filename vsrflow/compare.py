"""Before/after image: one region of one frame, bicubic upscale vs the model, side by side.

Both sides come from real decodes: the source frame (read in place, e.g. through a presigned
URL) and the same frame of the *published* output, matched by presentation time (the pipeline
keeps every frame's timestamp). The region is the most detailed window of about 128x128 source
pixels; the left panel is that region bicubic-upscaled to the output geometry, the right panel
the same region of the output, each under a label. Pixels stay in coded orientation.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vsrflow.errors import CorruptMediaError
from vsrflow.media.colour import ColourInfo

#: Source pixels per side of the compared region (smaller sources: the whole frame).
CROP = 128
#: Largest output panel side; at big scales the source region shrinks to fit.
MAX_PANEL = 768
#: Height of the label band above the panels, and the gap between the two panels.
LABEL_HEIGHT = 24
GAP = 4
#: How far (seconds) the output frame's timestamp may be from the source frame's.
MATCH_TOLERANCE_S = 0.002


@dataclass(frozen=True)
class Comparison:
    """The composed PNG and where it came from (boxes are x, y, width, height)."""

    png: bytes
    width: int
    height: int
    frame_index: int
    time_s: float
    source_box: tuple[int, int, int, int]
    output_box: tuple[int, int, int, int]

    def caption(self, model_label: str) -> str:
        x, y, w, h = self.source_box
        _, _, ow, oh = self.output_box
        return (
            f"Frame {self.frame_index} at {self.time_s:.3f} s: source region {w}x{h} at "
            f"({x}, {y}) shown at output size {ow}x{oh}; left bicubic, right {model_label}."
        )


def middle_frame(pts: Sequence[int], time_base: Fraction) -> tuple[int, float]:
    """(index, seconds) of the middle frame in presentation order."""
    if not pts:
        raise ValueError("no frames to compare")
    index = len(pts) // 2
    return index, float(pts[index] * time_base)


def read_frame_at(
    location: str,
    seconds: float,
    *,
    stream_index: int | None = None,
    colour: ColourInfo | None = None,
    tolerance_s: float = MATCH_TOLERANCE_S,
) -> np.ndarray:
    """The RGB24 frame of a video stream (default: the first) shown at ``seconds``.

    Seeks to the keyframe before it and decodes forward; if the demuxer lands after the target,
    decodes from the start. ``colour`` fixes the YUV->RGB matrix and range (so source and
    output convert alike). Raises CorruptMediaError when no frame is within ``tolerance_s``.
    """
    with av.open(location) as container:
        stream = (
            container.streams[stream_index]
            if stream_index is not None
            else container.streams.video[0]
        )
        stream.thread_type = "AUTO"
        time_base = stream.time_base or Fraction(1, 1)
        target = int(seconds / time_base)
        best: tuple[float, av.VideoFrame] | None = None
        for seek in (target, None):
            container.seek(max(seek or 0, 0), stream=stream, backward=True, any_frame=False)
            first = True
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * time_base)
                if first and seek is not None and t > seconds + tolerance_s:
                    break  # landed after the target: decode from the start instead
                first = False
                if best is None or abs(t - seconds) < best[0]:
                    best = (abs(t - seconds), frame)
                if t > seconds + tolerance_s:
                    break
            if best is not None:
                break
        if best is None or best[0] > tolerance_s:
            raise CorruptMediaError(f"no frame at {seconds:.3f} s in the video stream")
        frame = best[1]
        if colour is None:
            return frame.to_ndarray(format="rgb24")
        return frame.to_ndarray(
            format="rgb24", src_colorspace=colour.sws_matrix, src_color_range=colour.sws_range
        )


def pick_region(frame: np.ndarray, width: int, height: int) -> tuple[int, int]:
    """Top-left corner of the ``width`` x ``height`` window with the most detail (sum of
    gradient magnitude), on an 8-pixel grid; ties go to the window nearest the centre."""
    rows, cols = frame.shape[:2]
    if width >= cols and height >= rows:
        return 0, 0
    grey = frame[..., :3].astype(np.float32).mean(axis=2)
    energy = np.zeros_like(grey)
    energy[:, 1:] += np.abs(np.diff(grey, axis=1))
    energy[1:, :] += np.abs(np.diff(grey, axis=0))
    integral = np.pad(energy.cumsum(0, dtype=np.float64).cumsum(1), ((1, 0), (1, 0)))
    ys, xs = np.array(_grid(rows - height)), np.array(_grid(cols - width))
    totals = (
        integral[np.ix_(ys + height, xs + width)]
        - integral[np.ix_(ys, xs + width)]
        - integral[np.ix_(ys + height, xs)]
        + integral[np.ix_(ys, xs)]
    )
    # Most detail first; among (nearly) equal windows, the one nearest the centre.
    distance = (ys[:, None] - (rows - height) / 2) ** 2 + (xs[None, :] - (cols - width) / 2) ** 2
    order = np.lexsort((distance.ravel(), -np.round(totals.ravel(), 3)))
    row, col = np.unravel_index(order[0], totals.shape)
    return int(xs[col]), int(ys[row])


def _grid(limit: int, step: int = 8) -> list[int]:
    points = list(range(0, max(limit, 0) + 1, step))
    if points[-1] != max(limit, 0):
        points.append(max(limit, 0))
    return points


def _label(draw: ImageDraw.ImageDraw, x: int, text: str, width: int) -> None:
    font = ImageFont.load_default(size=14)
    while text and draw.textlength(text, font=font) > width - 12 and len(text) > 4:
        text = text[:-5] + "…"
    draw.text((x + 6, (LABEL_HEIGHT - 14) // 2 - 1), text, fill=(240, 240, 240), font=font)


def compose(left: np.ndarray, right: np.ndarray, labels: tuple[str, str]) -> Image.Image:
    """Two equal-size RGB panels side by side (``GAP`` apart) under a label band."""
    if left.shape != right.shape:
        raise ValueError(f"panels differ in size: {left.shape} vs {right.shape}")
    height, width = left.shape[:2]
    canvas = Image.new("RGB", (2 * width + GAP, height + LABEL_HEIGHT), (24, 24, 28))
    canvas.paste(Image.fromarray(np.ascontiguousarray(left[..., :3])), (0, LABEL_HEIGHT))
    canvas.paste(Image.fromarray(np.ascontiguousarray(right[..., :3])), (width + GAP, LABEL_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    _label(draw, 0, labels[0], width)
    _label(draw, width + GAP, labels[1], width)
    return canvas


def make_comparison(
    source_frame: np.ndarray,
    output_frame: np.ndarray,
    *,
    model_label: str,
    frame_index: int,
    time_s: float,
    crop: int = CROP,
) -> Comparison:
    """Compose the before/after PNG from one source frame and the same output frame."""
    src_h, src_w = source_frame.shape[:2]
    out_h, out_w = output_frame.shape[:2]
    sx, sy = out_w / src_w, out_h / src_h
    cw = max(1, min(crop, src_w, int(MAX_PANEL / sx)))
    ch = max(1, min(crop, src_h, int(MAX_PANEL / sy)))
    x, y = pick_region(source_frame, cw, ch)
    ox, oy = round(x * sx), round(y * sy)
    ow, oh = min(round(cw * sx), out_w - ox), min(round(ch * sy), out_h - oy)
    # Bicubic of exactly the output region: Pillow maps the box (source coordinates) onto the
    # panel and still reads the pixels around it, so edges match a whole-frame resize.
    box = (ox / sx, oy / sy, (ox + ow) / sx, (oy + oh) / sy)
    bicubic = Image.fromarray(np.ascontiguousarray(source_frame[..., :3])).resize(
        (ow, oh), Image.Resampling.BICUBIC, box=box
    )
    model = output_frame[oy : oy + oh, ox : ox + ow]
    image = compose(np.asarray(bicubic), model, ("bicubic", model_label))
    buffer = io.BytesIO()
    # zlib's default level: optimize=True (level 9 and a filter search) made a 1028x536
    # panel 6 % smaller in 0.28 s instead of 0.04 s, at the end of every run.
    image.save(buffer, format="PNG")
    return Comparison(
        png=buffer.getvalue(),
        width=image.width,
        height=image.height,
        frame_index=frame_index,
        time_s=time_s,
        source_box=(x, y, cw, ch),
        output_box=(ox, oy, ow, oh),
    )


def data_uri(png: bytes, limit: int) -> str | None:
    """A data: URI showing the image, at most ``limit`` bytes long: the PNG itself, else a
    high-quality JPEG of it, else None (too big to embed)."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    if len(uri) <= limit:
        return uri
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buffer, format="JPEG", quality=90)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return uri if len(uri) <= limit else None
