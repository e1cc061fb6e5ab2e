"""Synthetic test media, written with PyAV and verified by reopening it.

Why this module exists: the real clips in ``../shared/media`` are all plain constant-frame-rate
8-bit h264 with at most one audio track. The pipeline also has to cope with variable frame rate,
rotation, 10-bit colour, several audio and subtitle tracks, odd frame sizes, missing audio,
truncated downloads and files that are not media at all. Each ``make_*`` function below writes one
such file (tiny: 64x48 and at most 24 frames, so a 4x super-resolution model runs over it in
about a second on CPU), then REOPENS it with PyAV and returns what a test should expect as a
:class:`FixtureInfo`. The returned values are the ones observed on reopen, not the ones we asked
for: a maker raises :class:`FixtureError` when the two disagree, so a test never rests on an
assumption about what the muxer did.

Facts measured with PyAV 18.1.0 (bundled FFmpeg 8.1) that these functions rely on:

* mp4 rewrites video time bases below 1/10000 by doubling the denominator: 1/1000 becomes 1/16000
  and 1/24 becomes 1/12288. VFR clips therefore use 1/90000, which mp4 keeps as is (matroska
  always uses 1/1000, i.e. pts rounded to whole milliseconds).
* Rotation is written with ``VideoStream.set_display_rotation`` (counter-clockwise degrees); the
  legacy ``rotate`` metadata tag is silently ignored by FFmpeg 8's mp4 muxer. PyAV 18 has no
  stream-level accessor for the display matrix: read it from the first DECODED frame, see
  :func:`read_rotation`.
* Text subtitle encoders (mov_text, subrip) refuse to open without an ASS header in
  ``codec_context.subtitle_header`` (``InvalidDataError`` from ``avcodec_open2``).
* The mp4 muxer inserts an empty 2-byte mov_text packet into every gap between cues, so an mp4
  subtitle track has more packets than cues; matroska does not.
* libx264 refuses odd frame sizes with 4:2:0 chroma (``ExternalError`` from ``avcodec_open2``)
  but accepts them with ``yuv444p``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.sidedata.sidedata import Type as FrameSideDataType
from av.subtitles.stream import SubtitleStream
from av.subtitles.subtitle import AssSubtitle, SubtitleSet
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

#: Default size of synthetic clips: small enough for a 4x model to run in ~1 s for 24 frames.
WIDTH = 64
HEIGHT = 48
#: Time base used for VFR video in mp4; mp4 keeps it unchanged (unlike 1/1000).
VFR_TIME_BASE = Fraction(1, 90000)
#: Frame durations (ms) cycled by :func:`make_vfr`: genuinely irregular, like a phone recording.
VFR_DURATIONS_MS = (33, 50, 17, 40)
#: FFmpeg AVCOL_* values used by :func:`make_10bit` (these are the ints PyAV exposes).
AVCOL_PRI_BT709 = 1
AVCOL_TRC_BT709 = 1
AVCOL_SPC_BT709 = 1
AVCOL_RANGE_MPEG = 1  # "limited" / tv range
AVCOL_UNSPECIFIED = 2  # primaries, trc and colorspace "unspecified"

#: Minimal ASS header. mov_text and subrip encoders parse it in avcodec_open2 and fail without it.
ASS_HEADER = (
    b"[Script Info]\n"
    b"ScriptType: v4.00+\n"
    b"PlayResX: 384\n"
    b"PlayResY: 288\n"
    b"\n"
    b"[V4+ Styles]\n"
    b"Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, "
    b"BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, "
    b"BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n"
    b"\n"
    b"[Events]\n"
    b"Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)


class FixtureError(RuntimeError):
    """A written fixture did not have the property it was made for (checked on reopen)."""


@dataclass(frozen=True)
class AudioTrackInfo:
    """One audio stream as seen on reopen."""

    index: int
    codec: str
    sample_rate: int
    channels: int
    language: str | None


@dataclass(frozen=True)
class SubtitleCue:
    """One text cue; times in milliseconds from the start of the file."""

    start_ms: int
    end_ms: int
    text: str


@dataclass(frozen=True)
class SubtitleTrackInfo:
    """One subtitle stream as seen on reopen.

    ``codec`` is the decoder name PyAV reports: ``"mov_text"`` in mp4, but ``"srt"`` (not
    ``"subrip"``) for SubRip in matroska. ``packet_count`` counts non-empty packets, which in mp4
    includes the 2-byte gap packets the muxer inserts between cues; ``cues`` holds only the cues
    with text.
    """

    index: int
    codec: str
    language: str | None
    packet_count: int
    cues: tuple[SubtitleCue, ...]


@dataclass(frozen=True)
class FixtureInfo:
    """What a test may expect from one media fixture (values observed on reopen with PyAV).

    ``width``/``height`` are the stored (pre-rotation) frame size as decoded, i.e.
    ``stream.width``/``frame.width``; ``codec_context.coded_width`` may be larger (h264 pads to
    16-pixel macroblocks and crops). ``display_width``/``display_height`` apply ``rotation``.
    ``pts`` are decoded frame pts in display order, in ``time_base`` (the video stream time base
    on reopen). ``rotation`` is counter-clockwise degrees in (-180, 180] as returned by
    :func:`read_rotation` (same sign as ``VideoFrame.rotation`` and ffprobe's "rotation").
    ``frame_count`` is how many frames actually decode; ``declared_frame_count`` is what the
    container header claims (``stream.frames``, 0 when unknown). For broken files ``openable``,
    ``fully_decodable`` and ``error_type`` say what goes wrong; ``source_frame_count`` is the
    frame count of the intact clip a truncated file was cut from.
    """

    path: Path
    width: int
    height: int
    frame_count: int
    pts: tuple[int, ...]
    time_base: Fraction | None
    pix_fmt: str | None
    audio_stream_count: int
    subtitle_stream_count: int
    rotation: int
    container_format: str | None = None
    video_codec: str | None = None
    bit_depth: int = 0
    display_width: int = 0
    display_height: int = 0
    declared_frame_count: int = 0
    keyframe_indices: tuple[int, ...] = ()
    duration_s: float | None = None
    color_primaries: int = AVCOL_UNSPECIFIED
    color_trc: int = AVCOL_UNSPECIFIED
    colorspace: int = AVCOL_UNSPECIFIED
    color_range: int = 0
    audio_tracks: tuple[AudioTrackInfo, ...] = ()
    subtitle_tracks: tuple[SubtitleTrackInfo, ...] = ()
    openable: bool = True
    fully_decodable: bool = True
    error_type: type[Exception] | None = None
    source_frame_count: int | None = None
    size_bytes: int = 0
    notes: str = ""

    @property
    def pts_seconds(self) -> tuple[float, ...]:
        """Frame times in seconds (``pts * time_base``)."""
        tb = self.time_base or Fraction(0)
        return tuple(float(p * tb) for p in self.pts)


@dataclass(frozen=True)
class ImageInfo:
    """One still image: ``mode`` is a PIL-like name, ``pix_fmt`` what PyAV decodes it as.

    Beware: Pillow 13 opens the 16-bit PNG as 8-bit mode "RGB" (precision lost); PyAV decodes it
    as ``rgb48be``. ``mode`` "RGB48" is our name for that case.
    """

    path: Path
    mode: str
    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    has_alpha: bool


@dataclass(frozen=True)
class ImageSetInfo:
    """The images written by :func:`make_image_set`, keyed by role."""

    directory: Path
    images: dict[str, ImageInfo] = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        """All image paths, in a stable order."""
        return [self.images[k].path for k in sorted(self.images)]


# --------------------------------------------------------------------------------------------
# Rotation: how to read it with PyAV 18


def normalize_rotation(degrees: float) -> int:
    """Round to whole degrees and map into (-180, 180] (so 270 -> -90 and -180 -> 180)."""
    r = round(degrees) % 360
    return r - 360 if r > 180 else r


def rotation_from_display_matrix(matrix: bytes) -> int:
    """Counter-clockwise rotation of an FFmpeg display matrix (9 native-endian int32, 16.16).

    Same formula as FFmpeg's ``av_display_rotation_get`` but rounded instead of truncated (PyAV's
    ``VideoFrame.rotation`` does ``int()`` on the double, so 89.9999 would become 89). Flips are
    not decoded: a mirrored matrix yields a rotation only.
    """
    m = struct.unpack("=9i", matrix[:36])
    scale0 = math.hypot(m[0] / 65536, m[3] / 65536)
    scale1 = math.hypot(m[1] / 65536, m[4] / 65536)
    if scale0 == 0 or scale1 == 0:
        return 0
    angle = math.degrees(math.atan2((m[1] / 65536) / scale1, (m[0] / 65536) / scale0))
    return normalize_rotation(-angle)


def frame_rotation(frame: VideoFrame) -> int | None:
    """Rotation carried by a decoded frame's DISPLAYMATRIX side data, or None if it has none."""
    for side_data in frame.side_data:
        if side_data.type == FrameSideDataType.DISPLAYMATRIX:
            return rotation_from_display_matrix(bytes(side_data))
    return None


