"""Encode upscaled RGB frames of one batch into a chunk that keeps the source timestamps.

Every frame is encoded with its SOURCE pts in the SOURCE time base, so a VFR source stays VFR
and assembly can remux chunks packet by packet with absolute timestamps (no second encode, no
drift). Colour tags and rotation are written on each chunk; assembly copies the stream
parameters from the first chunk. With ``alpha=True`` each frame also gets its alpha plane and
the codec's alpha pixel format (ProRes 4444, FFV1 yuva, VP9 yuva420p).

``carry`` (a :class:`vsrflow.media.carry.CarryPlan`) adds what the source carries besides its
pixels: the sample aspect ratio, a kept chroma subsampling, HDR static metadata as encoder
parameters, and per-frame side data (A/53 captions): ``write(..., carrier=frame)`` builds the
encoded frame from the source frame's carrier, whose properties ``reformat`` copies.
"""

from __future__ import annotations

import contextlib
import functools
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from av.video.frame import PictureType

from vsrflow.media.carry import CarryPlan
from vsrflow.media.codecs import EncoderSettings, exact_time_options, get_codec
from vsrflow.media.colour import ColourInfo
from vsrflow.media.decode import rgb_format_for, rgba_format_for
from vsrflow.media.rotation import DisplayMatrix


@functools.cache
def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return "avx512f" in cpuinfo.read()
    except OSError:
        return False


def deterministic_options(encoder: str) -> dict[str, str]:
    """Encoder options that make output bytes reproducible, without changing what is encoded.

    Measured here: libx264's AVX-512 code paths gave a different bitstream for identical
    input in about one run in three (a 704-wide frame; a 768-wide one did not), so the same
    batch encoded on two workers, or twice on one, differed. x264's AVX2 paths are bit-exact
    with its C code; on CPUs with AVX-512 (which always have AVX2) we cap x264 at AVX2.
    Not part of the cache key: it changes no pixel, only restores determinism.
    """
    if encoder == "libx264" and _cpu_has_avx512():
        return {"x264-params": "asm=AVX2"}
    return {}


def _with_properties_of(carrier: av.VideoFrame, frame: av.VideoFrame) -> av.VideoFrame:
    """``frame``'s pixels in a frame made from ``carrier``: PyAV cannot attach side data, but
    ``reformat`` copies every frame property (side data included) onto the frame it makes,
    whose planes are then overwritten (same size and format: same plane layout)."""
    out = carrier.reformat(width=frame.width, height=frame.height, format=frame.format.name)
    for dst, src in zip(out.planes, frame.planes, strict=True):
        dst.update(src)
    # The source's picture type is copied too, and x264/x265 obey it: a source with an
    # I-frame every 2 frames made every other output frame a keyframe. The encoder decides.
    out.pict_type = PictureType.NONE
    return out


class ChunkEncoder:
    """Context manager writing one chunk file; ``write(rgb, pts)`` per frame, in pts order."""

    def __init__(
        self,
        path: str | Path,
        *,
        settings: EncoderSettings,
        width: int,
        height: int,
        bit_depth: int,
        time_base: Fraction,
        average_rate: Fraction | None,
        colour: ColourInfo,
        display_matrix: DisplayMatrix | None = None,
        alpha: bool = False,
        carry: CarryPlan | None = None,
    ) -> None:
        preset = get_codec(settings.codec)
        carry = carry or CarryPlan()
        self._path = Path(path)
        self._colour = colour
        self._alpha = alpha
        self._rgb_format = rgba_format_for(bit_depth) if alpha else rgb_format_for(bit_depth)
        self._pix_fmt = (carry.pix_fmt if not alpha else None) or preset.pix_fmt_for(
            bit_depth, alpha=alpha
        )
        self._container = av.open(
            str(self._path),
            mode="w",
            format=preset.chunk_format,
            options=exact_time_options(preset.chunk_format, time_base),
        )
        stream = self._container.add_stream(
            preset.encoder,
            rate=average_rate or Fraction(25),
            options=carry.merged_options(
                {**settings.options(alpha=alpha), **deterministic_options(preset.encoder)}
            ),
        )
        stream.width = width
        stream.height = height
        stream.pix_fmt = self._pix_fmt
        stream.time_base = time_base
        cc = stream.codec_context
        cc.time_base = time_base
        cc.color_range = colour.range
        cc.color_primaries = colour.primaries
        cc.color_trc = colour.transfer
        cc.colorspace = colour.matrix
        if carry.sample_aspect_ratio is not None:
            cc.sample_aspect_ratio = carry.sample_aspect_ratio
        if display_matrix is not None:
            stream.set_display_matrix(list(display_matrix))
        self._stream = stream
        self.frames_written = 0

    def write(
        self,
        rgb: np.ndarray,
        pts: int,
        alpha: np.ndarray | None = None,
        carrier: av.VideoFrame | None = None,
    ) -> None:
        """Encode one frame; ``alpha`` (H, W, same dtype) is required for an alpha chunk;
        ``carrier``: a frame whose side data (A/53 captions...) the encoded frame gets."""
        if self._alpha:
            if alpha is None:
                raise ValueError("this chunk stores alpha: every frame needs its alpha plane")
            rgb = np.concatenate([rgb, alpha[..., None]], axis=-1)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format=self._rgb_format)
        frame = frame.reformat(
            format=self._pix_fmt,
            dst_colorspace=self._colour.sws_matrix,
            dst_color_range=self._colour.sws_range,
        )
        if carrier is not None:
            frame = _with_properties_of(carrier, frame)
        frame.pts = pts
        frame.time_base = self._stream.codec_context.time_base
        frame.color_range = self._colour.range
        frame.color_primaries = self._colour.primaries
        frame.color_trc = self._colour.transfer
        frame.colorspace = self._colour.matrix
        self._container.mux(self._stream.encode(frame))
        self.frames_written += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None

    def abort(self) -> None:
        """Close without flushing and delete the partial file."""
        if self._container is not None:
            with contextlib.suppress(av.error.FFmpegError):
                self._container.close()
            self._container = None
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> ChunkEncoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
