"""Assemble chunks into the final file by packet remux, then verify and publish atomically.

No second encode: video packets are copied from the chunks with their absolute source
timestamps, and every audio, subtitle and data stream is copied packet for packet from the
source, interleaved by time. The result is written under a temporary name beside the target,
re-opened and verified (frame count, per-frame pts, stream count), and only then renamed into
place, so a crash or a failed check never leaves a half-written file under the final name.

Alpha: tags announcing alpha (Matroska AlphaMode, read as ``alpha_mode``) are never copied from
the source; the output's video stream is tagged only when its chunks really carry an alpha
side channel (VP8/VP9), and verification refuses an alpha tag on a stream without alpha.
"""

from __future__ import annotations

import heapq
import io
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.stream import Discard

from vsrflow.errors import AssemblyError
from vsrflow.media.alpha import (
    ALPHA_TAG,
    BLOCK_ADDITIONAL,
    SIDE_CHANNEL_DECODERS,
    alpha_outcome,
    alpha_tagged,
    is_alpha_tag,
    pix_fmt_has_alpha,
    stream_has_alpha,
)
from vsrflow.media.carry import is_timecode_track, read_frame_side_data, timecode_of
from vsrflow.media.codecs import (
    CONTAINER_BY_EXTENSION,
    MATROSKA_MUXERS,
    MUXER_BY_CONTAINER,
    exact_time_options,
    get_codec,
)
from vsrflow.media.probe import MediaInfo, is_url
from vsrflow.media.timestamps import Timestamps, int64_array

#: Streams of these kinds are copied from the source into the output.
COPIED_KINDS = ("audio", "subtitle", "data")
#: Output pts may differ from source pts by at most this (the tests demand 1 ms).
PTS_TOLERANCE_S = 0.001


@dataclass(frozen=True)
class AssemblyReport:
    """What was written and verified."""

    path: str
    frames: int
    copied_streams: int
    duration_s: float
    size_bytes: int


def container_for(output: str | Path) -> str:
    """Our container name (mp4/mkv/mov) for an output path, or a clear error."""
    suffix = Path(output).suffix.lower()
    if suffix not in CONTAINER_BY_EXTENSION:
        raise ValueError(
            f"unsupported output extension {suffix!r}; use one of "
            f"{', '.join(sorted(CONTAINER_BY_EXTENSION))}"
        )
    return CONTAINER_BY_EXTENSION[suffix]


def check_output_compatible(
    info: MediaInfo,
    output: str | Path,
    codec: str,
    *,
    source: str | None = None,
    alpha: str = "keep",
    square_pixels: bool = False,
) -> None:
    """Fail before any compute if the output container cannot hold the codec or a copied
    stream, or the codec cannot keep the source's alpha channel (``alpha``: the job's
    ``encoder.alpha``; "keep" refuses codecs without alpha, see ``vsrflow.media.alpha``), or
    an anamorphic source would lose its aspect ratio (unless ``square_pixels``: the job's
    ``size.square_pixels``, which resamples instead).

    Writes only a header into memory: that is where FFmpeg's muxers reject codecs.
    """
    container = container_for(output)
    preset = get_codec(codec)
    if container not in preset.containers:
        raise ValueError(
            f"codec {preset.name} cannot be written to .{container}; use one of "
            f"{', '.join('.' + c for c in preset.containers)}"
        )
    sar = info.video.sample_aspect_ratio
    if (
        sar
        and sar != 1
        and not square_pixels
        and MUXER_BY_CONTAINER[container] in MATROSKA_MUXERS
        and preset.name not in SAR_IN_BITSTREAM
    ):
        raise ValueError(
            f"{info.path} has non-square pixels (SAR {sar.numerator}:{sar.denominator}) and "
            f"{preset.name} in .{container} cannot record them here (the Matroska muxer takes "
            "the SAR from the stream, which PyAV cannot set): use --square-pixels, "
            f"--codec {' or '.join(SAR_IN_BITSTREAM)}, or a .mov/.mp4 output"
        )
    outcome = alpha_outcome(
        has_alpha=info.video.alpha,
        readable=info.video.alpha_readable,
        codec=preset.name,
        policy=alpha,
        label=info.path,
        decoder=info.video.alpha_decoder,
    )
    with av.open(source or info.path) as src:
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format=MUXER_BY_CONTAINER[container]) as probe_out:
            for stream in src.streams:
                if not _copyable(stream):
                    continue
                try:
                    probe_out.add_stream_from_template(stream)
                except (ValueError, av.error.FFmpegError) as exc:
                    cc = stream.codec_context
                    raise ValueError(
                        f"stream #{stream.index} ({stream.type}, "
                        f"{cc.name if cc else 'no codec'}) cannot be copied into .{container}: "
                        f"{exc}; choose another output container"
                    ) from exc
            try:
                video = probe_out.add_stream(preset.encoder, rate=25)
                # The pixel format the chunks will use (prores_ks refuses PyAV's yuv420p).
                video.pix_fmt = preset.pix_fmt_for(info.video.bit_depth, alpha=outcome == "keep")
                probe_out.start_encoding()
            except av.error.FFmpegError as exc:
                raise ValueError(
                    f"a .{container} file cannot hold these streams: {exc}; choose another "
                    "output container"
                ) from exc


