"""Archive properties (issue 10, items 3-7): what a master carries besides its pixels reaches the
output of the real pipeline (probe -> make_plan -> upscale_batch per batch -> assemble), and the
plan, manifest and summary say what was done with each.

Fixtures are made here with PyAV, tiny (64x48, 8 frames, two batches each), so every run takes
seconds on a CPU with the real realesr-animevideov3 weights:

* anamorphic sources: x264 with a sample aspect ratio (VUI and mp4 ``pasp``);
* HDR10: x265 10-bit, BT.2020 / PQ tags, mastering display and MaxCLL/MaxFALL SEI written
  through ``x265-params``; HLG: the same with the ARIB STD-B67 transfer and no static metadata;
* A/53 captions: a CEA-608 byte pair per frame, different on every frame, in an H.264 SEI
  (``user_data_registered_itu_t_t35``, "GA94") put in front of each access unit by hand: PyAV
  cannot attach side data to a frame it encodes, but the H.264 decoder exports these SEI as
  ``A53_CC`` frame side data, exactly as it does for a broadcast recording;
* timecode: the ``timecode`` tag of the video stream, which the mp4/mov muxer writes as a
  tmcd track and the demuxer reads back as that tag;
* 4:2:2 10-bit ProRes 422 HQ in mov.

Every assertion reads the OUTPUT file back: frame count and pts, SAR/DAR, side data of the
decoded frames, colour tags, pixel format, timecode.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from av.sidedata.sidedata import Type as SideDataType
from av.video.frame import PictureType

from vsrflow.engine import EngineSettings, Upscaler
from vsrflow.errors import AssemblyError
from vsrflow.job import JobPlan, UpscaleJob, make_plan
from vsrflow.media.assemble import assemble, check_output_compatible, verify_output
from vsrflow.media.carry import ContentLight, MasteringDisplay, read_frame_side_data
from vsrflow.media.codecs import EncoderSettings, get_codec
from vsrflow.media.probe import MediaInfo, probe, sample_aspect_ratio_of
from vsrflow.models import LoadedModel, get_model
from vsrflow.pipeline import upscale_batch
from vsrflow.plan import chunk_name
from vsrflow.settings import UpscaleSettings

ENGINE = EngineSettings(precision="auto", micro_batch=3)
WIDTH, HEIGHT, FRAMES = 64, 48, 8
#: Frames per batch: two batches per clip, the boundary inside a micro-batch.
BATCH = 5
#: x265 master-display of a P3-D65 1000-nit grading display (the HDR10 example of the x265
#: documentation) and the content light level the fixture declares.
MASTER_DISPLAY = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
MAX_CLL = (1000, 400)
#: AVColorPrimaries / AVColorTransferCharacteristic / AVColorSpace numbers.
BT2020, PQ, HLG, BT2020NC = 9, 16, 18, 9
TIMECODE = "01:02:03:04"


# --------------------------------------------------------------------------------------------
# Fixtures


def _picture(n: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A moving gradient: every frame differs, smooth enough for the model."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 4 + n * 9) % 256, (y * 5 + n * 3) % 256, ((x + y) * 2) % 256], -1)
    return rgb.astype(np.uint8)


def _odd_parity(byte: int) -> int:
    return byte | (0x80 if bin(byte).count("1") % 2 == 0 else 0)


def caption_of(n: int) -> bytes:
    """The cc_data triplet of frame ``n``: a valid field-1 CEA-608 pair, unique per frame."""
    return bytes([0xFC, _odd_parity(0x41 + n), _odd_parity(0x61 + n)])


def _a53_sei(cc: bytes) -> bytes:
    """An Annex B H.264 SEI NAL: user_data_registered_itu_t_t35 (USA, ATSC "GA94", cc_data)
    with one cc triplet; no emulation prevention needed (no two zero bytes in a row)."""
    payload = bytes([0xB5, 0x00, 0x31]) + b"GA94" + bytes([0x03, 0x40 | 1, 0xFF]) + cc + b"\xff"
    return b"\x00\x00\x00\x01" + bytes([0x06, 0x04, len(payload)]) + payload + b"\x80"


def make_clip(
    path: Path,
    *,
    encoder: str = "libx264",
    pix_fmt: str = "yuv420p",
    sar: Fraction | None = None,
    options: dict[str, str] | None = None,
    colour: tuple[int, int, int] | None = None,
    captions: bool = False,
    metadata: dict[str, str] | None = None,
    rate: Fraction | int = 25,
) -> Path:
    """FRAMES frames of :func:`_picture` at ``rate`` fps, with the properties asked for.

    ``colour``: (primaries, transfer, matrix) tags; ``captions``: :func:`caption_of` on each
    frame (by pts) as A/53 SEI; ``metadata``: video stream tags (``timecode``)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
        cc = stream.codec_context
        if sar is not None:
            cc.sample_aspect_ratio = sar
        if colour is not None:
            cc.color_primaries, cc.color_trc, cc.colorspace = colour
            cc.color_range = 1
        for key, value in (metadata or {}).items():
            stream.metadata[key] = value
        for n in range(FRAMES + 1):
            frame = None
            if n < FRAMES:
                frame = av.VideoFrame.from_ndarray(_picture(n), format="rgb24").reformat(
                    format=pix_fmt
                )
                frame.pts = n
                if colour is not None:
                    frame.color_primaries, frame.color_trc, frame.colorspace = colour
                    frame.color_range = 1
            for packet in stream.encode(frame):
                if captions:
                    stamped = av.Packet(_a53_sei(caption_of(int(packet.pts))) + bytes(packet))
                    stamped.pts, stamped.dts = packet.pts, packet.dts
                    stamped.time_base = packet.time_base
                    stamped.is_keyframe = packet.is_keyframe
                    stamped.stream = stream
                    packet = stamped
                out.mux(packet)
    return path


