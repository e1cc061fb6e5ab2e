"""Container completeness (vsrflow.media.structure): every cut of a real file is reported as a
truncation naming the element that was cut, before FFmpeg's lenient demuxers see it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import infra
import media_fixtures as mf
import pytest

from vsrflow import storage
from vsrflow.errors import CorruptMediaError
from vsrflow.media.probe import REMOTE_MAX_BOXES, probe
from vsrflow.media.structure import ReadAt, check_complete, file_reader, http_reader
from vsrflow.storage import S3Config


def _reader(data: bytes) -> ReadAt:
    return lambda offset, length: data[offset : offset + length]


def _cuts(size: int, count: int = 60) -> list[int]:
    """Cut points spread over the whole file, plus the last byte (the smallest possible cut)."""
    return sorted({*range(1, size, max(1, size // count)), size - 1})


@pytest.mark.parametrize(
    "name", ["no_audio_clip", "multitrack_clip", "multitrack_mkv_clip", "vfr_clip"]
)
def test_every_cut_of_a_real_file_is_a_truncation(
    name: str, request: pytest.FixtureRequest
) -> None:
    clip: mf.FixtureInfo = request.getfixturevalue(name)
    data = clip.path.read_bytes()
    check_complete(_reader(data), len(data), "intact")  # the whole file passes
    for cut in _cuts(len(data)):
        if cut < 16:
            continue  # too short to recognise the format: the demuxer rejects it
        with pytest.raises(CorruptMediaError, match="truncated") as caught:
            check_complete(_reader(data[:cut]), cut, "cut")
        assert f"{cut}" in str(caught.value), str(caught.value)


def test_cut_mkv_is_rejected_by_probe_naming_the_missing_bytes(
    multitrack_mkv_clip: mf.FixtureInfo, tmp_path: Path
) -> None:
    """The gap this closes: FFmpeg plays a cut Matroska file up to its last whole cluster with
    no error and no declared frame count, so the probe used to accept the frames it saw."""
    data = multitrack_mkv_clip.path.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    with av.open(str(cut)) as container:  # the demuxer alone sees nothing wrong
        frames = sum(1 for _ in container.decode(video=0))
    assert 0 < frames < multitrack_mkv_clip.frame_count
    missing = len(data) - int(len(data) * 0.8)
    with pytest.raises(
        CorruptMediaError, match=rf"Matroska Segment .*\({missing} bytes are missing\)"
    ):
        probe(cut)


def test_mp4_cut_inside_its_index_is_a_truncation_not_a_missing_stream(
    multitrack_clip: mf.FixtureInfo, tmp_path: Path
) -> None:
    """moov at the end: a cut inside it used to surface as 'no video stream' or as a file
    silently missing its later tracks; now it names the moov box and the missing bytes."""
    data = multitrack_clip.path.read_bytes()
    moov = data.rindex(b"moov") - 4
    cut = tmp_path / "cut.mp4"
    for end in (moov + 200, len(data) - 40):
        cut.write_bytes(data[:end])
        with pytest.raises(CorruptMediaError, match=r"truncated: its moov box"):
            probe(cut)


def test_trailing_padding_after_the_last_box_is_accepted(
    no_audio_clip: mf.FixtureInfo, tmp_path: Path
) -> None:
    padded = tmp_path / "padded.mp4"
    padded.write_bytes(no_audio_clip.path.read_bytes() + b"\x00" * 300)
    assert probe(padded).video.pts == no_audio_clip.pts


def _box(kind: bytes, payload: bytes, *, large: bool = False) -> bytes:
    if large:
        return (1).to_bytes(4, "big") + kind + (16 + len(payload)).to_bytes(8, "big") + payload
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def test_64bit_and_to_the_end_box_sizes() -> None:
    ftyp = _box(b"ftyp", b"isom\x00\x00\x02\x00isom") + _box(b"moov", b"index")
    large = ftyp + _box(b"mdat", b"x" * 100, large=True)
    check_complete(_reader(large), len(large), "f")
    with pytest.raises(CorruptMediaError, match=r"mdat box at byte 33 declares 116 bytes"):
        check_complete(_reader(large[:-1]), len(large) - 1, "f")
    to_end = ftyp + (0).to_bytes(4, "big") + b"mdat" + b"x" * 50  # size 0: up to EOF
    check_complete(_reader(to_end), len(to_end), "f")
    bad = ftyp + (3).to_bytes(4, "big") + b"mdat"
    with pytest.raises(CorruptMediaError, match="damaged: its mdat box at byte 33 declares 3"):
        check_complete(_reader(bad), len(bad), "f")


def test_a_cut_between_boxes_before_the_index_is_a_truncation() -> None:
    """Cut exactly at a box boundary, every box present is whole: only the missing moov
    tells (moov at the end is FFmpeg's default layout)."""
    head = _box(b"ftyp", b"isom\x00\x00\x02\x00isom") + _box(b"mdat", b"x" * 40)
    with pytest.raises(CorruptMediaError, match=r"no moov box .* after 2 complete boxes"):
        check_complete(_reader(head), len(head), "f")


def _ebml(element_id: int, payload: bytes, *, unknown: bool = False) -> bytes:
    """One EBML element: the ID bytes, an 8-byte size (or the 'unknown' marker), the data."""
    size = mf.EBML_UNKNOWN_SIZE if unknown else (len(payload) | 1 << 56).to_bytes(8, "big")
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + size + payload


_EBML_HEADER = b"\x1a\x45\xdf\xa3" + b"\x84" + b"\x42\x86\x81\x01"  # EBMLVersion 1
_CLUSTER, _TIMESTAMP, _BLOCK, _CUES, _TRACKS = 0x1F43B675, 0xE7, 0xA3, 0x1C53BB6B, 0x1654AE6B


def _live(*children: bytes) -> bytes:
    return _EBML_HEADER + _ebml(mf.MATROSKA_SEGMENT_ID, b"".join(children), unknown=True)


def test_matroska_of_unknown_size_is_walked_to_its_end() -> None:
    """A live recording's Segment has the reserved 'unknown' size: its children are walked; an
    unknown-size Cluster ends at the next Segment-level element (here a sized Cluster, then
    Cues); only an element that runs past the end of the file is a truncation."""
    tracks = _ebml(_TRACKS, b"t" * 20)
    open_cluster = _ebml(
        _CLUSTER, _ebml(_TIMESTAMP, b"\x00") + _ebml(_BLOCK, b"b" * 30) * 3, unknown=True
    )
    sized = _ebml(_CLUSTER, _ebml(_TIMESTAMP, b"\x01") + _ebml(_BLOCK, b"c" * 30))
    whole = _live(tracks, open_cluster, sized, _ebml(_CUES, b"q" * 10))
    check_complete(_reader(whole), len(whole), "live")
    cues_at = len(whole) - 22  # 4-byte ID, 8-byte size, 10 bytes
    with pytest.raises(CorruptMediaError, match=rf"its Matroska Cues at byte {cues_at} declares"):
        check_complete(_reader(whole[:-1]), len(whole) - 1, "cut")
    last_block = len(_live(tracks, open_cluster)) - 39
    cut = len(_live(tracks, open_cluster)) - 5
    with pytest.raises(
        CorruptMediaError,
        match=rf"its Matroska SimpleBlock at byte {last_block} \(in the Cluster at byte "
        rf"{len(_live(tracks))}\) declares 39 bytes but only 34 remain .* 5 bytes are missing",
    ):
        check_complete(_reader(whole[:cut]), cut, "cut")
    # Header elements only: a live file cut before its first Cluster has no frames at all.
    head = _live(tracks)
    with pytest.raises(CorruptMediaError, match="before its first Cluster"):
        check_complete(_reader(head), len(head), "cut")
    # Inside an element header.
    cut = len(_live(tracks)) + 6
    with pytest.raises(CorruptMediaError, match=r"inside the header of a Matroska Cluster"):
        check_complete(_reader(whole[:cut]), cut, "cut")


def test_live_matroska_bytes_this_check_cannot_follow_are_left_to_the_demuxer() -> None:
    tracks = _ebml(_TRACKS, b"t" * 20)
    cluster = _ebml(_CLUSTER, _ebml(_TIMESTAMP, b"\x00") + _ebml(_BLOCK, b"b" * 30))
    padded = _live(tracks, cluster) + b"\x00" * 40  # zero padding after the last element
    check_complete(_reader(padded), len(padded), "padded")
    unknown_id = _live(tracks, cluster) + _ebml(0x4321, b"x" * 50)[:-10]  # not a Segment child
    check_complete(_reader(unknown_id), len(unknown_id), "odd")
    # Chained live streams (a recorder that restarted): the second document is walked too.
    second = _live(tracks, cluster)
    chained = _live(tracks, cluster) + second
    check_complete(_reader(chained), len(chained), "chained")
    with pytest.raises(CorruptMediaError, match=rf"Cluster at byte {len(chained) - len(cluster)}"):
        check_complete(_reader(chained[:-3]), len(chained) - 3, "cut")


def test_fragmented_mp4_cut_between_a_moof_and_its_mdat_is_a_truncation() -> None:
    moov = _box(b"ftyp", b"isom\x00\x00\x02\x00isom") + _box(b"moov", b"empty")
    moof = _box(b"moof", _box(b"mfhd", b"\x00" * 8) + _box(b"traf", b"t" * 20))
    whole = moov + moof + _box(b"mdat", b"s" * 100) + moof + _box(b"mdat", b"s" * 80)
    check_complete(_reader(whole), len(whole), "frag")
    head = whole[: -8 - 80]
    with pytest.raises(CorruptMediaError, match=rf"last moof box at byte {len(head) - 52} is"):
        check_complete(_reader(head), len(head), "cut")


def test_other_formats_and_unreadable_files_are_left_to_the_demuxer(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_bytes(b"hello, this is not a container at all")
    check_complete(file_reader(str(text)), text.stat().st_size, "text")

    def unreadable(offset: int, length: int) -> bytes:
        raise OSError("connection reset")

    check_complete(unreadable, 1000, "remote")


# --------------------------------------------------------------------------------------------
# Streamed files: live Matroska/WebM (unknown sizes) and fragmented mp4, made by PyAV


@pytest.fixture(scope="module")
def streams_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("streams")


@pytest.fixture(scope="module")
def live_mkv(streams_dir: Path) -> mf.FixtureInfo:
    return mf.make_live_mkv(streams_dir / "live.mkv")


@pytest.fixture(scope="module")
def live_webm(streams_dir: Path) -> mf.FixtureInfo:
    return mf.make_live_webm(streams_dir / "recording.webm")


@pytest.fixture(scope="module")
def fragmented_mp4(streams_dir: Path) -> mf.FixtureInfo:
    return mf.make_fragmented_mp4(streams_dir / "fragmented.mp4")


STREAMS = ["live_mkv", "live_webm", "fragmented_mp4"]


def _element_starts(data: bytes) -> list[int]:
    """Where the walked elements of a streamed fixture start: top-level boxes of an mp4; the
    Segment children of a live Matroska file and the children of its unknown-size Clusters."""
    if data[4:8] == b"ftyp":
        return [box.offset for box in mf.mp4_boxes(data)]
    segment = mf.matroska_segment(data)
    starts, pos = [], segment.offset + segment.header
    while True:
        elements = mf.ebml_children(data, pos, len(data))
        starts += [element.offset for element in elements]
        if elements[-1].size >= 0:
            return starts
        pos = elements[-1].offset + elements[-1].header  # into an unknown-size Cluster


@pytest.mark.parametrize("name", STREAMS)
def test_every_cut_of_a_streamed_file_is_a_truncation(
    name: str, request: pytest.FixtureRequest
) -> None:
    clip: mf.FixtureInfo = request.getfixturevalue(name)
    data = clip.path.read_bytes()
    starts = set(_element_starts(data))
    check_complete(_reader(data), len(data), "intact")
    cuts = [c for c in _cuts(len(data), 200) if c >= 16 and c not in starts]
    assert len(cuts) > 150
    for cut in cuts:
        with pytest.raises(CorruptMediaError, match="truncated") as caught:
            check_complete(_reader(data[:cut]), cut, "cut")
        assert f"{cut}" in str(caught.value), str(caught.value)


@pytest.mark.parametrize("name", STREAMS)
def test_a_cut_exactly_between_elements_of_a_stream(
    name: str, request: pytest.FixtureRequest
) -> None:
    """The limit of any size check: a live stream cut exactly between two Clusters (or two
    blocks of an unknown-size Cluster, or two fragments) is a shorter stream, whole in every
    element, and is accepted. What is still refused: a cut before the first Cluster (no frames
    at all) and a cut between a moof and the mdat its samples are in."""
    clip: mf.FixtureInfo = request.getfixturevalue(name)
    data = clip.path.read_bytes()
    starts = _element_starts(data)
    if name == "fragmented_mp4":
        kinds = {box.offset: box.kind for box in mf.mp4_boxes(data)}
        for start in starts[2:]:  # after ftyp and moov
            if kinds[start] == "mdat":
                with pytest.raises(CorruptMediaError, match="not followed by the mdat"):
                    check_complete(_reader(data[:start]), start, "cut")
            else:
                check_complete(_reader(data[:start]), start, "cut")
        return
    first_cluster = data.index(mf.MATROSKA_CLUSTER_ID.to_bytes(4, "big"))
    for start in starts:
        if start <= first_cluster:
            with pytest.raises(CorruptMediaError, match="before its first Cluster"):
                check_complete(_reader(data[:start]), start, "cut")
        else:
            check_complete(_reader(data[:start]), start, "cut")


@pytest.mark.parametrize("name", ["live_mkv", "live_webm"])
def test_cut_live_matroska_is_rejected_by_probe(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The reported defect: FFmpeg plays a cut live recording up to its last whole Cluster or
    block with no error, and a Segment of unknown size declares nothing to compare with, so
    the probe used to accept 60 % of the frames as the whole file."""
    clip: mf.FixtureInfo = request.getfixturevalue(name)
    data = clip.path.read_bytes()
    whole = probe(clip.path)
    assert whole.video.pts == clip.pts and whole.video.frame_count == 60
    cut = tmp_path / f"cut{clip.path.suffix}"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with av.open(str(cut)) as container:  # the demuxer alone sees nothing wrong
        frames = sum(1 for _ in container.decode(video=0))
    assert 0 < frames < 60
    element = "Cluster" if name == "live_mkv" else "SimpleBlock"
    with pytest.raises(
        CorruptMediaError,
        match=rf"truncated: its Matroska {element} at byte \d+ .*declares \d+ bytes but only "
        rf"\d+ remain \(the file has {int(len(data) * 0.6)}; \d+ bytes are missing\)",
    ):
        probe(cut)


def test_fragmented_mp4_cut_inside_its_last_fragment_is_rejected_by_probe(
    fragmented_mp4: mf.FixtureInfo, tmp_path: Path
) -> None:
    """Its moov is empty (it declares no samples), so nothing tells the demuxer a fragment is
    missing: a cut inside the last moof fails to open as "Invalid data" (it looks like no
    media at all), one inside the last mdat opens and loses what the cut removed (frames,
    audio, or a decode error), depending on where it falls. Both are named as truncations."""
    data = fragmented_mp4.path.read_bytes()
    whole = probe(fragmented_mp4.path)
    assert whole.video.pts == fragmented_mp4.pts and whole.video.frame_count == 60
    boxes = mf.mp4_boxes(data)
    moof = [box for box in boxes if box.kind == "moof"][-1]
    mdat = [box for box in boxes if box.kind == "mdat"][-1]
    cut = tmp_path / "cut.mp4"
    for end, kind in ((moof.offset + 40, "moof"), (mdat.offset + mdat.size // 2, "mdat")):
        cut.write_bytes(data[:end])
        with pytest.raises(
            CorruptMediaError, match=rf"truncated: its {kind} box at byte .* bytes are missing"
        ):
            probe(cut)


class _Counting:
    """A ``read_at`` that counts its calls and bytes."""

    def __init__(self, read_at: ReadAt) -> None:
        self.read_at, self.reads, self.bytes = read_at, 0, 0

    def __call__(self, offset: int, length: int) -> bytes:
        data = self.read_at(offset, length)
        self.reads += 1
        self.bytes += len(data)
        return data


@pytest.mark.parametrize("name", STREAMS)
def test_when_the_reads_run_out_the_end_of_the_file_is_judged_from_its_tail(
    name: str, request: pytest.FixtureRequest
) -> None:
    """With too few reads to walk from the start (a long file over HTTP), the last fragment
    or Cluster is found in the file's last bytes and walked to the end."""
    clip: mf.FixtureInfo = request.getfixturevalue(name)
    data = clip.path.read_bytes()
    starts = set(_element_starts(data))
    counting = _Counting(_reader(data))
    check_complete(counting, len(data), "intact", max_boxes=3)
    assert counting.reads <= 3
    # Cuts in the second half (the first element found from the end must lie after the
    # point where the walk from the start stopped).
    for cut in [c for c in _cuts(len(data), 60) if c > len(data) // 2 and c not in starts]:
        counting = _Counting(_reader(data[:cut]))
        with pytest.raises(CorruptMediaError, match="truncated") as caught:
            check_complete(counting, cut, "cut", max_boxes=3)
        assert f"{cut}" in str(caught.value) and counting.reads <= 3


def test_cluster_id_bytes_inside_a_block_are_not_taken_for_a_cluster() -> None:
    """From the tail, a Cluster is recognised by its structure (a Timestamp, then Cluster
    children that fit), not by its four ID bytes, which compressed data can contain."""
    tracks = _ebml(_TRACKS, b"t" * 20)
    first = _ebml(_CLUSTER, _ebml(_TIMESTAMP, b"\x00") + _ebml(_BLOCK, b"a" * 30), unknown=True)
    lookalike = _CLUSTER.to_bytes(4, "big") + b"\x81\x05" + b"\xa3\x88" + b"b" * 30
    last = _ebml(_CLUSTER, _ebml(_TIMESTAMP, b"\x01") + _ebml(_BLOCK, lookalike), unknown=True)
    whole = _live(tracks, first, last)
    check_complete(_reader(whole), len(whole), "intact", max_boxes=3)
    cut = len(whole) - 10
    last_at = len(_live(tracks, first))
    with pytest.raises(CorruptMediaError, match=rf"\(in the Cluster at byte {last_at}\)"):
        check_complete(_reader(whole[:cut]), cut, "cut", max_boxes=3)


# --------------------------------------------------------------------------------------------
# The same over S3 presigned URLs (range requests; SeaweedFS started by tests/infra.py)


@pytest.fixture(scope="module")
def s3_config() -> S3Config:
    return S3Config.from_env(infra.ensure_s3())


@pytest.fixture(scope="module")
def s3_bucket(s3_config: S3Config) -> Iterator[str]:
    with infra.temporary_bucket(s3_config.client(), "vsrflow-structure") as name:
        yield name


@pytest.mark.parametrize("name", STREAMS)
def test_cut_streamed_object_is_rejected_over_range_requests(
    name: str, request: pytest.FixtureRequest, s3_config: S3Config, s3_bucket: str
) -> None:
    """A cut upload of a live recording or a fragmented mp4 is refused by the probe through
    range requests on the presigned URL (the message names the s3:// URI, never the signed
    URL); the whole object is accepted with every frame. The walk from the start and, with
    fewer reads than it needs, the judgement from the tail both work over HTTP."""
    clip: mf.FixtureInfo = request.getfixturevalue(name)
    data = clip.path.read_bytes()
    cut_size = int(len(data) * 0.6)
    urls = {}
    for tag, body in (("intact", data), ("cut", data[:cut_size])):
        key = f"{name}/{tag}{clip.path.suffix}"
        s3_config.client().put_object(Bucket=s3_bucket, Key=key, Body=body)
        uri = f"s3://{s3_bucket}/{key}"
        urls[tag] = (uri, storage.presigned_get(uri, s3_config, expires_s=600))

    uri, url = urls["intact"]
    assert probe(url, label=uri, size_bytes=len(data)).video.pts == clip.pts
    uri, url = urls["cut"]
    with pytest.raises(CorruptMediaError, match="is truncated") as caught:
        probe(url, label=uri, size_bytes=cut_size)
    message = str(caught.value)
    assert message.startswith(uri) and "X-Amz" not in message and "Signature" not in message
    assert "bytes are missing" in message

    for max_boxes in (REMOTE_MAX_BOXES, 3):
        counting = _Counting(http_reader(url))
        with pytest.raises(CorruptMediaError, match="is truncated"):
            check_complete(counting, cut_size, uri, max_boxes=max_boxes)
        assert counting.reads <= max_boxes and counting.bytes <= cut_size
