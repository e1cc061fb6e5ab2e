"""Is a container file whole? Compare the sizes its top-level elements declare with its size.

Demuxers are lenient by design, which hides truncation: FFmpeg opens an mp4 whose index lost its
last tracks and shows only the video, reports "no video stream" when the cut fell inside the
video track's index, and plays a cut Matroska file up to its last complete cluster with no error
at all. Both formats say how long they are: ISO BMFF (mp4, mov, m4v, 3gp) is a sequence of
top-level boxes, each starting with its size; Matroska/WebM is an EBML header followed by a
Segment element whose size is written when the muxer finishes. A file that ends before what
its elements declare was cut, wherever the cut fell, so this check runs before demuxing and
names the element that was cut.

Nothing is decoded; a few bytes are read at each top-level boundary (``read_at``), so the
check also works on a presigned URL with range requests. It stays silent for other formats,
for elements of unknown size (live Matroska) and for trailing bytes that are not a box.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable

from vsrflow.errors import CorruptMediaError

#: ``read_at(offset, length)``: up to ``length`` bytes of the file from ``offset``; raises
#: ``OSError`` when the file cannot be read (the check is then skipped: opening it will fail
#: with its own, clearer error).
ReadAt = Callable[[int, int], bytes]

#: Box types a QuickTime/ISO BMFF file can start with.
_BMFF_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"styp"}
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_SEGMENT_ID = 0x18538067
#: Bytes read from the start: the EBML header (DocType and versions) fits in them.
_EBML_HEAD_BYTES = 64


def check_complete(read_at: ReadAt, size: int, label: str, *, max_boxes: int = 100_000) -> None:
    """Raise ``CorruptMediaError`` if the ISO BMFF or Matroska file of ``size`` bytes ends
    before its top-level elements do. ``max_boxes`` bounds the walk (one read per box; a
    fragmented mp4 has two boxes per fragment): beyond it the rest is not checked."""
    try:
        head = read_at(0, _EBML_HEAD_BYTES)  # one read serves the format test and EBML
        if len(head) >= 8 and head[4:8] in _BMFF_FIRST_BOXES:
            _check_boxes(read_at, size, label, max_boxes)
        elif head.startswith(_EBML_MAGIC):
            _check_ebml(head, read_at, size, label)
    except OSError:
        return


def _check_boxes(read_at: ReadAt, size: int, label: str, max_boxes: int) -> None:
    offset, has_index = 0, False
    for count in range(max_boxes):
        if offset >= size:
            if not has_index:  # a cut exactly between boxes, before the index
                raise CorruptMediaError(
                    f"{label} is truncated: it has no moov box (the index every mp4/mov "
                    f"needs); it ends after {count} complete boxes, at byte {size}"
                )
            return
        header = read_at(offset, 16)
        if len(header) < 8:
            raise CorruptMediaError(
                f"{label} is truncated: it ends inside a box header at byte {offset} of {size}"
            )
        box_type = header[4:8]
        if not all(0x20 <= b < 0x7F for b in box_type):
            return  # trailing bytes that are not a box (padding some writers leave)
        declared = int.from_bytes(header[0:4], "big")
        header_size = 8
        if declared == 1:  # 64-bit size after the type
            if len(header) < 16:
                raise CorruptMediaError(
                    f"{label} is truncated: it ends inside the header of its "
                    f"{box_type.decode('latin-1')} box at byte {offset} of {size}"
                )
            declared, header_size = int.from_bytes(header[8:16], "big"), 16
        elif declared == 0:  # "extends to the end of the file": complete by definition
            return
        has_index = has_index or box_type == b"moov"
        name = box_type.decode("latin-1")
        if declared < header_size:
            raise CorruptMediaError(
                f"{label} is damaged: its {name} box at byte {offset} declares {declared} bytes"
            )
        if offset + declared > size:
            raise CorruptMediaError(
                f"{label} is truncated: its {name} box at byte {offset} declares {declared} "
                f"bytes but only {size - offset} remain (the file has {size}; "
                f"{offset + declared - size} bytes are missing)"
            )
        offset += declared


def _read_vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at ``pos``: (value, length), or None if cut off.

    Element IDs keep their length marker bit; sizes drop it. A size of all ones means
    'unknown' and is returned as -1."""
    if pos >= len(data) or data[pos] == 0:
        return None
    first = data[pos]
    length = 8 - first.bit_length() + 1
    if pos + length > len(data):
        return None
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return -1, length
    return value, length


def _check_ebml(head: bytes, read_at: ReadAt, size: int, label: str) -> None:
    header_size = _read_vint(head, 4, keep_marker=False)
    if header_size is None or header_size[0] < 0:
        raise CorruptMediaError(
            f"{label} is truncated or damaged inside its EBML header (the file has {size} bytes)"
        )
    segment_at = 4 + header_size[1] + header_size[0]
    segment_head = read_at(segment_at, 12)
    element_id = _read_vint(segment_head, 0, keep_marker=True)
    if element_id is None:
        raise CorruptMediaError(
            f"{label} is truncated: it ends at byte {size}, before its Matroska Segment"
        )
    if element_id[0] != _SEGMENT_ID:
        return  # not a Matroska layout this check understands
    segment_size = _read_vint(segment_head, element_id[1], keep_marker=False)
    if segment_size is None:
        raise CorruptMediaError(
            f"{label} is truncated inside its Matroska Segment header (the file has {size} bytes)"
        )
    if segment_size[0] < 0:
        return  # unknown size (a live recording): nothing declared to compare with
    end = segment_at + element_id[1] + segment_size[1] + segment_size[0]
    if end > size:
        raise CorruptMediaError(
            f"{label} is truncated: its Matroska Segment declares {end} bytes in all but the "
            f"file has {size} ({end - size} bytes are missing)"
        )


def file_reader(path: str) -> ReadAt:
    """``read_at`` for a local file (opened per call: the check reads a handful of times)."""

    def read_at(offset: int, length: int) -> bytes:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    return read_at


def http_reader(url: str, timeout: float = 30.0) -> ReadAt:
    """``read_at`` over HTTP range requests (a presigned S3 GET URL). Errors surface as
    ``OSError`` whose text never holds the URL (it carries a signature)."""

    def read_at(offset: int, length: int) -> bytes:
        request = urllib.request.Request(
            url, headers={"Range": f"bytes={offset}-{offset + length - 1}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if response.status != 206:  # a server ignoring Range would send everything
                    raise OSError(f"range request answered {response.status}")
                return response.read(length)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # range starts at or beyond the end
                return b""
            raise OSError(f"range request failed: HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError) as exc:
            raise OSError(f"range request failed: {type(exc).__name__}") from None

    return read_at