def hdr10_clip(path: Path) -> Path:
    return make_clip(
        path,
        encoder="libx265",
        pix_fmt="yuv420p10le",
        colour=(BT2020, PQ, BT2020NC),
        options={
            "x265-params": f"log-level=error:hdr10=1:master-display={MASTER_DISPLAY}:"
            f"max-cll={MAX_CLL[0]},{MAX_CLL[1]}"
        },
    )


def hlg_clip(path: Path) -> Path:
    return make_clip(
        path,
        encoder="libx265",
        pix_fmt="yuv420p10le",
        colour=(BT2020, HLG, BT2020NC),
        options={"x265-params": "log-level=error"},
    )


# --------------------------------------------------------------------------------------------
# The pipeline


@pytest.fixture(scope="module")
def model(shared_model: Callable[[str], Path]) -> LoadedModel:
    return get_model(str(shared_model("realesr-animevideov3.pth")), progress=False)


@pytest.fixture(scope="module")
def upscaler(model: LoadedModel) -> Upscaler:
    return Upscaler(model.descriptor, settings=ENGINE, device="cpu")


def run(
    source: Path,
    output: Path,
    upscaler: Upscaler,
    model: LoadedModel,
    *,
    codec: str = "h264",
    square_pixels: bool = False,
) -> tuple[MediaInfo, JobPlan, Path]:
    """probe -> plan -> every batch -> assemble (assembly verifies the output itself)."""
    info = probe(source)
    encoder = EncoderSettings(codec=codec)
    check_output_compatible(info, output, codec, square_pixels=square_pixels)
    plan = make_plan(
        info,
        UpscaleJob(model="x", engine=ENGINE, encoder=encoder, square_pixels=square_pixels),
        weights_sha256=model.weights_sha256,
        model_scale=model.scale,
        source_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
        frames_per_batch=BATCH,
    )
    assert len(plan.batches) == 2
    chunks = [
        upscale_batch(
            plan.video,
            batch,
            upscaler,
            output.parent / "chunks" / chunk_name(batch),
            encoder=encoder,
            out_size=plan.out_size,
        ).chunk
        for batch in plan.batches
    ]
    report = assemble(plan.output_media(info), chunks, output)
    assert report.frames == FRAMES
    return info, plan, output


