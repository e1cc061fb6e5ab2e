"""Is a container file whole? Compare the sizes its elements declare with its size.

Demuxers are lenient by design, which hides truncation: FFmpeg opens an mp4 whose index lost its
last tracks and shows only the video, reports "no video stream" when the cut fell inside the
video track's index, and plays a cut Matroska file up to its last complete cluster with no error
at all. Both formats say how long they are: ISO BMFF (mp4, mov, m4v, 3gp) is a sequence of
top-level boxes, each starting with its size; Matroska/WebM is an EBML header followed by a
Segment element whose size is written when the muxer finishes. A file that ends before what
its elements declare was cut, wherever the cut fell, so this check runs before demuxing and
names the element that was cut.

Streamed files need a walk to their end. A fragmented mp4 (``frag_keyframe+empty_moov``, DASH,
CMAF) is a chain of moof/mdat boxes: the top-level walk reaches the last one, and a file that
ends right after a moof has lost that fragment's samples. A live Matroska/WebM file (browser
MediaRecorder, ``ffmpeg -f matroska`` to a pipe or with ``-live 1``, streaming muxers) has a
Segment of *unknown* size (its size field is all ones: the muxer could not seek back to fill
it in), so the walk goes through the Segment's children (SeekHead, Info, Tracks, Cluster,
Cues...) to the end of the file; a Cluster of unknown size (MediaRecorder writes those) is
walked through its own children (Timestamp, SimpleBlock, BlockGroup...) until the next
Segment-level element or the end of the file. An element whose declared size runs past the end
of the file is a truncation. A cut that falls exactly between two elements of such a stream
cannot be told from a stream that stopped there, and is accepted.

Nothing is decoded; only element headers are read (``read_at``), so the check also works on a
presigned URL with range requests. Reads go through a window that grows (256 bytes doubling up
to 256 KiB) while headers are close together (the blocks of an unknown-size Cluster, small
Clusters) and shrinks back to the header itself after a big skip (a 5 MB Cluster, an mdat), so
a walk costs one read per large element or per window of small ones. ``max_boxes`` caps the
reads (vsrflow.media.probe passes 64 for URLs). When they run out before the end of the file,
the last two reads fetch the file's last 1 MiB and, if needed, the 7 MiB before it; the last
moof box or Cluster found there (recognised by its structure, not by its ID bytes alone) is
walked to the end of the file, so the last element is judged at a bounded cost; a file whose
last fragment or Cluster starts more than 8 MiB before its end is then not checked.

Measured cost (SeaweedFS on loopback: ~1 ms per small range request, ~3 ms per 256 KiB; a
real S3 endpoint answers in tens of ms, so count the requests): a 100 MB, 9-minute 720p
stream walked whole takes 202 reads of 16 bytes (0.2 s) as a fragmented mp4 with 100
fragments, and 380-410 reads streaming 91-100 MiB (1.3 s) as a live mkv whose 2,800 Clusters
of 37 KB sit within the read-ahead (with or without unknown-size Clusters). Under the 64-read
URL cap the same files cost 63-64 reads, 8-14 MiB and 0.1-0.2 s, the end judged from the tail.
Locally the default cap (100,000 reads) walks every file to its end.

The check stays silent for other formats and for bytes that are not elements (padding after
the last box, an ID this check does not know).
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
_EBML_ID = 0x1A45DFA3
_SEGMENT_ID = 0x18538067
_CLUSTER_ID = 0x1F43B675
#: Bytes read from the start: the EBML header (DocType and versions) fits in them.
_EBML_HEAD_BYTES = 64
#: An EBML element header: a 1-4 byte ID and a 1-8 byte size.
_EBML_HEADER_BYTES = 12

#: Children of a Matroska Segment (level 1), by ID. Void and CRC-32 may appear at any level.
_SEGMENT_CHILDREN = {
    0x114D9B74: "SeekHead",
    0x1549A966: "Info",
    0x1654AE6B: "Tracks",
    _CLUSTER_ID: "Cluster",
    0x1C53BB6B: "Cues",
    0x1941A469: "Attachments",
    0x1043A770: "Chapters",
    0x1254C367: "Tags",
    0xEC: "Void",
    0xBF: "CRC-32",
}
#: Children of a Cluster: what an unknown-size Cluster holds until the next Segment child.
_CLUSTER_CHILDREN = {
    0xE7: "Timestamp",
    0x5854: "SilentTracks",
    0xA7: "Position",
    0xAB: "PrevSize",
    0xA3: "SimpleBlock",
    0xA0: "BlockGroup",
    0xAF: "EncryptedBlock",
    0xEC: "Void",
    0xBF: "CRC-32",
}

#: Read-ahead of the window: headers closer than ``_NEAR`` bytes to the last read count as
#: dense and double the read-ahead (from ``_MIN_AHEAD`` up to ``_MAX_AHEAD``); a farther one
#: resets it, so a walk over large elements reads only their headers.
_NEAR = 64 * 1024
_MIN_AHEAD = 256
_MAX_AHEAD = 256 * 1024


#: When the walk's reads run out before the end of the file (a long file over HTTP), the last
#: elements are found from the end instead: the file's last ``_TAIL_SPANS[0]`` bytes are read,
#: then, if no element start was recognised in them, the bytes before up to ``_TAIL_SPANS[1]``.
#: ``_TAIL_READS`` of the ``max_boxes`` reads are kept for this.
_TAIL_SPANS = (1024 * 1024, 8 * 1024 * 1024)
_TAIL_READS = len(_TAIL_SPANS)


class _ReadBudgetSpent(Exception):
    """The walk used the reads it was allowed; ``offset`` is where it needed the next one."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class _Window:
    """Element-header reads for one walk, served from the last read where they fall inside it."""

    def __init__(
        self, read_at: ReadAt, size: int, max_reads: int, *, start: int = 0, data: bytes = b""
    ) -> None:
        self._read_at, self._size, self._left = read_at, size, max_reads
        self._start, self._data, self._ahead = start, data, 0

    def get(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer only at the end of the file)."""
        end = self._start + len(self._data)
        want = min(offset + length, self._size)
        if self._start <= offset and want <= end:
            return self._data[offset - self._start : want - self._start]
        if self._left <= 0:
            raise _ReadBudgetSpent(offset)
        gap = offset - end
        if 0 <= gap <= _NEAR:
            self._ahead = min(_MAX_AHEAD, max(2 * self._ahead, _MIN_AHEAD))
        else:
            self._ahead = 0
        self._left -= 1
        self._start, self._data = offset, self._read_at(offset, length + self._ahead)
        return self._data[:length]


def check_complete(read_at: ReadAt, size: int, label: str, *, max_boxes: int = 100_000) -> None:
    """Raise ``CorruptMediaError`` if the ISO BMFF or Matroska file of ``size`` bytes ends
    before its elements do.

    ``max_boxes`` bounds the reads (calls of ``read_at``): one per large element or per
    window of small ones (a fragmented mp4 needs about one per fragment). When they run out
    before the end of the file, the last reads go to its end: the last fragment or Cluster is
    recognised there and walked to the end of the file (see ``_TAIL_SPANS``); when none is,
    the rest is not checked."""
    window = _Window(read_at, size, max(1, max_boxes - _TAIL_READS))
    kind = ""
    try:
        head = window.get(0, _EBML_HEAD_BYTES)  # one read serves the format test and EBML
        if len(head) >= 8 and head[4:8] in _BMFF_FIRST_BOXES:
            kind = "mp4"
            _check_boxes(window, size, label)
        elif head.startswith(_EBML_MAGIC):
            kind = "matroska"
            _check_ebml(window, 0, size, label)
    except _ReadBudgetSpent as spent:
        try:
            _check_tail(read_at, size, label, kind, spent.offset)
        except (OSError, _ReadBudgetSpent):
            return
    except OSError:
        return


def _check_tail(read_at: ReadAt, size: int, label: str, kind: str, floor: int) -> None:
    """Judge the end of a file whose walk stopped at ``floor``: find the last moof box or
    Matroska Cluster in its last bytes and walk from there to the end of the file.

    A candidate counts only when its structure checks out: a moof box whose first child is a
    16-byte mfhd; a Cluster whose children are Cluster children, starting with a Timestamp.
    The ID bytes alone can occur inside compressed data; with those checks a false match
    within the tail is vanishingly unlikely (2^-45 per byte position for a Cluster)."""
    if kind not in ("mp4", "matroska"):
        return
    start, data = size, b""
    for span in _TAIL_SPANS:
        if start <= floor:
            return
        begin = max(floor, size - span)
        chunk = read_at(begin, start - begin)
        if len(chunk) != start - begin:
            return  # a short read would shift every offset after it
        data, start = chunk + data, begin
        window = _Window(read_at, size, 0, start=start, data=data)
        needle = b"moof" if kind == "mp4" else _CLUSTER_ID.to_bytes(4, "big")
        found = len(data)
        while (found := data.rfind(needle, 0, found)) >= 0:
            if kind == "mp4" and found >= 4:
                at = start + found - 4
                if data[found + 4 : found + 12] == b"\x00\x00\x00\x10mfhd":
                    _check_boxes(window, size, label, offset=at, has_index=True)
                    return
            elif kind == "matroska" and _is_cluster(window, start + found, size):
                chained = _check_live_segment(window, start + found, size, label)
                _check_ebml(window, chained, size, label)
                return


def _is_cluster(window: _Window, offset: int, size: int) -> bool:
    """Whether a Cluster starts at ``offset``: its children, up to its end or the file's, are
    Cluster children and the first (after a CRC-32 or Void, which FFmpeg writes) is a
    Timestamp of at most 8 bytes."""
    header = _ebml_header(window, offset, size, "", "", quiet=True)
    if header is None or header[0] != _CLUSTER_ID:
        return False
    unknown = header[2] < 0
    pos = offset + header[1]
    end = size if unknown else pos + header[2]
    first = True
    while pos < min(end, size):
        child = _ebml_header(window, pos, size, "", "", quiet=True)
        if child is None:
            return False
        if first and child[0] not in (0xBF, 0xEC) and not (child[0] == 0xE7 and child[2] <= 8):
            return False
        if child[0] not in _CLUSTER_CHILDREN:  # where an unknown-size Cluster ends
            return unknown and child[0] in _SEGMENT_CHILDREN and not first
        if child[2] < 0:
            return False
        first = first and child[0] != 0xE7
        pos += child[1] + child[2]
    if first:
        return False
    # Children fill a whole Cluster exactly; a cut one (or a cut Cluster) reaches past the end.
    return pos >= size if unknown or end > size else pos == end


def _check_boxes(
    window: _Window, size: int, label: str, *, offset: int = 0, has_index: bool = False
) -> None:
    last = (b"", 0)
    count = 0
    while True:
        if offset >= size:
            if not has_index:  # a cut exactly between boxes, before the index
                raise CorruptMediaError(
                    f"{label} is truncated: it has no moov box (the index every mp4/mov "
                    f"needs); it ends after {count} complete boxes, at byte {size}"
                )
            if last[0] == b"moof":  # a cut exactly between a fragment's moof and its mdat
                raise CorruptMediaError(
                    f"{label} is truncated: its last moof box at byte {last[1]} is not followed "
                    f"by the mdat holding that fragment's samples (the file ends at byte {size})"
                )
            return
        header = window.get(offset, 16)
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
        last = (box_type, offset)
        offset += declared
        count += 1


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


def _ebml_header(
    window: _Window, offset: int, size: int, label: str, where: str, *, quiet: bool = False
) -> tuple[int, int, int] | None:
    """The element header at ``offset``: (ID, header length, data size; -1 if unknown).

    None where the bytes are no element header (a zero byte or an ID longer than Matroska's
    four bytes: padding, or data this check cannot follow); a header cut by the end of the
    file is a truncation."""
    header = window.get(offset, _EBML_HEADER_BYTES)
    if not header or header[0] == 0 or 9 - header[0].bit_length() > 4:
        return None
    element_id = _read_vint(header, 0, keep_marker=True)
    data_size = None if element_id is None else _read_vint(header, element_id[1], keep_marker=False)
    if element_id is None or data_size is None:
        id_length = 9 - header[0].bit_length()
        if quiet or (len(header) > id_length and header[id_length] == 0):
            return None  # an invalid size, not a cut (or the caller only asks)
        name = "element"
        if element_id is not None:
            known = _SEGMENT_CHILDREN.get(element_id[0]) or _CLUSTER_CHILDREN.get(element_id[0])
            name = known or name
        raise CorruptMediaError(
            f"{label} is truncated: it ends inside the header of a Matroska {name} at byte "
            f"{offset} {where}(the file has {size} bytes)"
        )
    return element_id[0], element_id[1] + data_size[1], data_size[0]


def _check_ebml(window: _Window, start: int | None, size: int, label: str) -> None:
    """The EBML documents from ``start``: one, or several chained live streams."""
    while start is not None:
        start = _check_document(window, start, size, label)


def _check_document(window: _Window, start: int, size: int, label: str) -> int | None:
    """An EBML document at ``start``: its header, then its Segment. Returns where a next
    document starts (a live stream chained after this one), else None."""
    head = window.get(start, _EBML_HEAD_BYTES)
    header_size = _read_vint(head, 4, keep_marker=False)
    if header_size is None or header_size[0] < 0:
        raise CorruptMediaError(
            f"{label} is truncated or damaged inside its EBML header (the file has {size} bytes)"
        )
    segment_at = start + 4 + header_size[1] + header_size[0]
    segment_head = window.get(segment_at, _EBML_HEADER_BYTES)
    element_id = _read_vint(segment_head, 0, keep_marker=True)
    if element_id is None:
        raise CorruptMediaError(
            f"{label} is truncated: it ends at byte {size}, before its Matroska Segment"
        )
    if element_id[0] != _SEGMENT_ID:
        return None  # not a Matroska layout this check understands
    segment_size = _read_vint(segment_head, element_id[1], keep_marker=False)
    if segment_size is None:
        raise CorruptMediaError(
            f"{label} is truncated inside its Matroska Segment header (the file has {size} bytes)"
        )
    children_at = segment_at + element_id[1] + segment_size[1]
    if segment_size[0] < 0:  # unknown size (a live recording): walk it to the end
        return _check_live_segment(window, children_at, size, label)
    end = children_at + segment_size[0]
    if end > size:
        raise CorruptMediaError(
            f"{label} is truncated: its Matroska Segment declares {end} bytes in all but the "
            f"file has {size} ({end - size} bytes are missing)"
        )
    return None


def _check_live_segment(window: _Window, offset: int, size: int, label: str) -> int | None:
    """Walk the children of an unknown-size Segment from ``offset`` to the end of the file;
    returns where a chained EBML document starts, if one does."""
    cluster_at: int | None = None  # the unknown-size Cluster being walked, if any
    clusters = 0
    while True:
        if offset >= size:
            if not clusters:  # header elements only: every frame is missing
                raise CorruptMediaError(
                    f"{label} is truncated: its live Matroska Segment (of unknown size) ends "
                    f"at byte {size}, before its first Cluster"
                )
            return None
        where = f"(in the Cluster at byte {cluster_at}) " if cluster_at is not None else ""
        header = _ebml_header(window, offset, size, label, where)
        if header is None:
            return None
        element_id, header_length, declared = header
        if cluster_at is not None and element_id not in _CLUSTER_CHILDREN:
            cluster_at, where = None, ""  # the unknown-size Cluster ends where its parent's
        if cluster_at is not None:  # children resume (or a new EBML document starts)
            name = _CLUSTER_CHILDREN[element_id]
        elif element_id == _EBML_ID:  # chained live streams: another document follows
            return offset
        elif element_id in _SEGMENT_CHILDREN:
            name = _SEGMENT_CHILDREN[element_id]
        else:
            return None  # an element this check does not know: leave the rest to the demuxer
        if declared < 0:
            if element_id != _CLUSTER_ID or cluster_at is not None:
                return None  # only Segments and Clusters may have an unknown size
            cluster_at = offset
            clusters += 1
            offset += header_length
            continue
        end = offset + header_length + declared
        if end > size:
            raise CorruptMediaError(
                f"{label} is truncated: its Matroska {name} at byte {offset} {where}declares "
                f"{end - offset} bytes but only {size - offset} remain (the file has {size}; "
                f"{end - size} bytes are missing)"
            )
        clusters += element_id == _CLUSTER_ID
        offset = end


def file_reader(path: str) -> ReadAt:
    """``read_at`` for a local file (opened per call: a walk reads a few hundred times per
    100 MB at most, fewer where its elements are large)."""

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
