"""Decode exactly one frame range of a video stream to RGB arrays with their source pts.

Why not stream-copy segments: encoders put keyframes far apart (libx264 gave one keyframe in a
10 s clip), so frame-exact batches need "seek to the keyframe before the range, decode forward,
drop frames before the start". Frames are identified by their presentation timestamp, never by
a nominal frame rate, so VFR sources keep every frame at its own time.

With ``alpha=True`` each frame also brings its alpha plane. A VP8/VP9 alpha side channel is
only returned by the libvpx decoders, so ``decoder`` names the one to use instead of the
stream's default (see ``vsrflow.media.alpha``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.error
import numpy as np

from vsrflow.errors import CorruptMediaError
from vsrflow.media.colour import ColourInfo
from vsrflow.media.rotation import DisplayMatrix, display_matrix_of


@dataclass(frozen=True)
class DecodedFrame:
    """One RGB frame (H, W, 3; uint8 for 8-bit sources, uint16 above) and its source pts;
    ``alpha`` (H, W) of the same dtype when asked for (fully opaque where a frame has none)."""

    pts: int
    rgb: np.ndarray
    alpha: np.ndarray | None = None
    #: A tiny copy of the decoded frame holding its properties and side data (A/53
    #: captions), when asked for: the encoder builds the output frame from it.
    carrier: av.VideoFrame | None = None


#: Size of a carrier frame: only its properties matter, its pixels are overwritten.
CARRIER_SIZE = 16


def side_data_carrier(frame: av.VideoFrame) -> av.VideoFrame:
    """A 16x16 copy of ``frame`` with its properties and side data (``reformat`` copies them)."""
    return frame.reformat(width=CARRIER_SIZE, height=CARRIER_SIZE, format="yuv420p")


def rgb_format_for(bit_depth: int) -> str:
    """8-bit sources decode to rgb24; deeper ones to rgb48 so 10-bit detail is not clipped."""
    return "rgb24" if bit_depth <= 8 else "rgb48le"


def rgba_format_for(bit_depth: int) -> str:
    """The same with an alpha plane: rgba (8-bit) or rgba64le."""
    return "rgba" if bit_depth <= 8 else "rgba64le"


def _seek_before(
    container: av.container.InputContainer, stream: av.video.VideoStream, target_pts: int
) -> None:
    container.seek(target_pts, stream=stream, backward=True, any_frame=False)


def _decoder(
    stream: av.video.VideoStream, decoder: str | None
) -> av.video.codeccontext.VideoCodecContext:
    """The stream's own decoder, or a fresh ``decoder`` context (libvpx for alpha)."""
    if decoder is None:
        return stream.codec_context
    ctx = av.CodecContext.create(decoder, "r")
    src = stream.codec_context
    if src.extradata:
        ctx.extradata = src.extradata
    ctx.width, ctx.height = src.width, src.height
    return ctx


def _frames_from(
    path: str | Path, stream_index: int, start_pts: int, decoder: str | None = None
) -> Iterator[tuple[av.container.InputContainer, av.VideoFrame]]:
    """Yield decoded frames with pts >= start_pts, seeking as close as the index allows.

    If the seek lands after ``start_pts`` (some demuxers index by dts), seek again from the
    stream start so no frame of the range is ever lost. ``decoder``: decode with this
    decoder instead of the stream's default (a fresh one per attempt, so nothing decoded
    before a seek leaks into the range).
    """
    with av.open(str(path)) as container:
        stream = container.streams[stream_index]
        stream.thread_type = "AUTO"
        for attempt_pts in (start_pts, None):
            if attempt_pts is None:
                container.seek(0, backward=True, any_frame=False, stream=stream)
            elif start_pts > 0:
                _seek_before(container, stream, attempt_pts)
            first = True
            restart = False
            ctx = _decoder(stream, decoder)
            try:
                for packet in container.demux(stream):
                    for frame in ctx.decode(packet) if decoder else packet.decode():
                        if frame.pts is None:
                            continue
                        if first:
                            first = False
                            if frame.pts > start_pts and attempt_pts is not None:
                                restart = True
                                break
                        if frame.pts >= start_pts:
                            yield container, frame
                    if restart:
                        break
            except av.error.FFmpegError as exc:
                raise CorruptMediaError(
                    f"{path}: decoding failed near pts {start_pts}: {exc}"
                ) from exc
            if not restart:
                return