def stream_facts(path: Path) -> dict[str, object]:
    """What a player reads from the output's video stream, and every frame's pts."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        frames = list(container.decode(stream))
        sar = sample_aspect_ratio_of(stream)  # what a player uses: container, then bitstream
        return {
            "size": (cc.width, cc.height),
            "sar": sar,
            "dar": Fraction(cc.width, cc.height) * (sar or 1),
            "pix_fmt": cc.pix_fmt,
            "codec": cc.name,
            "colour": (cc.color_primaries, cc.color_trc, cc.colorspace),
            "times": [Fraction(f.pts) * stream.time_base for f in frames],
            "captions": {
                Fraction(f.pts) * stream.time_base: bytes(sd)
                for f in frames
                for sd in f.side_data
                if sd.type == SideDataType.A53_CC
            },
            "tags": dict(stream.metadata),
        }


def source_times(path: Path) -> list[Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [Fraction(f.pts) * stream.time_base for f in container.decode(stream)]


def by_name(plan: JobPlan) -> dict[str, dict[str, str]]:
    return {p["property"]: p for p in plan.properties_description()}


# --------------------------------------------------------------------------------------------
# 3. Sample aspect ratio


@pytest.mark.parametrize(
    ("sar", "codec", "suffix"),
    [
        (Fraction(8, 9), "h264", ".mp4"),
        (Fraction(32, 27), "h264", ".mp4"),
        (Fraction(40, 33), "h264", ".mp4"),
        (Fraction(32, 27), "hevc", ".mkv"),  # Matroska: display width/height
        (Fraction(8, 9), "prores", ".mov"),  # no SAR in ProRes: the mov pasp box alone
        (Fraction(32, 27), "av1", ".mp4"),  # no SAR in AV1: the mp4 pasp box alone
    ],
)
def test_anamorphic_keeps_its_display_aspect_ratio(
    sar: Fraction, codec: str, suffix: str, tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    """Default: the upscaled geometry stays anamorphic and the SAR is written, DAR exact."""
    source = make_clip(tmp_path / "anamorphic.mp4", sar=sar)
    info, plan, output = run(
        source, tmp_path / "out" / f"out{suffix}", upscaler, model, codec=codec
    )
    dar = Fraction(WIDTH, HEIGHT) * sar
    assert info.video.sample_aspect_ratio == sar and info.video.display_aspect_ratio == dar
    facts = stream_facts(output)
    assert facts["size"] == (WIDTH * 4, HEIGHT * 4) and facts["sar"] == sar
    assert facts["dar"] == dar
    assert facts["times"] == source_times(source)
    handled = by_name(plan)["sample aspect ratio"]
    assert handled["output"] == f"SAR {sar.numerator}:{sar.denominator} written " + (
        f"(DAR {dar.numerator}:{dar.denominator} kept)"
    )
    assert probe(output).video.display_aspect_ratio == dar


@pytest.mark.parametrize(
    ("codec", "suffix"),
    [("ffv1", ".mkv"), ("prores", ".mkv"), ("vp9", ".webm"), ("av1", ".mkv")],
)
def test_matroska_without_a_bitstream_sar_is_refused_unless_square_pixels(
    codec: str, suffix: str, tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    """The documented limit: the Matroska muxer writes the display size from AVStream's SAR,
    which PyAV cannot set, so a codec without a SAR in its bitstream (ProRes, FFV1, VP9, AV1)
    loses it there. Proved by encoding one (the SAR is set on the encoder: none comes back),
    then refused before any compute; ``--square-pixels`` is the way through."""
    probe_file = tmp_path / f"probe{suffix}"
    preset = get_codec(codec)
    with av.open(str(probe_file), "w") as out:
        stream = out.add_stream(preset.encoder, rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, preset.pix_fmt_8bit
        stream.codec_context.sample_aspect_ratio = Fraction(8, 9)
        out.mux(stream.encode(av.VideoFrame(WIDTH, HEIGHT, preset.pix_fmt_8bit)))
        out.mux(stream.encode(None))
    with av.open(str(probe_file)) as written:
        assert sample_aspect_ratio_of(written.streams.video[0]) in (None, 1)

    source = make_clip(tmp_path / "anamorphic.mp4", sar=Fraction(8, 9))
    info = probe(source)
    with pytest.raises(ValueError, match="has non-square pixels \\(SAR 8:9\\)") as refused:
        check_output_compatible(info, tmp_path / f"out{suffix}", codec)
    assert "use --square-pixels" in str(refused.value) and "\n" not in str(refused.value)
    check_output_compatible(info, tmp_path / f"out{suffix}", codec, square_pixels=True)
    _, _, output = run(
        source, tmp_path / "out" / f"out{suffix}", upscaler, model, codec=codec, square_pixels=True
    )
    width, height = stream_facts(output)["size"]
    assert abs(width - Fraction(WIDTH, HEIGHT) * Fraction(8, 9) * height) <= 1


@pytest.mark.parametrize("sar", [Fraction(8, 9), Fraction(32, 27), Fraction(40, 33)])
def test_square_pixels_resamples_to_the_same_display_aspect_ratio(
    sar: Fraction, tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    """``size.square_pixels``: square pixels, height kept, even width; the DAR is the source's
    to within the rounding of the width to an even number of pixels (one pixel either way)."""
    source = make_clip(tmp_path / "anamorphic.mp4", sar=sar)
    _, plan, output = run(source, tmp_path / "out" / "out.mp4", upscaler, model, square_pixels=True)
    dar = Fraction(WIDTH, HEIGHT) * sar
    facts = stream_facts(output)
    width, height = facts["size"]
    assert height == HEIGHT * 4 and width % 2 == 0 and facts["sar"] in (None, 1)
    assert abs(Fraction(width, height) - dar) <= Fraction(1, height)
    assert abs(width - dar * height) <= 1
    assert facts["times"] == source_times(source)
    assert "resampled to square pixels" in by_name(plan)["sample aspect ratio"]["output"]


def test_square_pixels_setting_reaches_the_job() -> None:
    settings = UpscaleSettings.model_validate({"size": {"square_pixels": True}})
    assert UpscaleJob.from_settings(settings).square_pixels


# --------------------------------------------------------------------------------------------
# 4. HDR


def static_metadata(path: Path) -> tuple[MasteringDisplay | None, ContentLight | None, int]:
    """Mastering display and content light level of the first frames as decoded (the SEI
    read back), and how many frames were looked at."""
    side = read_frame_side_data(str(path), 0)
    with av.open(str(path)) as container:
        count = sum(1 for _ in container.decode(video=0))
    return side.mastering, side.light, count


@pytest.mark.parametrize("codec", ["hevc", "h264", "av1"])
def test_hdr10_keeps_tags_ten_bits_and_static_metadata(
    codec: str, tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    """HDR10 x265 source: PQ/BT.2020 tags, 10 bits and the mastering display / MaxCLL SEI come
    out of every encoder that has parameters for them, read back from decoded frames."""
    source = hdr10_clip(tmp_path / "hdr10.mp4")
    info, plan, output = run(source, tmp_path / "out" / "out.mp4", upscaler, model, codec=codec)
    mastering, light, _ = static_metadata(source)
    assert mastering is not None and light == ContentLight(*MAX_CLL)
    assert mastering.max_luminance == 1000 and mastering.min_luminance == Fraction(1, 10000)
    assert info.video.hdr is not None and info.video.hdr.transfer == "pq"
    assert info.video.hdr.mastering == mastering and info.video.hdr.light == light
    facts = stream_facts(output)
    assert facts["pix_fmt"] == "yuv420p10le" and facts["colour"] == (BT2020, PQ, BT2020NC)
    assert facts["times"] == source_times(source)
    out_mastering, out_light, _ = static_metadata(output)
    assert out_light == light
    if codec == "av1":
        # AV1's metadata OBU stores xy in 1/65536 and the minimum luminance in 1/16384 cd/m2
        # (HEVC/H.264 SEI: 1/50000 and 1/10000): equal to within those steps, not exactly.
        assert out_mastering is not None
        got = (*out_mastering.red, *out_mastering.green, *out_mastering.blue)
        want = (*mastering.red, *mastering.green, *mastering.blue)
        for a, b in zip(got + out_mastering.white, want + mastering.white, strict=True):
            assert abs(a - b) <= Fraction(1, 65536)
        assert out_mastering.max_luminance == mastering.max_luminance
        assert abs(out_mastering.min_luminance - mastering.min_luminance) <= Fraction(1, 16384)
    else:
        assert out_mastering == mastering
        assert probe(output).video.hdr == info.video.hdr
    hdr = by_name(plan)["HDR"]
    assert hdr["source"] == "PQ with mastering display and MaxCLL/MaxFALL"
    assert "static metadata kept" in hdr["output"]


def test_hlg_keeps_its_transfer_and_ten_bits(
    tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    source = hlg_clip(tmp_path / "hlg.mp4")
    info, plan, output = run(source, tmp_path / "out" / "out.mp4", upscaler, model, codec="hevc")
    assert info.video.hdr is not None and info.video.hdr.transfer == "hlg"
    facts = stream_facts(output)
    assert facts["pix_fmt"] == "yuv420p10le" and facts["colour"] == (BT2020, HLG, BT2020NC)
    assert facts["times"] == source_times(source)
    assert by_name(plan)["HDR"]["output"] == "HLG tags and 10-bit kept"
    assert probe(output).video.hdr == info.video.hdr


def test_hdr_to_an_eight_bit_encoder_is_refused(tmp_path: Path) -> None:
    """vp9 is 8-bit in this FFmpeg: an HDR source is refused at planning, in one line."""
    info = probe(hdr10_clip(tmp_path / "hdr10.mp4"))
    job = UpscaleJob(model="x", encoder=EncoderSettings(codec="vp9"))
    with pytest.raises(ValueError, match="is HDR \\(PQ\\) and --codec vp9") as refused:
        make_plan(info, job, weights_sha256="0" * 64, model_scale=4, source_sha256="0")
    assert "\n" not in str(refused.value) and "use --codec h264, hevc, av1" in str(refused.value)


# --------------------------------------------------------------------------------------------
# 5. Captions and timecode


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_captions_ride_on_the_same_frames(
    codec: str, tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    """Each frame's own cc_data comes out on the frame with the same pts, across batches."""
    source = make_clip(tmp_path / "cc.mp4", captions=True)
    info, plan, output = run(source, tmp_path / "out" / "out.mp4", upscaler, model, codec=codec)
    assert info.video.captions
    want = stream_facts(source)["captions"]
    assert sorted(want.values()) == sorted(caption_of(n) for n in range(FRAMES))
    facts = stream_facts(output)
    assert facts["times"] == source_times(source)
    assert facts["captions"] == want
    assert "carried frame for frame" in by_name(plan)["captions"]["output"]


