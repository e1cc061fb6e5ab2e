"""Container completeness (vsrflow.media.structure): every cut of a real file is reported as a
truncation naming the element that was cut, before FFmpeg's lenient demuxers see it."""

from __future__ import annotations

from pathlib import Path

import av
import media_fixtures as mf
import pytest

from vsrflow.errors import CorruptMediaError
from vsrflow.media.probe import probe
from vsrflow.media.structure import ReadAt, check_complete, file_reader


def _reader(data: bytes) -> ReadAt:
    return lambda offset, length: data[offset : offset + length]


def _cuts(size: int, count: int = 60) -> list[int]:
    """Cut points spread over the whole file, plus the last byte (the smallest possible cut)."""
    return sorted({*range(1, size, max(1, size // count)), size - 1})


@pytest.mark.parametrize(
    "name", ["no_audio_clip", "multitrack_clip", "multitrack_mkv_clip", "vfr_clip"]
)
def test_every_cut_of_a_real_file_is_a_truncation(
    name: str, request: pytest.FixtureRequest
) -> None:
    clip: mf.FixtureInfo = request.getfixturevalue(name)
    data = clip.path.read_bytes()
    check_complete(_reader(data), len(data), "intact")  # the whole file passes
    for cut in _cuts(len(data)):
        if cut < 16:
            continue  # too short to recognise the format: the demuxer rejects it
        with pytest.raises(CorruptMediaError, match="truncated") as caught:
            check_complete(_reader(data[:cut]), cut, "cut")
        assert f"{cut}" in str(caught.value), str(caught.value)


def test_cut_mkv_is_rejected_by_probe_naming_the_missing_bytes(
    multitrack_mkv_clip: mf.FixtureInfo, tmp_path: Path
) -> None:
    """The gap this closes: FFmpeg plays a cut Matroska file up to its last whole cluster with
    no error and no declared frame count, so the probe used to accept the frames it saw."""
    data = multitrack_mkv_clip.path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    with av.open(str(cut)) as container:  # the demuxer alone sees nothing wrong
        frames = sum(1 for _ in container.decode(video=0))
    assert 0 < frames < multitrack_mkv_clip.frame_count
    missing = len(data) - int(len(data) * 0.8)
    with pytest.raises(
        CorruptMediaError, match=rf"Matroska Segment .*\({missing} bytes are missing\)"
    ):
        probe(cut)


def test_mp4_cut_inside_its_index_is_a_truncation_not_a_missing_stream(
    multitrack_clip: mf.FixtureInfo, tmp_path: Path
) -> None:
    """moov at the end: a cut inside it used to surface as 'no video stream' or as a file
    silently missing its later tracks; now it names the moov box and the missing bytes."""
    data = multitrack_clip.path.read_bytes()
    moov = data.rindex(b"moov") - 4
    cut = tmp_path / "cut.mp4"
    for end in (moov + 200, len(data) - 40):
        cut.write_bytes(data[:end])
        with pytest.raises(CorruptMediaError, match=r"truncated: its moov box"):
            probe(cut)


def test_trailing_padding_after_the_last_box_is_accepted(
    no_audio_clip: mf.FixtureInfo, tmp_path: Path
) -> None:
    padded = tmp_path / "padded.mp4"
    padded.write_bytes(no_audio_clip.path.read_bytes() + b"\x00" * 300)
    assert probe(padded).video.pts == no_audio_clip.pts


def _box(kind: bytes, payload: bytes, *, large: bool = False) -> bytes:
    if large:
        return (1).to_bytes(4, "big") + kind + (16 + len(payload)).to_bytes(8, "big") + payload
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def test_64bit_and_to_the_end_box_sizes() -> None:
    ftyp = _box(b"ftyp", b"isom\x00\x00\x02\x00isom") + _box(b"moov", b"index")
    large = ftyp + _box(b"mdat", b"x" * 100, large=True)
    check_complete(_reader(large), len(large), "f")
    with pytest.raises(CorruptMediaError, match=r"mdat box at byte 33 declares 116 bytes"):
        check_complete(_reader(large[:-1]), len(large) - 1, "f")
    to_end = ftyp + (0).to_bytes(4, "big") + b"mdat" + b"x" * 50  # size 0: up to EOF
    check_complete(_reader(to_end), len(to_end), "f")
    bad = ftyp + (3).to_bytes(4, "big") + b"mdat"
    with pytest.raises(CorruptMediaError, match="damaged: its mdat box at byte 33 declares 3"):
        check_complete(_reader(bad), len(bad), "f")


def test_a_cut_between_boxes_before_the_index_is_a_truncation() -> None:
    """Cut exactly at a box boundary, every box present is whole: only the missing moov
    tells (moov at the end is FFmpeg's default layout)."""
    head = _box(b"ftyp", b"isom\x00\x00\x02\x00isom") + _box(b"mdat", b"x" * 40)
    with pytest.raises(CorruptMediaError, match=r"no moov box .* after 2 complete boxes"):
        check_complete(_reader(head), len(head), "f")


def test_matroska_of_unknown_size_is_not_judged() -> None:
    """A live recording's Segment has the reserved 'unknown' size: nothing to compare."""
    ebml_header = b"\x1a\x45\xdf\xa3" + b"\x84" + b"\x42\x86\x81\x01"  # EBMLVersion 1
    unknown = b"\x18\x53\x80\x67" + b"\x01\xff\xff\xff\xff\xff\xff\xff" + b"cluster bytes"
    check_complete(_reader(ebml_header + unknown), len(ebml_header + unknown), "live")
    known = b"\x18\x53\x80\x67" + b"\x88" + b"12345678"
    whole = ebml_header + known
    check_complete(_reader(whole), len(whole), "ok")
    with pytest.raises(CorruptMediaError, match=r"Segment declares 22 bytes .* file has 21"):
        check_complete(_reader(whole[:-1]), len(whole) - 1, "cut")


def test_other_formats_and_unreadable_files_are_left_to_the_demuxer(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_bytes(b"hello, this is not a container at all")
    check_complete(file_reader(str(text)), text.stat().st_size, "text")

    def unreadable(offset: int, length: int) -> bytes:
        raise OSError("connection reset")

    check_complete(unreadable, 1000, "remote")