def read_rotation(stream: VideoStream) -> int:
    """Display rotation of an input video stream, counter-clockwise degrees in (-180, 180].

    How rotation is READ with PyAV 18 (FFmpeg 8): the container's display matrix lives in the
    stream's ``codecpar.coded_side_data``, which PyAV 18 does not expose on ``Stream`` (no
    ``side_data`` attribute; the first packet carries none either). The decoder copies it onto
    every decoded frame as ``AV_FRAME_DATA_DISPLAYMATRIX``, so decode ONE frame and read
    ``frame.side_data`` (or ``frame.rotation``, which truncates instead of rounding). Modern
    FFmpeg demuxers no longer export a ``rotate`` metadata tag; it is only honoured here as a
    fallback for unusual inputs, converted from its clockwise convention (``rotate=90`` means
    rotation -90, the typical portrait phone video).

    To display: ``np.rot90(img, k=rotation // 90)`` (numpy's rot90 is counter-clockwise for
    positive k). PyAV never auto-rotates.

    Side effect: decodes from ``stream.container`` and then seeks it back to the start (which also
    flushes the decoders), so call it right after ``av.open``, before reading packets yourself.
    The container must be seekable (a file, not a pipe).
    """
    container = stream.container
    if not isinstance(container, InputContainer):
        raise TypeError("read_rotation needs a stream of an input container")
    rotation: int | None = None
    try:
        for frame in container.decode(stream):
            rotation = frame_rotation(frame)
            break
    finally:
        container.seek(0)
    if rotation is not None:
        return rotation
    legacy = stream.metadata.get("rotate")
    if legacy:
        try:
            return normalize_rotation(-float(legacy))
        except ValueError:
            return 0
    return 0


# --------------------------------------------------------------------------------------------
# Frame content


