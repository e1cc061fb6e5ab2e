#!/usr/bin/env python
"""Which model should ``vsrflow upscale`` use by default? Measured, not assumed.

    python bench/model_choice.py                       # about 2-4 min on 2 CPU cores
    python bench/model_choice.py --out /tmp/mc --shared /path/to/shared

Why this exists: the default content preset was ``anime`` (realesr-animevideov3). Most archive
footage is live action, and on it that model posterizes fine texture (foliage, grass, skin) into
flat blobs with hard edges. The default should be the FASTEST registry model suited to real
footage, chosen by measuring speed and texture on real clips, with ``anime`` one option away.

What it measures, all in one run on this machine, with the shared weights read by file path:

1. Speed: seconds per frame for each candidate through ``vsrflow.engine.Upscaler`` with the
   engine defaults (bf16 autocast on CPUs with native bf16, channels_last, micro-batch 4). Four
   consecutive frames of a real clip, centre-cropped to 160x90, are one micro-batch; one warm-up
   pass, then timed passes. The cost of these convolutional models is linear in
   the pixel count, so s/frame x 4 is the cost of a 320x180 frame; the cheap models are also
   timed at 320x180 directly to check that scaling. Passes of the models are interleaved, each
   waits for the machine to be quiet, and the best pass is the headline (the machine is shared);
   CPU time and the share of the CPUs other processes used are recorded beside wall time.
2. Look: for live-action clips (bikes: a street, and cobblestones in a later frame; carphone: a
   face; realshort: a potted ficus, the only foliage in the live-action clips) and an animated one
   (Big Buck Bunny, downscaled to 320x180 first to mimic SD animation), a 128x128 source region
   of one frame goes through every model (with 16 px of real context around it, cut off
   afterwards). A PNG per clip shows part of it, bicubic | each model at 4x, labelled.
3. Texture: how much of the region's texture becomes flat blobs, on luma, in its textured half
   (the 8x8 output blocks where bicubic's mean gradient is at least its median, so that smoothing
   sky or walls does not count), against the bicubic upscale of the same region (which keeps all
   of the source's texture, only blurred):
   - flat (the headline): share of those pixels with a gradient under 0.5 grey levels per pixel,
     the inside of a blob (bicubic: 1-3 %);
   - gradient: their median gradient magnitude / bicubic's (the median skips the few edge pixels
     GAN sharpening boosts); HF: Laplacian variance / bicubic's (edges included); colours:
     distinct RGB values / bicubic's; detail correlation: the output box-downscaled back to the
     source size, high-passed, correlated with the high-passed source (the source's own fine
     detail that survives; invented texture does not count).
4. The choice, by a rule: the fastest registry model made for real or general content that
   leaves no more flat pixels in live action than the current default. (Not a blind test: the
   flat share was picked after a first metric, block standard deviation, scored every GAN model
   above bicubic because sharpened edges dominate it; the other metrics are reported beside it.)
   The conclusion paragraph is generated from the numbers; one sentence (``SEEN``)
   records what the images showed to a person checking them.

Results go to ``docs/model-choice/``: ``results.json``, ``README.md`` (tables, images and the
conclusion) and one PNG per clip. Standalone on purpose: it uses vsrflow's engine, model loader,
probe and decoder, and nothing from bench/run.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from vsrflow.compare import pick_region  # noqa: E402
from vsrflow.engine import Upscaler  # noqa: E402
from vsrflow.engine_settings import EngineSettings  # noqa: E402
from vsrflow.media.decode import decode_range  # noqa: E402
from vsrflow.media.probe import probe  # noqa: E402
from vsrflow.models import get_model, get_spec  # noqa: E402

#: Timed input: 4 frames (one micro-batch) of TIME_W x TIME_H; REF_W x REF_H is the SD size the
#: numbers are scaled to (the size bench/run.py and the README use).
TIME_W, TIME_H, REF_W, REF_H = 160, 90, 320, 180
MICRO_BATCH = 4
#: Source region the texture numbers are computed on, real context the model sees around it
#: (cut off afterwards), model scale. The PNG shows a DISPLAY x DISPLAY part of the region
#: (smaller steps of 8 until the PNG is at most MAX_PNG_BYTES: GAN texture compresses badly).
REGION, CONTEXT, SCALE = 128, 16, 4
DISPLAY, MAX_PNG_BYTES = 64, 400_000
#: The textured half of a region: the BLOCK x BLOCK output blocks where bicubic's mean gradient
#: is at least its median over the region. A pixel there is flat (inside a blob) when its
#: gradient is under FLAT_GRADIENT grey levels per output pixel (bicubic: 1-3 % of pixels).
BLOCK, FLAT_GRADIENT = 8, 0.5
#: Only models whose 320x180 micro-batch is predicted under this many seconds are also timed
#: there directly (the RRDB models would take minutes for a check of linearity).
DIRECT_MAX_S = 4.0
#: Timed rounds (one pass per model each); before each pass wait up to QUIET_MAX_WAIT s for
#: other processes to use under QUIET_SHARE of the CPUs.
ROUNDS, QUIET_SHARE, QUIET_MAX_WAIT = 4, 0.15, 8.0


@dataclass(frozen=True)
class Candidate:
    name: str  # registry name
    filename: str  # in <shared>/models
    short: str  # label in images and tables
    weights_note: str


CANDIDATES = (
    Candidate("realesr-animevideov3", "realesr-animevideov3.pth", "animevideov3", "official file"),
    Candidate(
        "realesr-general-x4v3",
        "realesr-general-x4v3.from-ncnn-fp16.pth",
        "general-x4v3",
        "converted back from the official ncnn release (fp16 weights)",
    ),
    Candidate(
        "RealESRGAN_x4plus",
        "RealESRGAN_x4plus.from-ncnn-fp16.pth",
        "x4plus",
        "converted from the official ncnn release (fp16 weights)",
    ),
    Candidate(
        "RealESRGAN_x4plus_anime_6B",
        "RealESRGAN_x4plus_anime_6B.from-ncnn-fp16.pth",
        "x4plus_anime_6B",
        "converted from the official ncnn release (fp16 weights)",
    ),
)


@dataclass(frozen=True)
class Clip:
    key: str
    filename: str
    kind: str  # "live action" or "animation"
    what: str
    #: Frame index; None = the middle frame.
    frame: int | None = None
    #: Top-left of the REGION x REGION region; None = the most detailed window (vsrflow.compare).
    region: tuple[int, int] | None = None
    #: Top-left (frame coordinates) of the displayed part; None = its most detailed window.
    display: tuple[int, int] | None = None
    #: Downscale the frame to this (width, height) first (antialiased), e.g. HD -> SD.
    downscale: tuple[int, int] | None = None


CLIPS = (
    Clip(
        "bikes",
        "bikes_640x272_25fps_noaudio.mp4",
        "live action",
        "street: cyclist, bicycle, railings (middle frame, most detailed window)",
    ),
    Clip(
        "bikes-cobbles",
        "bikes_640x272_25fps_noaudio.mp4",
        "live action",
        "cobblestones and a stone step: fine random texture (frame 200; the clip has no trees)",
        frame=200,
        region=(24, 144),
    ),
    Clip(
        "carphone",
        "carphone_176x144_2997fps_noaudio.mp4",
        "live action",
        "a face: skin, hair, eyes (middle frame, region placed on the face)",
        region=(24, 8),
        display=(56, 24),
    ),
    Clip(
        "realshort",
        "realshort_320x240_aac_mono.mp4",
        "live action",
        "potted ficus: leaves, the clip's foliage (middle frame, most detailed window)",
    ),
    Clip(
        "bigbuckbunny",
        "bigbuckbunny_1280x720_aac_6ch.mp4",
        "animation",
        "CG animation: grass, foliage, fur; 1280x720 downscaled to 320x180 (middle frame)",
        downscale=(320, 180),
    ),
)


# --- input -----------------------------------------------------------------------------


def read_frames(path: Path, first: int, count: int) -> list[np.ndarray]:
    """``count`` RGB24 frames from index ``first`` (presentation order) via vsrflow's decoder."""
    video = probe(path).video
    if video.bit_depth > 8:
        raise SystemExit(f"{path}: {video.bit_depth}-bit source; this bench expects 8-bit clips")
    first = max(0, min(first, video.frame_count - count))
    end = video.pts[first + count] if first + count < video.frame_count else None
    frames = decode_range(
        path,
        video.index,
        video.pts[first],
        end,
        colour=video.colour.resolved(video.height),
        bit_depth=video.bit_depth,
    )
    out = [f.rgb for f in frames][:count]
    if len(out) != count:
        raise SystemExit(f"{path}: decoded {len(out)} frames from {first}, expected {count}")
    return out


