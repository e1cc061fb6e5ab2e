"""vsrflow.engine with the real realesr-animevideov3 weights on small real frames.

The reference is what Real-ESRGAN itself computes: one plain, untiled fp32 forward per frame
through ``descriptor.model``, clamped to [0, 1], times the peak, rounded. Every optimised path
(tiles, micro-batches, bf16, 16-bit I/O, pre-padding, resizing) is compared against it; PSNR
against a ground-truth HR image would not be a valid check for GAN models (see shared README).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import media_fixtures as mf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsrflow.engine import (
    EngineSettings,
    Upscaler,
    cpu_has_native_bf16,
    output_geometry,
    resolve_precision,
    tile_windows,
)
from vsrflow.media.decode import decode_range
from vsrflow.media.probe import probe
from vsrflow.models import LoadedModel, get_model

#: Largest allowed difference (in 8-bit levels) between an fp32 path and the reference.
MAX_FP32_DIFF = 2
#: bf16 autocast vs the fp32 reference; measured 57.1 dB on these frames (max diff 3 levels).
MIN_BF16_PSNR_DB = 45.0


def psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.fixture(scope="module")
def model(shared_model: Callable[[str], Path]) -> LoadedModel:
    loaded = get_model(str(shared_model("realesr-animevideov3.pth")), progress=False)
    assert loaded.architecture == "Compact" and loaded.scale == 4
    return loaded


@pytest.fixture(scope="module")
def frames(shared_media: Callable[[str], Path]) -> np.ndarray:
    """Three consecutive real frames, cropped to a textured 64x48 region: (3, 48, 64, 3) uint8."""
    crops = []
    with av.open(str(shared_media("bikes_640x272_25fps_noaudio.mp4"))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= 10:
                crops.append(frame.to_ndarray(format="rgb24")[100:148, 300:364])
            if len(crops) == 3:
                break
    stack = np.stack(crops)
    assert stack.shape == (3, 48, 64, 3)
    assert not np.array_equal(stack[0], stack[1]), "frames must differ to catch reordering"
    return stack


def reference_float(model: LoadedModel, frames: np.ndarray, peak: float) -> np.ndarray:
    """One plain untiled fp32 forward per frame through ``descriptor.model``, clamped."""
    net = model.descriptor.model
    outputs = []
    with torch.inference_mode():
        for frame in frames:
            x = torch.from_numpy(frame.astype(np.float32) / peak).permute(2, 0, 1)[None]
            y = net(x.float()).clamp(0.0, 1.0)
            outputs.append(y[0].permute(1, 2, 0).numpy())
    return np.stack(outputs)


def quantize(y: np.ndarray, peak: float) -> np.ndarray:
    return np.round(y * peak).astype(np.int64)


@pytest.fixture(scope="module")
def reference(model: LoadedModel, frames: np.ndarray) -> np.ndarray:
    """Float reference output of ``frames``: (3, 192, 256, 3) in [0, 1]."""
    return reference_float(model, frames, 255.0)


def max_diff(out: np.ndarray, ref_quantized: np.ndarray) -> int:
    return int(np.abs(out.astype(np.int64) - ref_quantized).max())


# --------------------------------------------------------------------------------------------
# fp32: tiles and micro-batches change nothing


def test_tiled_microbatched_fp32_matches_plain_forward(
    model: LoadedModel, frames: np.ndarray, reference: np.ndarray
) -> None:
    settings = EngineSettings(precision="fp32", tile=24, tile_pad=20, micro_batch=2)
    assert len(list(tile_windows(48, 64, settings.tile))) == 6  # 2 rows x 3 columns
    upscaler = Upscaler(model.descriptor, settings=settings, device="cpu")
    assert upscaler.precision == "fp32"
    out = upscaler.upscale(frames)  # 3 frames in micro-batches of 2 + 1
    assert out.shape == (3, 192, 256, 3) and out.dtype == np.uint8
    assert max_diff(out, quantize(reference, 255)) <= MAX_FP32_DIFF
    # Frame k of the output is frame k of the input (micro-batching keeps the order).
    for k in range(3):
        others = [j for j in range(3) if j != k]
        assert all(max_diff(out[k], quantize(reference[j], 255)) > 20 for j in others)


def test_tiles_without_context_show_seams(
    model: LoadedModel, frames: np.ndarray, reference: np.ndarray
) -> None:
    """Control: the tiled path really runs, and tile_pad is what makes it seamless."""
    settings = EngineSettings(precision="fp32", tile=24, tile_pad=0, micro_batch=3)
    out = Upscaler(model.descriptor, settings=settings, device="cpu").upscale(frames)
    assert max_diff(out, quantize(reference, 255)) > MAX_FP32_DIFF  # measured 10


def test_untiled_micro_batch_sizes_agree(
    model: LoadedModel, frames: np.ndarray, reference: np.ndarray
) -> None:
    outs = [
        Upscaler(
            model.descriptor,
            settings=EngineSettings(precision="fp32", micro_batch=mb),
            device="cpu",
        ).upscale(frames)
        for mb in (1, 3)
    ]
    for out in outs:
        assert max_diff(out, quantize(reference, 255)) <= MAX_FP32_DIFF
    assert max_diff(outs[0], outs[1].astype(np.int64)) <= 1


# --------------------------------------------------------------------------------------------
# bf16


def _require_bf16(model: LoadedModel) -> None:
    if not model.supports_bfloat16:
        pytest.skip(f"spandrel says {model.architecture} does not support bfloat16")
    if not cpu_has_native_bf16():
        pytest.skip("CPU lacks native bf16 (no avx512_bf16/amx_bf16): engine.cpu_has_native_bf16")


def test_bf16_tiled_close_to_fp32_reference(
    model: LoadedModel, frames: np.ndarray, reference: np.ndarray
) -> None:
    _require_bf16(model)
    settings = EngineSettings(precision="bf16", tile=24, tile_pad=20, micro_batch=2)
    upscaler = Upscaler(model.descriptor, settings=settings, device="cpu")
    assert upscaler.precision == "bf16"
    out = upscaler.upscale(frames)
    assert out.shape == (3, 192, 256, 3) and out.dtype == np.uint8
    value = psnr(out, quantize(reference, 255), 255.0)
    assert value >= MIN_BF16_PSNR_DB, f"bf16 PSNR {value:.2f} dB"
    assert value != float("inf"), "bf16 gave bit-identical output: autocast is not active"


def test_compiled_engine_keeps_the_fidelity_bounds(
    model: LoadedModel, frames: np.ndarray, reference: np.ndarray
) -> None:
    """``compile=True`` runs inductor's fused kernels (not the eager module) within the same
    bounds as eager, and is part of the cache identity (its rounding differs)."""
    settings = EngineSettings(compile=True, micro_batch=2)
    upscaler = Upscaler(model.descriptor, settings=settings, device="cpu")
    out = upscaler.upscale(frames)
    assert out.shape == (3, 192, 256, 3) and out.dtype == np.uint8
    ref = quantize(reference, 255)
    if upscaler.precision == "bf16":
        assert psnr(out, ref, 255.0) >= MIN_BF16_PSNR_DB
    else:  # CPUs without native bf16 (AVX2-only: auto picks fp32)
        assert max_diff(out, ref) <= MAX_FP32_DIFF
    assert settings.identity()["compile"] is True
    assert "compile" not in EngineSettings().identity()  # keys of eager runs are unchanged
    # Compiled in place on this Upscaler's own copy: the shared descriptor stays eager.
    assert getattr(model.descriptor.model, "_compiled_call_impl", None) is None


def test_auto_precision_picks_bf16_on_capable_cpu(model: LoadedModel) -> None:
    auto = resolve_precision("auto", torch.device("cpu"), model.descriptor)
    want = "bf16" if cpu_has_native_bf16() and model.supports_bfloat16 else "fp32"
    assert auto == want


def test_fp16_on_cpu_is_refused(model: LoadedModel) -> None:
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Upscaler(model.descriptor, settings=EngineSettings(precision="fp16"), device="cpu")


# --------------------------------------------------------------------------------------------
# 16-bit I/O, pre_pad, resizing


def test_uint16_frames_keep_16bit_precision(
    model: LoadedModel, frames: np.ndarray, reference: np.ndarray
) -> None:
    frames16 = frames.astype(np.uint16) * 257  # the same picture: x16 / 65535 == x8 / 255
    upscaler = Upscaler(
        model.descriptor, settings=EngineSettings(precision="fp32", micro_batch=2), device="cpu"
    )
    out = upscaler.upscale(frames16)
    assert out.shape == (3, 192, 256, 3) and out.dtype == np.uint16
    assert max_diff(out, quantize(reference, 65535)) <= MAX_FP32_DIFF * 257
    assert np.any(out % 257 != 0), "16-bit output is only 8-bit values expanded"


def test_real_10bit_frame_through_uint16_path(
    model: LoadedModel, tenbit_clip: mf.FixtureInfo
) -> None:
    info = probe(tenbit_clip.path)
    video = info.video
    colour = video.params(info.path).colour
    first = next(
        decode_range(
            info.path, video.index, video.pts[0], video.pts[1], colour=colour, bit_depth=10
        )
    )
    assert first.rgb.dtype == np.uint16
    upscaler = Upscaler(model.descriptor, settings=EngineSettings(precision="fp32"), device="cpu")
    out = upscaler.upscale(first.rgb[None])
    ref = quantize(reference_float(model, first.rgb[None], 65535.0), 65535)
    assert out.dtype == np.uint16 and out.shape == (1, 192, 256, 3)
    assert max_diff(out, ref) <= MAX_FP32_DIFF * 257


def test_pre_pad_matches_reflect_padded_reference(
    model: LoadedModel, frames: np.ndarray, reference: np.ndarray
) -> None:
    pad = 10
    upscaler = Upscaler(
        model.descriptor,
        settings=EngineSettings(precision="fp32", pre_pad=pad, micro_batch=2),
        device="cpu",
    )
    out = upscaler.upscale(frames)
    assert out.shape == (3, 192, 256, 3)
    padded = np.pad(frames, ((0, 0), (0, pad), (0, pad), (0, 0)), mode="reflect")
    ref = quantize(reference_float(model, padded, 255.0)[:, :192, :256], 255)
    assert max_diff(out, ref) <= MAX_FP32_DIFF
    # pre_pad changes the right/bottom border (measured up to 19 levels), not the interior.
    plain = quantize(reference, 255)
    assert max_diff(out, plain) > 5
    assert max_diff(out[:, :150, :200], plain[:, :150, :200]) <= MAX_FP32_DIFF


def test_out_size_resizes_model_output(
    model: LoadedModel, frames: np.ndarray, reference: np.ndarray
) -> None:
    upscaler = Upscaler(
        model.descriptor, settings=EngineSettings(precision="fp32", micro_batch=2), device="cpu"
    )
    out = upscaler.upscale(frames, out_size=(100, 130))
    assert out.shape == (3, 100, 130, 3) and out.dtype == np.uint8
    y = torch.from_numpy(reference).permute(0, 3, 1, 2)
    resized = F.interpolate(y, size=(100, 130), mode="bicubic", align_corners=False, antialias=True)
    ref = quantize(resized.clamp(0, 1).permute(0, 2, 3, 1).numpy(), 255)
    assert max_diff(out, ref) <= MAX_FP32_DIFF


def test_bad_frame_arrays_are_rejected(model: LoadedModel, frames: np.ndarray) -> None:
    upscaler = Upscaler(model.descriptor, settings=EngineSettings(precision="fp32"), device="cpu")
    with pytest.raises(ValueError, match=r"expected \(N, H, W, 3\)"):
        upscaler.upscale(frames[0])
    with pytest.raises(ValueError, match="uint8 or uint16"):
        upscaler.upscale(frames.astype(np.float32))
    assert upscaler.output_size(48, 64) == (192, 256)


# --------------------------------------------------------------------------------------------
# Tiles and output geometry (pure arithmetic)


@pytest.mark.parametrize(("height", "width", "tile"), [(48, 64, 24), (181, 321, 64), (5, 7, 0)])
def test_tile_windows_cover_the_frame_exactly_once(height: int, width: int, tile: int) -> None:
    cover = np.zeros((height, width), np.int32)
    for y0, y1, x0, x1 in tile_windows(height, width, tile):
        assert y1 > y0 and x1 > x0
        cover[y0:y1, x0:x1] += 1
    assert np.all(cover == 1)


@pytest.mark.parametrize(
    ("width", "height", "kwargs", "expected"),
    [
        (321, 181, {}, (1284, 724)),  # model scale
        (64, 48, {"outscale": 2}, (128, 96)),
        (321, 181, {"outscale": 2.5}, (802, 452)),  # 802.5 x 452.5 -> nearest even
        (320, 240, {"target_height": 720}, (960, 720)),
        (321, 181, {"target_height": 720}, (1276, 720)),  # 1276.9 -> nearest even 1276
        (321, 181, {"target_height": 720, "even": False}, (1277, 720)),
        (321, 181, {"outscale": 2.5, "even": False}, (802, 452)),
        (64, 48, {"outscale": 0.001}, (2, 2)),  # never below 2x2 with even sizes
        (64, 48, {"outscale": 0.001, "even": False}, (1, 1)),
    ],
)
def test_output_geometry(
    width: int, height: int, kwargs: dict[str, object], expected: tuple[int, int]
) -> None:
    assert output_geometry(width, height, 4, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outscale": 2, "target_height": 720}, "not both"),
        ({"outscale": 0}, "outscale must be positive"),
        ({"outscale": -1.5}, "outscale must be positive"),
        ({"target_height": 0}, "target_height must be positive"),
    ],
)
def test_output_geometry_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        output_geometry(320, 240, 4, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Memory budget (vsrflow.memory)


def _fp32(model: LoadedModel, **settings: object) -> Upscaler:
    from vsrflow.engine_settings import EngineSettings

    return Upscaler(model.descriptor, settings=EngineSettings(precision="fp32", **settings))


def test_a_frame_over_the_budget_goes_through_in_tiles_with_the_same_pixels(
    model: LoadedModel,
) -> None:
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (1, 96, 128, 3), dtype=np.uint8)
    whole = _fp32(model)
    reference = whole.upscale(frame)
    assert whole.last_plan is not None and whole.last_plan.tile == 0
    # A budget under what the whole frame needs, but enough for tiles.
    budget = whole.last_plan.estimated_bytes * 0.8 / 2**30
    tight = _fp32(model, max_memory_gb=budget)
    out = tight.upscale(frame)
    assert tight.last_plan is not None and 0 < tight.last_plan.tile < 128
    assert tight.last_plan.estimated_bytes <= tight.memory_budget
    explicit = _fp32(model, tile=tight.last_plan.tile).upscale(frame)
    assert np.array_equal(out, explicit)  # exactly what the user would get asking for tiles
    assert np.abs(out.astype(int) - reference.astype(int)).max() <= 2  # and seamless


def test_fewer_frames_per_pass_before_tiles(model: LoadedModel) -> None:
    frames = np.random.default_rng(8).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    one = _fp32(model, micro_batch=1)
    one_at_a_time = one.upscale(frames)
    budget = one.last_plan.estimated_bytes * 1.5 / 2**30  # one frame fits, two do not
    tight = _fp32(model, micro_batch=4, max_memory_gb=budget)
    out = tight.upscale(frames)
    assert tight.last_plan is not None
    assert (tight.last_plan.frames_per_pass, tight.last_plan.tile) == (1, 0)
    assert np.array_equal(out, one_at_a_time)


def test_frames_beyond_the_limits_are_refused_in_words(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vsrflow.errors import FrameTooLargeError

    frame = np.zeros((1, 64, 64, 3), dtype=np.uint8)
    with pytest.raises(FrameTooLargeError, match="does not fit the memory budget"):
        _fp32(model, max_memory_gb=1e-6).upscale(frame)
    monkeypatch.setenv("VSRFLOW_MAX_OUTPUT_PIXELS", str(200 * 200))
    with pytest.raises(FrameTooLargeError, match=r"256x256 .* over the limit"):
        _fp32(model).upscale(frame)


@pytest.mark.parametrize(("switch", "applied"), [("1", "True"), ("0", "False")])
def test_cpu_allocator_tuning_applies_in_a_fresh_process_unless_switched_off(
    switch: str, applied: str
) -> None:
    """glibc accepts every mallopt (one heap, 128 MB kept); VSRFLOW_CPU_MALLOC_TUNING=0
    leaves its defaults alone. Process-wide and one-way, hence a child process."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "from vsrflow.engine import tune_cpu_allocator as t; print(t())"],
        env={**os.environ, "VSRFLOW_CPU_MALLOC_TUNING": switch},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.split()[-1] == applied, done.stderr[-500:]