def test_captions_leave_the_encoders_frame_types_alone(
    tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    """The carrier frames bring the source's picture types along; the encoder must not obey
    them (a source with an I-frame every 2 frames made every other output frame an I-frame):
    with and without captions the output has the same frame types."""
    gop = {"x264-params": "keyint=2:min-keyint=1:scenecut=0"}
    types = {}
    for captions in (False, True):
        source = make_clip(tmp_path / f"cc{captions}.mp4", captions=captions, options=gop)
        _, _, output = run(source, tmp_path / f"out{captions}" / "o.mp4", upscaler, model)
        with av.open(str(output)) as container:
            types[captions] = [int(f.pict_type) for f in container.decode(video=0)]
        assert bool(stream_facts(output)["captions"]) == captions
    assert types[True] == types[False]
    assert types[True].count(int(PictureType.I)) == 2  # one per batch: each chunk starts one


def test_deinterlaced_output_drops_captions_and_says_so(
    tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    """Field-rate output frames are not source frames: no caption can ride frame for frame, so
    the plan says they are dropped (rather than claiming them carried)."""
    source = make_clip(tmp_path / "cc.mp4", captions=True)
    info = probe(source)
    plan = make_plan(
        info,
        UpscaleJob(model="x", engine=ENGINE, deinterlace="bwdif"),
        weights_sha256=model.weights_sha256,
        model_scale=model.scale,
        source_sha256="cc",
        frames_per_batch=BATCH,
    )
    assert not plan.video.carry.frame_side_data
    assert by_name(plan)["captions"]["output"] == (
        "WARNING: dropped (bwdif output frames are not the source's frames)"
    )


def test_captions_to_a_codec_without_a53_are_reported_dropped(
    tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    source = make_clip(tmp_path / "cc.mp4", captions=True)
    _, plan, output = run(source, tmp_path / "out" / "out.mkv", upscaler, model, codec="ffv1")
    assert stream_facts(output)["captions"] == {}
    assert by_name(plan)["captions"]["output"].startswith("WARNING: dropped")


@pytest.mark.parametrize(
    ("suffix", "out_suffix", "rate", "timecode", "tracks"),
    [
        (".mp4", ".mp4", 25, TIMECODE, ["video", "data"]),  # tmcd track in, tmcd track out
        (".mov", ".mov", 25, TIMECODE, ["video", "data"]),
        (".mov", ".mkv", 25, TIMECODE, ["video"]),  # a Matroska TIMECODE tag
        (".mp4", ".mp4", Fraction(30000, 1001), "01:00:00;02", ["video", "data"]),  # drop-frame
    ],
)
def test_timecode_is_kept(
    suffix: str,
    out_suffix: str,
    rate: Fraction | int,
    timecode: str,
    tracks: list[str],
    tmp_path: Path,
    upscaler: Upscaler,
    model: LoadedModel,
) -> None:
    source = make_clip(tmp_path / f"tc{suffix}", metadata={"timecode": timecode}, rate=rate)
    info, plan, output = run(source, tmp_path / "out" / f"out{out_suffix}", upscaler, model)
    assert info.video.timecode == timecode
    with av.open(str(source)) as container:
        assert [s.type for s in container.streams] == ["video", "data"]  # the tmcd track
    with av.open(str(output)) as container:
        assert [s.type for s in container.streams] == tracks
    assert probe(output).video.timecode == timecode
    assert stream_facts(output)["times"] == source_times(source)
    assert by_name(plan)["timecode"]["output"] == f"{timecode} kept (timecode tag)"


# --------------------------------------------------------------------------------------------
# 6. Chroma subsampling


@pytest.mark.parametrize(
    ("codec", "suffix", "pix_fmt", "kept"),
    [
        ("prores", ".mov", "yuv422p10le", True),
        ("h264", ".mp4", "yuv422p10le", True),
        ("hevc", ".mp4", "yuv422p10le", True),
        ("ffv1", ".mkv", "yuv422p10le", True),
        ("vp9", ".webm", "yuv422p", True),  # this libvpx is 8-bit only (codec presets)
        ("av1", ".mp4", "yuv420p10le", False),
    ],
)
def test_prores_422_keeps_its_chroma_where_the_codec_can(
    codec: str,
    suffix: str,
    pix_fmt: str,
    kept: bool,
    tmp_path: Path,
    upscaler: Upscaler,
    model: LoadedModel,
) -> None:
    source = make_clip(
        tmp_path / "prores.mov",
        encoder="prores_ks",
        pix_fmt="yuv422p10le",
        options={"profile": "3"},
    )
    info, plan, output = run(
        source, tmp_path / "out" / f"out{suffix}", upscaler, model, codec=codec
    )
    assert info.video.chroma == "4:2:2"
    facts = stream_facts(output)
    assert facts["pix_fmt"] == pix_fmt and facts["times"] == source_times(source)
    chroma = by_name(plan)["chroma subsampling"]
    if kept:
        assert chroma["output"] == "4:2:2 kept"
    else:
        assert chroma["output"].startswith("converted to 4:2:0 (av1 stores 4:2:0)")


def test_prores_keeps_hdr_tags_but_cannot_write_static_metadata(
    tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    """The documented limit: prores_ks has no HDR parameters and the mov muxer writes mdcv/clli
    only from stream side data, which PyAV cannot set on an output stream. Tags and 10 bits are
    kept, the metadata is not, and the plan says so with a warning naming the codecs that can."""
    source = hdr10_clip(tmp_path / "hdr10.mp4")
    _, plan, output = run(source, tmp_path / "out" / "out.mov", upscaler, model, codec="prores")
    facts = stream_facts(output)
    assert facts["pix_fmt"] == "yuv422p10le" and facts["colour"] == (BT2020, PQ, BT2020NC)
    assert static_metadata(output)[:2] == (None, None)
    hdr = by_name(plan)["HDR"]["output"]
    assert hdr.startswith("PQ tags and 10-bit kept; WARNING: prores cannot carry the static")


# --------------------------------------------------------------------------------------------
# 7. Probe, manifest and summary


def test_probe_shows_the_properties(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``vsrflow probe`` (its JSON) names SAR/DAR, chroma, captions, timecode and HDR."""
    from flows.cli import main as cli_main

    source = make_clip(
        tmp_path / "all.mp4",
        sar=Fraction(40, 33),
        captions=True,
        metadata={"timecode": TIMECODE},
    )
    assert cli_main(["probe", str(source)]) == 0
    video = json.loads(capsys.readouterr().out)["video"]
    assert video["sample_aspect_ratio"] == "40:33" and video["display_aspect_ratio"] == "160:99"
    assert video["captions"] == "A/53" and video["timecode"] == TIMECODE
    assert video["chroma"] == "4:2:0" and video["hdr"] is None
    hdr = probe(hdr10_clip(tmp_path / "hdr10.mp4")).summary()["video"]["hdr"]
    assert hdr["transfer"] == "pq" and (hdr["max_cll"], hdr["max_fall"]) == MAX_CLL
    assert hdr["mastering_display"].endswith("0.0001-1000 cd/m2")


def test_flow_manifest_and_summary_show_what_was_done(
    tmp_path: Path, shared_model: Callable[[str], Path]
) -> None:
    """The whole flow, in process: an anamorphic clip with captions and a timecode."""
    from flows.upscale_video import upscale_video
    from vsrflow.report import MediaSide, RunSummary, render_summary

    source = make_clip(
        tmp_path / "all.mp4",
        sar=Fraction(8, 9),
        captions=True,
        metadata={"timecode": TIMECODE},
    )
    output = tmp_path / "out.mp4"
    result = upscale_video(
        input_path=str(source),
        output_path=str(output),
        settings=UpscaleSettings.model_validate(
            {
                "model": {"weights_path": str(shared_model("realesr-animevideov3.pth"))},
                "batching": {"frames": BATCH},
            }
        ),
        work_dir=str(tmp_path / "work"),
    )
    assert result.frames == FRAMES
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    properties = {p["property"]: p for p in manifest["properties"]}
    assert list(properties) == ["sample aspect ratio", "captions", "timecode"]
    assert properties["sample aspect ratio"] == {
        "property": "sample aspect ratio",
        "source": "8:9 (DAR 32:27)",
        "output": "SAR 8:9 written (DAR 32:27 kept)",
    }
    assert properties["captions"]["output"] == "A/53 captions carried frame for frame (a53cc)"
    assert properties["timecode"]["output"] == f"{TIMECODE} kept (timecode tag)"
    facts = stream_facts(output)
    assert facts["dar"] == Fraction(32, 27) and facts["times"] == source_times(source)
    assert facts["captions"] == stream_facts(source)["captions"]
    assert probe(output).video.timecode == TIMECODE

    side = MediaSide("in.mp4", 1, WIDTH, HEIGHT, FRAMES, 25.0)
    text = render_summary(
        RunSummary(
            side, side, "m", "0" * 64, "local", "h264", {}, 1, 0, 1, 0,
            properties=tuple(manifest["properties"]),
        )
    )  # fmt: skip
    assert "| property | source | output |" in text
    assert "| sample aspect ratio | 8:9 (DAR 32:27) | SAR 8:9 written (DAR 32:27 kept) |" in text


@pytest.mark.parametrize(
    ("codec", "suffix", "pix_fmt", "output"),
    [
        # FFmpeg's ProRes decoder returns 4444 as 12-bit (the source reads the same).
        ("prores", ".mov", "yuv444p12le", "4:4:4 kept"),
        ("h264", ".mp4", "yuv444p10le", "4:4:4 kept"),
        ("hevc", ".mkv", "yuv444p10le", "4:4:4 kept"),
        ("av1", ".mkv", "yuv420p10le", "converted to 4:2:0 (av1 stores 4:2:0)"),
    ],
)
def test_prores_4444_keeps_its_chroma_where_the_codec_can(
    codec: str,
    suffix: str,
    pix_fmt: str,
    output: str,
    tmp_path: Path,
    upscaler: Upscaler,
    model: LoadedModel,
) -> None:
    """ProRes 4444 (no alpha) in, 4:4:4 out where the codec stores it; ProRes out is 4444
    (profile 4, ap4h), not 422 HQ."""
    source = make_clip(
        tmp_path / "prores.mov",
        encoder="prores_ks",
        pix_fmt="yuv444p10le",
        options={"profile": "4"},
    )
    info, plan, out = run(source, tmp_path / "out" / f"out{suffix}", upscaler, model, codec=codec)
    assert info.video.chroma == "4:4:4" and info.video.pix_fmt == "yuv444p12le"
    facts = stream_facts(out)
    assert facts["pix_fmt"] == pix_fmt and facts["times"] == source_times(source)
    assert by_name(plan)["chroma subsampling"]["output"] == output
    if codec == "prores":
        with av.open(str(out)) as container:
            assert container.streams.video[0].codec_context.codec_tag == "ap4h"


def test_420_to_prores_says_it_became_422(
    tmp_path: Path, upscaler: Upscaler, model: LoadedModel
) -> None:
    source = make_clip(tmp_path / "plain.mp4")
    _, plan, out = run(source, tmp_path / "out" / "out.mov", upscaler, model, codec="prores")
    assert stream_facts(out)["pix_fmt"] == "yuv422p10le"
    assert by_name(plan)["chroma subsampling"] == {
        "property": "chroma subsampling",
        "source": "4:2:0",
        "output": "converted to 4:2:2 (prores stores 4:2:2 / 4:4:4)",
    }


def test_real_clip_with_non_square_pixels_is_planned_to_keep_them(
    shared_media: Callable[[str], Path],
) -> None:
    """carphone (QCIF from a CIF camera) declares SAR 128:117: probe reads it and the plan
    writes it again on the 704x576 output, DAR 1408:1053 unchanged."""
    info = probe(shared_media("carphone_176x144_2997fps_noaudio.mp4"))
    assert info.video.sample_aspect_ratio == Fraction(128, 117)
    plan = make_plan(info, UpscaleJob(model="x"), weights_sha256="0" * 64, model_scale=4,
                     source_sha256="carphone")  # fmt: skip
    assert plan.out_size == (704, 576) and plan.video.carry.sample_aspect_ratio == Fraction(
        128, 117
    )
    assert by_name(plan)["sample aspect ratio"] == {
        "property": "sample aspect ratio",
        "source": "128:117 (DAR 1408:1053)",
        "output": "SAR 128:117 written (DAR 1408:1053 kept)",
    }


def test_assembly_refuses_an_output_that_lost_the_aspect_ratio_or_hdr_metadata(
    tmp_path: Path,
) -> None:
    """Assembly reads the properties back: a square-pixel file offered as the output of an
    8:9 source, or an HEVC file without static metadata as the output of an HDR10 source,
    is refused (same frames and pts otherwise, so nothing else trips)."""
    plain = make_clip(tmp_path / "plain.mp4")
    anamorphic = probe(make_clip(tmp_path / "anamorphic.mp4", sar=Fraction(8, 9)))
    assert verify_output(plain, probe(plain)).frames == FRAMES
    with pytest.raises(AssemblyError, match="display aspect ratio 4:3, the source's is 32:27"):
        verify_output(plain, anamorphic)
    hlg = hlg_clip(tmp_path / "hlg.mp4")
    hdr10 = probe(hdr10_clip(tmp_path / "hdr10.mp4"))
    with pytest.raises(AssemblyError, match="mastering display and content light level did not"):
        verify_output(hlg, hdr10)
