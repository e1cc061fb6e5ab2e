"""Display orientation: the display matrix a source carries, read and written verbatim.

We upscale frames in their coded orientation and copy the 3x3 display matrix to the output,
so players rotate (or mirror) the result exactly as they did the source: no pixel is rotated
and nothing is lost. PyAV 18 exposes the matrix only on decoded frames (DISPLAYMATRIX side
data); ``VideoStream.set_display_matrix`` writes it back.
"""

from __future__ import annotations

import math
import struct

import av
from av.sidedata.sidedata import Type as FrameSideDataType

DisplayMatrix = tuple[int, ...]


def display_matrix_of(frame: av.VideoFrame) -> DisplayMatrix | None:
    """The 9 int32 values (16.16 / 2.30 fixed point) of a frame's display matrix, if any."""
    for side_data in frame.side_data:
        if side_data.type == FrameSideDataType.DISPLAYMATRIX:
            return struct.unpack("=9i", bytes(side_data)[:36])
    return None


def rotation_of(matrix: DisplayMatrix | None) -> int:
    """Counter-clockwise rotation in whole degrees, (-180, 180] (FFmpeg's
    ``av_display_rotation_get``, rounded rather than truncated)."""
    if matrix is None:
        return 0
    scale0 = math.hypot(matrix[0] / 65536, matrix[3] / 65536)
    scale1 = math.hypot(matrix[1] / 65536, matrix[4] / 65536)
    if scale0 == 0 or scale1 == 0:
        return 0
    angle = -math.degrees(math.atan2(matrix[1] / 65536 / scale1, matrix[0] / 65536 / scale0))
    degrees = round(angle) % 360
    return degrees - 360 if degrees > 180 else degrees
