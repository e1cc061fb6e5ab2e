"""Colour metadata: what the source says, and what we assume when it says nothing.

Tags are FFmpeg enum values (AVColorRange, AVColorPrimaries, AVColorTransferCharacteristic,
AVColorSpace). Tags the source sets are copied to the output untouched. Where the source is
silent, players guess from the frame height (BT.601 below 720 lines, BT.709 above); since
upscaling moves an SD source into HD sizes, a silent output would be guessed differently from
its source and shift colours. So we resolve the guess once, from the SOURCE height, use it for
both YUV->RGB and RGB->YUV, and write it explicitly on the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from av.video.reformatter import ColorPrimaries, ColorRange, ColorTrc

UNSPECIFIED = 2  # AVCOL_PRI/TRC/SPC_UNSPECIFIED share the value 2
RANGE_UNSPECIFIED, RANGE_LIMITED, RANGE_FULL = 0, 1, 2

# AVColorSpace values -> swscale colourspace names accepted by VideoFrame.reformat.
_MATRIX_TO_SWS = {
    1: "itu709",
    4: "fcc",
    5: "itu601",  # BT470BG
    6: "smpte170m",
    7: "smpte240m",
    9: "bt2020",  # BT2020_NCL
    10: "bt2020",  # BT2020_CL (swscale has one BT.2020 matrix)
}

_MATRIX_NAMES = {
    0: "rgb",
    1: "bt709",
    2: "unspecified",
    4: "fcc",
    5: "bt470bg",
    6: "smpte170m",
    7: "smpte240m",
    8: "ycgco",
    9: "bt2020nc",
    10: "bt2020c",
}


def _enum_name(enum: Any, value: int) -> str:
    for name, member in enum.__members__.items():
        if int(member) == value:
            return name.lower()
    return str(value)


@dataclass(frozen=True)
class ColourInfo:
    """Colour tags of a video stream as FFmpeg enum integers."""

    range: int
    primaries: int
    transfer: int
    matrix: int

    def names(self) -> dict[str, str]:
        return {
            "range": {0: "unspecified", 1: "tv", 2: "pc"}.get(self.range, str(self.range)),
            "primaries": _enum_name(ColorPrimaries, self.primaries),
            "transfer": _enum_name(ColorTrc, self.transfer),
            "matrix": _MATRIX_NAMES.get(self.matrix, str(self.matrix)),
        }

    def resolved(self, source_height: int) -> ColourInfo:
        """Fill unspecified tags the way players would for a source of this height."""
        hd = source_height >= 720
        return ColourInfo(
            range=self.range if self.range != RANGE_UNSPECIFIED else RANGE_LIMITED,
            primaries=self.primaries if self.primaries != UNSPECIFIED else (1 if hd else 6),
            transfer=self.transfer if self.transfer != UNSPECIFIED else (1 if hd else 6),
            matrix=self.matrix if self.matrix != UNSPECIFIED else (1 if hd else 6),
        )

    @property
    def sws_matrix(self) -> str:
        """The swscale colourspace used for YUV<->RGB conversion (default BT.601)."""
        return _MATRIX_TO_SWS.get(self.matrix, "itu601")

    @property
    def sws_range(self) -> ColorRange:
        return ColorRange.JPEG if self.range == RANGE_FULL else ColorRange.MPEG


def colour_of(codec_context: Any, height: int) -> ColourInfo:
    """Read the tags of a decoder context; full-range 'yuvj' formats count as full range."""
    colour_range = int(codec_context.color_range)
    if colour_range == RANGE_UNSPECIFIED and (codec_context.pix_fmt or "").startswith("yuvj"):
        colour_range = RANGE_FULL
    return ColourInfo(
        range=colour_range,
        primaries=int(codec_context.color_primaries),
        transfer=int(codec_context.color_trc),
        matrix=int(codec_context.colorspace),
    )