def pattern_rgb(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """An rgb24 frame with structure a super-resolution model can act on.

    Diagonal colour gradient that drifts with ``index``, a sinusoidal texture, a white square
    that moves, a fine checkerboard in the lower right (high frequency detail) and a red marker in
    the top-left corner so orientation (rotation/flips) is visible in the pixels.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = (xx / max(width - 1, 1)) * 200 + index * 5
    img[..., 1] = (yy / max(height - 1, 1)) * 180 + 40
    img[..., 2] = 128 + 100 * np.sin((xx + yy + index * 3) / 6)
    mask = (xx > width * 0.6) & (yy > height * 0.6)
    img[mask] = (((xx[mask] // 2 + yy[mask] // 2) % 2) * 255)[:, None]
    side = max(4, min(width, height) // 5)
    x0 = (index * 3) % max(width - side, 1)
    y0 = (index * 2) % max(height - side, 1)
    img[y0 : y0 + side, x0 : x0 + side] = 255
    mark = max(2, min(width, height) // 8)
    img[:mark, :mark] = (255, 0, 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pattern_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> VideoFrame:
    return VideoFrame.from_ndarray(pattern_rgb(index, width, height), format="rgb24")


def _yuv420p10_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> VideoFrame:
    """A yuv420p10le frame built directly in 10 bits (smooth gradients, limited range 64..940).

    Building it in 10 bits (instead of converting 8-bit RGB) guarantees the luma values are not
    just 8-bit values shifted left by 2.
    """
    x = np.linspace(64, 940, width, dtype=np.float64)[None, :]
    y = np.linspace(0, 120, height, dtype=np.float64)[:, None]
    luma = np.clip(x + y + index * 7 + 20 * np.sin((x + y) / 40), 64, 940).astype(np.uint16)
    cw, ch = width // 2, height // 2
    u = np.clip(np.linspace(300, 700, cw)[None, :] + np.zeros((ch, 1)) + index * 3, 64, 960)
    v = np.clip(np.linspace(700, 330, ch)[:, None] + np.zeros((1, cw)), 64, 960)
    flat = np.concatenate([luma.ravel(), u.astype(np.uint16).ravel(), v.astype(np.uint16).ravel()])
    return VideoFrame.from_ndarray(flat.reshape(height * 3 // 2, width), format="yuv420p10le")


# --------------------------------------------------------------------------------------------
# Writing helpers


def _add_video(
    out: OutputContainer,
    *,
    codec: str = "libx264",
    width: int = WIDTH,
    height: int = HEIGHT,
    pix_fmt: str = "yuv420p",
    rate: int = 24,
    time_base: Fraction | None = None,
    gop: int = 12,
) -> VideoStream:
    """Add a video stream; ``time_base`` must be set before the first frame for VFR pts.

    preset veryfast keeps B-frames (negative dts, reordering: what real files have) but is
    quick. gop 12 gives two keyframes in 24 frames so chunking code sees more than one GOP.
    """
    options = {"preset": "veryfast"} if codec == "libx264" else {}
    if codec == "libx265":
        options = {"preset": "veryfast", "x265-params": "log-level=error"}
    stream = out.add_stream(codec, rate=rate, options=options)
    if not isinstance(stream, VideoStream):
        raise FixtureError(f"{codec} is not a video codec")
    stream.width = width
    stream.height = height
    stream.pix_fmt = pix_fmt
    stream.codec_context.gop_size = gop
    if time_base is not None:
        stream.codec_context.time_base = time_base
        stream.time_base = time_base
    return stream


def _encode_video(
    out: OutputContainer,
    stream: VideoStream,
    frames: Iterable[VideoFrame],
) -> None:
    for frame in frames:
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _add_audio(
    out: OutputContainer, sample_rate: int, layout: str, language: str | None = None
) -> AudioStream:
    stream = out.add_stream("aac", rate=sample_rate, layout=layout)
    if not isinstance(stream, AudioStream):
        raise FixtureError("aac is not an audio codec")
    if language:
        stream.metadata["language"] = language
    return stream


def _encode_tone(
    out: OutputContainer, stream: AudioStream, seconds: float, freq: float = 440.0
) -> None:
    """A sine tone (different per channel) of ``seconds`` length, in 1024-sample AAC frames."""
    rate = stream.codec_context.sample_rate
    channels = stream.codec_context.channels
    layout = stream.codec_context.layout.name
    total = round(seconds * rate)
    for start in range(0, total, 1024):
        n = min(1024, total - start)
        t = np.arange(start, start + n, dtype=np.float64) / rate
        chans = [0.2 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
        frame = av.AudioFrame.from_ndarray(
            np.stack(chans).astype(np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _add_subtitles(out: OutputContainer, codec: str, language: str) -> SubtitleStream:
    """Add a text subtitle stream. Like every stream, it must be added before the first mux
    (the header is written then; a stream added later gets time base 0 and muxing fails with
    "Cannot rebase to zero time"). The encoder needs ``subtitle_header`` set first.
    """
    stream = out.add_stream(codec)
    if not isinstance(stream, SubtitleStream):
        raise FixtureError(f"{codec} is not a subtitle codec")
    stream.metadata["language"] = language
    ctx = stream.codec_context
    ctx.time_base = Fraction(1, 1000)
    ctx.subtitle_header = ASS_HEADER
    return stream


def _encode_subtitles(
    out: OutputContainer, stream: SubtitleStream, cues: Sequence[SubtitleCue]
) -> None:
    """Encode text cues with PyAV 18's subtitle encoder and mux them (times in ms).

    ``SubtitleSet.create`` takes an ASS dialogue line ("ReadOrder,Layer,Style,Name,MarginL,
    MarginR,MarginV,Effect,Text"), start/end offsets relative to ``pts``, and ``pts`` in the
    stream time base; ``encode_subtitle`` returns one packet with pts/dts/duration from it, which
    needs ``stream`` and ``time_base`` set by hand before muxing.
    """
    for i, cue in enumerate(cues):
        dialogue = f"{i},0,Default,,0,0,0,,{cue.text}".encode()
        subset = SubtitleSet.create(dialogue, 0, cue.end_ms - cue.start_ms, pts=cue.start_ms)
        packet = stream.codec_context.encode_subtitle(subset)
        packet.stream = stream
        packet.time_base = Fraction(1, 1000)
        out.mux(packet)


# --------------------------------------------------------------------------------------------
# Probing (reopen and observe)


def _bit_depth(pix_fmt: str | None) -> int:
    if not pix_fmt:
        return 0
    fmt = av.VideoFormat(pix_fmt)
    return max((c.bits for c in fmt.components), default=0)


def probe_clip(path: Path) -> FixtureInfo:
    """Open ``path`` with PyAV, decode every video frame, and report what is really there.

    Errors while opening or decoding are caught and recorded (``openable``, ``fully_decodable``,
    ``error_type``) instead of raised, so broken fixtures can be described too.
    """
    size = path.stat().st_size if path.exists() else 0
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        return FixtureInfo(
            path=path,
            width=0,
            height=0,
            frame_count=0,
            pts=(),
            time_base=None,
            pix_fmt=None,
            audio_stream_count=0,
            subtitle_stream_count=0,
            rotation=0,
            openable=False,
            fully_decodable=False,
            error_type=type(exc),
            size_bytes=size,
        )
    with container:
        video = container.streams.video[0] if container.streams.video else None
        audio_tracks = tuple(
            AudioTrackInfo(
                index=s.index,
                codec=s.codec_context.name,
                sample_rate=s.codec_context.sample_rate,
                channels=s.codec_context.channels,
                language=s.language,
            )
            for s in container.streams.audio
        )
        sub_streams = list(container.streams.subtitles)
        declared = video.frames if video is not None else 0
        cc = video.codec_context if video is not None else None
        pts: list[int] = []
        keyframes: list[int] = []
        rotation: int | None = None
        frame_fmt: str | None = None
        frame_tags: tuple[int, int, int, int] | None = None
        sub_packets = {s.index: 0 for s in sub_streams}
        sub_cues: dict[int, list[SubtitleCue]] = {s.index: [] for s in sub_streams}
        error: type[Exception] | None = None
        wanted = ([video] if video is not None else []) + sub_streams
        try:
            for packet in container.demux(wanted):
                if packet.stream.type == "subtitle":
                    if packet.size == 0 or packet.pts is None:
                        continue
                    sub_packets[packet.stream.index] += 1
                    tb = packet.time_base
                    start = round(packet.pts * tb * 1000)
                    end = start + round((packet.duration or 0) * tb * 1000)
                    for sub in packet.decode():
                        if not isinstance(sub, AssSubtitle):
                            continue
                        text = sub.dialogue.decode()
                        if text:
                            sub_cues[packet.stream.index].append(SubtitleCue(start, end, text))
                    continue
                for frame in packet.decode():
                    if not isinstance(frame, VideoFrame):
                        continue
                    if frame.key_frame:
                        keyframes.append(len(pts))
                    if frame.pts is None:
                        raise FixtureError(f"{path}: decoded frame without pts")
                    pts.append(frame.pts)
                    if rotation is None:
                        rotation = frame_rotation(frame) or 0
                        frame_fmt = frame.format.name
                        frame_tags = (
                            frame.color_primaries,
                            frame.color_trc,
                            frame.colorspace,
                            frame.color_range,
                        )
        except av.FFmpegError as exc:
            error = type(exc)
        rotation = rotation or 0
        width = video.width if video is not None else 0
        height = video.height if video is not None else 0
        swap = abs(rotation) == 90
        tags = (
            frame_tags
            if frame_tags is not None
            else (AVCOL_UNSPECIFIED, AVCOL_UNSPECIFIED, AVCOL_UNSPECIFIED, 0)
        )
        # Tags from the container/codec parameters win when set; the frame's are the fallback.
        if cc is not None:
            tags = (
                cc.color_primaries if cc.color_primaries != AVCOL_UNSPECIFIED else tags[0],
                cc.color_trc if cc.color_trc != AVCOL_UNSPECIFIED else tags[1],
                cc.colorspace if cc.colorspace != AVCOL_UNSPECIFIED else tags[2],
                cc.color_range or tags[3],
            )
        pix_fmt = (cc.pix_fmt if cc is not None else None) or frame_fmt
        return FixtureInfo(
            path=path,
            width=width,
            height=height,
            frame_count=len(pts),
            pts=tuple(pts),
            time_base=video.time_base if video is not None else None,
            pix_fmt=pix_fmt,
            audio_stream_count=len(audio_tracks),
            subtitle_stream_count=len(sub_streams),
            rotation=rotation,
            container_format=container.format.name,
            video_codec=cc.name if cc is not None else None,
            bit_depth=_bit_depth(pix_fmt),
            display_width=height if swap else width,
            display_height=width if swap else height,
            declared_frame_count=declared,
            keyframe_indices=tuple(keyframes),
            duration_s=container.duration / 1_000_000 if container.duration else None,
            color_primaries=tags[0],
            color_trc=tags[1],
            colorspace=tags[2],
            color_range=tags[3],
            audio_tracks=audio_tracks,
            subtitle_tracks=tuple(
                SubtitleTrackInfo(
                    index=s.index,
                    codec=s.codec_context.name,
                    language=s.language,
                    packet_count=sub_packets[s.index],
                    cues=tuple(sub_cues[s.index]),
                )
                for s in sub_streams
            ),
            fully_decodable=error is None,
            error_type=error,
            size_bytes=size,
        )


def _check(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise FixtureError(f"{path.name}: {message}")


def _check_valid(info: FixtureInfo, frames: int) -> None:
    _check(info.openable and info.fully_decodable, info.path, f"did not decode: {info}")
    _check(info.frame_count == frames, info.path, f"{info.frame_count} frames, want {frames}")


# --------------------------------------------------------------------------------------------
# Clip fixtures


def make_vfr(path: Path) -> FixtureInfo:
    """h264 mp4 with irregular frame durations (33/50/17/40 ms cycling) plus one AAC mono track.

    Why: the pipeline must carry source pts through instead of assuming a frame rate (CLI-style
    extraction duplicates frames and re-encoding at a nominal rate desyncs audio). Time base is
    1/90000, which mp4 keeps (1/1000 would be rewritten to 1/16000). Guarantees, checked on
    reopen: 18 frames whose decoded pts equal the intended ones exactly, at least 3 distinct
    frame durations, one 48 kHz mono AAC track as long as the video.
    """
    n = 18
    wanted = [0]
    for i in range(1, n):
        wanted.append(wanted[-1] + VFR_DURATIONS_MS[(i - 1) % len(VFR_DURATIONS_MS)] * 90)
    last_ms = VFR_DURATIONS_MS[(n - 1) % len(VFR_DURATIONS_MS)]
    seconds = (wanted[-1] / 90000) + last_ms / 1000
    with av.open(str(path), "w") as out:
        video = _add_video(out, time_base=VFR_TIME_BASE, rate=30, gop=9)
        audio = _add_audio(out, 48000, "mono")
        frames = []
        for i, p in enumerate(wanted):
            frame = _pattern_frame(i)
            frame.pts = p
            frame.time_base = VFR_TIME_BASE
            frames.append(frame)
        _encode_video(out, video, frames)
        _encode_tone(out, audio, seconds)
    info = probe_clip(path)
    _check_valid(info, n)
    _check(info.time_base == VFR_TIME_BASE, path, f"time_base {info.time_base}")
    _check(list(info.pts) == wanted, path, f"pts {info.pts} != {wanted}")
    diffs = {b - a for a, b in pairwise(info.pts)}
    _check(len(diffs) >= 3, path, f"durations not irregular: {diffs}")
    _check(info.audio_stream_count == 1, path, "audio track missing")
    return replace(info, notes=f"VFR, frame durations cycle {VFR_DURATIONS_MS} ms")


def make_rotated(path: Path, degrees: int = 90) -> FixtureInfo:
    """h264 mp4 (64x48 stored) whose display matrix says rotate ``degrees`` counter-clockwise.

    How rotation is WRITTEN with PyAV 18: ``stream.set_display_rotation(degrees)`` on the output
    VideoStream before the first frame is encoded (``set_display_matrix`` takes the raw 9 ints).
    PyAV injects it into ``codecpar.coded_side_data`` at header time, and the mp4 muxer stores it
    in the tkhd matrix. ``degrees`` uses the read-back convention (counter-clockwise, what
    ``VideoFrame.rotation`` and ffprobe's "rotation" print); a portrait phone video (old
    ``rotate=90`` tag) is ``degrees=-90``. Setting ``stream.metadata["rotate"]`` does nothing in
    FFmpeg 8. Guarantees: on reopen :func:`read_rotation` returns ``degrees`` (normalized),
    display size is 48x64 for +-90, 24 frames, no audio.
    """
    with av.open(str(path), "w") as out:
        video = _add_video(out)
        video.set_display_rotation(degrees)
        _encode_video(out, video, (_pattern_frame(i) for i in range(24)))
    info = probe_clip(path)
    _check_valid(info, 24)
    with av.open(str(path)) as container:
        reread = read_rotation(container.streams.video[0])
    want = normalize_rotation(degrees)
    _check(info.rotation == want and reread == want, path, f"rotation {info.rotation}/{reread}")
    return replace(info, notes=f"display matrix rotation {want} (counter-clockwise)")


def make_10bit(path: Path) -> FixtureInfo:
    """libx264 High 10 (yuv420p10le) mp4 tagged bt709 primaries/trc/matrix, limited range.

    Why: 10-bit sources must not be squashed to 8 bits silently, and colour tags must be carried
    to the output. Tags are WRITTEN on the encoder context before the first frame:
    ``codec_context.color_primaries / color_trc / colorspace / color_range`` (FFmpeg AVCOL_*
    ints; libx264 puts them in the VUI and mp4 in a colr box). They are READ back from
    ``stream.codec_context`` (same four names) without decoding, and from each decoded
    ``VideoFrame`` (same names). Enums: ``av.video.reformatter.ColorPrimaries``, ``ColorTrc``,
    ``ColorRange``; NOT ``Colorspace``, which is swscale's SWS_CS_* table, not AVCOL_SPC_*.
    Guarantees: pix_fmt yuv420p10le on reopen, tags 1/1/1 and range 1, 24 frames, decoded luma
    has values that are not multiples of 4 (real 10-bit content) and rgb48 values that are not
    multiples of 256.
    """
    with av.open(str(path), "w") as out:
        video = _add_video(out, pix_fmt="yuv420p10le")
        cc = video.codec_context
        cc.color_primaries = AVCOL_PRI_BT709
        cc.color_trc = AVCOL_TRC_BT709
        cc.colorspace = AVCOL_SPC_BT709
        cc.color_range = AVCOL_RANGE_MPEG
        frames = []
        for i in range(24):
            frame = _yuv420p10_frame(i)
            frame.pts = i
            frames.append(frame)
        _encode_video(out, video, frames)
    info = probe_clip(path)
    _check_valid(info, 24)
    _check(info.pix_fmt == "yuv420p10le" and info.bit_depth == 10, path, f"{info.pix_fmt}")
    tags = (info.color_primaries, info.color_trc, info.colorspace, info.color_range)
    _check(tags == (1, 1, 1, 1), path, f"colour tags {tags}")
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        luma = frame.to_ndarray()[: frame.height]
        rgb48 = frame.to_ndarray(format="rgb48le")
    _check(bool(np.any(luma % 4 != 0)), path, "luma looks like upshifted 8-bit")
    _check(bool(np.any(rgb48 % 256 != 0)), path, "rgb48 looks like 8-bit")
    return replace(info, notes="10-bit bt709 limited range")


MULTITRACK_CUES = (
    SubtitleCue(0, 300, "Hello, world"),
    SubtitleCue(350, 600, "Bonjour le monde"),
    SubtitleCue(650, 950, "Third cue: ünïcödé ✓"),
)


def _make_multitrack(path: Path, subtitle_codec: str) -> FixtureInfo:
    with av.open(str(path), "w") as out:
        video = _add_video(out)
        eng = _add_audio(out, 48000, "stereo", "eng")
        fra = _add_audio(out, 44100, "mono", "fra")
        subs = _add_subtitles(out, subtitle_codec, "eng")
        _encode_video(out, video, (_pattern_frame(i) for i in range(24)))
        _encode_tone(out, eng, 1.0, 440.0)
        _encode_tone(out, fra, 1.0, 330.0)
        _encode_subtitles(out, subs, MULTITRACK_CUES)
    info = probe_clip(path)
    _check_valid(info, 24)
    got = [(a.codec, a.sample_rate, a.channels, a.language) for a in info.audio_tracks]
    want = [("aac", 48000, 2, "eng"), ("aac", 44100, 1, "fra")]
    _check(got == want, path, f"audio tracks {got}")
    _check(info.subtitle_stream_count == 1, path, "subtitle track missing")
    cues = info.subtitle_tracks[0].cues
    _check(cues == MULTITRACK_CUES, path, f"cues {cues}")
    _check(info.subtitle_tracks[0].language == "eng", path, "subtitle language")
    return info


def make_multitrack(path: Path) -> FixtureInfo:
    """mp4: h264 + AAC 48 kHz stereo 'eng' + AAC 44.1 kHz mono 'fra' + mov_text 'eng' (3 cues).

    Why: the final mux must copy every audio and subtitle track with its language. Guarantees on
    reopen: stream order video, audio eng, audio fra, subtitle; cues equal
    :data:`MULTITRACK_CUES` (text and ms times, unicode included). The mp4 muxer adds empty gap
    packets, so ``subtitle_tracks[0].packet_count`` is 5 for 3 cues.
    """
    return replace(_make_multitrack(path, "mov_text"), notes="mp4, mov_text gap packets")


def make_multitrack_mkv(path: Path) -> FixtureInfo:
    """Matroska version of :func:`make_multitrack` with a SubRip ('subrip') subtitle track.

    On reopen PyAV names the subtitle decoder ``"srt"``; packet count equals cue count (3).
    Matroska timestamps are milliseconds (video pts 0, 42, 83, ...).
    """
    return replace(_make_multitrack(path, "subrip"), notes="mkv, subrip reported as srt")


def make_odd_size(path: Path) -> FixtureInfo:
    """321x181 h264 (libx264, ``yuv444p``, High 4:4:4 Predictive) mp4, 4 frames.

    Why: odd sizes break naive 4:2:0 handling and tiling. libx264 rejects odd sizes with
    yuv420p (``ExternalError`` in ``avcodec_open2``); yuv444p works (ffv1 in mkv accepts even
    yuv420p at odd sizes). ``codec_context.coded_width/height`` report 336x192 (macroblock
    padding); ``width``/``height`` and decoded frames are 321x181. Only 4 frames because each is
    ~19x the pixels of the 64x48 clips.
    """
    with av.open(str(path), "w") as out:
        video = _add_video(out, width=321, height=181, pix_fmt="yuv444p")
        _encode_video(out, video, (_pattern_frame(i, 321, 181) for i in range(4)))
    info = probe_clip(path)
    _check_valid(info, 4)
    _check((info.width, info.height) == (321, 181), path, f"{info.width}x{info.height}")
    _check(info.pix_fmt == "yuv444p", path, f"pix_fmt {info.pix_fmt}")
    return replace(info, notes="odd size via yuv444p")


def make_no_audio(path: Path) -> FixtureInfo:
    """Plain h264 yuv420p mp4, 24 frames at 24 fps, video only (no audio, no subtitles)."""
    with av.open(str(path), "w") as out:
        video = _add_video(out)
        _encode_video(out, video, (_pattern_frame(i) for i in range(24)))
    info = probe_clip(path)
    _check_valid(info, 24)
    _check(info.audio_stream_count == 0 and info.subtitle_stream_count == 0, path, "extra")
    return replace(info, notes="video only")


def _make_cfr_with_audio(path: Path, *, faststart: bool, frames: int = 24) -> None:
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        video = _add_video(out)
        audio = _add_audio(out, 48000, "mono")
        _encode_video(out, video, (_pattern_frame(i) for i in range(frames)))
        _encode_tone(out, audio, frames / 24)


def make_truncated(path: Path, fraction: float = 0.6, *, faststart: bool = True) -> FixtureInfo:
    """A 24-frame h264+AAC mp4 cut to ``fraction`` of its bytes, like an interrupted download.

    With ``faststart=True`` (default; web-optimized mp4, moov before mdat) the file still opens
    and the header still declares 24 frames (``declared_frame_count``), but fewer frames decode
    (14 with the defaults). Usually the demuxer just stops at EOF with NO error, so comparing
    decoded frames with the declared count is the only signal; if the cut falls inside a packet
    the decoder may instead raise ``InvalidDataError`` from ``avcodec_send_packet``
    (``fully_decodable`` False). With ``faststart=False`` (moov at the end, FFmpeg's default) the
    moov is lost and ``av.open`` itself raises ``InvalidDataError``. Guarantees:
    ``source_frame_count`` 24 and either not openable, or ``frame_count`` < 24, or not
    ``fully_decodable``; ``frame_count``/``pts`` describe the frames that do decode.
    """
    full = path.with_name(path.stem + ".intact" + path.suffix)
    _make_cfr_with_audio(full, faststart=faststart)
    intact = probe_clip(full)
    _check_valid(intact, 24)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * fraction)])
    info = probe_clip(path)
    broken = not info.openable or not info.fully_decodable or info.frame_count < 24
    _check(broken, path, "truncation left a fully decodable file")
    layout = "moov first (faststart)" if faststart else "moov at end"
    return replace(
        info,
        source_frame_count=24,
        notes=f"{layout}, cut to {fraction:.0%} of {len(data)} bytes",
    )


# --------------------------------------------------------------------------------------------
# Streamed containers: live Matroska/WebM (unknown sizes) and fragmented mp4

#: The EBML size that means "unknown" in its 8-byte form (live Matroska Segments and Clusters).
EBML_UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"
MATROSKA_SEGMENT_ID = 0x18538067
MATROSKA_CLUSTER_ID = 0x1F43B675


class _PipeSink:
    """A write-only file object (no ``seek``/``tell``): PyAV then muxes as to a pipe, which is
    how FFmpeg writes a live stream (it cannot seek back to fill in sizes)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)


def _ebml_vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int]:
    first = data[pos]
    length = 9 - first.bit_length()
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * length)) - 1:
        value = -1
    return value, length


