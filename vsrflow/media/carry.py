"""What an archive master carries besides its pixels, and how each property reaches the output.

The pixels go through the model; everything else a player or an editor relies on has to be
carried on purpose, or a re-encode silently drops it:

* sample aspect ratio (SAR): DVD and SD broadcast pixels are not square. The output keeps the
  display aspect ratio (DAR) exactly: by default with the SAR written on the output stream
  (scaled geometry stays anamorphic), or, with ``size.square_pixels``, by resampling to a
  square-pixel size of the same DAR (even dimensions);
* HDR: PQ (SMPTE ST 2084) and HLG (ARIB STD-B67) are colour tags, kept with the others; the
  static metadata (mastering display colour volume, content light level) rides in the
  bitstream and is written again through the encoder's own parameters (x265 ``master-display``
  / ``max-cll``, x264 ``mastering-display`` / ``cll``, SVT-AV1 ``mastering-display`` /
  ``content-light``), which is what those encoders honour. An HDR source to an 8-bit output is
  refused: its 10-bit PQ/HLG signal would band;
* A/53 closed captions (CEA-608/708 in SEI): side data on decoded frames. Frames of a source
  with captions keep a tiny carrier frame holding their side data; the encoder frame is built
  from it (``VideoFrame.reformat`` copies frame properties, side data included), so x264/x265
  (``a53cc``, on by default) write the same captions on the same frames;
* timecode: the ``timecode`` tag (mov/mp4 tmcd track, Matroska tag), copied with the stream
  tags; the mov/mp4 muxer writes the tmcd track from it;
* chroma subsampling: 4:2:2 and 4:4:4 stay so where the codec can store them (x264/x265 high
  4:2:2 / 4:4:4, ProRes 422 / 4444, FFV1, VP9 profile 1); otherwise the plan says what it was
  converted to.

Planning turns these into a :class:`CarryPlan` (what the chunk encoder must write) and a list of
:class:`Handling` lines (what was done, for the manifest and the summary). Torch-free.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import av
from av.sidedata.sidedata import Type as FrameSideDataType

#: AVColorTransferCharacteristic values of the two HDR transfers.
TRC_PQ, TRC_HLG = 16, 18
#: Frames decoded at probe time to look for HDR metadata and captions.
SIDE_DATA_SAMPLE = 48
#: Pixel-format stems that exist with these subsamplings (FFmpeg's names).
_CHROMA_STEMS = {"4:2:0": "yuv420p", "4:2:2": "yuv422p", "4:4:4": "yuv444p"}
#: Chroma subsamplings each codec preset stores (others are converted to 4:2:0 / the preset's).
_CODEC_CHROMA = {
    "h264": ("4:2:0", "4:2:2", "4:4:4"),
    "hevc": ("4:2:0", "4:2:2", "4:4:4"),
    "av1": ("4:2:0",),  # libsvtav1 encodes 4:2:0 only
    "prores": ("4:2:2", "4:4:4"),  # ProRes 422 (HQ) and 4444
    "ffv1": ("4:2:0", "4:2:2", "4:4:4"),
    "vp9": ("4:2:0", "4:2:2", "4:4:4"),  # profile 1 (8-bit here)
}
#: Codecs whose encoder writes HDR static metadata from its parameters (option name, syntax).
_HDR_PARAMS = {"hevc": "x265-params", "h264": "x264-params", "av1": "svtav1-params"}


# --------------------------------------------------------------------------------------------
# HDR static metadata


def _rationals(data: bytes, count: int, offset: int = 0) -> list[Fraction]:
    values = struct.unpack_from(f"={2 * count}i", data, offset)
    return [
        Fraction(values[i], values[i + 1]) if values[i + 1] else Fraction(0)
        for i in range(0, 2 * count, 2)
    ]


@dataclass(frozen=True)
class MasteringDisplay:
    """SMPTE ST 2086 mastering display colour volume: CIE 1931 xy of the primaries and white
    point, luminance in cd/m2 (exact rationals, as FFmpeg's AVMasteringDisplayMetadata)."""

    red: tuple[Fraction, Fraction]
    green: tuple[Fraction, Fraction]
    blue: tuple[Fraction, Fraction]
    white: tuple[Fraction, Fraction]
    min_luminance: Fraction
    max_luminance: Fraction

    @classmethod
    def from_side_data(cls, data: bytes) -> MasteringDisplay | None:
        """Parse AVMasteringDisplayMetadata (10 rationals, has_primaries, has_luminance);
        None when it declares neither."""
        if len(data) < 88:
            return None
        r = _rationals(data, 10)
        has_primaries, has_luminance = struct.unpack_from("=2i", data, 80)
        if not (has_primaries and has_luminance):
            return None
        return cls(
            red=(r[0], r[1]),
            green=(r[2], r[3]),
            blue=(r[4], r[5]),
            white=(r[6], r[7]),
            min_luminance=r[8],
            max_luminance=r[9],
        )

    def x26x(self) -> str:
        """x264/x265 syntax: G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min); xy in 1/50000, L in
        1/10000 cd/m2 (the units of the HEVC/H.264 SEI, so HEVC round trips exactly)."""

        def xy(p: tuple[Fraction, Fraction]) -> str:
            return f"({round(p[0] * 50000)},{round(p[1] * 50000)})"

        return (
            f"G{xy(self.green)}B{xy(self.blue)}R{xy(self.red)}WP{xy(self.white)}"
            f"L({round(self.max_luminance * 10000)},{round(self.min_luminance * 10000)})"
        )

    def svtav1(self) -> str:
        """SVT-AV1 syntax: the same order with decimal values (cd/m2 for luminance)."""

        def xy(p: tuple[Fraction, Fraction]) -> str:
            return f"({float(p[0]):.5f},{float(p[1]):.5f})"

        return (
            f"G{xy(self.green)}B{xy(self.blue)}R{xy(self.red)}WP{xy(self.white)}"
            f"L({float(self.max_luminance):.4f},{float(self.min_luminance):.4f})"
        )

    def describe(self) -> str:
        return (
            f"R{_pair(self.red)} G{_pair(self.green)} B{_pair(self.blue)} "
            f"WP{_pair(self.white)}, {float(self.min_luminance):g}-"
            f"{float(self.max_luminance):g} cd/m2"
        )


def _pair(p: tuple[Fraction, Fraction]) -> str:
    return f"({float(p[0]):.4f},{float(p[1]):.4f})"


@dataclass(frozen=True)
class ContentLight:
    """CTA-861.3 content light level: MaxCLL and MaxFALL in cd/m2."""

    max_cll: int
    max_fall: int

    @classmethod
    def from_side_data(cls, data: bytes) -> ContentLight | None:
        if len(data) < 8:
            return None
        max_cll, max_fall = struct.unpack_from("=2I", data)
        return cls(max_cll, max_fall)


@dataclass(frozen=True)
class HdrInfo:
    """An HDR source: its transfer ("pq" or "hlg") and static metadata, when present."""

    transfer: str
    mastering: MasteringDisplay | None = None
    light: ContentLight | None = None

    def names(self) -> dict[str, object]:
        """JSON-able view (probe output, manifest)."""
        return {
            "transfer": self.transfer,
            "mastering_display": self.mastering.describe() if self.mastering else None,
            "max_cll": self.light.max_cll if self.light else None,
            "max_fall": self.light.max_fall if self.light else None,
        }


def hdr_transfer(transfer: int) -> str:
    """ "pq", "hlg" or "" (not an HDR transfer) for an AVColorTransferCharacteristic."""
    return {TRC_PQ: "pq", TRC_HLG: "hlg"}.get(transfer, "")


@dataclass(frozen=True)
class FrameSideData:
    """What decoded frames of a source carry (a sample of its first frames)."""

    mastering: MasteringDisplay | None = None
    light: ContentLight | None = None
    #: Frames of the sample that carry A/53 closed captions.
    caption_frames: int = 0


def read_frame_side_data(
    source: str, stream_index: int, frames: int = SIDE_DATA_SAMPLE
) -> FrameSideData:
    """Decode up to ``frames`` frames and collect HDR metadata and A/53 captions.

    HEVC/H.264/AV1 decoders attach the SEI/OBU metadata to frames; for mov/mkv boxes (ProRes
    mdcv) the decoder copies the stream's side data onto frames as well, so one reader serves
    both. Failures read as "nothing found": probe's own checks judge the file's integrity.
    """
    mastering: MasteringDisplay | None = None
    light: ContentLight | None = None
    captions = 0
    try:
        with av.open(source) as container:
            stream = container.streams[stream_index]
            for n, frame in enumerate(container.decode(stream)):
                if n >= frames:
                    break
                for side in frame.side_data:
                    kind = side.type
                    if kind == FrameSideDataType.MASTERING_DISPLAY_METADATA and mastering is None:
                        mastering = MasteringDisplay.from_side_data(bytes(side))
                    elif kind == FrameSideDataType.CONTENT_LIGHT_LEVEL and light is None:
                        light = ContentLight.from_side_data(bytes(side))
                    elif kind == FrameSideDataType.A53_CC:
                        captions += 1
    except av.error.FFmpegError:
        pass
    return FrameSideData(mastering, light, captions)


def captions_of(frame: av.VideoFrame) -> bytes | None:
    """The A/53 cc_data of one decoded frame (None when it carries none)."""
    for side in frame.side_data:
        if side.type == FrameSideDataType.A53_CC:
            return bytes(side)
    return None


# --------------------------------------------------------------------------------------------
# Geometry, chroma, timecode


def display_aspect(width: int, height: int, sar: Fraction | None) -> Fraction:
    """Display aspect ratio of a width x height picture with sample aspect ratio ``sar``."""
    return Fraction(width, height) * (sar if sar else 1)


def output_sar(source_dar: Fraction, width: int, height: int) -> Fraction:
    """The SAR that makes a width x height output display at ``source_dar`` exactly."""
    return source_dar / Fraction(width, height)


def square_pixel_size(height: int, dar: Fraction, *, even: bool = True) -> tuple[int, int]:
    """(width, height) with square pixels at ``dar``: the height (the lines) is kept and the
    width follows; even when the codec subsamples chroma."""
    width = float(dar * height)
    if even:
        return max(2, 2 * round(width / 2)), height + (height % 2)
    return max(1, round(width)), height


def chroma_of(pix_fmt: str | None) -> str:
    """ "4:2:0", "4:2:2", "4:4:4", "4:1:1", "4:4:0", "4:0:0" (gray) of a pixel format; RGB
    formats count as 4:4:4."""
    if not pix_fmt:
        return "4:2:0"
    try:
        fmt = av.VideoFormat(pix_fmt, 64, 64)
    except ValueError:
        return "4:2:0"
    colour = [c for c in fmt.components if not c.is_alpha]
    if len(colour) < 3:
        return "4:0:0"
    w, h = colour[1].width, colour[1].height
    return {
        (64, 64): "4:4:4",
        (32, 64): "4:2:2",
        (32, 32): "4:2:0",
        (16, 64): "4:1:1",
        (64, 32): "4:4:0",
    }.get((w, h), "4:2:0")


def chroma_pix_fmt(base: str, chroma: str) -> str:
    """``base`` (a yuv420p/yuv422p/yuv444p family format of a preset) with ``chroma``
    subsampling: yuv420p10le + 4:2:2 -> yuv422p10le."""
    for stem in _CHROMA_STEMS.values():
        if base.startswith(stem):
            return _CHROMA_STEMS[chroma] + base[len(stem) :]
    return base


def timecode_of(
    stream_tags: Mapping[str, str],
    container_tags: Mapping[str, str],
    other_tags: Iterable[Mapping[str, str]] = (),
) -> str | None:
    """The start timecode: the video stream's ``timecode`` tag (mov/mp4 tmcd, Matroska), the
    container's, or a tmcd data track's."""
    for tags in (stream_tags, container_tags, *other_tags):
        for key, value in tags.items():
            if key.lower() == "timecode" and value:
                return str(value)
    return None


# --------------------------------------------------------------------------------------------
# Planning: what the output gets


@dataclass(frozen=True)
class CarryPlan:
    """What the chunk encoder writes besides the pixels (decided at planning, the same for
    every batch: part of the batch key through :meth:`identity`)."""

    #: Output pixel format instead of the preset's (chroma subsampling kept); None: preset's.
    pix_fmt: str | None = None
    #: Extra encoder options; ``*-params`` values are appended to the preset's with ':'.
    codec_options: tuple[tuple[str, str], ...] = ()
    #: SAR written on the output stream; None: none written (square or unknown source).
    sample_aspect_ratio: Fraction | None = None
    #: Carry each source frame's side data (A/53 captions) to its output frame.
    frame_side_data: bool = False

    def identity(self) -> dict[str, object]:
        """The part of the batch key (empty for a source with nothing to carry)."""
        out: dict[str, object] = {}
        if self.pix_fmt:
            out["pix_fmt"] = self.pix_fmt
        if self.codec_options:
            out["options"] = [list(o) for o in self.codec_options]
        if self.sample_aspect_ratio is not None:
            out["sar"] = str(self.sample_aspect_ratio)
        if self.frame_side_data:
            out["side_data"] = True
        return out

    def merged_options(self, options: Mapping[str, str]) -> dict[str, str]:
        """``options`` with these added (``*-params`` lists joined with ':')."""
        merged = dict(options)
        for key, value in self.codec_options:
            if key.endswith("-params") and merged.get(key):
                merged[key] = f"{merged[key]}:{value}"
            else:
                merged[key] = value
        return merged


@dataclass(frozen=True)
class Handling:
    """One property of the source and what the job does with it (manifest, summary)."""

    name: str
    source: str
    action: str

    def as_dict(self) -> dict[str, str]:
        return {"property": self.name, "source": self.source, "output": self.action}


def hdr_codec_options(codec: str, hdr: HdrInfo | None) -> tuple[tuple[str, str], ...]:
    """Encoder parameters writing ``hdr``'s static metadata with ``codec`` (none if the codec
    has no such parameters or the source has no metadata)."""
    if hdr is None or codec not in _HDR_PARAMS:
        return ()
    option = _HDR_PARAMS[codec]
    parts: list[str] = []
    if codec == "av1":
        if hdr.mastering:
            parts.append(f"mastering-display={hdr.mastering.svtav1()}")
        if hdr.light:
            parts.append(f"content-light={hdr.light.max_cll},{hdr.light.max_fall}")
    else:
        if hdr.mastering:
            parts.append(
                f"master-display={hdr.mastering.x26x()}"
                if codec == "hevc"
                else f"mastering-display={hdr.mastering.x26x()}"
            )
        if hdr.light:
            key = "max-cll" if codec == "hevc" else "cll"
            parts.append(f"{key}={hdr.light.max_cll},{hdr.light.max_fall}")
    return ((option, ":".join(parts)),) if parts else ()


def codec_chroma(codec: str, chroma: str) -> str:
    """The subsampling ``codec`` stores for a ``chroma`` source: the same when it can, else
    4:2:0 (or ProRes' 4:2:2)."""
    supported = _CODEC_CHROMA.get(codec, ("4:2:0",))
    if chroma in supported:
        return chroma
    if chroma == "4:4:4" and "4:2:2" in supported and "4:2:0" not in supported:
        return "4:2:2"
    return supported[0]


def _ratio(value: Fraction) -> str:
    return f"{value.numerator}:{value.denominator}"


def plan_carry(
    *,
    label: str,
    codec: str,
    width: int,
    height: int,
    sar: Fraction | None,
    pix_fmt: str,
    hdr: HdrInfo | None,
    captions: bool,
    timecode: str | None,
    out_size: tuple[int, int],
    square_pixels: bool,
    alpha_kept: bool,
) -> tuple[CarryPlan, tuple[Handling, ...]]:
    """Decide how each property reaches the output, and say so; a one-line ``ValueError``
    for an HDR source to a codec that writes 8 bits only.

    ``out_size`` is the final geometry (already square-pixel when ``square_pixels``)."""
    from vsrflow.media.codecs import CODEC_PRESETS, get_codec  # codecs imports nothing here

    preset = get_codec(codec)
    notes: list[Handling] = []
    out_w, out_h = out_size
    # Sample aspect ratio: the display aspect ratio is what must not change.
    out_sar: Fraction | None = None
    if sar is not None and sar != 1:
        dar = display_aspect(width, height, sar)
        if square_pixels:
            out_sar = Fraction(1)
            action = f"resampled to square pixels {out_w}x{out_h} (DAR {_ratio(dar)})"
        else:
            out_sar = output_sar(dar, out_w, out_h)
            action = f"SAR {_ratio(out_sar)} written (DAR {_ratio(dar)} kept)"
        notes.append(Handling("sample aspect ratio", f"{_ratio(sar)} (DAR {_ratio(dar)})", action))
    # HDR: never to 8 bits; static metadata through the encoder's parameters.
    options: list[tuple[str, str]] = []
    if hdr is not None:
        if max(c.bits for c in av.VideoFormat(preset.pix_fmt_deep).components) <= 8:
            deep = ", ".join(
                p.name
                for p in CODEC_PRESETS.values()
                if max(c.bits for c in av.VideoFormat(p.pix_fmt_deep).components) > 8
            )
            raise ValueError(
                f"{label} is HDR ({hdr.transfer.upper()}) and --codec {preset.name} "
                f"(encoder.codec) writes 8-bit video, which would band and lose it: use "
                f"--codec {deep}"
            )
        options += hdr_codec_options(preset.name, hdr)
        has_static = hdr.mastering is not None or hdr.light is not None
        source = hdr.transfer.upper() + (
            " with "
            + " and ".join(
                n
                for n, v in (("mastering display", hdr.mastering), ("MaxCLL/MaxFALL", hdr.light))
                if v
            )
            if has_static
            else ""
        )
        if not has_static:
            action = f"{hdr.transfer.upper()} tags and 10-bit kept"
        elif options:
            action = (
                f"{hdr.transfer.upper()} tags, 10-bit and static metadata kept ({options[0][0]})"
            )
        else:
            action = (
                f"{hdr.transfer.upper()} tags and 10-bit kept; WARNING: {preset.name} cannot "
                "carry the static metadata (use hevc, h264 or av1 for that)"
            )
        notes.append(Handling("HDR", source, action))
    # Chroma subsampling.
    chroma = chroma_of(pix_fmt)
    stored = codec_chroma(preset.name, chroma)
    out_pix_fmt: str | None = None
    if not alpha_kept:
        bit_depth = max(c.bits for c in av.VideoFormat(pix_fmt).components)
        base = preset.pix_fmt_for(bit_depth)
        if stored != chroma_of(base):
            out_pix_fmt = chroma_pix_fmt(base, stored)
            if preset.name == "prores" and stored == "4:4:4":
                options.append(("profile", "4"))  # ProRes 4444
        final = chroma_of(out_pix_fmt or base)
        if final != chroma:
            stores = " / ".join(_CODEC_CHROMA.get(preset.name, ("4:2:0",)))
            action = f"converted to {final} ({preset.name} stores {stores})"
            notes.append(Handling("chroma subsampling", chroma, action))
        elif chroma != "4:2:0":
            notes.append(Handling("chroma subsampling", chroma, f"{chroma} kept"))
    if captions:
        if preset.encoder == "libx265":
            options.append(("a53cc", "1"))  # libx265's a53cc is off by default (libx264: on)
        if preset.encoder in ("libx264", "libx265"):
            action = "A/53 captions carried frame for frame (a53cc)"
        else:
            action = (
                f"WARNING: dropped ({preset.name} cannot carry A/53 captions; use h264 or hevc)"
            )
        notes.append(Handling("captions", "A/53 closed captions in the video stream", action))
    if timecode:
        notes.append(Handling("timecode", timecode, f"{timecode} kept (timecode tag)"))
    carry = CarryPlan(
        pix_fmt=out_pix_fmt,
        codec_options=tuple(options),
        sample_aspect_ratio=out_sar,
        frame_side_data=captions and preset.encoder in ("libx264", "libx265"),
    )
    return carry, tuple(notes)


def without_captions(
    carry: CarryPlan, notes: tuple[Handling, ...], reason: str
) -> tuple[CarryPlan, tuple[Handling, ...]]:
    """``carry`` and ``notes`` for output frames that are not the source's frames (deinterlaced
    at field rate, inverse telecined): captions cannot ride frame for frame, so they are
    dropped and the note says why instead of claiming them carried."""
    if not carry.frame_side_data:
        return carry, notes
    options = tuple(o for o in carry.codec_options if o != ("a53cc", "1"))
    carry = dataclasses.replace(carry, frame_side_data=False, codec_options=options)
    notes = tuple(
        dataclasses.replace(n, action=f"WARNING: dropped ({reason})") if n.name == "captions" else n
        for n in notes
    )
    return carry, notes


def is_timecode_track(stream: av.stream.Stream) -> bool:
    """A mov/mp4 tmcd track: it holds the start timecode, which probe reads as the video's
    ``timecode`` tag and the mov/mp4 muxer writes again from that tag, so it is not copied
    as a stream of its own (FFmpeg cannot copy it into another container anyway)."""
    return stream.type == "data" and any(k.lower() == "timecode" for k in stream.metadata)
