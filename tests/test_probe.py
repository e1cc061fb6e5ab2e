"""vsrflow.media.probe against files whose truth is known.

Generated fixtures are compared with what ``media_fixtures`` observed by DECODING them (frame
pts, keyframes, rotation, colour tags, tracks), and the shared real clips with the README table
and with a full decode done here. Unusable inputs must raise their own specific error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import media_fixtures as mf
import pytest

from vsrflow.errors import (
    CorruptMediaError,
    EmptyFileError,
    FrameTooLargeError,
    MediaError,
    NotMediaError,
    NoVideoStreamError,
)
from vsrflow.media.colour import ColourInfo
from vsrflow.media.probe import MediaInfo, probe
from vsrflow.media.timestamps import Timestamps

CLIP_FIXTURES = (
    "vfr_clip",
    "rotated_clip",
    "tenbit_clip",
    "multitrack_clip",
    "multitrack_mkv_clip",
    "odd_size_clip",
    "no_audio_clip",
    "chapters_clip",
)


def decoded_pts_and_keyframes(path: Path) -> tuple[list[int], list[int]]:
    """Every decoded frame's pts (display order) and the pts of decoded key frames."""
    pts: list[int] = []
    keys: list[int] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            pts.append(frame.pts)
            if frame.key_frame:
                keys.append(frame.pts)
    return pts, keys


@pytest.fixture(params=CLIP_FIXTURES)
def clip(request: pytest.FixtureRequest) -> mf.FixtureInfo:
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------------------------
# Generated fixtures


def test_probe_matches_decoded_fixture(clip: mf.FixtureInfo) -> None:
    info = probe(clip.path)
    video = info.video
    assert video.frame_count == clip.frame_count > 0
    # Exact pts, in display order, equal to what decoding yields; 8 bytes a frame.
    assert video.pts == clip.pts and isinstance(video.pts, Timestamps)
    assert video.time_base == clip.time_base
    assert list(video.keyframe_pts) == [clip.pts[i] for i in clip.keyframe_indices]
    assert isinstance(video.keyframe_pts, Timestamps)  # every frame of an all-intra master
    assert (video.width, video.height) == (clip.width, clip.height)
    assert video.pix_fmt == clip.pix_fmt
    assert video.bit_depth == clip.bit_depth
    assert video.codec == clip.video_codec == "h264"
    assert video.rotation == clip.rotation
    colour = video.colour
    assert (colour.primaries, colour.transfer, colour.matrix, colour.range) == (
        clip.color_primaries,
        clip.color_trc,
        clip.colorspace,
        clip.color_range,
    )
    audio = [s for s in info.streams if s.kind == "audio"]
    subtitles = [s for s in info.streams if s.kind == "subtitle"]
    assert [(s.index, s.codec, s.language) for s in audio] == [
        (a.index, a.codec, a.language) for a in clip.audio_tracks
    ]
    assert [(s.index, s.codec, s.language, s.packet_count) for s in subtitles] == [
        (t.index, t.codec, t.language, t.packet_count) for t in clip.subtitle_tracks
    ]
    assert all(s.packet_count > 0 for s in audio)
    assert info.container == clip.container_format
    assert info.size_bytes == clip.path.stat().st_size
    # The summary is what logs and the CLI print: JSON-able, and it says the same.
    summary = json.loads(json.dumps(info.summary()))
    assert summary["video"]["frames"] == clip.frame_count
    assert summary["video"]["rotation"] == clip.rotation


def test_vfr_clip_keeps_irregular_pts(vfr_clip: mf.FixtureInfo) -> None:
    video = probe(vfr_clip.path).video
    assert video.time_base == Fraction(1, 90000)
    steps_ms = {round((b - a) / 90) for a, b in zip(video.pts, video.pts[1:], strict=False)}
    assert steps_ms == set(mf.VFR_DURATIONS_MS)
    assert video.is_vfr
    assert video.pts_seconds()[1] == pytest.approx(0.033)


@pytest.mark.parametrize("name", ["no_audio_clip", "tenbit_clip", "multitrack_mkv_clip"])
def test_cfr_clips_are_not_vfr(name: str, request: pytest.FixtureRequest) -> None:
    assert not probe(request.getfixturevalue(name).path).video.is_vfr


def test_rotated_clip_reports_90_degrees(rotated_clip: mf.FixtureInfo) -> None:
    video = probe(rotated_clip.path).video
    assert video.rotation == 90
    assert video.display_matrix is not None and len(video.display_matrix) == 9
    # Frames stay in their coded orientation: 64 wide, 48 high.
    assert (video.width, video.height) == (64, 48)


def test_unrotated_clip_has_no_display_matrix(no_audio_clip: mf.FixtureInfo) -> None:
    video = probe(no_audio_clip.path).video
    assert video.display_matrix is None
    assert video.rotation == 0