def count_decodable(path: str | Path, stream_index: int, start_pts: int) -> int:
    """How many frames at or after ``start_pts`` actually decode (used to detect truncation)."""
    return sum(1 for _ in _frames_from(path, stream_index, start_pts))


def read_display_matrix(path: str | Path, stream_index: int) -> DisplayMatrix | None:
    """The display matrix of the stream, read from its first decoded frame (the only place
    PyAV 18 exposes it)."""
    for _container, frame in _frames_from(path, stream_index, -(2**62)):
        return display_matrix_of(frame)
    return None


def native_frames(
    path: str | Path, stream_index: int, start_pts: int, end_pts: int | None
) -> Iterator[av.VideoFrame]:
    """The decoded frames with ``start_pts <= pts < end_pts`` (``None``: to the end) as FFmpeg
    returns them (native pixel format and field flags), for filters that need the fields:
    field detection (``vsrflow.media.interlace``) and deinterlacing before the model."""
    for _container, frame in _frames_from(path, stream_index, start_pts):
        if end_pts is not None and frame.pts >= end_pts:
            return
        yield frame


def frame_to_rgb(frame: av.VideoFrame, colour: ColourInfo, bit_depth: int) -> np.ndarray:
    """RGB pixels of a decoded (or filtered) frame with the source's resolved matrix and range,
    so the way back to YUV at encoding uses the same ones."""
    return frame.to_ndarray(
        format=rgb_format_for(bit_depth),
        src_colorspace=colour.sws_matrix,
        src_color_range=colour.sws_range,
    )


def decode_range(
    path: str | Path,
    stream_index: int,
    start_pts: int,
    end_pts: int | None,
    *,
    colour: ColourInfo,
    bit_depth: int,
    alpha: bool = False,
    decoder: str | None = None,
    side_data: bool = False,
) -> Iterator[DecodedFrame]:
    """Yield the frames with ``start_pts <= pts < end_pts`` (``end_pts=None``: to the end).

    ``colour`` must be the resolved source colour (see ``ColourInfo.resolved``) so YUV->RGB
    uses the same matrix and range that encoding will use to go back. ``alpha``: also return
    each frame's alpha plane (full range, as FFmpeg stores alpha), decoded with ``decoder``
    when the default decoder does not return it. ``side_data``: each frame also brings a
    :func:`side_data_carrier` (for sources with captions).
    """
    rgb_format = rgba_format_for(bit_depth) if alpha else rgb_format_for(bit_depth)
    peak = 255 if bit_depth <= 8 else 65535
    for _container, frame in _frames_from(path, stream_index, start_pts, decoder):
        if end_pts is not None and frame.pts >= end_pts:
            return
        pixels = frame.to_ndarray(
            format=rgb_format,
            src_colorspace=colour.sws_matrix,
            src_color_range=colour.sws_range,
        )
        carrier = side_data_carrier(frame) if side_data else None
        if not alpha:
            yield DecodedFrame(pts=int(frame.pts), rgb=pixels, carrier=carrier)
            continue
        plane = np.ascontiguousarray(pixels[..., 3])
        if not any(c.is_alpha for c in frame.format.components):
            plane = np.full_like(plane, peak)  # a frame without alpha data is opaque
        yield DecodedFrame(
            pts=int(frame.pts),
            rgb=np.ascontiguousarray(pixels[..., :3]),
            alpha=plane,
            carrier=carrier,
        )