@dataclass(frozen=True)
class EbmlElement:
    """One element of a Matroska file: ``offset`` of its ID, ``header`` bytes (ID + size),
    ``size`` of its data (-1: unknown)."""

    offset: int
    element_id: int
    header: int
    size: int


def ebml_children(data: bytes, start: int, end: int) -> list[EbmlElement]:
    """The elements from ``start`` to ``end`` at one level (stops at an unknown size)."""
    out, pos = [], start
    while pos < end:
        element_id, id_len = _ebml_vint(data, pos, keep_marker=True)
        size, size_len = _ebml_vint(data, pos + id_len, keep_marker=False)
        out.append(EbmlElement(pos, element_id, id_len + size_len, size))
        if size < 0:
            break
        pos += id_len + size_len + size
    return out


def matroska_segment(data: bytes) -> EbmlElement:
    """The Segment element of a Matroska file (after its EBML header)."""
    ebml = ebml_children(data, 0, len(data))[0]
    segment = ebml_children(data, ebml.offset + ebml.header + ebml.size, len(data))[0]
    if segment.element_id != MATROSKA_SEGMENT_ID:
        raise FixtureError(f"element after the EBML header is {segment.element_id:#x}")
    return segment


def live_segment_children(data: bytes) -> list[EbmlElement]:
    """Children of an unknown-size Segment whose Clusters have known sizes."""
    segment = matroska_segment(data)
    return ebml_children(data, segment.offset + segment.header, len(data))


