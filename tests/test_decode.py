"""vsrflow.media.decode: exact frame ranges, and no 8-bit clipping of deeper sources.

Batches are cut at arbitrary frames, usually not at keyframes, in clips with B-frames, so
``decode_range`` must seek to the keyframe before a range, decode forward and drop what
precedes it. The reference here is one plain sequential PyAV decode of the whole clip.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import av
import media_fixtures as mf
import numpy as np
import pytest

from vsrflow.media.colour import ColourInfo
from vsrflow.media.decode import DecodedFrame, decode_range, rgb_format_for
from vsrflow.media.probe import MediaInfo, probe


def sequential_decode(path: Path, colour: ColourInfo, rgb_format: str) -> list[DecodedFrame]:
    """Reference: decode every frame in order, converted with the same matrix and range."""
    with av.open(str(path)) as container:
        return [
            DecodedFrame(
                pts=frame.pts,
                rgb=frame.to_ndarray(
                    format=rgb_format,
                    src_colorspace=colour.sws_matrix,
                    src_color_range=colour.sws_range,
                ),
            )
            for frame in container.decode(video=0)
        ]


def decode_index_range(info: MediaInfo, start: int, end: int) -> list[DecodedFrame]:
    """decode_range for frame indices [start, end), the way the planner calls it."""
    video = info.video
    params = video.params(info.path)
    end_pts = video.pts[end] if end < video.frame_count else None
    return list(
        decode_range(
            info.path,
            video.index,
            video.pts[start],
            end_pts,
            colour=params.colour,
            bit_depth=video.bit_depth,
        )
    )


def assert_same_frames(got: list[DecodedFrame], want: list[DecodedFrame]) -> None:
    assert [f.pts for f in got] == [f.pts for f in want]
    for a, b in zip(got, want, strict=True):
        assert a.rgb.dtype == b.rgb.dtype and a.rgb.shape == b.rgb.shape
        assert np.array_equal(a.rgb, b.rgb), f"pixels differ at pts {a.pts}"


def has_reordered_packets(path: Path) -> bool:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return any(p.size and p.pts != p.dts for p in container.demux(stream))


@pytest.fixture(scope="module")
def bikes(shared_media: Callable[[str], Path]) -> tuple[MediaInfo, list[DecodedFrame]]:
    """The 250-frame shared clip (B-frames, 6 keyframes) and its sequential decode."""
    info = probe(shared_media("bikes_640x272_25fps_noaudio.mp4"))
    colour = info.video.params(info.path).colour
    return info, sequential_decode(Path(info.path), colour, "rgb24")


def test_bikes_is_a_meaningful_clip(bikes: tuple[MediaInfo, list[DecodedFrame]]) -> None:
    info, full = bikes
    assert len(full) == info.video.frame_count == 250
    assert len(info.video.keyframe_pts) >= 3
    assert has_reordered_packets(Path(info.path)), "needs B-frames to test reordering"


def test_union_of_ranges_is_the_full_decode(bikes: tuple[MediaInfo, list[DecodedFrame]]) -> None:
    info, full = bikes
    pts = info.video.pts
    keyframes = [pts.index(k) for k in info.video.keyframe_pts]
    # Cut right before, at and after keyframes, mid-GOP, and isolate the first and last frame.
    cuts = {1, 45, info.video.frame_count - 1}
    for k in keyframes[1:4]:
        cuts |= {k - 1, k, k + 1}
    bounds = [0, *sorted(cuts), info.video.frame_count]
    assert len(bounds) >= 10
    got: list[DecodedFrame] = []
    for start, end in pairwise(bounds):
        part = decode_index_range(info, start, end)
        assert [f.pts for f in part] == list(pts[start:end]), f"range [{start}, {end})"
        got.extend(part)
    assert_same_frames(got, full)


def test_open_ended_range_runs_to_the_last_frame(
    bikes: tuple[MediaInfo, list[DecodedFrame]],
) -> None:
    info, full = bikes
    video = info.video
    start = 200
    tail = list(
        decode_range(
            info.path,
            video.index,
            video.pts[start],
            None,
            colour=video.params(info.path).colour,
            bit_depth=8,
        )
    )
    assert_same_frames(tail, full[start:])


def test_empty_range_yields_nothing(bikes: tuple[MediaInfo, list[DecodedFrame]]) -> None:
    info, _full = bikes
    video = info.video
    start = video.pts[100]
    colour = video.params(info.path).colour
    assert list(decode_range(info.path, 0, start, start, colour=colour, bit_depth=8)) == []


@pytest.mark.parametrize("name", ["vfr_clip", "multitrack_mkv_clip", "rotated_clip"])
def test_every_single_frame_range(name: str, request: pytest.FixtureRequest) -> None:
    """One-frame ranges in VFR (1/90000), matroska (1/1000 ms) and rotated clips with B-frames."""
    clip: mf.FixtureInfo = request.getfixturevalue(name)
    assert has_reordered_packets(clip.path)
    info = probe(clip.path)
    full = sequential_decode(clip.path, info.video.params(info.path).colour, "rgb24")
    assert [f.pts for f in full] == list(clip.pts)
    for k in range(info.video.frame_count):
        assert_same_frames(decode_index_range(info, k, k + 1), full[k : k + 1])


def test_tenbit_decodes_to_uint16_without_8bit_clipping(tenbit_clip: mf.FixtureInfo) -> None:
    info = probe(tenbit_clip.path)
    assert rgb_format_for(info.video.bit_depth) == "rgb48le"
    frames = decode_index_range(info, 0, info.video.frame_count)
    assert len(frames) == 24
    rgb = np.stack([f.rgb for f in frames])
    assert rgb.dtype == np.uint16 and rgb.shape == (24, 48, 64, 3)
    # Real 16-bit-scaled data: not 8-bit values expanded by *257 or shifted by 8 bits.
    assert np.any(rgb % 257 != 0)
    assert np.any(rgb % 256 != 0)
    assert len(np.unique(rgb)) > 256  # more distinct levels than 8 bits can hold
    assert rgb.max() > 255 * 64  # uses the 16-bit range, not 0..1023
    # Same picture as swscale's 8-bit decode of the frame (which truncates the 10-bit input,
    # measured: up to 4 levels and 1.1 on average below the 16-bit result).
    colour = info.video.params(info.path).colour
    eight = sequential_decode(tenbit_clip.path, colour, "rgb24")
    diff = rgb[0].astype(np.float64) / 257 - eight[0].rgb.astype(np.float64)
    assert np.abs(diff).max() <= 4.5
    assert np.abs(diff).mean() < 2
    # Identical to the sequential 16-bit decode.
    assert_same_frames(frames, sequential_decode(tenbit_clip.path, colour, "rgb48le"))


def test_rgb_format_for() -> None:
    assert rgb_format_for(8) == "rgb24"
    assert rgb_format_for(10) == "rgb48le"
    assert rgb_format_for(12) == "rgb48le"