def test_tenbit_clip_depth_and_colour(tenbit_clip: mf.FixtureInfo) -> None:
    video = probe(tenbit_clip.path).video
    assert video.pix_fmt == "yuv420p10le"
    assert video.bit_depth == 10
    assert video.colour == ColourInfo(range=1, primaries=1, transfer=1, matrix=1)
    assert video.colour.names() == {
        "range": "tv",
        "primaries": "bt709",
        "transfer": "bt709",
        "matrix": "bt709",
    }
    # Tagged sources are not second-guessed.
    assert video.colour.resolved(video.height) == video.colour


def test_untagged_sd_clip_resolves_to_bt601(no_audio_clip: mf.FixtureInfo) -> None:
    colour = probe(no_audio_clip.path).video.colour
    assert (colour.primaries, colour.transfer, colour.matrix, colour.range) == (2, 2, 2, 0)
    assert colour.resolved(48) == ColourInfo(range=1, primaries=6, transfer=6, matrix=6)
    assert colour.resolved(720) == ColourInfo(range=1, primaries=1, transfer=1, matrix=1)


@pytest.mark.parametrize(
    ("name", "subtitle_codec", "subtitle_packets"),
    [("multitrack_clip", "mov_text", 5), ("multitrack_mkv_clip", "srt", 3)],
)
def test_multitrack_streams_and_languages(
    name: str, subtitle_codec: str, subtitle_packets: int, request: pytest.FixtureRequest
) -> None:
    info = probe(request.getfixturevalue(name).path)
    assert [(s.kind, s.codec, s.language) for s in info.streams] == [
        ("audio", "aac", "eng"),
        ("audio", "aac", "fra"),
        ("subtitle", subtitle_codec, "eng"),
    ]
    assert [s.detail for s in info.streams[:2]] == ["48000 Hz, 2 ch", "44100 Hz, 1 ch"]
    assert info.streams[2].packet_count == subtitle_packets


def test_no_audio_clip_has_no_other_streams(no_audio_clip: mf.FixtureInfo) -> None:
    info = probe(no_audio_clip.path)
    assert info.streams == ()
    assert info.chapters == ()


def test_odd_size_clip(odd_size_clip: mf.FixtureInfo) -> None:
    video = probe(odd_size_clip.path).video
    assert (video.width, video.height) == (321, 181)
    assert video.pix_fmt == "yuv444p"
    assert video.frame_count == 4


def test_chapters_are_read_and_the_chapter_track_is_not_a_stream(
    chapters_clip: mf.FixtureInfo,
) -> None:
    info = probe(chapters_clip.path)
    assert [(c.start, c.end, c.title) for c in info.chapters] == [
        (start / 1000, end / 1000, title) for start, end, title in mf.CHAPTERS
    ]
    # mp4 keeps chapters in a text track that the demuxer discards: it is not a stream to copy.
    with av.open(str(chapters_clip.path)) as container:
        assert [s.type for s in container.streams] == ["video", "audio", "data"]
    assert [(s.kind, s.language) for s in info.streams] == [("audio", "eng")]


# --------------------------------------------------------------------------------------------
# Shared real clips (README table)

SHARED_CLIPS = [
    # name, width, height, frames, average rate, audio stream details
    ("carphone_176x144_2997fps_noaudio.mp4", 176, 144, 120, Fraction(30000, 1001), []),
    ("realshort_320x240_aac_mono.mp4", 320, 240, 36, Fraction(45000, 1499), ["48000 Hz, 1 ch"]),
    ("bikes_640x272_25fps_noaudio.mp4", 640, 272, 250, Fraction(25), []),
    ("bigbuckbunny_1280x720_aac_6ch.mp4", 1280, 720, 132, Fraction(25), ["48000 Hz, 6 ch"]),
]


@pytest.mark.parametrize(("name", "width", "height", "frames", "rate", "audio"), SHARED_CLIPS)
def test_shared_clip_matches_readme_and_decode(
    shared_media: Callable[[str], Path],
    name: str,
    width: int,
    height: int,
    frames: int,
    rate: Fraction,
    audio: list[str],
) -> None:
    path = shared_media(name)
    info: MediaInfo = probe(path)
    video = info.video
    assert (video.width, video.height, video.frame_count) == (width, height, frames)
    assert video.average_rate == rate
    assert video.codec == "h264" and video.bit_depth == 8
    assert not video.is_vfr
    decoded, keys = decoded_pts_and_keyframes(path)
    assert list(video.pts) == decoded
    assert list(video.keyframe_pts) == keys
    assert [s.detail for s in info.streams if s.kind == "audio"] == audio
    assert info.duration_s == pytest.approx(frames / rate, abs=0.25)


def test_bikes_has_several_keyframes(shared_media: Callable[[str], Path]) -> None:
    video = probe(shared_media("bikes_640x272_25fps_noaudio.mp4")).video
    assert len(video.keyframe_pts) == 6
    assert video.keyframe_pts[0] == video.pts[0]
    assert set(video.keyframe_pts) <= set(video.pts)


