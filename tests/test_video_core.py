"""End to end without Prefect: probe -> make_plan -> upscale_batch per batch -> assemble.

Every generated fixture (VFR, rotated, 10-bit, multitrack mp4 and mkv, odd size, no audio,
chapters) and the shared realshort clip go through the real pipeline with the real
realesr-animevideov3 weights, in at least two batches. The assertions are made on the OUTPUT
file, re-opened with PyAV: frames, timestamps, copied packets, colour, size, rotation and the
upscaled pixels themselves.

Pixel check (measured on this machine kind, bf16 engine, libx264 crf 18 chunks): output frame k
against the model applied to source frame k scores at least 32.6-34.0 dB on the 8-bit synthetic
fixtures, 39.5 dB on realshort and 45.5 dB on the 10-bit fixture; against source frame k+-1 it
scores at most 20.8 / 26.8 / 42.2 dB. So each frame must reach a floor (30 dB for 8-bit, 43 dB
for 10-bit: ~2.5 dB below the worst measured frame, above every wrong-frame score except the
10-bit neighbours) AND beat both neighbours by at least 2 dB (measured margin: 12.7 dB for the
8-bit clips, 3.7 dB for the 10-bit one, whose consecutive frames differ very little). A frame
shifted or swapped across a batch boundary fails both.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any

import av
import media_fixtures as mf
import numpy as np
import pytest

from vsrflow import pipeline as pipeline_module
from vsrflow.engine import EngineSettings, Upscaler
from vsrflow.errors import AssemblyError, CorruptMediaError
from vsrflow.job import JobPlan, UpscaleJob, make_plan
from vsrflow.media.assemble import AssemblyReport, assemble, check_output_compatible
from vsrflow.media.colour import ColourInfo
from vsrflow.media.decode import decode_range, rgb_format_for
from vsrflow.media.probe import MediaInfo, probe
from vsrflow.media.rotation import display_matrix_of, rotation_of
from vsrflow.models import LoadedModel, get_model
from vsrflow.pipeline import BatchResult, upscale_batch
from vsrflow.plan import chunk_name

REALSHORT = "realshort_320x240_aac_mono.mp4"
CLIPS = (
    "vfr_clip",
    "rotated_clip",
    "tenbit_clip",
    "multitrack_clip",
    "multitrack_mkv_clip",
    "odd_size_clip",
    "no_audio_clip",
    "chapters_clip",
    "realshort",
)
#: Frames per batch: small, so every clip has at least two batches (and batch ends fall
#: between keyframes and inside micro-batches of 3).
FRAMES_PER_BATCH = {"odd_size_clip": 2, "realshort": 16}
#: Tiles of 160 with 20 px context: realshort runs as 2x2 tiles, the 321x181 clip as 3x2 tiles
#: including a 1-pixel-wide column; the 64x48 clips fit in one tile.
ENGINE = EngineSettings(precision="auto", tile=160, tile_pad=20, micro_batch=3)
PTS_TOLERANCE_S = 0.001
MIN_PSNR_DB = {8: 30.0, 10: 43.0}
MIN_MARGIN_DB = 2.0


@dataclass
class Run:
    """One source through the whole pipeline, and what came out."""

    name: str
    source: Path
    info: MediaInfo
    plan: JobPlan
    results: list[BatchResult]
    report: AssemblyReport
    output: Path
    chunk_dir: Path

    @property
    def chunks(self) -> list[str]:
        return [r.chunk for r in self.results]


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.fixture(scope="module")
def model_path(shared_model: Callable[[str], Path]) -> Path:
    return shared_model("realesr-animevideov3.pth")


@pytest.fixture(scope="module")
def model(model_path: Path) -> LoadedModel:
    return get_model(str(model_path), progress=False)


@pytest.fixture(scope="module")
def upscaler(model: LoadedModel) -> Upscaler:
    return Upscaler(model.descriptor, settings=ENGINE, device="cpu")


@pytest.fixture(scope="module")
def run_of(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    model_path: Path,
    model: LoadedModel,
    upscaler: Upscaler,
) -> Callable[[str], Run]:
    """``run_of(name)``: the pipeline run for a clip, computed once per module."""
    cache: dict[str, Run] = {}

    def source_of(name: str) -> Path:
        if name == "realshort":
            return request.getfixturevalue("shared_media")(REALSHORT)
        return request.getfixturevalue(name).path

    def get(name: str) -> Run:
        if name in cache:
            return cache[name]
        source = source_of(name)
        work = tmp_path_factory.mktemp(f"e2e-{name}")
        output = work / "out" / f"upscaled{source.suffix}"
        info = probe(source)
        job = UpscaleJob(model=str(model_path), engine=ENGINE)
        check_output_compatible(info, output, job.encoder.codec)
        plan = make_plan(
            info,
            job,
            weights_sha256=model.weights_sha256,
            model_scale=model.scale,
            source_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
            frames_per_batch=FRAMES_PER_BATCH.get(name, 10),
        )
        chunk_dir = work / "chunks"
        results = [
            upscale_batch(
                plan.video,
                batch,
                upscaler,
                chunk_dir / chunk_name(batch),
                encoder=job.encoder,
                out_size=plan.out_size,
            )
            for batch in plan.batches
        ]
        report = assemble(info, [r.chunk for r in results], output)
        cache[name] = Run(name, source, info, plan, results, report, output, chunk_dir)
        return cache[name]

    return get


def first_frame(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


def video_pts_seconds(path: Path) -> list[Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [Fraction(f.pts) * stream.time_base for f in container.decode(stream)]


def copied_tracks(path: Path) -> list[tuple[str, str, str | None, int, list[tuple]]]:
    """(kind, codec, language, disposition, packets) of every audio and subtitle stream, in
    order; each packet as (bytes, pts in seconds, duration in seconds)."""
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type in ("audio", "subtitle")]
        packets: dict[int, list[tuple]] = {s.index: [] for s in streams}
        if streams:
            for packet in container.demux(*streams):
                if packet.size == 0:
                    continue
                tb = packet.time_base
                packets[packet.stream.index].append(
                    (
                        bytes(packet),
                        None if packet.pts is None else Fraction(packet.pts) * tb,
                        Fraction(packet.duration or 0) * tb,
                    )
                )
        return [
            (s.type, s.codec_context.name, s.language, int(s.disposition), packets[s.index])
            for s in streams
        ]


# --------------------------------------------------------------------------------------------
# The plan and the batches


@pytest.mark.parametrize("name", CLIPS)
def test_batches_cover_every_frame_once(name: str, run_of: Callable[[str], Run]) -> None:
    run = run_of(name)
    batches = run.plan.batches
    assert len(batches) >= 2
    assert batches[0].start == 0 and batches[-1].end == run.info.video.frame_count
    assert all(a.end == b.start for a, b in pairwise(batches))
    assert len({b.key for b in batches}) == len(batches)
    assert [r.frames for r in run.results] == [b.frame_count for b in batches]
    # Chunks were renamed into place; no temporary chunk is left behind.
    assert sorted(p.name for p in run.chunk_dir.iterdir()) == sorted(
        Path(r.chunk).name for r in run.results
    )
    assert run.report.frames == run.info.video.frame_count


# --------------------------------------------------------------------------------------------
# The output file


@pytest.mark.parametrize("name", CLIPS)
def test_frames_and_timestamps(name: str, run_of: Callable[[str], Run]) -> None:
    run = run_of(name)
    source = video_pts_seconds(run.source)
    output = video_pts_seconds(run.output)
    assert len(source) == run.info.video.frame_count
    assert len(output) == len(source)
    worst = max(abs(float(a - b)) for a, b in zip(output, source, strict=True))
    assert worst <= PTS_TOLERANCE_S
    # Same frame durations, so a VFR source stays VFR (and CFR stays CFR).
    for (a0, a1), (b0, b1) in zip(pairwise(output), pairwise(source), strict=True):
        assert abs(float((a1 - a0) - (b1 - b0))) <= PTS_TOLERANCE_S


def test_vfr_output_keeps_irregular_durations(run_of: Callable[[str], Run]) -> None:
    output = video_pts_seconds(run_of("vfr_clip").output)
    durations_ms = [round(float(b - a) * 1000) for a, b in pairwise(output)]
    assert set(durations_ms) == set(mf.VFR_DURATIONS_MS)
    assert durations_ms[:4] == list(mf.VFR_DURATIONS_MS)


@pytest.mark.parametrize("name", CLIPS)
def test_audio_and_subtitle_packets_copied_exactly(name: str, run_of: Callable[[str], Run]) -> None:
    run = run_of(name)
    source = copied_tracks(run.source)
    output = copied_tracks(run.output)
    assert [t[:4] for t in output] == [t[:4] for t in source]  # kind, codec, language, flags
    for (kind, codec, language, _flags, want), (*_, got) in zip(source, output, strict=True):
        assert len(got) == len(want), f"{kind} {codec} {language}"
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert a == b, f"{kind} {codec} {language} packet {i}: {a[1:]} != {b[1:]}"
    expected = {
        "vfr_clip": [("audio", "und")],
        "multitrack_clip": [("audio", "eng"), ("audio", "fra"), ("subtitle", "eng")],
        "multitrack_mkv_clip": [("audio", "eng"), ("audio", "fra"), ("subtitle", "eng")],
        "chapters_clip": [("audio", "eng")],
        "realshort": [("audio", "eng")],
    }.get(name, [])
    assert [(t[0], t[2]) for t in output] == expected


@pytest.mark.parametrize("name", CLIPS)
def test_size_is_four_times_the_coded_source(name: str, run_of: Callable[[str], Run]) -> None:
    run = run_of(name)
    video = run.info.video
    want = (4 * video.width, 4 * video.height)
    assert run.plan.out_size == want
    with av.open(str(run.output)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == want
        frame = next(container.decode(stream))
        assert (frame.width, frame.height) == want
    if name == "odd_size_clip":
        assert want == (1284, 724)


@pytest.mark.parametrize("name", CLIPS)
def test_colour_tags_and_bit_depth(name: str, run_of: Callable[[str], Run]) -> None:
    run = run_of(name)
    resolved = run.info.video.colour.resolved(run.info.video.height)
    if name == "tenbit_clip":
        pix_fmt, tags = "yuv420p10le", ColourInfo(range=1, primaries=1, transfer=1, matrix=1)
    else:
        # Untagged SD sources: BT.601 (smpte170m) limited range, written explicitly; the
        # odd-size clip is 4:4:4 and keeps it (x264 High 4:4:4, issue 10: chroma kept).
        assert run.info.video.colour == ColourInfo(range=0, primaries=2, transfer=2, matrix=2)
        pix_fmt = "yuv444p" if name == "odd_size_clip" else "yuv420p"
        tags = ColourInfo(range=1, primaries=6, transfer=6, matrix=6)
    assert resolved == tags
    with av.open(str(run.output)) as container:
        cc = container.streams.video[0].codec_context
        assert cc.pix_fmt == pix_fmt
        stream_tags = ColourInfo(
            range=int(cc.color_range),
            primaries=int(cc.color_primaries),
            transfer=int(cc.color_trc),
            matrix=int(cc.colorspace),
        )
        frame = next(container.decode(video=0))
    frame_tags = ColourInfo(
        range=int(frame.color_range),
        primaries=int(frame.color_primaries),
        transfer=int(frame.color_trc),
        matrix=int(frame.colorspace),
    )
    assert stream_tags == tags
    assert frame_tags == tags
    assert frame.format.name == pix_fmt


@pytest.mark.parametrize("name", CLIPS)
def test_rotation_is_kept(name: str, run_of: Callable[[str], Run]) -> None:
    run = run_of(name)
    source = display_matrix_of(first_frame(run.source))
    output = display_matrix_of(first_frame(run.output))
    assert output == source  # copied verbatim, pixels stay in coded orientation
    assert rotation_of(output) == run.info.video.rotation == (90 if name == "rotated_clip" else 0)


@pytest.mark.parametrize("name", ["vfr_clip", "chapters_clip", "realshort"])
def test_mp4_source_into_mkv_keeps_timestamps(
    name: str, run_of: Callable[[str], Run], tmp_path: Path
) -> None:
    """mp4 + AAC into .mkv, from the same chunks. The AAC priming packet sits at -21 ms;
    matroska used to shift every stream by +21 ms, which failed verification after all the
    compute. Matroska stores ms, so packets match to within 1 ms instead of exactly."""
    run = run_of(name)
    output = tmp_path / "out.mkv"
    check_output_compatible(run.info, output, "h264")
    report = assemble(run.info, run.chunks, output)
    assert report.frames == run.info.video.frame_count
    source = video_pts_seconds(run.source)
    got = video_pts_seconds(output)
    assert len(got) == len(source)
    assert max(abs(float(a - b)) for a, b in zip(got, source, strict=True)) <= PTS_TOLERANCE_S
    src_tracks, out_tracks = copied_tracks(run.source), copied_tracks(output)
    # Matroska leaves "und" (undetermined) out, so it reads back as no language.
    assert [(t[0], t[1], t[2] or "und") for t in out_tracks] == [t[:3] for t in src_tracks]
    for (*_, want), (*_, packets) in zip(src_tracks, out_tracks, strict=True):
        assert [p[0] for p in packets] == [p[0] for p in want]
        worst = max(abs(float(a[1] - b[1])) for a, b in zip(packets, want, strict=True))
        assert worst <= PTS_TOLERANCE_S
    if name != "realshort":  # encoded by FFmpeg's AAC encoder: priming packet before 0
        assert src_tracks[0][4][0][1] < 0 and out_tracks[0][4][0][1] < 0
    with av.open(str(output)) as container:
        assert len(container.chapters()) == (len(mf.CHAPTERS) if name == "chapters_clip" else 0)


def test_chapters_are_kept(run_of: Callable[[str], Run]) -> None:
    run = run_of("chapters_clip")
    with av.open(str(run.output)) as container:
        chapters = [
            (
                Fraction(ch["start"]) * ch["time_base"],
                Fraction(ch["end"]) * ch["time_base"],
                ch["metadata"].get("title"),
            )
            for ch in container.chapters()
        ]
    assert chapters == [(Fraction(s, 1000), Fraction(e, 1000), t) for s, e, t in mf.CHAPTERS]


@pytest.mark.parametrize("name", CLIPS)
def test_pixels_are_the_model_output_of_the_same_frame(
    name: str, run_of: Callable[[str], Run], model: LoadedModel
) -> None:
    run = run_of(name)
    video = run.info.video
    params = video.params(str(run.source))
    n = video.frame_count
    if n <= 24:
        checked = list(range(n))
    else:  # realshort: both sides of every batch boundary, and the ends
        checked = sorted(
            {0, n - 1} | {k for b in run.plan.batches[1:] for k in (b.start - 1, b.start)}
        )
    needed = sorted({j for k in checked for j in (k - 1, k, k + 1) if 0 <= j < n})
    source = {
        video.pts.index(f.pts): f.rgb
        for f in decode_range(
            run.source,
            video.index,
            video.pts[0],
            None,
            colour=params.colour,
            bit_depth=video.bit_depth,
        )
    }
    assert len(source) == n
    # Reference: the same model and precision, untiled, one frame at a time.
    reference_engine = Upscaler(
        model.descriptor,
        settings=EngineSettings(precision=ENGINE.precision, micro_batch=1),
        device="cpu",
    )
    out_w, out_h = run.plan.out_size
    reference = dict(
        zip(
            needed,
            reference_engine.upscale(np.stack([source[j] for j in needed]), (out_h, out_w)),
            strict=True,
        )
    )
    fmt = rgb_format_for(video.bit_depth)
    peak = 255.0 if video.bit_depth <= 8 else 65535.0
    with av.open(str(run.output)) as container:
        output = [
            frame.to_ndarray(
                format=fmt,
                src_colorspace=params.colour.sws_matrix,
                src_color_range=params.colour.sws_range,
            )
            if k in checked
            else None
            for k, frame in enumerate(container.decode(video=0))
        ]
    floor = MIN_PSNR_DB[8 if video.bit_depth <= 8 else 10]
    for k in checked:
        same = psnr(output[k], reference[k], peak)
        neighbours = [psnr(output[k], reference[j], peak) for j in (k - 1, k + 1) if 0 <= j < n]
        assert same >= floor, f"frame {k}: {same:.2f} dB < {floor} dB"
        assert same >= max(neighbours) + MIN_MARGIN_DB, (
            f"frame {k}: {same:.2f} dB vs neighbours {[round(v, 2) for v in neighbours]}"
        )


# --------------------------------------------------------------------------------------------
# Atomic publish: a failed verification leaves nothing behind


@pytest.mark.parametrize(("name", "drop"), [("no_audio_clip", 1), ("vfr_clip", -1)])
def test_missing_batch_is_not_published(
    name: str, drop: int, run_of: Callable[[str], Run], tmp_path: Path
) -> None:
    run = run_of(name)
    chunks = list(run.chunks)
    del chunks[drop]
    output = tmp_path / f"incomplete{run.source.suffix}"
    with pytest.raises(
        AssemblyError, match=rf"frames written, the source has {len(run.info.video.pts)}"
    ):
        assemble(run.info, chunks, output)
    assert not output.exists()
    assert list(tmp_path.iterdir()) == []  # no .partial file either


def test_failed_assembly_keeps_the_previous_output(
    run_of: Callable[[str], Run], tmp_path: Path
) -> None:
    run = run_of("no_audio_clip")
    output = tmp_path / "existing.mp4"
    output.write_bytes(b"previous result")
    with pytest.raises(AssemblyError):
        assemble(run.info, run.chunks[:-1], output)
    assert output.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["existing.mp4"]


def test_assemble_without_chunks(run_of: Callable[[str], Run], tmp_path: Path) -> None:
    with pytest.raises(AssemblyError, match="no chunks"):
        assemble(run_of("no_audio_clip").info, [], tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Output compatibility is checked before any compute


def test_mov_text_cannot_go_into_mkv(multitrack_clip: mf.FixtureInfo, tmp_path: Path) -> None:
    info = probe(multitrack_clip.path)
    with pytest.raises(ValueError, match=r"mov_text\) cannot be copied into \.mkv"):
        check_output_compatible(info, tmp_path / "out.mkv", "h264")
    check_output_compatible(info, tmp_path / "out.mp4", "h264")
    check_output_compatible(info, tmp_path / "out.mov", "h264")
    assert list(tmp_path.iterdir()) == []


def test_srt_cannot_go_into_mp4(multitrack_mkv_clip: mf.FixtureInfo, tmp_path: Path) -> None:
    info = probe(multitrack_mkv_clip.path)
    with pytest.raises(ValueError, match=r"srt\) cannot be copied into \.mp4"):
        check_output_compatible(info, tmp_path / "out.mp4", "h264")
    check_output_compatible(info, tmp_path / "out.mkv", "ffv1")


def test_ffv1_cannot_go_into_mp4(no_audio_clip: mf.FixtureInfo, tmp_path: Path) -> None:
    info = probe(no_audio_clip.path)
    with pytest.raises(
        ValueError, match=r"codec ffv1 cannot be written to \.mp4; use one of \.mkv"
    ):
        check_output_compatible(info, tmp_path / "out.mp4", "ffv1")
    with pytest.raises(ValueError, match=r"unsupported output extension '\.avi'"):
        check_output_compatible(info, tmp_path / "out.avi", "h264")
    with pytest.raises(ValueError, match="unknown codec 'nope'"):
        check_output_compatible(info, tmp_path / "out.mp4", "nope")
    assert list(tmp_path.iterdir()) == []


def test_chapters_source_fits_every_container(
    chapters_clip: mf.FixtureInfo, tmp_path: Path
) -> None:
    info = probe(chapters_clip.path)
    for suffix in (".mp4", ".mkv", ".mov"):
        check_output_compatible(info, tmp_path / f"out{suffix}", "h264")


# --------------------------------------------------------------------------------------------
# A failing stage inside upscale_batch raises; it never hangs the worker


def _run_in_thread(fn: Callable[[], object], timeout: float) -> BaseException | None:
    """Run ``fn`` in a daemon thread; the exception it raised, or fail if it hangs."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"upscale_batch still running after {timeout} s: deadlock"
    return outcome[0]