def _mux_to_pipe(fmt: str, video_codec: str, audio_codec: str, frames: int) -> bytes:
    sink = _PipeSink()
    with av.open(sink, "w", format=fmt) as out:
        video = _add_video(out, codec=video_codec)
        audio = out.add_stream(audio_codec, rate=48000, layout="mono")
        if not isinstance(audio, AudioStream):
            raise FixtureError(f"{audio_codec} is not an audio codec")
        _encode_video(out, video, (_pattern_frame(i) for i in range(frames)))
        _encode_tone(out, audio, frames / 24)
    return bytes(sink.data)


def _check_live_layout(data: bytes, path: Path) -> list[EbmlElement]:
    segment = matroska_segment(data)
    header = data[segment.offset : segment.offset + segment.header]
    _check(header[4:] == EBML_UNKNOWN_SIZE, path, f"Segment size bytes {header[4:].hex()}")
    children = live_segment_children(data)
    ids = [c.element_id for c in children]
    _check(ids.count(MATROSKA_CLUSTER_ID) >= 3, path, f"segment children {ids}")
    _check(0x1C53BB6B not in ids, path, "a live file has no Cues")
    return children


def make_live_mkv(path: Path, frames: int = 60) -> FixtureInfo:
    """h264 + AAC Matroska muxed as a live stream: the Segment has the reserved 'unknown' size.

    PyAV/FFmpeg writes the Segment size as :data:`EBML_UNKNOWN_SIZE` when the output cannot
    seek (here a write-only file object; ``options={"live": "1"}`` gives the same bytes), and
    then writes no Cues; each Cluster still has its real size because FFmpeg buffers a cluster
    before writing it. 60 frames at 24 fps, GOP 12: 5 Clusters of a few KB. Why: FFmpeg plays a
    cut file like this up to its last whole Cluster with no error and no declared frame count
    (25 of 60 frames for a cut at 60%), so only the Cluster sizes reveal the cut.
    """
    data = _mux_to_pipe("matroska", "libx264", "aac", frames)
    _check_live_layout(data, path)
    path.write_bytes(data)
    info = probe_clip(path)
    _check_valid(info, frames)
    return replace(info, notes="live mkv: unknown-size Segment, sized Clusters, no Cues")


