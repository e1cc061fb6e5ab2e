"""Output codec presets: one small record per codec, looked up by name.

Each preset says which encoder to use, which pixel format to use for 8-bit and for deeper
sources (10-bit in stays 10-bit out where the codec allows), how quality and speed are set,
which container holds the per-batch chunks, and which final containers accept it. Codecs that
can store an alpha plane (ProRes 4444, FFV1, VP9 in WebM/Matroska) also name the pixel formats
(and options) used when a source's transparency is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction


@dataclass(frozen=True)
class CodecPreset:
    """How to encode upscaled frames with one codec."""

    name: str
    encoder: str
    pix_fmt_8bit: str
    pix_fmt_deep: str
    quality_option: str | None
    default_quality: int | None
    speed_option: str | None
    default_speed: str | None
    #: Chunks are muxed into this format; mp4/mov keep DTS on B-frames (matroska does not).
    chunk_format: str
    containers: tuple[str, ...]
    extra_options: dict[str, str] = field(default_factory=dict)
    #: Pixel formats with an alpha plane (8-bit, deeper sources); None: no alpha possible.
    alpha_pix_fmts: tuple[str, str] | None = None
    #: Options that replace ``extra_options`` entries when alpha is encoded (ProRes 4444).
    alpha_options: dict[str, str] = field(default_factory=dict)

    def pix_fmt_for(self, bit_depth: int, *, alpha: bool = False) -> str:
        if alpha:
            if self.alpha_pix_fmts is None:
                raise ValueError(f"codec {self.name} cannot store an alpha channel")
            return self.alpha_pix_fmts[0 if bit_depth <= 8 else 1]
        return self.pix_fmt_8bit if bit_depth <= 8 else self.pix_fmt_deep

    @property
    def keeps_alpha(self) -> bool:
        """True when this codec can store an alpha plane."""
        return self.alpha_pix_fmts is not None

    @property
    def needs_even_size(self) -> bool:
        """4:2:0 halves both dimensions of chroma, 4:2:2 the width; both want even sizes.

        Read off a 2x2 format: at PyAV's default 0x0 every plane is 0 wide, which made
        this False for 4:2:0, and an odd outscale/target-height size then failed in the
        encoder of every batch instead of being rounded to even here.

        PyAV is imported here, not at module level: settings validation (and with it the
        control flows, which never encode) reads the presets without loading FFmpeg."""
        import av

        fmt = av.VideoFormat(self.pix_fmt_8bit, 2, 2)
        return any(c.width != 2 or c.height != 2 for c in fmt.components)


CODEC_PRESETS: dict[str, CodecPreset] = {
    p.name: p
    for p in (
        # veryfast, not x264's own medium: on upscaled frames it needs 0.010-0.032 CPU-s per
        # frame against 0.022-0.071 (2.1-2.4x less), writes 7-17 % smaller files at crf 18
        # and stays within 0.33 dB PSNR (four clips; bench/run.py part "encoder"). On a CPU
        # node the encoder takes its cores from the model: this halves the pipeline overhead.
        CodecPreset(
            "h264",
            "libx264",
            "yuv420p",
            "yuv420p10le",
            "crf",
            18,
            "preset",
            "veryfast",
            "mp4",
            ("mp4", "mkv", "mov"),
        ),
        CodecPreset(
            "hevc",
            "libx265",
            "yuv420p",
            "yuv420p10le",
            "crf",
            20,
            "preset",
            "medium",
            "mp4",
            ("mp4", "mkv", "mov"),
            {"x265-params": "log-level=error"},
        ),
        CodecPreset(
            "av1",
            "libsvtav1",
            "yuv420p",
            "yuv420p10le",
            "crf",
            30,
            "preset",
            "8",
            "mp4",
            ("mp4", "mkv"),
        ),
        CodecPreset(
            "prores",
            "prores_ks",
            "yuv422p10le",
            "yuv422p10le",
            None,
            None,
            None,
            None,
            "mov",
            ("mov", "mkv"),
            {"profile": "3"},
            # Alpha: ProRes 4444 (profile 4) with a 16-bit alpha plane, 4:4:4 colour.
            ("yuva444p10le", "yuva444p10le"),
            {"profile": "4"},
        ),
        CodecPreset(
            "ffv1",
            "ffv1",
            "yuv420p",
            "yuv420p10le",
            None,
            None,
            None,
            None,
            "matroska",
            ("mkv",),
            {"level": "3", "slicecrc": "1"},
            ("yuva420p", "yuva420p10le"),
        ),
        # VP9 for the web, and the one delivery codec here that keeps transparency (alpha
        # travels as a second VP9 stream in Matroska BlockAdditions). Constant quality (crf
        # with a zero bitrate). This FFmpeg's libvpx has no high-bit-depth formats: 8-bit
        # output, also for 10-bit sources. Chunks are WebM: mp4 drops the alpha side data.
        CodecPreset(
            "vp9",
            "libvpx-vp9",
            "yuv420p",
            "yuv420p",
            "crf",
            31,
            None,
            None,
            "webm",
            ("webm", "mkv"),
            {"b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"},
            ("yuva420p", "yuva420p"),
        ),
    )
}

#: Output container names by file extension.
CONTAINER_BY_EXTENSION = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mkv": "mkv",
    ".mov": "mov",
    ".webm": "webm",
}
#: FFmpeg muxer names for our container names.
MUXER_BY_CONTAINER = {"mp4": "mp4", "mkv": "matroska", "mov": "mov", "webm": "webm"}
#: Muxers of the Matroska family (WebM is a Matroska subset written by the same muxer).
MATROSKA_MUXERS = ("matroska", "webm")


def get_codec(name: str) -> CodecPreset:
    """The preset for ``name`` (accepts preset names and encoder names like 'libx264')."""
    for preset in CODEC_PRESETS.values():
        if name in (preset.name, preset.encoder):
            return preset
    raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODEC_PRESETS)}")


def alpha_codecs() -> str:
    """The codecs that keep transparency, with their containers, for messages."""
    return ", ".join(
        f"{p.name} ({'/'.join('.' + c for c in p.containers)})"
        for p in CODEC_PRESETS.values()
        if p.keeps_alpha
    )


def exact_time_options(muxer: str, time_base: Fraction) -> dict[str, str]:
    """mp4/mov write a chunk's start offset in an edit list in the movie timescale, which is
    milliseconds by default: a chunk starting at 35976/90000 s came back at 35910. Using the
    source time base's denominator as movie timescale keeps the offset exact.

    Matroska by default shifts EVERY stream so the first timestamp is not negative: an mp4
    source's AAC priming packet at -21 ms moved all video 21 ms later. Matroska stores negative
    timestamps fine (FFmpeg's own AAC encodes do), so that shift is disabled."""
    if muxer in ("mp4", "mov") and time_base.numerator == 1:
        return {"movie_timescale": str(time_base.denominator)}
    if muxer in MATROSKA_MUXERS:
        return {"avoid_negative_ts": "disabled"}
    return {}


@dataclass(frozen=True)
class EncoderSettings:
    """User-facing encoder choice; ``None`` means the preset's default. ``alpha`` is what to
    do with a source's alpha channel (keep, flatten, drop: see ``vsrflow.media.alpha``)."""

    codec: str = "h264"
    quality: int | None = None
    speed: str | None = None
    alpha: str = "keep"

    def options(self, *, alpha: bool = False) -> dict[str, str]:
        """Encoder options; ``alpha``: for frames with an alpha plane (ProRes 4444...)."""
        preset = get_codec(self.codec)
        opts = dict(preset.extra_options)
        if alpha:
            opts.update(preset.alpha_options)
        if preset.quality_option:
            q = self.quality if self.quality is not None else preset.default_quality
            opts[preset.quality_option] = str(q)
        if preset.speed_option:
            opts[preset.speed_option] = self.speed or str(preset.default_speed)
        return opts

    def identity(self) -> dict[str, object]:
        """What determines the encoded bytes (part of the batch cache key)."""
        return {"encoder": get_codec(self.codec).encoder, "options": self.options()}