def clip_frame(media: Path, clip: Clip) -> np.ndarray:
    path = media / clip.filename
    index = clip.frame if clip.frame is not None else probe(path).video.frame_count // 2
    frame = read_frames(path, index, 1)[0]
    if clip.downscale is not None:
        frame = np.asarray(Image.fromarray(frame).resize(clip.downscale, Image.Resampling.LANCZOS))
    return frame


def centre_crop(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    rows, cols = frame.shape[:2]
    y, x = (rows - height) // 2, (cols - width) // 2
    return np.ascontiguousarray(frame[y : y + height, x : x + width])


# --- speed -----------------------------------------------------------------------------


def _busy_jiffies() -> int | None:
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait


def wait_quiet(max_wait: float = QUIET_MAX_WAIT) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under QUIET_SHARE of the CPUs
    over half a second; returns the seconds waited. The machine is shared: a pass timed while
    another engineer's tests run measures them, not the model."""
    hz, cpus = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    waited = 0.0
    while waited < max_wait:
        busy0, cpu0 = _busy_jiffies(), time.process_time()
        time.sleep(0.5)
        busy1, cpu1 = _busy_jiffies(), time.process_time()
        if busy0 is None or busy1 is None:
            return waited
        waited += 0.5
        if ((busy1 - busy0) / hz - (cpu1 - cpu0)) / (0.5 * cpus) < QUIET_SHARE:
            break
    return waited


def timed(upscaler: Upscaler, frames: np.ndarray) -> dict[str, float]:
    """One pass: wall and CPU seconds, and the share of all CPUs other processes used."""
    hz = os.sysconf("SC_CLK_TCK")
    waited = wait_quiet()
    busy0, cpu0, t0 = _busy_jiffies(), time.process_time(), time.perf_counter()
    upscaler.upscale(frames)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    busy1 = _busy_jiffies()
    others = float("nan")
    if busy0 is not None and busy1 is not None:
        others = max(0.0, ((busy1 - busy0) / hz - cpu) / (wall * (os.cpu_count() or 1)))
    return {"wall": wall, "cpu": cpu, "others": others, "waited": waited}


def time_interleaved(
    upscalers: dict[str, Upscaler], frames: np.ndarray, rounds: int
) -> dict[str, dict[str, Any]]:
    """Warm each model up once on ``frames``, then time one pass per model per round, models
    interleaved so a burst of load elsewhere hits one pass of each model, not one model's
    every pass. Per model: s/frame best (the least disturbed pass: the headline) and median,
    CPU-s/frame, others' CPU share during the best pass and at most."""
    n = frames.shape[0]
    for upscaler in upscalers.values():
        upscaler.upscale(frames)  # oneDNN primitives for this shape, allocator
    passes: dict[str, list[dict[str, float]]] = {key: [] for key in upscalers}
    for _ in range(rounds):
        for key, upscaler in upscalers.items():
            passes[key].append(timed(upscaler, frames))
    out = {}
    for key, runs in passes.items():
        best = min(runs, key=lambda r: r["wall"])
        out[key] = {
            "input": f"{frames.shape[2]}x{frames.shape[1]}",
            "frames_per_pass": n,
            "passes": len(runs),
            "s_per_frame_best": best["wall"] / n,
            "s_per_frame_median": statistics.median(r["wall"] for r in runs) / n,
            "cpu_s_per_frame_best_pass": best["cpu"] / n,
            "others_cpu_share_best_pass": best["others"],
            "others_cpu_share_max": max(r["others"] for r in runs),
            "seconds_waited_for_quiet": sum(r["waited"] for r in runs),
            "s_per_frame_all": [r["wall"] / n for r in runs],
        }
    return out


# --- texture ---------------------------------------------------------------------------


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def gradient(y: np.ndarray) -> np.ndarray:
    """Gradient magnitude (central differences), grey levels per pixel, same shape as ``y``."""
    gy, gx = np.gradient(y)
    return np.hypot(gx, gy)


def laplacian(y: np.ndarray) -> np.ndarray:
    p = np.pad(y, 1, mode="edge")
    return p[1:-1, :-2] + p[1:-1, 2:] + p[:-2, 1:-1] + p[2:, 1:-1] - 4 * y


def high_pass(y: np.ndarray) -> np.ndarray:
    """``y`` minus its 3x3 box blur (edge-replicated), i.e. detail at 1-2 pixel scale."""
    p = np.pad(y, 1, mode="edge")
    blur = sum(p[i : i + y.shape[0], j : j + y.shape[1]] for i in range(3) for j in range(3)) / 9
    return y - blur


def textured_half(bicubic_gradient: np.ndarray) -> np.ndarray:
    """Pixel mask of the BLOCK x BLOCK blocks where bicubic's mean gradient is at least its
    median: where the source has texture or edges (sky, walls and blur are left out)."""
    h, w = bicubic_gradient.shape
    means = bicubic_gradient.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean(axis=(1, 3))
    return np.kron(means >= np.median(means), np.ones((BLOCK, BLOCK), dtype=bool))


def texture_stats(tile: np.ndarray, bicubic: np.ndarray, source: np.ndarray) -> dict[str, Any]:
    """Texture numbers of one upscaled region (``bicubic`` itself gives the reference row);
    ``source`` is the region before upscaling (REGION x REGION)."""
    y, y_ref = luma(tile), luma(bicubic)
    g, g_ref = gradient(y), gradient(y_ref)
    mask = textured_half(g_ref)
    down = y.reshape(source.shape[0], SCALE, source.shape[1], SCALE).mean(axis=(1, 3))
    a, b = high_pass(down).ravel(), high_pass(luma(source)).ravel()
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
    colours = int(np.unique(tile.reshape(-1, 3), axis=0).shape[0])
    colours_ref = int(np.unique(bicubic.reshape(-1, 3), axis=0).shape[0])
    return {
        "flat": float(np.mean(g[mask] < FLAT_GRADIENT)),
        "gradient": float(np.median(g[mask]) / np.median(g_ref[mask])),
        "hf_energy": float(laplacian(y)[mask].var() / laplacian(y_ref)[mask].var()),
        "colours": colours / colours_ref,
        "colours_abs": colours,
        "detail_corr": corr,
        "median_gradient_abs": float(np.median(g[mask])),
    }


# --- images ----------------------------------------------------------------------------

LABEL_H, GAP = 40, 4


def compose(tiles: list[tuple[np.ndarray, str, str]]) -> Image.Image:
    """Equal tiles side by side, each under a two-line label band."""
    height, width = tiles[0][0].shape[:2]
    canvas = Image.new(
        "RGB", (len(tiles) * width + (len(tiles) - 1) * GAP, height + LABEL_H), (24, 24, 28)
    )
    draw = ImageDraw.Draw(canvas)
    bold, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    for i, (tile, title, subtitle) in enumerate(tiles):
        x = i * (width + GAP)
        canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, LABEL_H))
        draw.text((x + 6, 3), title, fill=(245, 245, 245), font=bold)
        draw.text((x + 6, 22), subtitle, fill=(190, 190, 200), font=small)
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# --- run -------------------------------------------------------------------------------


