"""Synthetic interlaced, telecined and wrongly flagged clips with real motion, made with PyAV.

Every clip is rendered from a progressive picture at twice the frame rate (one picture per
field): a bright vertical bar moving right over a background that varies only horizontally, so
any vertical difference between neighbouring rows is combing (the moving bar's two fields in
one frame), and a deinterlaced frame has none. Clips are x264 lossless (qp 0) so detection and
the pixel checks see exactly what was woven; the interlaced flags in the bitstream are set or
left out on purpose (``flag``): they must not decide anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT = 96, 64
BAR = 12
#: Bar speed in pixels per field (interlaced) or per film frame (telecine).
SPEED = 5


@dataclass(frozen=True)
class Clip:
    path: Path
    frames: int
    time_base: Fraction
    rate: Fraction
    #: The progressive pictures the clip was made from (per field, or per film frame).
    pictures: tuple[np.ndarray, ...]


def picture(t: float) -> np.ndarray:
    """RGB picture at time ``t`` (in fields or film frames): background + moving bar."""
    x = np.arange(WIDTH)
    row = (60 + 40 * np.sin(x / 6.0)).astype(np.uint8)
    img = np.repeat(np.repeat(row[None, :, None], HEIGHT, axis=0), 3, axis=2).copy()
    left = round(4 + SPEED * t) % (WIDTH - BAR)
    img[:, left : left + BAR] = (230, 200, 40)
    return img


def weave(first: np.ndarray, second: np.ndarray, tff: bool) -> np.ndarray:
    """One frame from two fields: ``first`` is the earlier field (top when ``tff``)."""
    out = first.copy()
    if tff:
        out[1::2] = second[1::2]
    else:
        out[0::2] = second[0::2]
    return out


def _encode(path: Path, frames: list[np.ndarray], rate: Fraction, flag: str | None) -> Clip:
    options = {"qp": "0", "preset": "ultrafast"}
    if flag:
        options["x264-params"] = f"{flag}=1"  # coded interlaced, frames flagged tff/bff
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as check:
        video = check.streams.video[0]
        tb = Fraction(video.time_base)
        count = sum(1 for p in check.demux(video) if p.size)
    assert count == len(frames), f"{path}: {count} frames written, {len(frames)} made"
    return Clip(path, count, tb, rate, ())


def make_interlaced(path: Path, frames: int = 12, *, tff: bool, flag: str | None) -> Clip:
    """25i: frame i weaves the pictures at field times 2i and 2i+1 (first field first)."""
    pictures = [picture(t) for t in range(2 * frames)]
    woven = [weave(pictures[2 * i], pictures[2 * i + 1], tff) for i in range(frames)]
    clip = _encode(path, woven, Fraction(25), flag)
    return Clip(clip.path, clip.frames, clip.time_base, clip.rate, tuple(pictures))


def make_progressive_flagged(path: Path, frames: int = 12) -> Clip:
    """25p content coded as interlaced tff (every frame flagged): nothing is combed."""
    pictures = [picture(2 * t) for t in range(frames)]
    clip = _encode(path, pictures, Fraction(25), "tff")
    return Clip(clip.path, clip.frames, clip.time_base, clip.rate, tuple(pictures))


def make_telecined(path: Path, film_frames: int = 24) -> Clip:
    """23.976 film -> 29.97 by 3:2 pulldown (hard telecine, top field first): film frames A B
    C D give video frames A, B, (B top + C bottom), (C top + D bottom), D."""
    film = [picture(f) for f in range(film_frames)]
    video: list[np.ndarray] = []
    for c in range(0, film_frames - film_frames % 4, 4):
        a, b, c_, d = film[c : c + 4]
        video += [a, b, weave(b, c_, tff=True), weave(c_, d, tff=True), d]
    clip = _encode(path, video, Fraction(30000, 1001), None)
    return Clip(clip.path, clip.frames, clip.time_base, clip.rate, tuple(film))


def comb(rgb: np.ndarray) -> float:
    """Mean combing: how far each row is from the average of its neighbours (luma-ish).
    Zero on this background (it varies only horizontally); high where fields disagree."""
    y = rgb[..., :3].astype(np.float64).mean(axis=2)
    return float(np.abs(y[1:-1] - (y[:-2] + y[2:]) / 2).mean())


def make_woven_from(source: Path, path: Path, *, tff: bool = True, width: int = 320) -> Clip:
    """Real footage made interlaced: consecutive frames of a progressive clip woven as the
    two fields of one frame (natural edges and motion, not a synthetic bar)."""
    with av.open(str(source)) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    height = frames[0].shape[0] // 2 * 2
    frames = [f[:height, : width // 2 * 2] for f in frames]
    woven = [weave(frames[i], frames[i + 1], tff) for i in range(0, len(frames) - 1, 2)]
    options = {"crf": "16", "preset": "ultrafast"}
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25), options=options)
        stream.width, stream.height, stream.pix_fmt = woven[0].shape[1], height, "yuv420p"
        for i, rgb in enumerate(woven):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Clip(path, len(woven), Fraction(1, 12800), Fraction(25), ())
