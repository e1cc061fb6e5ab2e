"""Checks that each generated media fixture really has the property it claims.

These reopen the files with PyAV directly (not through ``media_fixtures.probe_clip``), so a bug
in the fixture module's own probing cannot hide a wrong fixture. All of it runs in a few
seconds on 2 cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import media_fixtures as mf
import numpy as np
import pytest
from av.sidedata.sidedata import Type as FrameSideDataType
from av.video.frame import VideoFrame


def decode_video(path: Path) -> list[VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def nonempty_subtitle_packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        return [p for p in container.demux(stream) if p.size > 0]


# --------------------------------------------------------------------------------------------
# Session environment and shared data


def test_prefect_env_defaults_are_set() -> None:
    home = Path(os.environ["PREFECT_HOME"])
    assert home.is_dir()
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"].lower() == "false"
    assert int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 90


def test_shared_media_skip_reason_names_missing_path(
    shared_media: Callable[[str], Path],
) -> None:
    with pytest.raises(pytest.skip.Exception, match=r"no-such-clip\.mp4"):
        shared_media("no-such-clip.mp4")


def test_shared_media_real_clip_opens(shared_media: Callable[[str], Path]) -> None:
    path = shared_media("carphone_176x144_2997fps_noaudio.mp4")
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert (video.width, video.height) == (176, 144)
        assert video.frames == 120


# --------------------------------------------------------------------------------------------
# Frame content


def test_frames_are_nontrivial_and_move(no_audio_clip: mf.FixtureInfo) -> None:
    frames = [f.to_ndarray(format="rgb24") for f in decode_video(no_audio_clip.path)]
    assert frames[0].shape == (48, 64, 3)
    assert frames[0].std() > 30
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 5
    # the red orientation marker survives encoding
    assert frames[0][1, 1, 0] > 200 and frames[0][1, 1, 1] < 60


# --------------------------------------------------------------------------------------------
# VFR


def test_vfr_pts_are_irregular_and_exact(vfr_clip: mf.FixtureInfo) -> None:
    frames = decode_video(vfr_clip.path)
    pts = [f.pts for f in frames]
    assert len(frames) == vfr_clip.frame_count == 18
    assert pts == list(vfr_clip.pts)
    assert vfr_clip.time_base == Fraction(1, 90000)
    durations_ms = [(b - a) / 90 for a, b in pairwise(pts)]
    assert durations_ms[:4] == [33, 50, 17, 40]
    assert len(set(durations_ms)) >= 3
    with av.open(str(vfr_clip.path)) as container:
        assert container.streams.video[0].time_base == Fraction(1, 90000)
        (audio,) = container.streams.audio
        assert audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == 48000


def test_mp4_rewrites_coarse_time_base(no_audio_clip: mf.FixtureInfo) -> None:
    """The pitfall make_vfr avoids: 24 fps video gets time base 1/12288 in mp4, not 1/24."""
    assert no_audio_clip.time_base == Fraction(1, 12288)
    assert no_audio_clip.pts[:3] == (0, 512, 1024)


# --------------------------------------------------------------------------------------------
# Rotation


def test_rotation_reported_on_reopen(rotated_clip: mf.FixtureInfo) -> None:
    assert rotated_clip.rotation == 90
    assert (rotated_clip.display_width, rotated_clip.display_height) == (48, 64)
    with av.open(str(rotated_clip.path)) as container:
        stream = container.streams.video[0]
        assert "rotate" not in stream.metadata  # FFmpeg 8 exports only the display matrix
        first = next(container.decode(stream))
        assert first.rotation == 90
        assert any(sd.type == FrameSideDataType.DISPLAYMATRIX for sd in first.side_data)
        assert (first.width, first.height) == (64, 48)  # PyAV does not auto-rotate


def test_read_rotation_rewinds(rotated_clip: mf.FixtureInfo) -> None:
    with av.open(str(rotated_clip.path)) as container:
        stream = container.streams.video[0]
        assert mf.read_rotation(stream) == 90
        assert len(list(container.decode(stream))) == 24


def test_read_rotation_zero_without_matrix(no_audio_clip: mf.FixtureInfo) -> None:
    with av.open(str(no_audio_clip.path)) as container:
        assert mf.read_rotation(container.streams.video[0]) == 0


@pytest.mark.parametrize(("degrees", "expected"), [(-90, -90), (180, 180), (270, -90)])
def test_make_rotated_other_angles(tmp_path: Path, degrees: int, expected: int) -> None:
    info = mf.make_rotated(tmp_path / "r.mp4", degrees)
    assert info.rotation == expected
    # VideoFrame.rotation is in [-180, 180] and says -180 for a half turn; read_rotation says 180
    assert mf.normalize_rotation(decode_video(info.path)[0].rotation) == expected


def test_rotate_metadata_tag_is_ignored_by_ffmpeg8(tmp_path: Path) -> None:
    path = tmp_path / "tag.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.metadata["rotate"] = "90"
        out.mux(stream.encode(mf._pattern_frame(0)))
        out.mux(stream.encode(None))
    with av.open(str(path)) as container:
        assert mf.read_rotation(container.streams.video[0]) == 0


# --------------------------------------------------------------------------------------------
# 10-bit and colour tags


def test_tenbit_pix_fmt_and_colour_tags(tenbit_clip: mf.FixtureInfo) -> None:
    assert tenbit_clip.pix_fmt == "yuv420p10le" and tenbit_clip.bit_depth == 10
    with av.open(str(tenbit_clip.path)) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        assert cc.pix_fmt == "yuv420p10le"
        assert stream.profile == "High 10"
        assert (cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range) == (1, 1, 1, 1)
        frames = list(container.decode(stream))
    assert len(frames) == 24
    frame = frames[0]
    assert frame.format.name == "yuv420p10le"
    assert [c.bits for c in frame.format.components] == [10, 10, 10]
    tags = (frame.color_primaries, frame.color_trc, frame.colorspace, frame.color_range)
    assert tags == (1, 1, 1, 1)
    luma = frame.to_ndarray()[: frame.height]
    assert luma.dtype == np.uint16 and luma.max() <= 1023
    assert np.mean(luma % 4 != 0) > 0.3  # real 10-bit values, not 8-bit << 2
    rgb48 = frame.to_ndarray(format="rgb48le")
    assert rgb48.dtype == np.uint16
    assert np.mean(rgb48 % 256 != 0) > 0.3


def test_plain_clip_has_unspecified_colour_tags(no_audio_clip: mf.FixtureInfo) -> None:
    assert (no_audio_clip.color_primaries, no_audio_clip.color_trc) == (2, 2)
    assert no_audio_clip.bit_depth == 8


# --------------------------------------------------------------------------------------------
# Multitrack


@pytest.mark.parametrize(
    ("fixture_name", "sub_codec", "sub_packets"),
    [("multitrack_clip", "mov_text", 5), ("multitrack_mkv_clip", "srt", 3)],
)
def test_multitrack_streams(
    request: pytest.FixtureRequest, fixture_name: str, sub_codec: str, sub_packets: int
) -> None:
    info: mf.FixtureInfo = request.getfixturevalue(fixture_name)
    with av.open(str(info.path)) as container:
        assert [s.type for s in container.streams] == ["video", "audio", "audio", "subtitle"]
        eng, fra = container.streams.audio
        assert (eng.language, eng.codec_context.sample_rate, eng.codec_context.channels) == (
            "eng",
            48000,
            2,
        )
        assert (fra.language, fra.codec_context.sample_rate, fra.codec_context.channels) == (
            "fra",
            44100,
            1,
        )
        (sub,) = container.streams.subtitles
        assert sub.codec_context.name == sub_codec
        assert sub.language == "eng"
    assert len(decode_video(info.path)) == 24
    packets = nonempty_subtitle_packets(info.path)
    assert len(packets) == sub_packets == info.subtitle_tracks[0].packet_count
    assert info.audio_stream_count == 2 and info.subtitle_stream_count == 1


@pytest.mark.parametrize("fixture_name", ["multitrack_clip", "multitrack_mkv_clip"])
def test_multitrack_subtitle_text(request: pytest.FixtureRequest, fixture_name: str) -> None:
    info: mf.FixtureInfo = request.getfixturevalue(fixture_name)
    texts: list[tuple[int, str]] = []
    with av.open(str(info.path)) as container:
        stream = container.streams.subtitles[0]
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            for sub in packet.decode():
                assert isinstance(sub, av.subtitles.subtitle.AssSubtitle)
                if sub.dialogue:
                    ms = round(packet.pts * packet.time_base * 1000)
                    texts.append((ms, sub.dialogue.decode()))
    assert texts == [(c.start_ms, c.text) for c in mf.MULTITRACK_CUES]
    assert info.subtitle_tracks[0].cues == mf.MULTITRACK_CUES


# --------------------------------------------------------------------------------------------
# Odd size, no audio


def test_odd_size(odd_size_clip: mf.FixtureInfo) -> None:
    frames = decode_video(odd_size_clip.path)
    assert len(frames) == odd_size_clip.frame_count == 4
    assert (frames[0].width, frames[0].height) == (321, 181)
    assert frames[0].format.name == "yuv444p"
    assert frames[0].to_ndarray(format="rgb24").shape == (181, 321, 3)
    with av.open(str(odd_size_clip.path)) as container:
        cc = container.streams.video[0].codec_context
        assert (cc.width, cc.height) == (321, 181)
        assert cc.coded_width % 16 == 0  # macroblock padding, cropped on decode


def test_libx264_rejects_odd_size_yuv420p(tmp_path: Path) -> None:
    with av.open(str(tmp_path / "odd420.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 321, 181, "yuv420p"
        frame = VideoFrame.from_ndarray(mf.pattern_rgb(0, 321, 181), format="rgb24")
        with pytest.raises(av.FFmpegError):
            stream.encode(frame)


def test_no_audio(no_audio_clip: mf.FixtureInfo) -> None:
    with av.open(str(no_audio_clip.path)) as container:
        assert [s.type for s in container.streams] == ["video"]
        assert container.streams.video[0].codec_context.name == "h264"
    assert len(decode_video(no_audio_clip.path)) == 24


# --------------------------------------------------------------------------------------------
# Broken files


def test_truncated_decodes_fewer_frames(truncated_clip: mf.FixtureInfo) -> None:
    assert truncated_clip.source_frame_count == 24
    decoded = 0
    failed = False
    with av.open(str(truncated_clip.path)) as container:
        stream = container.streams.video[0]
        assert stream.frames == 24  # the header still claims the full clip
        try:
            for _ in container.decode(stream):
                decoded += 1
        except av.FFmpegError:
            failed = True
    assert failed or decoded < 24
    assert decoded == truncated_clip.frame_count
    assert truncated_clip.path.stat().st_size == truncated_clip.size_bytes


def test_truncated_without_moov_does_not_open(truncated_no_moov_clip: mf.FixtureInfo) -> None:
    assert not truncated_no_moov_clip.openable
    with pytest.raises(av.InvalidDataError):
        av.open(str(truncated_no_moov_clip.path))


@pytest.mark.parametrize("fixture_name", ["zero_byte_file", "not_media_file"])
def test_unopenable_files(request: pytest.FixtureRequest, fixture_name: str) -> None:
    info: mf.FixtureInfo = request.getfixturevalue(fixture_name)
    assert info.path.suffix == ".mp4"
    assert not info.openable and info.error_type is av.InvalidDataError
    with pytest.raises(av.InvalidDataError):
        av.open(str(info.path))


def test_zero_byte_is_empty(zero_byte_file: mf.FixtureInfo) -> None:
    assert zero_byte_file.path.stat().st_size == 0


# --------------------------------------------------------------------------------------------
# Images


def test_image_set_formats(image_set: mf.ImageSetInfo) -> None:
    expected = {
        "rgb": ("rgb24", "RGB"),
        "gray": ("gray", "L"),
        "rgba": ("rgba", "RGBA"),
        "rgb16": ("rgb48be", "RGB48"),
        "jpg": ("yuvj420p", "RGB"),
        "webp": ("yuv420p", "RGB"),
        "webp_alpha": ("yuva420p", "RGBA"),
    }
    assert set(image_set.images) == set(expected)
    for key, (pix_fmt, mode) in expected.items():
        image = image_set.images[key]
        assert image.mode == mode
        with av.open(str(image.path)) as container:
            frame = next(container.decode(video=0))
        assert frame.format.name == pix_fmt, key
        assert (frame.width, frame.height) == (image.width, image.height)


def test_image_file_signatures(image_set: mf.ImageSetInfo) -> None:
    images = image_set.images
    assert images["rgb"].path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert images["jpg"].path.read_bytes()[:3] == b"\xff\xd8\xff"
    webp = images["webp"].path.read_bytes()
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"


def test_sixteen_bit_png_has_real_16bit_values(image_set: mf.ImageSetInfo) -> None:
    with av.open(str(image_set.images["rgb16"].path)) as container:
        frame = next(container.decode(video=0))
    values = frame.to_ndarray(format="rgb48le")
    assert values.dtype == np.uint16
    assert np.mean(values % 257 != 0) > 0.5
    assert values.max() > 255 * 100


def test_alpha_is_nontrivial(image_set: mf.ImageSetInfo) -> None:
    for key in ("rgba", "webp_alpha"):
        with av.open(str(image_set.images[key].path)) as container:
            frame = next(container.decode(video=0))
        alpha = frame.to_ndarray(format="rgba")[..., 3]
        assert {0, 255} <= set(np.unique(alpha).tolist()), key
        assert len(np.unique(alpha)) >= 3, key


def test_pillow_modes(image_set: mf.ImageSetInfo) -> None:
    """Pillow (if installed) agrees on modes, except the 16-bit PNG, which it reads as 8-bit."""
    image_module = pytest.importorskip("PIL.Image")
    modes = {}
    for key, info in image_set.images.items():
        with image_module.open(info.path) as img:
            modes[key] = img.mode
    assert modes["rgb"] == "RGB" and modes["gray"] == "L" and modes["rgba"] == "RGBA"
    assert modes["jpg"] == "RGB" and modes["webp"] == "RGB" and modes["webp_alpha"] == "RGBA"
    assert modes["rgb16"] == "RGB"  # precision lost: use PyAV for 16-bit PNG
