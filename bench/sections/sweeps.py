"""Section 4, "sweeps": frames/s of each engine setting (precision, channels_last, micro-batch,
tiles, torch.compile) on the same frames, each with its fidelity against a plain fp32 forward;
whether the ``EngineSettings()`` defaults are the fastest setting within the fidelity bounds;
and what torch.compile's first call costs with a warm and (in a child process) a cold inductor
cache."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import (
    MAX_FP32_DIFF,
    MIN_BF16_PSNR_DB,
    NOISE_MARGIN,
    Sample,
    Sizes,
    fresh_upscaler,
    get_weights,
    load_frames,
    per_frame,
    plain_forward,
    psnr,
    run_child,
    timed,
)

if TYPE_CHECKING:
    from vsrflow.engine import EngineSettings, Upscaler
    from vsrflow.models import LoadedModel


@dataclass
class SweepPoint:
    label: str
    settings: EngineSettings
    precision: str
    upscaler: Upscaler
    samples: list[Sample] = field(default_factory=list)
    first_call_s: float = 0.0
    max_diff: int = 0
    psnr_db: float = 0.0

    def best(self) -> float:
        return min(s.wall for s in self.samples)

    @property
    def fidelity_ok(self) -> bool:
        if self.precision == "fp32":
            return self.max_diff <= MAX_FP32_DIFF
        return self.psnr_db >= MIN_BF16_PSNR_DB

    def summary(self, n: int) -> dict[str, Any]:
        return {
            "label": self.label,
            "settings": dataclasses.asdict(self.settings),
            "precision": self.precision,
            **per_frame(self.samples, n),
            "fps": round(n / self.best(), 2),
            "first_call_s": round(self.first_call_s, 2),
            "max_abs_diff_levels": self.max_diff,
            "psnr_db": round(self.psnr_db, 2) if math.isfinite(self.psnr_db) else "inf",
            "fidelity_ok": self.fidelity_ok,
        }


def sweep_configs(quick: bool) -> list[tuple[str, EngineSettings]]:
    """One factor at a time around the defaults, plus channels_last x micro-batch in bf16 (the
    two interact through memory layout), tiles, fp32 (plain and tiled: the fp32 fidelity
    bound), torch.compile (opt-in), and fp16 when a CUDA device exists."""
    import torch

    from vsrflow.engine import EngineSettings

    default = EngineSettings()
    configs: list[tuple[str, EngineSettings]] = [("default", default)]
    for channels_last in (True, False):
        for mb in (1, 2, 4, 8):
            if quick and not channels_last and mb != default.micro_batch:
                continue
            cl = "on" if channels_last else "off"
            configs.append(
                (
                    f"bf16 cl={cl} mb={mb}",
                    dataclasses.replace(
                        default, precision="bf16", channels_last=channels_last, micro_batch=mb
                    ),
                )
            )
    for tile in (128, 64):
        configs.append(
            (f"bf16 tile={tile}", dataclasses.replace(default, precision="bf16", tile=tile))
        )
    for channels_last in (True, False):
        configs.append(
            (
                f"fp32 cl={'on' if channels_last else 'off'} mb={default.micro_batch}",
                dataclasses.replace(default, precision="fp32", channels_last=channels_last),
            )
        )
    configs.append(("fp32 tile=128", dataclasses.replace(default, precision="fp32", tile=128)))
    configs.append(("default + compile", dataclasses.replace(default, compile=True)))
    if torch.cuda.is_available():
        configs.append(("fp16 (cuda)", dataclasses.replace(default, precision="fp16")))
    return configs


def run_sweeps(
    model: LoadedModel, clip: Path, frames: np.ndarray, sizes: Sizes, quick: bool
) -> dict[str, Any]:
    """Frames/s of each setting on the same frames in interleaved rounds (order reversed every
    other round), the fidelity of each against a plain fp32 forward, and whether the defaults
    are the fastest setting within the fidelity bounds."""
    from vsrflow.engine import EngineSettings

    frames = frames[: sizes.sweep_frames]
    n = len(frames)
    t0 = time.perf_counter()
    reference = plain_forward(model, frames)
    reference_s = (time.perf_counter() - t0) / n
    inductor_cache = Path(tempfile.gettempdir()) / f"torchinductor_{os.environ.get('USER', 'root')}"
    cache_was_warm = inductor_cache.exists()

    points: list[SweepPoint] = []
    for label, settings in sweep_configs(quick):
        device = "cuda" if settings.precision == "fp16" else "cpu"
        upscaler = fresh_upscaler(model, settings, device)
        point = SweepPoint(label, settings, upscaler.precision, upscaler)
        t = time.perf_counter()
        out = upscaler.upscale(frames)  # warm-up (compile) and the fidelity check
        point.first_call_s = time.perf_counter() - t
        point.max_diff = int(np.abs(out.astype(np.int16) - reference).max())
        point.psnr_db = psnr(out, reference)
        points.append(point)
        print(f"  sweep: {label}: first call {point.first_call_s:.1f} s", flush=True)

    for round_index in range(sizes.sweep_rounds):
        order = points if round_index % 2 == 0 else points[::-1]
        for point in order:
            if point.precision == "fp32" and point.samples:
                continue  # fp32 is never picked where bf16 is native: one sample is enough
            sample, _ = timed(lambda u=point.upscaler: u.upscale(frames))
            point.samples.append(sample)
        print(f"  sweep: round {round_index + 1}/{sizes.sweep_rounds}", flush=True)

    default = points[0]
    twin = next(
        (
            p
            for p in points[1:]
            if p.settings == dataclasses.replace(default.settings, precision=default.precision)
        ),
        None,
    )
    eligible = [p for p in points if p.fidelity_ok and not p.settings.compile]
    fastest = min(eligible, key=SweepPoint.best)
    compiled = next(p for p in points if p.settings.compile)
    cold_dir = Path(tempfile.mkdtemp(prefix="vsrflow-bench-inductor-"))
    try:
        cold = run_child(
            ["--worker", "compile-cold", str(clip)], {"TORCHINDUCTOR_CACHE_DIR": str(cold_dir)}
        )["first_call_cold_s"]
    finally:
        shutil.rmtree(cold_dir, ignore_errors=True)
    eager = twin or default
    saving = (eager.best() - compiled.best()) / n
    extra = compiled.first_call_s - eager.first_call_s
    return {
        "frames": n,
        "frame_size_hw": list(frames.shape[1:3]),
        "reference_plain_fp32_s_per_frame": round(reference_s, 4),
        "points": [p.summary(n) for p in points],
        "defaults": dataclasses.asdict(EngineSettings()),
        "default_resolves_to": default.precision,
        "noise_default_vs_twin": round(abs(default.best() / twin.best() - 1), 3) if twin else None,
        "fastest_within_bounds": fastest.label,
        "default_over_fastest": round(min(default.best(), eager.best()) / fastest.best(), 3),
        "default_is_fastest_within_noise": min(default.best(), eager.best())
        <= fastest.best() * NOISE_MARGIN,
        "compile": {
            "first_call_s": round(compiled.first_call_s, 2),
            "eager_first_call_s": round(eager.first_call_s, 2),
            "inductor_cache_was_warm": cache_was_warm,
            "eager_s_per_frame": round(eager.best() / n, 4),
            "compiled_s_per_frame": round(compiled.best() / n, 4),
            "saving_s_per_frame": round(saving, 4),
            "break_even_frames": round(extra / saving) if saving > 0 else None,
            "first_call_cold_cache_s": cold,
            "break_even_frames_cold_cache": round((cold - eager.first_call_s) / saving)
            if saving > 0
            else None,
        },
    }


def worker_compile_cold(clip: Path) -> dict[str, Any]:
    """Child with an empty inductor cache (TORCHINDUCTOR_CACHE_DIR set by the parent): what
    ``EngineSettings(compile=True)`` costs on its first call in a fresh worker image."""
    import dataclasses as dc

    from vsrflow.engine import EngineSettings, Upscaler

    frames = load_frames(clip, EngineSettings().micro_batch)
    settings = dc.replace(EngineSettings(), compile=True)
    upscaler = Upscaler(get_weights().descriptor, settings=settings, device="cpu")
    t = time.perf_counter()
    upscaler.upscale(frames)
    return {"first_call_cold_s": round(time.perf_counter() - t, 2)}
