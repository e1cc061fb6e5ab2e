"""Probe a media file: everything planning, decoding, encoding and assembly need to know.

The probe demuxes every video packet once (cheap: no decoding) because containers lie or stay
silent about frame counts (webm has no nb_frames, VFR has no single rate), and exact per-frame
presentation timestamps are what lets us cut batches at exact frames and put every output frame
back at its source time. Before demuxing it compares the sizes the container's top-level
elements declare with the file's size (``vsrflow.media.structure``), and after it decodes the
last group of pictures, so a truncated download is rejected, as truncated, before any GPU time
is spent on it.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
from av.stream import Discard

from vsrflow.errors import (
    CorruptMediaError,
    EmptyFileError,
    FrameTooLargeError,
    NotMediaError,
    NoVideoStreamError,
)
from vsrflow.media.alpha import (
    BLOCK_ADDITIONAL,
    SIDE_CHANNEL_DECODERS,
    AlphaOutcome,
    pix_fmt_has_alpha,
    side_channel_decoder,
)
from vsrflow.media.carry import (
    CarryPlan,
    HdrInfo,
    chroma_of,
    display_aspect,
    hdr_transfer,
    is_timecode_track,
    read_frame_side_data,
    timecode_of,
)
from vsrflow.media.colour import ColourInfo, colour_of
from vsrflow.media.decode import count_decodable, read_display_matrix
from vsrflow.media.deinterlace import Deinterlace
from vsrflow.media.interlace import FieldAnalysis, analyse_fields
from vsrflow.media.rotation import DisplayMatrix, rotation_of
from vsrflow.media.structure import check_complete, file_reader, http_reader
from vsrflow.media.timestamps import Timestamps, int64_array

#: Default ceiling on source frame size (width * height): 8K. Protects workers from absurd or
#: malicious headers that would allocate gigabytes per frame.
DEFAULT_MAX_PIXELS = 7680 * 4320
#: Top-level boxes checked over HTTP (one range request each; a fragmented mp4 has thousands).
REMOTE_MAX_BOXES = 64


@dataclass(frozen=True)
class StreamInfo:
    """A non-video stream (audio, subtitle, data) that assembly copies packet for packet."""

    index: int
    kind: str
    codec: str
    language: str | None
    packet_count: int
    detail: str


@dataclass(frozen=True)
class Chapter:
    """One chapter, in seconds, kept through assembly."""

    start: float
    end: float
    title: str


@dataclass(frozen=True)
class VideoInfo:
    """The video stream, with per-frame presentation timestamps in presentation order."""

    index: int
    codec: str
    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    time_base: Fraction
    average_rate: Fraction | None
    #: Every frame's pts (int64, 8 bytes a frame: see :mod:`vsrflow.media.timestamps`); a
    #: tuple or list given here is converted.
    pts: Timestamps
    #: Keyframes' pts (every frame's in an all-intra master: ProRes, FFV1, DNxHR), likewise.
    keyframe_pts: Timestamps
    colour: ColourInfo
    display_matrix: DisplayMatrix | None
    sample_aspect_ratio: Fraction | None
    #: The stream carries an alpha plane (alpha pixel format, or a VP8/VP9 side channel).
    alpha: bool = False
    #: The decoder that returns the alpha plane when the default one does not (libvpx-vp9
    #: for a VP9 side channel); None: the default decoder (or no decoder here can).
    alpha_decoder: str | None = None
    #: This FFmpeg can decode the alpha plane (False: a side channel without libvpx).
    alpha_readable: bool = True
    #: PQ or HLG transfer with its static metadata (None: not an HDR source).
    hdr: HdrInfo | None = None
    #: A/53 closed captions ride on the video frames (found in the first frames).
    captions: bool = False
    #: Start timecode ("01:00:00:00"; ";" before frames: drop-frame), None when absent.
    timecode: str | None = None
    #: Interlaced, telecined or progressive, as the pixels show it (``idet`` on a sample of
    #: frames; the flags are only reported): :mod:`vsrflow.media.interlace`.
    fields: FieldAnalysis | None = None

    def __post_init__(self) -> None:
        for name in ("pts", "keyframe_pts"):
            if not isinstance(getattr(self, name), Timestamps):
                object.__setattr__(self, name, Timestamps(getattr(self, name)))

    @property
    def chroma(self) -> str:
        """Chroma subsampling of the coded pixels ("4:2:0", "4:2:2", "4:4:4"...)."""
        return chroma_of(self.pix_fmt)

    @property
    def display_aspect_ratio(self) -> Fraction:
        """What players show: width/height times the sample aspect ratio."""
        return display_aspect(self.width, self.height, self.sample_aspect_ratio)

    @property
    def rotation(self) -> int:
        """Counter-clockwise display rotation in degrees, (-180, 180]."""
        return rotation_of(self.display_matrix)

    @property
    def frame_count(self) -> int:
        return len(self.pts)

    @property
    def is_vfr(self) -> bool:
        """True when frame durations differ by more than one tick (a real VFR source)."""
        steps = {b - a for a, b in zip(self.pts, self.pts[1:], strict=False)}
        return len(steps) > 1 and max(steps) - min(steps) > 1

    def pts_seconds(self) -> list[float]:
        return [float(p * self.time_base) for p in self.pts]

    def params(self, path: str) -> VideoParams:
        """The slim view a batch worker needs (no per-frame pts: those stay with the plan)."""
        return VideoParams(
            path=path,
            index=self.index,
            width=self.width,
            height=self.height,
            bit_depth=self.bit_depth,
            time_base=self.time_base,
            average_rate=self.average_rate,
            colour=self.colour.resolved(self.height),
            display_matrix=self.display_matrix,
            alpha_decoder=self.alpha_decoder,
        )


@dataclass(frozen=True)
class VideoParams:
    """What decoding and encoding one batch need to know about the source video stream.

    ``colour`` is already resolved (unspecified tags filled from the source height), so
    decode and encode use one matrix and range. ``alpha`` is what the job does with the
    source's alpha plane, decided at planning (:func:`vsrflow.media.alpha.alpha_outcome`):
    "" (none, or not asked for), "keep" (upscaled by ``alpha_upscale`` and encoded),
    "flatten" (composited over black before upscaling) or "drop" (ignored).
    """

    path: str
    index: int
    width: int
    height: int
    bit_depth: int
    time_base: Fraction
    average_rate: Fraction | None
    colour: ColourInfo
    display_matrix: DisplayMatrix | None
    alpha: AlphaOutcome = ""
    #: "model" or "bicubic" (the settings' ``alpha_mode``), for ``alpha == "keep"``.
    alpha_upscale: str = "model"
    #: Decoder returning the alpha plane when the default one does not (libvpx-vp9).
    alpha_decoder: str | None = None
    #: What the encoder writes besides the pixels (SAR, HDR metadata, chroma, captions),
    #: decided at planning (:func:`vsrflow.media.carry.plan_carry`).
    carry: CarryPlan = field(default_factory=CarryPlan)
    #: Deinterlacing or inverse telecine before the model, decided at planning
    #: (:func:`vsrflow.media.deinterlace.choose`); None: frames go in as decoded.
    deinterlace: Deinterlace | None = None

    @property
    def decodes_alpha(self) -> bool:
        """The batch needs the alpha plane (kept or flattened)."""
        return self.alpha in ("keep", "flatten")

    @property
    def output_time_base(self) -> Fraction:
        """Time base of the chunks: the source's, or finer for deinterlaced outputs."""
        return self.deinterlace.time_base if self.deinterlace else self.time_base

    @property
    def output_rate(self) -> Fraction | None:
        """Nominal output frame rate (doubled at field rate, 4/5 after inverse telecine)."""
        return self.deinterlace.frame_rate if self.deinterlace else self.average_rate