#: Codecs whose bitstream records the SAR (H.264/HEVC VUI): in Matroska only these keep it.
SAR_IN_BITSTREAM = ("h264", "hevc")


def _copyable(stream: av.stream.Stream) -> bool:
    """Copied from the source: audio, subtitles, data; not the mp4 chapter text track, which
    the demuxer discards and the muxer rewrites from the chapters, nor a tmcd timecode track,
    which the mov/mp4 muxer writes from the video's ``timecode`` tag."""
    return (
        stream.type in COPIED_KINDS
        and stream.discard != Discard.all
        and not is_timecode_track(stream)
    )


def _has_encoder(stream: av.stream.Stream) -> bool:
    """Whether an encoder is named like the stream's decoder: PyAV's template stream makes
    one by that name unless ``opaque``. AV1 chunks decode with libdav1d, which has none (the
    muxer only needs the codec id, which the opaque template keeps)."""
    try:
        av.Codec(stream.codec_context.codec.name, "w")
    except av.codec.codec.UnknownCodecError:
        return False
    return True


def _timed_packets(
    container: av.container.InputContainer, streams: Sequence[av.stream.Stream], order: int
) -> Iterator[tuple[Fraction, int, av.Packet]]:
    """Packets of ``streams`` keyed by their decode time in seconds, for a heap merge."""
    for packet in container.demux(*streams):
        if packet.size == 0:
            continue
        ts = packet.dts if packet.dts is not None else packet.pts
        when = Fraction(ts * packet.time_base) if ts is not None else Fraction(-1)
        yield when, order, packet


def _chunk_packets(chunks: Sequence[str | Path]) -> Iterator[tuple[Fraction, int, av.Packet]]:
    for chunk in chunks:
        with av.open(str(chunk)) as container:
            yield from _timed_packets(container, container.streams.video[:1], 0)


def _remux(
    info: MediaInfo,
    source: str,
    chunks: Sequence[str | Path],
    tmp: Path,
    muxer: str,
    *,
    alpha: bool = False,
) -> int:
    """Write ``tmp``; returns the number of video packets written. ``alpha``: the chunks
    carry an alpha plane (a VP8/VP9 side channel is then announced in Matroska)."""
    with (
        av.open(str(chunks[0])) as first,
        av.open(source) as src,
        av.open(
            str(tmp),
            mode="w",
            format=muxer,
            options=exact_time_options(muxer, info.video.time_base),
        ) as out,
    ):
        out_video = out.add_stream_from_template(
            first.streams.video[0], opaque=not _has_encoder(first.streams.video[0])
        )
        _copy_stream_tags(src.streams[info.video.index], out_video)
        chunk_sar = first.streams.video[0].sample_aspect_ratio
        if chunk_sar and chunk_sar != 1:
            # mov/mp4 chunks keep the SAR in their pasp box, which the demuxer puts on the
            # stream, not in the parameters the template copies: a ProRes or AV1 output
            # came out square. The mov/mp4 muxer writes pasp from these parameters.
            out_video.codec_context.sample_aspect_ratio = chunk_sar
        if info.video.timecode and info.video.average_rate:
            # The mov/mp4 muxer writes the tmcd track from the timecode tag at the stream's
            # frame rate, which a template stream lacks (it would take 1/time_base).
            out_video.codec_context.framerate = info.video.average_rate
        first_cc = first.streams.video[0].codec_context
        if first_cc.name == "prores":
            # PyAV's template clears the tag and the muxers then write the first ProRes tag
            # they know (apch, 422 HQ): a ProRes 4444 chunk (ap4h) must keep its own.
            out_video.codec_tag = first.streams.video[0].codec_tag
        if alpha and muxer in MATROSKA_MUXERS and first_cc.name in SIDE_CHANNEL_DECODERS:
            out_video.metadata[ALPHA_TAG] = "1"  # writes the track's AlphaMode element
        copied = [s for s in src.streams if _copyable(s)]
        out_by_src = {s.index: out.add_stream_from_template(s) for s in copied}
        for s in copied:
            _copy_stream_tags(s, out_by_src[s.index])
        for key, value in info.metadata.items():
            if not is_alpha_tag(key):  # Matroska applies a global alpha_mode to every track
                out.metadata[key] = value
        if info.chapters:
            out.set_chapters(_chapters_of(src))
        last_dts: int | None = None
        video_packets = 0
        if not copied:
            # Nothing left to read from it: an open mp4 holds its whole sample index (~90
            # bytes a frame), which the mux below would carry for nothing.
            src.close()
        source_packets = _timed_packets(src, copied, 1) if copied else iter(())
        # The mp4/mov muxer writes the empty mov_text sample that ends each cue by itself, so
        # copying the source's own end samples as well would double every one of them.
        regenerated_ends = {
            s.index
            for s in copied
            if muxer in ("mp4", "mov")
            and s.codec_context is not None
            and s.codec_context.name == "mov_text"
        }
        for _when, _order, packet in heapq.merge(
            _chunk_packets(chunks), source_packets, key=lambda item: (item[0], item[1])
        ):
            if packet.stream.type == "video":
                packet.stream = out_video
                packet.dts, last_dts = _monotonic_dts(packet, last_dts)
                video_packets += 1
            else:
                if packet.stream.index in regenerated_ends and bytes(packet) == b"\x00\x00":
                    continue
                packet.stream = out_by_src[packet.stream.index]
            out.mux(packet)
    return video_packets