def _first_batch_job(run: Run, tmp_path: Path, upscaler: Upscaler) -> Callable[[], object]:
    batch = run.plan.batches[0]
    return lambda: upscale_batch(
        run.plan.video,
        batch,
        upscaler,
        tmp_path / chunk_name(batch),
        encoder=UpscaleJob().encoder,
        out_size=run.plan.out_size,
    )


def test_decoder_failure_is_raised(
    run_of: Callable[[str], Run],
    model: LoadedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = run_of("no_audio_clip")

    def broken_decode(*args: object, **kwargs: object) -> Iterator[object]:
        frames = decode_range(*args, **kwargs)  # type: ignore[arg-type]
        yield next(frames)
        raise CorruptMediaError("injected: decoding failed near pts 512")

    monkeypatch.setattr(pipeline_module, "decode_range", broken_decode)
    upscaler = Upscaler(
        model.descriptor, settings=EngineSettings(precision="fp32", micro_batch=1), device="cpu"
    )
    error = _run_in_thread(_first_batch_job(run, tmp_path, upscaler), timeout=30)
    assert isinstance(error, CorruptMediaError) and "injected" in str(error)
    assert list(tmp_path.iterdir()) == []  # the temporary chunk was removed


def test_encoder_failure_is_raised(
    run_of: Callable[[str], Run],
    model: LoadedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The encoder dies while the model fills its queue: the error comes back, no deadlock."""
    run = run_of("no_audio_clip")

    def broken_write(self: object, rgb: np.ndarray, pts: int, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.5)  # the model meanwhile fills the queue to the encoder
        raise RuntimeError("injected: encoder failed")

    monkeypatch.setattr(pipeline_module.ChunkEncoder, "write", broken_write)
    upscaler = Upscaler(
        model.descriptor, settings=EngineSettings(precision="fp32", micro_batch=1), device="cpu"
    )
    error = _run_in_thread(_first_batch_job(run, tmp_path, upscaler), timeout=30)
    assert isinstance(error, RuntimeError) and "injected" in str(error)
    assert list(tmp_path.iterdir()) == []


def test_an_odd_target_size_is_rounded_to_even_for_4_2_0_and_encodes(
    no_audio_clip: mf.FixtureInfo, model: LoadedModel, upscaler: Upscaler, tmp_path: Path
) -> None:
    """h264 writes 4:2:0, which libx264 refuses at odd sizes: a target height that scales the
    frame to an odd size is planned at the nearest even one, and the batch encodes."""
    from vsrflow.media.codecs import CODEC_PRESETS

    assert all(preset.needs_even_size for preset in CODEC_PRESETS.values())  # all subsample
    info = probe(no_audio_clip.path)
    height = info.video.height * 3 // 2 + 1  # odd, and an odd width with it
    job = UpscaleJob(model="x", engine=ENGINE, target_height=height)
    plan = make_plan(
        info, job, weights_sha256=model.weights_sha256, model_scale=4, source_sha256="odd"
    )
    exact_width = info.video.width * height / info.video.height
    assert plan.out_size[1] == height + 1 and plan.out_size[0] % 2 == 0
    assert abs(plan.out_size[0] - exact_width) <= 1
    batch = plan.batches[0]
    result = upscale_batch(
        plan.video,
        batch,
        upscaler,
        tmp_path / chunk_name(batch),
        encoder=job.encoder,
        out_size=plan.out_size,
    )
    with av.open(str(result.chunk)) as chunk:
        stream = chunk.streams.video[0]
        assert (stream.width, stream.height) == plan.out_size
        assert sum(1 for _ in chunk.decode(stream)) == batch.output_frames