# --------------------------------------------------------------------------------------------
# Unusable input: one specific error each


def test_zero_byte_file(zero_byte_file: mf.FixtureInfo) -> None:
    with pytest.raises(EmptyFileError, match="empty"):
        probe(zero_byte_file.path)


def test_text_file_is_not_media(not_media_file: mf.FixtureInfo) -> None:
    with pytest.raises(NotMediaError, match="not a media file"):
        probe(not_media_file.path)


@pytest.mark.parametrize("name", ["truncated_clip", "truncated_no_moov_clip"])
def test_truncated_file_is_rejected(name: str, request: pytest.FixtureRequest) -> None:
    fixture: mf.FixtureInfo = request.getfixturevalue(name)
    with pytest.raises((CorruptMediaError, NotMediaError)) as caught:
        probe(fixture.path)
    assert "truncated" in str(caught.value) or "damaged" in str(caught.value)
    assert str(fixture.path) in str(caught.value)


def test_faststart_truncation_names_the_cut_box(truncated_clip: mf.FixtureInfo) -> None:
    size = truncated_clip.size_bytes
    expected = rf"truncated: its mdat box at byte \d+ declares \d+ bytes .*\(the file has {size};"
    with pytest.raises(CorruptMediaError, match=expected):
        probe(truncated_clip.path)


def test_missing_frames_behind_a_consistent_structure_are_named(
    truncated_clip: mf.FixtureInfo, tmp_path: Path
) -> None:
    """A cut file whose mdat size was 'repaired' to match (as some recovery tools do) passes
    the structure check; the index still declares 24 frames and only 14 are there."""
    data = bytearray(truncated_clip.path.read_bytes())
    mdat = data.index(b"mdat") - 4
    data[mdat : mdat + 4] = (len(data) - mdat).to_bytes(4, "big")
    repaired = tmp_path / "repaired.mp4"
    repaired.write_bytes(bytes(data))
    with pytest.raises(CorruptMediaError, match=r"truncated.*declares 24 video frames"):
        probe(repaired)


def test_audio_only_file_has_no_video(audio_only_file: mf.FixtureInfo) -> None:
    with pytest.raises(NoVideoStreamError, match="no video stream"):
        probe(audio_only_file.path)


def test_max_pixels(no_audio_clip: mf.FixtureInfo) -> None:
    with pytest.raises(FrameTooLargeError, match=r"64x48 = 3072 pixels exceeds the limit of 3071"):
        probe(no_audio_clip.path, max_pixels=64 * 48 - 1)
    assert probe(no_audio_clip.path, max_pixels=64 * 48).video.frame_count == 24


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match=r"nope\.mp4"):
        probe(missing)


def test_media_errors_share_a_base_class() -> None:
    for error in (
        EmptyFileError,
        NotMediaError,
        CorruptMediaError,
        NoVideoStreamError,
        FrameTooLargeError,
    ):
        assert issubclass(error, MediaError)


def _top_level_boxes(data: bytes) -> dict[str, tuple[int, int]]:
    """{box type: (offset, size)} of an mp4's top-level boxes."""
    boxes: dict[str, tuple[int, int]] = {}
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        boxes[data[offset + 4 : offset + 8].decode("latin-1")] = (offset, size)
        if size < 8:
            break
        offset += size
    return boxes


@pytest.mark.parametrize("name", ["no_audio_clip", "vfr_clip", "multitrack_clip"])
def test_any_truncation_is_reported_as_truncated(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Cut an mp4 (index at the end) at ~150 points, densely inside its moov box: probe must
    say "truncated" for every cut. Before the container check (vsrflow.media.structure) some
    cuts came back as complete files missing their later tracks, or as 'not a media file' /
    'no video stream'; before that, some crashed with AttributeError."""
    clip: mf.FixtureInfo = request.getfixturevalue(name)
    data = clip.path.read_bytes()
    boxes = _top_level_boxes(data)
    assert list(boxes) == ["ftyp", "free", "mdat", "moov"]  # index at the end
    moov_start, moov_size = boxes["moov"]
    cuts = set(range(64, moov_start, max(1, moov_start // 30)))
    cuts |= set(range(moov_start, len(data), max(1, moov_size // 120)))
    cut_file = tmp_path / f"cut{clip.path.suffix}"
    for cut in sorted(cuts):
        cut_file.write_bytes(data[:cut])
        with pytest.raises(CorruptMediaError, match="is truncated") as caught:
            probe(cut_file)
        if cut == moov_start:  # every box present is whole; the index is missing
            expected = "it has no moov box"
        elif moov_start < cut < moov_start + 8:
            expected = f"ends inside a box header at byte {moov_start}"
        else:
            expected = "its moov box" if cut > moov_start else "its mdat box"
        assert expected in str(caught.value), str(caught.value)