def _copy_stream_tags(src: av.stream.Stream, dst: av.stream.Stream) -> None:
    """Language, title and disposition (default/forced...) are what players show users.
    Alpha tags describe the source's coding, not the output's: never copied."""
    for key, value in src.metadata.items():
        lowered = key.lower()
        if lowered not in ("encoder", "handler_name", "vendor_id", "duration") and not (
            is_alpha_tag(lowered)
        ):
            dst.metadata[key] = value
    dst.disposition = src.disposition


def _chapters_of(src: av.container.InputContainer) -> list[dict]:
    return list(src.chapters())


def _monotonic_dts(packet: av.Packet, last_dts: int | None) -> tuple[int | None, int | None]:
    """Keep video DTS strictly increasing across chunk boundaries.

    Each chunk's encoder starts with its own reorder delay, so the first DTS of a chunk can in
    rare cases touch the last DTS of the previous one. Nudge by one tick (never past the pts).
    """
    dts = packet.dts
    if dts is None:
        return None, last_dts
    if last_dts is not None and dts <= last_dts:
        dts = last_dts + 1
        if packet.pts is not None and dts > packet.pts:
            raise AssemblyError(
                f"cannot order packets at pts {packet.pts}: chunk boundaries overlap in time"
            )
    return dts, dts


def verify_output(
    path: str | Path, info: MediaInfo, *, alpha: bool | None = None
) -> AssemblyReport:
    """Re-open the output and check frames, per-frame pts, the copied streams, and that an
    alpha tag is only on a stream with alpha; ``alpha`` (if given): whether the video must
    carry an alpha plane."""
    with av.open(str(path)) as out:
        if not out.streams.video:
            raise AssemblyError(f"{path}: no video stream in the output")
        video = out.streams.video[0]
        tb = video.time_base
        cc = video.codec_context
        side_channel = cc is not None and cc.name in SIDE_CHANNEL_DECODERS
        demuxed = int64_array()
        side_alpha = False
        for p in out.demux(video):
            if p.size and p.pts is not None:
                demuxed.append(p.pts)
                side_alpha = side_alpha or (side_channel and p.has_sidedata(BLOCK_ADDITIONAL))
        got = Timestamps.sorted_from(demuxed)
        has_alpha = side_alpha or pix_fmt_has_alpha(cc.pix_fmt if cc else None)
        tagged = alpha_tagged(video.metadata) or alpha_tagged(out.metadata)
        copied = sum(1 for s in out.streams if _copyable(s))
        duration = float(out.duration / av.time_base) if out.duration else 0.0
        timecode = timecode_of(
            video.metadata, out.metadata, [s.metadata for s in out.streams if s.type == "data"]
        )
        out_sar = video.sample_aspect_ratio
        coded = (cc.width, cc.height) if cc else (0, 0)
        video_index, decoder = video.index, cc.name if cc else ""
    _check_properties(
        path, info, coded, Fraction(out_sar) if out_sar else None, video_index, decoder
    )
    if info.video.timecode and timecode != info.video.timecode:
        raise AssemblyError(
            f"{path}: the source's timecode {info.video.timecode} became {timecode or 'none'}"
        )
    if tagged and not has_alpha:
        raise AssemblyError(f"{path}: the video is tagged as having alpha but has none")
    if side_alpha and not tagged:
        raise AssemblyError(f"{path}: the video has an alpha side channel but no AlphaMode tag")
    if alpha is not None and alpha != has_alpha:
        raise AssemblyError(
            f"{path}: the video {'lost its' if alpha else 'gained an'} alpha channel in assembly"
        )
    want = info.video.pts
    if len(got) != len(want):
        raise AssemblyError(f"{path}: {len(got)} frames written, the source has {len(want)}")
    src_tb = info.video.time_base
    worst = max(
        (abs(float(g * tb) - float(w * src_tb)) for g, w in zip(got, want, strict=True)),
        default=0.0,
    )
    if worst > PTS_TOLERANCE_S:
        raise AssemblyError(f"{path}: frame timestamps drift by up to {worst * 1000:.3f} ms")
    expected_streams = sum(1 for s in info.streams if s.kind in COPIED_KINDS)
    if copied != expected_streams:
        raise AssemblyError(f"{path}: {copied} streams copied, the source has {expected_streams}")
    return AssemblyReport(
        path=str(path),
        frames=len(got),
        copied_streams=copied,
        duration_s=duration,
        size_bytes=0 if is_url(path) else Path(path).stat().st_size,
    )