@dataclass(frozen=True)
class MediaInfo:
    """What a probe learned about one source file."""

    path: str
    size_bytes: int
    container: str
    duration_s: float
    video: VideoInfo
    streams: tuple[StreamInfo, ...] = ()
    chapters: tuple[Chapter, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A small JSON-able view for logs, artifacts and the CLI (not the per-frame pts)."""
        v = self.video
        return {
            "path": self.path,
            "container": self.container,
            "size_bytes": self.size_bytes,
            "duration_s": round(self.duration_s, 3),
            "video": {
                "codec": v.codec,
                "width": v.width,
                "height": v.height,
                "pix_fmt": v.pix_fmt,
                "bit_depth": v.bit_depth,
                "frames": v.frame_count,
                "keyframes": len(v.keyframe_pts),
                "time_base": str(v.time_base),
                "average_rate": str(v.average_rate) if v.average_rate else None,
                "vfr": v.is_vfr,
                "rotation": v.rotation,
                "colour": v.colour.names(),
                "alpha": v.alpha,
                "sample_aspect_ratio": _ratio(v.sample_aspect_ratio),
                "display_aspect_ratio": _ratio(v.display_aspect_ratio),
                "chroma": v.chroma,
                "hdr": v.hdr.names() if v.hdr else None,
                "captions": "A/53" if v.captions else None,
                "timecode": v.timecode,
                "interlace": v.fields.summary() if v.fields else None,
            },
            "streams": [
                {
                    "index": s.index,
                    "kind": s.kind,
                    "codec": s.codec,
                    "language": s.language,
                    "packets": s.packet_count,
                    "detail": s.detail,
                }
                for s in self.streams
            ],
            "chapters": [{"start": c.start, "end": c.end, "title": c.title} for c in self.chapters],
        }


def _ratio(value: Fraction | None) -> str | None:
    return f"{value.numerator}:{value.denominator}" if value else None


def bit_depth_of(pix_fmt: str) -> int:
    """Bits per component of a pixel format (8 for yuv420p, 10 for yuv420p10le...)."""
    return max(c.bits for c in av.VideoFormat(pix_fmt).components)


def is_url(source: str | os.PathLike[str]) -> bool:
    """True for anything FFmpeg opens over a network protocol (http(s) presigned URLs...)."""
    return "://" in str(source)


def _open(source: str, label: str) -> av.container.InputContainer:
    if not is_url(source):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {label}")
        if path.stat().st_size == 0:
            raise EmptyFileError(f"{label} is empty (0 bytes)")
    try:
        return av.open(source, mode="r")
    except av.error.InvalidDataError as exc:
        raise NotMediaError(
            f"{label} is not a media file FFmpeg can read, or its header is damaged "
            f"(a truncated mp4 whose index is missing looks like this): {exc.strerror}"
        ) from exc
    except av.error.EOFError as exc:
        raise CorruptMediaError(
            f"{label} ends inside its header: the file is truncated ({exc.strerror})"
        ) from exc
    except av.error.FFmpegError as exc:
        raise CorruptMediaError(f"{label} cannot be opened: {exc.strerror}") from exc


def _stream_detail(stream: av.stream.Stream) -> str:
    cc = stream.codec_context
    if stream.type == "audio" and cc is not None:
        return f"{cc.sample_rate} Hz, {cc.channels} ch"
    return ""


def sample_aspect_ratio_of(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The SAR a player uses: the container's (mov ``pasp``, Matroska display size) before the
    bitstream's (FFmpeg's ``av_guess_sample_aspect_ratio``). A ProRes stream has none in its
    bitstream: its codec context said "square" for an 8:9 mov. None when unknown or 0."""
    sar = stream.sample_aspect_ratio
    return Fraction(sar) if sar else None


def probe(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    label: str | None = None,
    size_bytes: int | None = None,
) -> MediaInfo:
    """Read a source file and describe it exactly; raise a specific error if it is unusable.

    ``path`` may be a URL (e.g. a presigned S3 GET: FFmpeg reads it with range requests); then
    ``label`` (e.g. the ``s3://`` URI) names it in messages and becomes ``MediaInfo.path``, so
    the signed URL never reaches a log, and ``size_bytes`` (from a HEAD) enables the truncation
    check.

    Errors: ``FileNotFoundError``, ``EmptyFileError``, ``NotMediaError``, ``NoVideoStreamError``,
    ``FrameTooLargeError`` (width*height > ``max_pixels``), ``CorruptMediaError`` (truncated or
    undecodable data).
    """
    source = str(path)
    path = label or source
    if size_bytes is not None:
        size = size_bytes
    elif not is_url(source) and Path(source).exists():
        size = Path(source).stat().st_size
    else:
        size = 0
    if size:
        # Before demuxing: FFmpeg opens many cut files without complaint (see structure.py).
        if is_url(source):
            check_complete(http_reader(source), size, path, max_boxes=REMOTE_MAX_BOXES)
        else:
            check_complete(file_reader(source), size, path)
    with _open(source, path) as container:
        if not container.streams.video:
            raise NoVideoStreamError(f"{path} has no video stream")
        vstream = container.streams.video[0]
        cc = vstream.codec_context
        if cc is None:
            raise CorruptMediaError(
                f"{path}: the video stream has no codec parameters; the file is truncated or "
                "damaged"
            )
        width, height = cc.width, cc.height
        if width <= 0 or height <= 0:
            raise CorruptMediaError(f"{path}: video stream reports no frame size")
        if width * height > max_pixels:
            raise FrameTooLargeError(
                f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of "
                f"{max_pixels} (raise max_pixels to allow it)"
            )
        # Streams the demuxer discards itself (the text track an mp4 keeps its chapters in)
        # hold nothing to copy; their content is in ``chapters`` below.
        # A tmcd track is the video's timecode (``VideoInfo.timecode``), written again from it.
        others = [
            s
            for s in container.streams
            if s.index != vstream.index and s.discard != Discard.all and not is_timecode_track(s)
        ]
        packet_counts = dict.fromkeys((s.index for s in others), 0)
        demuxed_pts = int64_array()  # 8 bytes a frame; a list of ints holds ~36
        keyframes = int64_array()
        data_end = 0
        # VP8/VP9 alpha travels as BlockAdditional side data (see vsrflow.media.alpha).
        side_channel = cc.name in SIDE_CHANNEL_DECODERS
        side_alpha = False
        try:
            for packet in container.demux():
                if packet.size == 0:
                    continue
                data_end = max(data_end, (packet.pos or 0) + packet.size)
                if packet.stream.index != vstream.index:
                    if packet.stream.index in packet_counts:
                        packet_counts[packet.stream.index] += 1
                    continue
                if packet.is_discard:
                    continue
                if packet.pts is None:
                    raise CorruptMediaError(
                        f"{path}: video packets carry no timestamps (a raw elementary stream?); "
                        "remux it into mp4/mkv first"
                    )
                demuxed_pts.append(packet.pts)
                if side_channel and not side_alpha:
                    side_alpha = packet.has_sidedata(BLOCK_ADDITIONAL)
                if packet.is_keyframe:
                    keyframes.append(packet.pts)
        except av.error.FFmpegError as exc:
            raise CorruptMediaError(
                f"{path}: demuxing failed after {len(demuxed_pts)} frames: {exc.strerror}"
            ) from exc
        if not demuxed_pts:
            raise CorruptMediaError(f"{path}: the video stream holds no frames")
        if size and data_end > size:
            raise CorruptMediaError(
                f"{path} is truncated: packets reference byte {data_end} but the file has {size}"
            )
        declared = vstream.frames
        if declared and len(demuxed_pts) < declared:
            raise CorruptMediaError(
                f"{path} is truncated: the container declares {declared} video frames, "
                f"only {len(demuxed_pts)} are present"
            )
        pts = Timestamps.sorted_from(demuxed_pts)
        keyframe_pts = Timestamps.sorted_from(keyframes) if keyframes else pts[:1]
        pix_fmt = cc.pix_fmt or "yuv420p"
        flagged_order = getattr(cc, "field_order", None)  # reported only: flags lie
        alpha_decoder = side_channel_decoder(cc.name) if side_alpha else None
        colour = colour_of(cc, height)
        timecode = timecode_of(
            vstream.metadata,
            container.metadata,
            [s.metadata for s in container.streams if s.type == "data"],
        )
        index, codec = vstream.index, cc.name
        time_base = Fraction(vstream.time_base)
        average_rate = Fraction(vstream.average_rate) if vstream.average_rate else None
        sample_aspect_ratio = sample_aspect_ratio_of(vstream)
        streams = tuple(
            StreamInfo(
                index=s.index,
                kind=s.type,
                codec=s.codec_context.name if s.codec_context else "unknown",
                language=s.language,
                packet_count=packet_counts[s.index],
                detail=_stream_detail(s),
            )
            for s in others
        )
        chapters = tuple(
            Chapter(
                start=float(ch["start"] * ch["time_base"]),
                end=float(ch["end"] * ch["time_base"]),
                title=(ch.get("metadata") or {}).get("title", ""),
            )
            for ch in container.chapters()
        )
        duration = (
            float(container.duration / av.time_base)
            if container.duration
            else float((pts[-1] - pts[0]) * time_base)
        )
        container_name = container.format.name
        metadata = dict(container.metadata)
    # Read with this container closed: each open of a long mp4 holds its whole sample index
    # (~90 bytes a frame in FFmpeg), and two at once doubled the flow process's peak.
    display_matrix = read_display_matrix(source, index)
    side = read_frame_side_data(source, index)
    transfer = hdr_transfer(colour.transfer)
    video = VideoInfo(
        index=index,
        codec=codec,
        width=width,
        height=height,
        pix_fmt=pix_fmt,
        bit_depth=bit_depth_of(pix_fmt),
        time_base=time_base,
        average_rate=average_rate,
        sample_aspect_ratio=sample_aspect_ratio,
        pts=pts,
        keyframe_pts=keyframe_pts,
        colour=colour,
        display_matrix=display_matrix,
        alpha=side_alpha or pix_fmt_has_alpha(pix_fmt),
        alpha_decoder=alpha_decoder,
        alpha_readable=not side_alpha or alpha_decoder is not None,
        hdr=HdrInfo(transfer, side.mastering, side.light) if transfer else None,
        captions=side.caption_frames > 0,
        timecode=timecode,
    )
    info = MediaInfo(
        path=str(path),
        size_bytes=size,
        container=container_name,
        duration_s=duration,
        video=video,
        streams=streams,
        chapters=chapters,
        metadata=metadata,
    )
    _check_tail_decodes(info, source)
    return _with_fields(info, source, flagged_order)


def _with_fields(info: MediaInfo, source: str, flagged_order: int | None) -> MediaInfo:
    """``info`` with the pixel analysis of its fields (after the tail check: only a source
    that decodes is analysed)."""
    video = info.video
    fields = analyse_fields(source, video.index, video.pts, flagged_order)
    return dataclasses.replace(info, video=dataclasses.replace(video, fields=fields))


def _check_tail_decodes(info: MediaInfo, source: str) -> None:
    """Decode the last group of pictures: a file cut mid-GOP fails here, not hours later."""
    video = info.video
    last_key = video.keyframe_pts[-1]
    expected = len(video.pts) - bisect.bisect_left(video.pts, last_key)
    got = count_decodable(source, video.index, last_key)
    if got < expected:
        raise CorruptMediaError(
            f"{info.path}: only {got} of the last {expected} frames decode; the file is "
            "truncated or corrupt"
        )
