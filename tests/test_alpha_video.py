"""Video with an alpha channel: detected, kept where the codec can, refused or flattened/dropped
only on request, and never announced on a stream without alpha.

Fixtures are made here with PyAV (64x48, 8 frames, a shape moving across a semi-transparent
background, so consecutive alpha planes differ): a VP9 WebM whose alpha is a libvpx side
channel (Matroska BlockAdditional, with an Opus track), a ProRes 4444 mov with alpha in its
pixel format, and an h264 mkv that only carries the ALPHA_MODE tag (what older versions wrote).

Alpha check: the output's alpha plane, decoded independently (libvpx-vp9 for VP9), against the
source's alpha plane upscaled the same way (model or bicubic, same engine settings) must reach
a PSNR floor AND beat the neighbouring frames' references (a frame shifted across a batch
boundary fails). Measured on this machine kind (bf16 engine): ProRes 4444 67.4-75.6 dB and FFV1
68.6-71.1 dB (lossless alpha; the rest is rounding and micro-batching), VP9 alpha (lossy, crf
31) 46.8-53.0 dB; against a neighbour's reference at most 14.3 dB. Floors: 60 dB for ProRes and
FFV1, 40 dB for VP9; margin over the neighbours 10 dB.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from flows.cli import main as cli_main
from flows.upscale_video import upscale_video
from vsrflow.alpha import flatten_over_black, upscale_alpha
from vsrflow.engine import EngineSettings, Upscaler
from vsrflow.errors import AssemblyError
from vsrflow.job import JobPlan, UpscaleJob, make_plan
from vsrflow.media.alpha import ALPHA_TAG, BLOCK_ADDITIONAL, alpha_tagged, stream_has_alpha
from vsrflow.media.assemble import assemble, check_output_compatible, verify_output
from vsrflow.media.codecs import EncoderSettings
from vsrflow.media.probe import MediaInfo, probe
from vsrflow.models import LoadedModel, get_model
from vsrflow.pipeline import upscale_batch
from vsrflow.plan import chunk_name
from vsrflow.settings import UpscaleSettings

WIDTH, HEIGHT, FRAMES = 64, 48, 8
ENGINE = EngineSettings(precision="auto", micro_batch=3)
#: PSNR floors of the output alpha against the reference (see the module docstring).
FLOOR_DB = {"prores": 60.0, "ffv1": 60.0, "vp9": 40.0}
MARGIN_DB = 10.0
#: Matroska's AlphaMode element (ID 0x53C0) with the value 1.
ALPHA_MODE_ELEMENT = bytes([0x53, 0xC0, 0x81, 0x01])


# --------------------------------------------------------------------------------------------
# Fixtures


def _rgba(i: int) -> np.ndarray:
    """Frame ``i``: a colour gradient; alpha 40 with an opaque rectangle moving 5 px a frame
    and a soft disc whose radius grows."""
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    rgba[..., 0] = np.linspace(20, 235, WIDTH, dtype=np.uint8)[None, :]
    rgba[..., 1] = np.linspace(200, 40, HEIGHT, dtype=np.uint8)[:, None]
    rgba[..., 2] = 30 + 25 * i
    alpha = np.full((HEIGHT, WIDTH), 40.0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    disc = np.clip((8 + i - np.hypot(yy - 34, xx - 44)) / 3, 0, 1)
    alpha = alpha + (215 * disc)
    alpha[8:24, 4 + 5 * i : 20 + 5 * i] = 255
    rgba[..., 3] = np.clip(alpha, 0, 255).round().astype(np.uint8)
    return rgba


def _make_vp9_alpha(path: Path) -> None:
    with av.open(str(path), "w", format="webm") as out:
        video = out.add_stream(
            "libvpx-vp9", rate=24, options={"crf": "20", "b": "0", "cpu-used": "8"}
        )
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuva420p"
        audio = out.add_stream("libopus", rate=48000, layout="mono")
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(_rgba(i), format="rgba").reformat(format="yuva420p")
            frame.pts = i
            frame.time_base = Fraction(1, 24)
            out.mux(video.encode(frame))
        samples = np.zeros((1, 960), np.int16)
        for n in range(FRAMES * 2000 // 960 + 1):
            chunk = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, n * 960
            out.mux(audio.encode(chunk))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))


def _make_prores_alpha(path: Path) -> None:
    with av.open(str(path), "w") as out:
        video = out.add_stream("prores_ks", rate=24, options={"profile": "4"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuva444p10le"
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(_rgba(i), format="rgba")
            frame = frame.reformat(format="yuva444p10le")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))


def _make_tagged_h264(path: Path) -> None:
    """What the defect produced: an h264 stream in Matroska tagged ALPHA_MODE=1, no alpha."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.metadata[ALPHA_TAG] = "1"
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(_rgba(i)[..., :3], format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("alpha-sources")
    made = {
        "vp9": folder / "alpha_vp9.webm",
        "prores": folder / "alpha_prores4444.mov",
        "tagged": folder / "tagged_h264.mkv",
    }
    _make_vp9_alpha(made["vp9"])
    _make_prores_alpha(made["prores"])
    _make_tagged_h264(made["tagged"])
    return made


@pytest.fixture(scope="module")
def model_path(shared_model: Callable[[str], Path]) -> Path:
    return shared_model("realesr-animevideov3.pth")


@pytest.fixture(scope="module")
def model(model_path: Path) -> LoadedModel:
    return get_model(str(model_path), progress=False)


@pytest.fixture(scope="module")
def upscaler(model: LoadedModel) -> Upscaler:
    return Upscaler(model.descriptor, settings=ENGINE, device="cpu")


# --------------------------------------------------------------------------------------------
# Helpers: independent decoding of alpha planes


def _decoder_for(stream: av.video.VideoStream) -> Any:
    """libvpx for VP8/VP9 (FFmpeg's native decoders ignore the alpha side channel)."""
    name = {"vp9": "libvpx-vp9", "vp8": "libvpx"}.get(stream.codec_context.name)
    return av.CodecContext.create(name, "r") if name else stream.codec_context


def decoded(path: Path, fmt: str = "rgba") -> tuple[list[Fraction], list[np.ndarray], str]:
    """(pts in seconds, pixels in ``fmt``, decoded pixel format) of every frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = _decoder_for(stream)
        seconds, pixels, pix_fmt = [], [], ""
        for packet in container.demux(stream):
            for frame in ctx.decode(packet):
                seconds.append(Fraction(frame.pts) * stream.time_base)
                pixels.append(frame.to_ndarray(format=fmt))
                pix_fmt = frame.format.name
    return seconds, pixels, pix_fmt


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def assert_alpha_matches(
    output: Path, source: Path, upscaler: Upscaler, out_size: tuple[int, int], mode: str
) -> None:
    """Output alpha k against the source alpha k upscaled by ``mode``; frames and pts equal."""
    info = probe(source)
    deep = info.video.bit_depth > 8
    src_seconds, src_rgba, _ = decoded(source, "rgba64le" if deep else "rgba")
    planes = np.stack([p[..., 3] for p in src_rgba])
    out_w, out_h = out_size
    reference = upscale_alpha(planes, upscaler, (out_h, out_w), mode).astype(np.float64)
    reference /= 65535.0 if deep else 255.0
    out_seconds, out_rgba, pix_fmt = decoded(output, "rgba64le")
    assert any(c.is_alpha for c in av.VideoFormat(pix_fmt).components), pix_fmt
    assert len(out_rgba) == len(src_rgba) == FRAMES
    assert [round(float(s), 3) for s in out_seconds] == [round(float(s), 3) for s in src_seconds]
    got = [p[..., 3] / 65535.0 for p in out_rgba]
    assert got[0].shape == (out_h, out_w)
    codec = probe(output).video.codec
    floor = FLOOR_DB[codec]
    for k in range(FRAMES):
        same = psnr(got[k], reference[k])
        neighbours = [psnr(got[k], reference[j]) for j in (k - 1, k + 1) if 0 <= j < FRAMES]
        assert same >= floor, f"frame {k}: {same:.2f} dB < {floor} dB"
        assert same >= max(neighbours) + MARGIN_DB, f"frame {k}: {same:.2f} vs {neighbours}"


def no_alpha_announced(path: Path) -> bool:
    """No alpha tag on any stream or the container, and (Matroska) no AlphaMode element."""
    with av.open(str(path)) as container:
        tagged = alpha_tagged(container.metadata) or any(
            alpha_tagged(s.metadata) for s in container.streams
        )
    return not tagged and ALPHA_MODE_ELEMENT not in path.read_bytes()


def run_core(
    source: Path,
    output: Path,
    upscaler: Upscaler,
    model: LoadedModel,
    *,
    codec: str,
    alpha: str = "keep",
    alpha_mode: str = "model",
) -> tuple[MediaInfo, JobPlan]:
    """probe -> check -> plan -> batches of 3 frames -> assemble, as the flow does."""
    info = probe(source)
    job = UpscaleJob(
        model="alpha-test",
        engine=ENGINE,
        encoder=EncoderSettings(codec=codec, alpha=alpha),
        alpha_mode=alpha_mode,
    )
    check_output_compatible(info, output, codec, alpha=alpha)
    plan = make_plan(
        info,
        job,
        weights_sha256=model.weights_sha256,
        model_scale=model.scale,
        source_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
        frames_per_batch=3,
    )
    chunks = output.parent / "chunks"
    results = [
        upscale_batch(
            plan.video,
            batch,
            upscaler,
            chunks / chunk_name(batch),
            encoder=job.encoder,
            out_size=plan.out_size,
        )
        for batch in plan.batches
    ]
    assert len(results) == 3
    report = assemble(info, [r.chunk for r in results], output)
    assert report.frames == FRAMES
    return info, plan


# --------------------------------------------------------------------------------------------
# Detection


def test_alpha_is_detected_in_the_pixel_format_and_in_the_vp9_side_channel(
    sources: dict[str, Path],
) -> None:
    vp9 = probe(sources["vp9"]).video
    # FFmpeg's own vp9 decoder reports yuv420p: the alpha is in BlockAdditional side data.
    assert (vp9.codec, vp9.pix_fmt) == ("vp9", "yuv420p")
    assert vp9.alpha and vp9.alpha_decoder == "libvpx-vp9" and vp9.alpha_readable
    with av.open(str(sources["vp9"])) as container:
        first = next(p for p in container.demux(video=0) if p.size)
        assert first.has_sidedata(BLOCK_ADDITIONAL)
    prores = probe(sources["prores"])
    assert prores.video.alpha and prores.video.alpha_decoder is None
    assert prores.video.pix_fmt.startswith("yuva444p")
    assert prores.summary()["video"]["alpha"] is True
    # A tag without alpha data is not alpha (the file the defect wrote).
    tagged = probe(sources["tagged"])
    with av.open(str(sources["tagged"])) as container:
        assert alpha_tagged(container.streams.video[0].metadata)
    assert not tagged.video.alpha


def test_an_alpha_tag_on_a_stream_without_alpha_fails_verification(
    sources: dict[str, Path],
) -> None:
    info = probe(sources["tagged"])
    with pytest.raises(AssemblyError, match="tagged as having alpha but has none"):
        verify_output(sources["tagged"], info)


# --------------------------------------------------------------------------------------------
# Kept: the core pipeline into ProRes 4444, VP9 WebM and FFV1


@pytest.mark.parametrize(
    ("source", "codec", "suffix", "mode"),
    [
        ("vp9", "prores", ".mkv", "model"),
        ("prores", "prores", ".mov", "bicubic"),
        ("vp9", "vp9", ".webm", "bicubic"),
        ("prores", "vp9", ".webm", "model"),
        ("prores", "ffv1", ".mkv", "bicubic"),
    ],
)
def test_alpha_is_upscaled_and_kept(
    source: str,
    codec: str,
    suffix: str,
    mode: str,
    sources: dict[str, Path],
    upscaler: Upscaler,
    model: LoadedModel,
    tmp_path: Path,
) -> None:
    output = tmp_path / f"out{suffix}"
    info, plan = run_core(sources[source], output, upscaler, model, codec=codec, alpha_mode=mode)
    assert plan.alpha == "keep" and "kept" in plan.alpha_description()
    assert plan.out_size == (4 * WIDTH, 4 * HEIGHT)
    assert stream_has_alpha(output)
    out = probe(output)
    assert out.video.alpha and out.video.codec == codec
    if codec == "prores":
        with av.open(str(output)) as container:
            assert container.streams.video[0].codec_context.profile == "4444"
    if codec == "vp9":  # the side channel is announced (AlphaMode), as browsers require
        assert ALPHA_MODE_ELEMENT in output.read_bytes()
    assert_alpha_matches(output, sources[source], upscaler, plan.out_size, mode)
    if source == "vp9":  # the Opus track is copied packet for packet into .webm/.mkv
        assert [s.kind for s in out.streams] == ["audio"]
        assert out.streams[0].packet_count == info.streams[0].packet_count


# --------------------------------------------------------------------------------------------
# Refused, flattened or dropped: never announced without alpha


@pytest.mark.parametrize("codec", ["h264", "hevc", "av1"])
def test_a_codec_without_alpha_is_refused_before_any_compute(
    codec: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    info = probe(sources["vp9"])
    with pytest.raises(ValueError) as caught:
        check_output_compatible(info, tmp_path / "out.mkv", codec)
    message = str(caught.value)
    assert "\n" not in message
    assert f"--codec {codec} (encoder.codec) cannot store it" in message
    for word in ("prores (.mov/.mkv)", "ffv1 (.mkv)", "vp9 (.webm/.mkv)", "--alpha flatten"):
        assert word in message
    job = UpscaleJob(encoder=EncoderSettings(codec=codec))
    with pytest.raises(ValueError, match="cannot store it"):
        make_plan(info, job, weights_sha256="0" * 64, model_scale=4, source_sha256="x")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_refuses_in_one_line(
    sources: dict[str, Path],
    model_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "out.mp4"
    argv = ["upscale", str(sources["prores"]), "-o", str(output), "--weights", str(model_path)]
    api_before = os.environ.get("PREFECT_API_URL")
    assert cli_main([*argv, "--no-progress"]) == 2
    # The background server the run used is not left in this process's environment (CI:
    # later CLI runs inherited it after it had stopped itself, idle).
    assert os.environ.get("PREFECT_API_URL") == api_before
    err = capsys.readouterr().err.strip()
    assert err.startswith("vsrflow: error: ") and "\n" not in err
    assert "has an alpha channel" in err and "--alpha flatten" in err
    assert list(tmp_path.iterdir()) == []


def _rgb_frames(path: Path, colour: Any, *, libvpx: bool) -> list[np.ndarray]:
    """RGBA frames decoded with the pipeline's resolved colour (libvpx: with the alpha)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = _decoder_for(stream) if libvpx else stream.codec_context
        return [
            f.to_ndarray(
                format="rgba", src_colorspace=colour.sws_matrix, src_color_range=colour.sws_range
            )
            for p in container.demux(stream)
            for f in ctx.decode(p)
        ]


@pytest.mark.parametrize("policy", ["flatten", "drop"])
def test_flatten_and_drop_write_no_alpha_and_no_alpha_tag(
    policy: str,
    sources: dict[str, Path],
    upscaler: Upscaler,
    model: LoadedModel,
    tmp_path: Path,
) -> None:
    """The defect: a VP9 alpha source into h264 got the ALPHA_MODE tag copied. Now no alpha
    tag and no AlphaMode element, and the colour is what was asked for: the model applied to
    the composite over black (flatten) or to the colour planes as stored (drop)."""
    output = tmp_path / "out.mkv"
    info, plan = run_core(sources["vp9"], output, upscaler, model, codec="h264", alpha=policy)
    assert plan.alpha == policy
    assert plan.alpha_description().startswith({"flatten": "flattened", "drop": "dropped"}[policy])
    assert not stream_has_alpha(output) and not probe(output).video.alpha
    assert no_alpha_announced(output)
    colour = info.video.colour.resolved(HEIGHT)
    decoded_rgba = _rgb_frames(sources["vp9"], colour, libvpx=True)
    composited = np.stack([flatten_over_black(f[..., :3], f[..., 3]) for f in decoded_rgba])
    stored = np.stack([f[..., :3] for f in _rgb_frames(sources["vp9"], colour, libvpx=False)])
    out_w, out_h = plan.out_size
    wanted = upscaler.upscale(composited if policy == "flatten" else stored, (out_h, out_w))
    other = upscaler.upscale(stored if policy == "flatten" else composited, (out_h, out_w))
    got = [f[..., :3] / 255.0 for f in _rgb_frames(output, colour, libvpx=False)]
    assert len(got) == FRAMES
    for k in range(FRAMES):
        same = psnr(got[k], wanted[k] / 255.0)
        assert same >= 30.0, f"frame {k}: {same:.2f} dB"
        assert same >= psnr(got[k], other[k] / 255.0) + MARGIN_DB, f"frame {k}"


# --------------------------------------------------------------------------------------------
# Through the Prefect flow (in-process, embedded server)


def _flow(source: Path, output: Path, model_path: Path, **groups: Any) -> Any:
    settings = UpscaleSettings.model_validate(
        {"model": {"weights_path": str(model_path)}, "batching": {"frames": 4}, **groups}
    )
    return upscale_video(
        input_path=str(source),
        output_path=str(output),
        settings=settings,
        work_dir=str(output.parent / "work"),
    )


@pytest.mark.parametrize(
    ("source", "codec", "suffix"), [("vp9", "prores", ".mkv"), ("prores", "vp9", ".webm")]
)
def test_flow_keeps_alpha(
    source: str,
    codec: str,
    suffix: str,
    sources: dict[str, Path],
    model_path: Path,
    model: LoadedModel,
    tmp_path: Path,
) -> None:
    output = tmp_path / f"out{suffix}"
    result = _flow(sources[source], output, model_path, encoder={"codec": codec})
    assert result.frames == FRAMES and result.batches == 2
    assert result.parameters["encoder.alpha"] == "keep"
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    assert manifest["alpha"].startswith("kept") and "model" in manifest["alpha"]
    # The flow's engine: settings' defaults (precision auto, micro-batch 4, whole frames).
    reference = Upscaler(model.descriptor, settings=EngineSettings(precision="auto"), device="cpu")
    assert_alpha_matches(output, sources[source], reference, result.out_size, "model")


def test_flow_flattens_on_request_and_says_so(
    sources: dict[str, Path], model_path: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.mkv"
    result = _flow(sources["vp9"], output, model_path, encoder={"alpha": "flatten"})
    assert result.frames == FRAMES
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    assert manifest["alpha"].startswith("flattened: composited over black")
    assert manifest["parameters"]["encoder.alpha"] == "flatten"
    assert not stream_has_alpha(output) and no_alpha_announced(output)