#: Decoders of the codecs whose encoders write HDR static metadata (x265, x264, SVT-AV1).
_HDR_METADATA_DECODERS = ("hevc", "h264", "libdav1d", "av1")


def _check_properties(
    path: str | Path,
    info: MediaInfo,
    coded: tuple[int, int],
    sar: Fraction | None,
    index: int,
    decoder: str,
) -> None:
    """Read back what issue 10 promises rather than trust the encoder options: an anamorphic
    source keeps its display aspect ratio (exact with the SAR written, within a pixel of width
    when resampled to square pixels), and HDR static metadata reaches an output whose codec
    can carry it (read from the first decoded frame)."""
    source_sar = info.video.sample_aspect_ratio
    width, height = coded
    if source_sar and source_sar != 1 and width and height:
        dar = Fraction(width, height) * (sar or 1)
        want = info.video.display_aspect_ratio
        if abs(dar - want) > Fraction(1, height):
            raise AssemblyError(
                f"{path}: display aspect ratio {dar.numerator}:{dar.denominator}, the source's "
                f"is {want.numerator}:{want.denominator} (its sample aspect ratio was lost)"
            )
    hdr = info.video.hdr
    if hdr is not None and (hdr.mastering or hdr.light) and decoder in _HDR_METADATA_DECODERS:
        side = read_frame_side_data(str(path), index, frames=1)
        lost = [
            name
            for name, want_it, got in (
                ("mastering display", hdr.mastering, side.mastering),
                ("content light level", hdr.light, side.light),
            )
            if want_it is not None and got is None
        ]
        if lost:
            raise AssemblyError(f"{path}: the source's HDR {' and '.join(lost)} did not reach it")


def temporary_sibling(target: Path) -> Path:
    """A hidden name in the target's directory (same filesystem, so rename is atomic)."""
    return target.with_name(f".{target.stem}.partial-{uuid.uuid4().hex[:12]}{target.suffix}")


def assemble(
    info: MediaInfo,
    chunks: Sequence[str | Path],
    output: str | Path,
    *,
    source: str | None = None,
) -> AssemblyReport:
    """Remux ``chunks`` (in order) with the source's other streams into ``output``, atomically.

    ``source`` is where to read the source from when ``info.path`` is not directly readable
    (a presigned URL for an ``s3://`` source); chunks may be URLs too.
    """
    if not chunks:
        raise AssemblyError("no chunks to assemble")
    output = Path(output)
    muxer = MUXER_BY_CONTAINER[container_for(output)]
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(output)
    try:
        try:
            alpha = stream_has_alpha(chunks[0])
            _remux(info, source or info.path, chunks, tmp, muxer, alpha=alpha)
        except av.error.FFmpegError as exc:
            raise AssemblyError(f"remuxing into {output.name} failed: {exc.strerror}") from exc
        report = verify_output(tmp, info, alpha=alpha)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return AssemblyReport(
        path=str(output),
        frames=report.frames,
        copied_streams=report.copied_streams,
        duration_s=report.duration_s,
        size_bytes=report.size_bytes,
    )