def load(models_dir: Path, candidate: Candidate) -> tuple[Upscaler, dict[str, Any]]:
    path = models_dir / candidate.filename
    loaded = get_model(str(path), allow_download=False, progress=False)
    upscaler = Upscaler(loaded.descriptor, settings=EngineSettings(micro_batch=MICRO_BATCH))
    spec = get_spec(candidate.name)
    params = sum(p.numel() for p in loaded.descriptor.model.parameters())
    return upscaler, {
        "name": candidate.name,
        "short": candidate.short,
        "file": candidate.filename,
        "weights": candidate.weights_note,
        "sha256": loaded.weights_sha256,
        "architecture": loaded.architecture,
        "parameters": params,
        "registry_content": spec.content,
        "precision": upscaler.precision,
    }


def upscale_region(upscaler: Upscaler, frame: np.ndarray, x: int, y: int) -> np.ndarray:
    """The model's output for the REGION x REGION region at (x, y), computed with up to CONTEXT
    px of the real frame around it so the region's edges are not image borders."""
    wy0, wx0 = max(0, y - CONTEXT), max(0, x - CONTEXT)
    wy1 = min(frame.shape[0], y + REGION + CONTEXT)
    wx1 = min(frame.shape[1], x + REGION + CONTEXT)
    result = upscaler.upscale(np.ascontiguousarray(frame[None, wy0:wy1, wx0:wx1]))[0]
    oy, ox = (y - wy0) * SCALE, (x - wx0) * SCALE
    return result[oy : oy + REGION * SCALE, ox : ox + REGION * SCALE]