def make_live_webm(path: Path, frames: int = 60) -> FixtureInfo:
    """VP8 + Opus WebM laid out like a browser's MediaRecorder writes it: the Segment AND every
    Cluster have the unknown size, so a Cluster ends only where the next one starts.

    FFmpeg always writes Cluster sizes, so the file is muxed to a pipe (unknown Segment size)
    and every Cluster's size field is then rewritten to :data:`EBML_UNKNOWN_SIZE` (the Cluster
    data is unchanged; no Cues or SeekHead entry points past the first Cluster, so no offset
    moves that matters). FFmpeg reads the result whole, every frame.
    """
    data = _mux_to_pipe("webm", "libvpx", "libopus", frames)
    children = _check_live_layout(data, path)
    first = next(c for c in children if c.element_id == MATROSKA_CLUSTER_ID)
    out = bytearray(data[: first.offset])
    for child in children[children.index(first) :]:
        _check(child.element_id == MATROSKA_CLUSTER_ID, path, f"{child} after the Clusters")
        body = data[child.offset + child.header : child.offset + child.header + child.size]
        out += data[child.offset : child.offset + 4] + EBML_UNKNOWN_SIZE + body
    path.write_bytes(bytes(out))
    info = probe_clip(path)
    _check_valid(info, frames)
    return replace(info, notes="MediaRecorder-like webm: unknown-size Segment and Clusters")


