"""Per-frame timestamps as int64 (vsrflow.media.timestamps): what the flow keeps per frame."""

from __future__ import annotations

import pickle
from array import array
from fractions import Fraction

import pytest

from vsrflow.media.timestamps import Timestamps


def test_timestamps_behave_as_the_tuple_they_replace() -> None:
    pts = Timestamps([0, 1001, 2002, 3003])
    assert pts == (0, 1001, 2002, 3003) and pts == [0, 1001, 2002, 3003]
    assert pts != (0, 1001, 2002) and pts != (0, 1001, 2002, 3004)
    assert len(pts) == 4 and pts[-1] == 3003 and type(pts[0]) is int
    assert isinstance(pts[1:3], Timestamps) and pts[1:3] == (1001, 2002)
    assert list(pts) == [0, 1001, 2002, 3003] and 2002 in pts and pts.index(2002) == 2
    assert hash(pts) == hash((0, 1001, 2002, 3003))  # equal, so hashed alike
    assert {(0, 1001, 2002, 3003): "found"}.get(pts) == "found"
    assert pts[::-2] == (3003, 1001) and pts.count(1001) == 1 and 7 not in pts
    assert pickle.loads(pickle.dumps(pts)) == pts


def test_timestamps_are_8_bytes_a_frame_and_print_short() -> None:
    pts = Timestamps(range(0, 172_800 * 3750, 3750))  # a 2-hour film at 24 fps, 90 kHz
    assert len(pickle.dumps(pts)) < 172_800 * 8 + 200  # not ~44 bytes a Python int
    assert repr(pts) == "Timestamps([0, 3750, 7500, ..., 647996250], 172800 frames)"


def test_sorted_from_puts_decode_order_into_presentation_order() -> None:
    decode_order = array("q", [0, 3003, 1001, 2002, 6006, 4004, 5005])  # B-frames
    assert Timestamps.sorted_from(decode_order) == (0, 1001, 2002, 3003, 4004, 5005, 6006)
    assert Timestamps.sorted_from(array("q")) == ()


def test_timestamps_hold_int64_only() -> None:
    with pytest.raises(OverflowError):
        Timestamps([1 << 63])
    with pytest.raises(TypeError):
        Timestamps([Fraction(1, 2)])