def comparison_png(
    clip: Clip,
    source: np.ndarray,
    tiles: list[tuple[np.ndarray, str, str]],
) -> tuple[bytes, dict[str, int]]:
    """The PNG of the displayed part of the region (DISPLAY px, less until it fits
    MAX_PNG_BYTES) and that part's box in region coordinates."""
    size = DISPLAY
    while True:
        if clip.display is not None and clip.region is not None:
            dx, dy = clip.display[0] - clip.region[0], clip.display[1] - clip.region[1]
            dx, dy = dx + (DISPLAY - size) // 2, dy + (DISPLAY - size) // 2
        else:
            dx, dy = pick_region(source, size, size)
        s0, s1 = slice(dy * SCALE, (dy + size) * SCALE), slice(dx * SCALE, (dx + size) * SCALE)
        png = png_bytes(compose([(t[s0, s1], title, sub) for t, title, sub in tiles]))
        if len(png) <= MAX_PNG_BYTES or size <= 32:
            return png, {"x": dx, "y": dy, "w": size, "h": size}
        size -= 8


def run(shared: Path, out: Path, *, rounds: int) -> dict[str, Any]:
    models_dir, media = shared / "models", shared / "media"
    started = time.perf_counter()
    timing_clip = media / CLIPS[0].filename
    middle = probe(timing_clip).video.frame_count // 2
    raw = read_frames(timing_clip, middle - MICRO_BATCH // 2, MICRO_BATCH)
    small = np.stack([centre_crop(f, TIME_W, TIME_H) for f in raw])
    full = np.stack([centre_crop(f, REF_W, REF_H) for f in raw])
    frames = {clip.key: clip_frame(media, clip) for clip in CLIPS}
    corners = {
        clip.key: clip.region or pick_region(frames[clip.key], REGION, REGION) for clip in CLIPS
    }

    loaded = [load(models_dir, candidate) for candidate in CANDIDATES]
    upscalers = {info["short"]: upscaler for upscaler, info in loaded}
    models = [info for _, info in loaded]
    outputs = {
        clip.key: {
            short: upscale_region(upscaler, frames[clip.key], *corners[clip.key])
            for short, upscaler in upscalers.items()
        }
        for clip in CLIPS
    }
    print(f"upscaled a {REGION}x{REGION} region of {len(CLIPS)} clips with every model", flush=True)

    print(f"timing at {TIME_W}x{TIME_H}, {rounds} interleaved rounds ...", flush=True)
    area = (REF_W * REF_H) / (TIME_W * TIME_H)
    speeds = time_interleaved(upscalers, small, rounds)
    for info in models:
        speed = speeds[info["short"]]
        speed["s_per_frame_320x180_scaled"] = speed["s_per_frame_best"] * area
        info["speed"] = speed
        print(
            f"  {info['name']}: {speed['s_per_frame_best']:.3f} s/frame"
            f" (median {speed['s_per_frame_median']:.3f}) -> x{area:.0f} ="
            f" {speed['s_per_frame_320x180_scaled']:.3f} s/frame at {REF_W}x{REF_H}",
            flush=True,
        )
    cheap = {
        short: upscaler
        for short, upscaler in upscalers.items()
        if speeds[short]["s_per_frame_320x180_scaled"] * MICRO_BATCH <= DIRECT_MAX_S
    }
    print(f"timing at {REF_W}x{REF_H}: {', '.join(cheap)} ...", flush=True)
    for short, speed in time_interleaved(cheap, full, rounds).items():
        next(m for m in models if m["short"] == short)["speed_320x180_direct"] = speed
        print(f"  {short}: {speed['s_per_frame_best']:.3f} s/frame", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    by_short = {m["short"]: m for m in models}
    clips: list[dict[str, Any]] = []
    for clip in CLIPS:
        frame, (x, y) = frames[clip.key], corners[clip.key]
        source = frame[y : y + REGION, x : x + REGION]
        bicubic = np.asarray(
            Image.fromarray(frame).resize(
                (REGION * SCALE, REGION * SCALE),
                Image.Resampling.BICUBIC,
                box=(x, y, x + REGION, y + REGION),
            )
        )
        ref = texture_stats(bicubic, bicubic, source)
        per_model: dict[str, Any] = {}
        tiles = [(bicubic, "bicubic", f"reference: flat {ref['flat']:.0%}")]
        for short, tile in outputs[clip.key].items():
            stats = texture_stats(tile, bicubic, source)
            per_model[short] = stats
            speed = by_short[short]["speed"]["s_per_frame_320x180_scaled"]
            tiles.append(
                (
                    tile,
                    f"{short} ({by_short[short]['registry_content']})",
                    f"flat {stats['flat']:.0%}  gradient {stats['gradient']:.2f}"
                    f"  {speed:.2f} s/frame",
                )
            )
        png, shown = comparison_png(clip, source, tiles)
        name = f"{clip.key}.png"
        (out / name).write_bytes(png)
        clips.append(
            {
                "key": clip.key,
                "file": clip.filename,
                "kind": clip.kind,
                "what": clip.what,
                "frame": clip.frame if clip.frame is not None else "middle",
                "frame_size": f"{frame.shape[1]}x{frame.shape[0]}",
                "region": {"x": x, "y": y, "w": REGION, "h": REGION},
                "shown": {**shown, "x": x + shown["x"], "y": y + shown["y"]},
                "image": name,
                "image_bytes": len(png),
                "bicubic": ref,
                "models": per_model,
            }
        )
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {
            "cpu": _cpu_name(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        },
        "settings": {
            "timing_input": f"{MICRO_BATCH} frames of {TIME_W}x{TIME_H} ({CLIPS[0].filename})",
            "micro_batch": MICRO_BATCH,
            "engine": "vsrflow.engine.Upscaler, EngineSettings defaults (precision auto)",
            "rounds": rounds,
            "quiet_share": QUIET_SHARE,
            "quiet_max_wait_s": QUIET_MAX_WAIT,
            "region": REGION,
            "context": CONTEXT,
            "display_max": DISPLAY,
            "block": BLOCK,
            "flat_gradient": FLAT_GRADIENT,
        },
        "models": models,
        "clips": clips,
        "recommendation": recommend(models, clips),
        "seconds": time.perf_counter() - started,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def recommend(models: list[dict[str, Any]], clips: list[dict[str, Any]]) -> dict[str, Any]:
    """Among registry models made for real or general content, the fastest whose share of flat
    pixels in the textured half of the live-action regions (mean over clips) is at most the
    current default's: switching must not make live action blobbier."""
    live = [c for c in clips if c["kind"] == "live action"]
    anime = [c for c in clips if c["kind"] == "animation"]

    def mean(key: str, short: str, group: list[dict[str, Any]]) -> float:
        return float(np.mean([c["models"][short][key] for c in group]))

    rows = [
        {
            "name": m["name"],
            "short": m["short"],
            "registry_content": m["registry_content"],
            "s_per_frame_320x180": m["speed"]["s_per_frame_320x180_scaled"],
            "live_flat": mean("flat", m["short"], live),
            "live_gradient": mean("gradient", m["short"], live),
            "live_detail_corr": mean("detail_corr", m["short"], live),
            "animation_flat": mean("flat", m["short"], anime),
            "animation_gradient": mean("gradient", m["short"], anime),
        }
        for m in models
    ]
    base = next(r for r in rows if r["name"] == CANDIDATES[0].name)
    for r in rows:
        r["suited"] = r["registry_content"] != "anime" and r["live_flat"] <= base["live_flat"]
    suited = sorted((r for r in rows if r["suited"]), key=lambda r: r["s_per_frame_320x180"])
    return {
        "rule": (
            "the fastest registry model made for real or general content whose share of flat"
            " pixels in the textured half of the live-action regions (mean over the clips) is"
            f" at most that of the current default, {base['name']}"
        ),
        "live_action_clips": [c["key"] for c in live],
        "candidates": rows,
        "live_action_default": suited[0]["name"] if suited else None,
    }


# --- report ----------------------------------------------------------------------------


#: What the committed images show, written after looking at them (the numbers around it are
#: regenerated; re-check this sentence when the clips, regions or models change).
SEEN = (
    "In the images the anime model cuts texture into flat cells with dark outlines (cobbles,"
    " skin), the general model smooths more softly and keeps a little more grain, and on the"
    " noisy ficus clip both turn the leaves into flat cut-outs."
)


def conclusion(results: dict[str, Any]) -> str:
    """One paragraph from the numbers (checked against the images when it was committed)."""
    rec, clips = results["recommendation"], results["clips"]
    rows = {r["name"]: r for r in rec["candidates"]}
    base = rows[CANDIDATES[0].name]
    pick = rec["live_action_default"]
    if pick is None:
        return (
            "No registry model made for real footage left fewer flat blobs in live action than"
            f" {base['name']} on these clips, so the measurement does not support a change of"
            " default."
        )
    r = rows[pick]
    live = [c for c in clips if c["kind"] == "live action"]
    better = [
        c["key"]
        for c in live
        if c["models"][r["short"]]["flat"] < c["models"][base["short"]]["flat"]
    ]
    worse = [
        c for c in live if c["models"][r["short"]]["flat"] > c["models"][base["short"]]["flat"]
    ]
    best = min(rec["candidates"], key=lambda o: o["live_flat"])
    text = (
        f"**Recommended default for live action: `{pick}`** (content preset"
        f" `{r['registry_content']}`). It is the fastest registry model for real or general"
        " content:"
        f" {r['s_per_frame_320x180']:.2f} s per 320x180 frame here,"
        f" {r['s_per_frame_320x180'] / base['s_per_frame_320x180']:.1f}x the cost of"
        f" {base['name']}, and in the textured half of the live-action regions it"
        f" leaves {r['live_flat']:.1%} of pixels flat against {base['live_flat']:.1%} for"
        f" {base['name']} (fewer on {', '.join(better) or 'none'}"
    )
    if worse:
        text += "; more on " + ", ".join(
            f"{c['key']}: {c['models'][r['short']]['flat']:.0%} vs"
            f" {c['models'][base['short']]['flat']:.0%}"
            for c in worse
        )
    margin = "small" if abs(r["live_flat"] - base["live_flat"]) < 0.03 else "clear"
    text += (
        f"). The margin is {margin}, and the numbers differ in kind: its median gradient there is"
        f" {r['live_gradient']:.2f} of bicubic's against {base['live_gradient']:.2f}"
        f" for {base['name']}. {SEEN}"
    )
    if best["name"] not in (pick, base["name"]):
        text += (
            f" {best['name']} keeps the most texture ({best['live_flat']:.1%} flat), at"
            f" {best['s_per_frame_320x180'] / r['s_per_frame_320x180']:.0f}x the cost of"
            f" {pick}: the preset (`{best['registry_content']}`) for material that deserves it,"
            " not a default."
        )
    if r["name"] == "realesr-general-x4v3":
        text += (
            " Measured at full denoise (`--denoise-strength 1`: the weak-denoise partner"
            " realesr-general-wdn-x4v3 is not in the shared weights); a blend toward it should"
            " keep more grain and is worth measuring once those weights are at hand."
        )
    text += f" {base['name']} stays one option away (`--content anime`) for animation."
    return text


def markdown(results: dict[str, Any]) -> str:
    models, clips, rec = results["models"], results["clips"], results["recommendation"]
    machine, st = results["machine"], results["settings"]
    lines = [
        "# Default model: measured on live action and animation",
        "",
        "Generated by `python bench/model_choice.py` (its docstring says what and why) on"
        f" {results['generated']}: {machine['cpu']}, {machine['cpus']} CPUs,"
        f" {machine['torch_threads']} torch threads, torch {machine['torch']}; the run took"
        f" {results['seconds']:.0f} s. Every number: [results.json](results.json).",
        "",
        "## Speed",
        "",
        f"{st['timing_input']} = one micro-batch per pass, through `vsrflow.engine.Upscaler`"
        " with the engine defaults (bf16 autocast: this CPU has native bf16). One warm-up pass"
        f" per model, then {st['rounds']} rounds with one pass of each model, interleaved; before"
        f" each pass the script waits (up to {st['quiet_max_wait_s']:g} s) for other processes to"
        f" use under {st['quiet_share']:.0%} of the CPUs. The machine is shared, so the best"
        " pass (the least disturbed) is the headline and the median is shown beside it."
        " 320x180 has 4x the pixels of 160x90, so best x 4 is the 320x180 cost; the models"
        " cheap enough to time there directly show how well that holds (second-last column).",
        "",
        "| model | preset | arch | params | weights | precision | s/frame 160x90 best"
        " (median) | **s/frame 320x180** (x4) | timed at 320x180, best (median) | vs"
        f" {CANDIDATES[0].short} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = models[0]["speed"]["s_per_frame_320x180_scaled"]
    for m in models:
        s = m["speed"]
        d = m.get("speed_320x180_direct")
        direct = f"{d['s_per_frame_best']:.3f} ({d['s_per_frame_median']:.3f})" if d else "--"
        lines.append(
            f"| {m['name']} | {m['registry_content']} | {m['architecture']} |"
            f" {m['parameters'] / 1e6:.2f} M | {m['weights']} | {m['precision']} |"
            f" {s['s_per_frame_best']:.3f} ({s['s_per_frame_median']:.3f}) |"
            f" **{s['s_per_frame_320x180_scaled']:.3f}** | {direct} |"
            f" {s['s_per_frame_320x180_scaled'] / base:.1f}x |"
        )
    worst = max(m["speed"]["others_cpu_share_best_pass"] for m in models)
    lines += [
        "",
        f"Other processes used at most {worst:.0%} of the CPUs during the best 160x90 pass of"
        " any model.",
        "",
        "## Texture",
        "",
        f"Per clip a {st['region']}x{st['region']} source region (the model sees"
        f" {st['context']} px of real context around it, cut off afterwards), upscaled x4 by"
        " bicubic and by each model. The image shows part of it (bicubic | each model); the"
        " numbers are on luma over the whole region, in its **textured half**: the"
        f" {st['block']}x{st['block']}-pixel blocks where bicubic's mean gradient is at least its"
        " median (so sky, walls and out-of-focus areas, where smoothing is harmless, do not"
        " count). Bicubic keeps all of the source's texture, only blurred, so it is the"
        " reference:",
        "",
        f"- **flat**: share of pixels there whose gradient is under {st['flat_gradient']:g} grey"
        " level per pixel: the inside of a flat blob. Posterizing texture raises it. The"
        " headline number (bicubic: 1-3 %).",
        "- **gradient**: median gradient magnitude there / bicubic's. The median ignores the few"
        " edge pixels GAN sharpening boosts; smoothing lowers it.",
        "- **HF**: Laplacian variance there / bicubic's: all high frequencies, edges included"
        " (this is where GAN sharpening shows, not texture).",
        "- **colours**: distinct RGB values in the region / bicubic's.",
        "- **detail corr**: the output box-downscaled back by 4, high-passed, correlated with"
        " the high-passed source region: how much of the source's own fine detail survives"
        " (bicubic ~0.99; invented texture does not raise it, erased texture lowers it).",
        "",
        "Not a blind test: a first version measured the median 8x8-block standard deviation;"
        " every GAN model scored above bicubic on it (the sharpened edges dominate the"
        " blocks), so it could not show blobs. The flat share replaced it after prototype"
        " numbers of several measures on these same regions had been looked at, which is why"
        " the others are reported beside it: where they disagree, the conclusion says so.",
        "",
    ]
    for c in clips:
        r, shown, ref = c["region"], c["shown"], c["bicubic"]
        lines += [
            f"### {c['key']} ({c['kind']})",
            "",
            f"`{c['file']}`: {c['what']}. Frame {c['frame']} ({c['frame_size']}), region"
            f" {r['w']}x{r['h']} at ({r['x']}, {r['y']}); shown: {shown['w']}x{shown['h']} at"
            f" ({shown['x']}, {shown['y']}).",
            "",
            f"![{c['key']}: bicubic and each model]({c['image']})",
            "",
            "| model | flat | gradient | HF | colours | detail corr |",
            "|---|---|---|---|---|---|",
            f"| bicubic | {ref['flat']:.1%} | 1.00 ({ref['median_gradient_abs']:.2f} grey/px) |"
            f" 1.0 | 1.00 ({ref['colours_abs']}) | {ref['detail_corr']:.2f} |",
        ]
        for short, m in c["models"].items():
            lines.append(
                f"| {short} | **{m['flat']:.1%}** | {m['gradient']:.2f} | {m['hf_energy']:.1f} |"
                f" {m['colours']:.2f} | {m['detail_corr']:.2f} |"
            )
        lines.append("")
    lines += [
        "## Summary",
        "",
        "| model | preset | s/frame 320x180 | live action: **flat** (mean) | gradient (mean) |"
        " detail corr (mean) | animation: flat | gradient |"
        + "".join(f" flat {c['key']} |" for c in clips),
        "|---|---|---|---|---|---|---|---|" + "---|" * len(clips),
    ]
    for row in rec["candidates"]:
        lines.append(
            f"| {row['name']} | {row['registry_content']} | {row['s_per_frame_320x180']:.3f} |"
            f" **{row['live_flat']:.1%}** | {row['live_gradient']:.2f} |"
            f" {row['live_detail_corr']:.2f} | {row['animation_flat']:.1%} |"
            f" {row['animation_gradient']:.2f} |"
            + "".join(f" {c['models'][row['short']]['flat']:.0%} |" for c in clips)
        )
    lines += [
        "",
        f"Rule: {rec['rule']}. Result: **{rec['live_action_default']}**.",
        "",
        "## Conclusion",
        "",
        conclusion(results),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("VSRFLOW_SHARED_DIR", REPO.parent / "shared")),
        help="shared data (models/, media/); default $VSRFLOW_SHARED_DIR or ../shared",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "model-choice")
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help="timed passes per model (interleaved)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite README.md from the existing results.json (e.g. after editing SEEN)",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads((args.out / "results.json").read_text())
    else:
        for sub in ("models", "media"):
            if not (args.shared / sub).is_dir():
                parser.error(f"{args.shared / sub} not found (set --shared or VSRFLOW_SHARED_DIR)")
        results = run(args.shared, args.out, rounds=args.rounds)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.out / "README.md").write_text(text)
    print(text.split("## Texture")[0])
    print(text.split("## Summary")[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