@dataclass(frozen=True)
class Mp4Box:
    """One top-level ISO BMFF box: ``offset``, four-character ``kind`` and total ``size``."""

    offset: int
    kind: str
    size: int


def mp4_boxes(data: bytes) -> list[Mp4Box]:
    """The top-level boxes of an mp4 (32-bit sizes only, which is what these fixtures have)."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        boxes.append(Mp4Box(pos, data[pos + 4 : pos + 8].decode("latin-1"), size))
        pos += size
    return boxes


def make_fragmented_mp4(path: Path, frames: int = 60) -> FixtureInfo:
    """h264 + AAC fragmented mp4 (``movflags=frag_keyframe+empty_moov``, as streaming and
    DASH/CMAF writers make): ftyp, an empty moov, then one moof/mdat pair per keyframe (GOP 12
    at 24 fps: 5 or more fragments) and an mfra index at the end. The moov declares no samples,
    so a cut file does not look short to the demuxer; only the box sizes reveal the cut.
    """
    with av.open(str(path), "w", options={"movflags": "frag_keyframe+empty_moov"}) as out:
        video = _add_video(out)
        audio = _add_audio(out, 48000, "mono")
        _encode_video(out, video, (_pattern_frame(i) for i in range(frames)))
        _encode_tone(out, audio, frames / 24)
    kinds = [box.kind for box in mp4_boxes(path.read_bytes())]
    _check(kinds[:2] == ["ftyp", "moov"], path, f"boxes {kinds}")
    _check(kinds.count("moof") >= 5, path, f"boxes {kinds}")
    _check(kinds.count("moof") == kinds.count("mdat"), path, f"boxes {kinds}")
    info = probe_clip(path)
    _check_valid(info, frames)
    return replace(info, notes=f"fragmented mp4, {kinds.count('moof')} fragments")


def make_zero_byte(path: Path) -> FixtureInfo:
    """An empty file named .mp4; ``av.open`` raises ``av.InvalidDataError``."""
    path.write_bytes(b"")
    info = probe_clip(path)
    _check(not info.openable, path, "zero-byte file opened")
    return replace(info, notes="zero bytes")


def make_not_media(path: Path) -> FixtureInfo:
    """A text file named .mp4; ``av.open`` raises ``av.InvalidDataError`` (a ValueError)."""
    path.write_text("This is not a video.\nJust a text file with an .mp4 name.\n")
    info = probe_clip(path)
    _check(not info.openable, path, "text file opened as media")
    return replace(info, notes="text file")


# --------------------------------------------------------------------------------------------
# Still images


def _write_image(path: Path, frame: VideoFrame, codec: str, pix_fmt: str) -> None:
    """One frame through the image2 muxer (what ``VideoFrame.save`` does, but with any pix_fmt:
    ``save`` forces rgb24 for png)."""
    with av.open(str(path), "w", format="image2", options={"update": "1"}) as out:
        stream = out.add_stream(codec)
        if not isinstance(stream, VideoStream):
            raise FixtureError(f"{codec} is not a video codec")
        stream.width = frame.width
        stream.height = frame.height
        stream.pix_fmt = pix_fmt
        out.mux(stream.encode(frame.reformat(format=pix_fmt)))
        out.mux(stream.encode(None))


def _decode_image(path: Path) -> VideoFrame:
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


def make_image_set(directory: Path, width: int = 40, height: int = 30) -> ImageSetInfo:
    """Small stills for the image path: PNG RGB / gray / RGBA / 16-bit RGB, JPEG, WebP (+alpha).

    Why: image inputs come in many modes and the 16-bit and alpha cases are easy to flatten by
    accident. Everything is written with PyAV (png, mjpeg, libwebp encoders) and reopened with
    PyAV. Guarantees: the PNGs round-trip exactly (lossless), the RGBA alpha has several levels
    (0, 100, 255), the 16-bit PNG decodes as rgb48be with values that are not 8-bit expanded
    (not multiples of 257).
    """
    directory.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = pattern_rgb(3, width, height)
    gray = ((xx * 255) // max(width - 1, 1)).astype(np.uint8)
    alpha = np.where((xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (height / 2.5) ** 2, 255, 0)
    alpha[:, : width // 8] = 100
    rgba = np.dstack([rgb, alpha.astype(np.uint8)])
    rgb16 = np.stack([xx * 1601 + 7, yy * 2113 + 3, (xx + yy) * 900 + 1], axis=-1).astype(np.uint16)

    specs: list[tuple[str, str, np.ndarray, str, str, str, str]] = [
        # key, file name, array, array format, codec, stored pix_fmt, mode
        ("rgb", "rgb.png", rgb, "rgb24", "png", "rgb24", "RGB"),
        ("gray", "gray.png", gray, "gray", "png", "gray", "L"),
        ("rgba", "rgba.png", rgba, "rgba", "png", "rgba", "RGBA"),
        ("rgb16", "rgb16.png", rgb16, "rgb48le", "png", "rgb48be", "RGB48"),
        ("jpg", "photo.jpg", rgb, "rgb24", "mjpeg", "yuvj420p", "RGB"),
        ("webp", "photo.webp", rgb, "rgb24", "libwebp", "yuv420p", "RGB"),
        ("webp_alpha", "alpha.webp", rgba, "rgba", "libwebp", "yuva420p", "RGBA"),
    ]
    images: dict[str, ImageInfo] = {}
    for key, name, array, array_fmt, codec, pix_fmt, mode in specs:
        path = directory / name
        _write_image(path, VideoFrame.from_ndarray(array, format=array_fmt), codec, pix_fmt)
        frame = _decode_image(path)
        _check(frame.format.name == pix_fmt, path, f"decoded as {frame.format.name}")
        _check((frame.width, frame.height) == (width, height), path, "size")
        if codec == "png":
            back = frame.to_ndarray(format=array_fmt)
            _check(np.array_equal(back, array), path, "png did not round-trip exactly")
        images[key] = ImageInfo(
            path=path,
            mode=mode,
            width=width,
            height=height,
            pix_fmt=pix_fmt,
            bit_depth=_bit_depth(pix_fmt),
            has_alpha=mode.endswith("A"),
        )
    back16 = _decode_image(images["rgb16"].path).to_ndarray(format="rgb48le")
    _check(bool(np.any(back16 % 257 != 0)), images["rgb16"].path, "16-bit PNG is 8-bit data")
    return ImageSetInfo(directory=directory, images=images)


# --------------------------------------------------------------------------------------------
# Added for the probe and end-to-end video tests: chapters, and a file without video


#: Chapters written by :func:`make_chapters`: (start ms, end ms, title).
CHAPTERS = ((0, 500, "Opening"), (500, 1000, "Ending"))


def make_chapters(path: Path) -> FixtureInfo:
    """h264 + AAC mono 'eng' mp4 (24 frames, 1 s) with the two chapters of :data:`CHAPTERS`.

    Why: chapters must survive probing and assembly. Written with ``container.set_chapters``
    before the first mux. The mp4 muxer stores chapters in a QuickTime text track, which the
    demuxer exposes on reopen as an extra ``data`` stream (codec ``bin_data``) with
    ``discard == Discard.all`` and no packets; ``container.chapters()`` returns the chapters.
    """
    with av.open(str(path), "w") as out:
        video = _add_video(out)
        audio = _add_audio(out, 48000, "mono", "eng")
        out.set_chapters(
            [
                {
                    "id": i + 1,
                    "start": start,
                    "end": end,
                    "time_base": Fraction(1, 1000),
                    "metadata": {"title": title},
                }
                for i, (start, end, title) in enumerate(CHAPTERS)
            ]
        )
        _encode_video(out, video, (_pattern_frame(i) for i in range(24)))
        _encode_tone(out, audio, 1.0)
    info = probe_clip(path)
    _check_valid(info, 24)
    with av.open(str(path)) as container:
        got = tuple(
            (
                round(ch["start"] * ch["time_base"] * 1000),
                round(ch["end"] * ch["time_base"] * 1000),
                ch["metadata"].get("title", ""),
            )
            for ch in container.chapters()
        )
    _check(got == CHAPTERS, path, f"chapters {got}")
    return replace(info, notes="two chapters (mp4 chapter text track)")


def make_audio_only(path: Path) -> FixtureInfo:
    """An AAC-only mp4 (.m4a): it opens as media but holds no video stream."""
    with av.open(str(path), "w", format="mp4") as out:
        audio = _add_audio(out, 48000, "mono", "eng")
        _encode_tone(out, audio, 0.5)
    with av.open(str(path)) as container:
        kinds = [s.type for s in container.streams]
        container_format = container.format.name
    _check(kinds == ["audio"], path, f"streams {kinds}")
    return FixtureInfo(
        path=path,
        width=0,
        height=0,
        frame_count=0,
        pts=(),
        time_base=None,
        pix_fmt=None,
        audio_stream_count=1,
        subtitle_stream_count=0,
        rotation=0,
        container_format=container_format,
        size_bytes=path.stat().st_size,
        notes="audio only",
    )
