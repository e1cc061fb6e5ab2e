"""Section 3, "rss": a worker's peak resident memory for a short and a 10x longer input, each
as one batch in its own child process (``--worker rss``): streaming means the peak must not
grow with the length."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    RSS_SOURCE,
    SHARED,
    Sizes,
    get_weights,
    make_clip,
    run_child,
)
from vsrflow.procmem import proc_status_mb

if TYPE_CHECKING:
    from vsrflow.engine import EngineSettings


def worker_rss(clip: Path, workdir: Path, settings: EngineSettings | None = None) -> dict[str, Any]:
    """Child: the whole clip as ONE batch through upscale_batch (the worst case for streaming:
    a batch this long), with the engine ``settings`` (default: the defaults), and this
    process's peak resident set."""
    from vsrflow.engine import EngineSettings, Upscaler
    from vsrflow.media.codecs import EncoderSettings
    from vsrflow.media.probe import probe
    from vsrflow.pipeline import upscale_batch
    from vsrflow.plan import plan_batches

    info = probe(str(clip))
    video = info.video.params(info.path)
    count = info.video.frame_count
    batch = plan_batches(info.video, source_id="rss", settings_identity={}, frames_per_batch=count)
    engine = settings or EngineSettings()
    upscaler = Upscaler(get_weights().descriptor, settings=engine, device="cpu")
    rss_before = proc_status_mb("VmRSS")
    t = time.perf_counter()
    result = upscale_batch(
        video,
        batch[0],
        upscaler,
        workdir / f"{uuid.uuid4().hex}.mp4",
        encoder=EncoderSettings(),
        out_size=(video.width * upscaler.scale, video.height * upscaler.scale),
    )
    return {
        "frames": result.frames,
        "precision": result.precision,
        "seconds": round(time.perf_counter() - t, 2),
        "rss_after_model_load_mb": round(rss_before, 1),
        "peak_rss_mb": round(proc_status_mb("VmHWM"), 1),
        "out_frame_bytes": video.width * video.height * 3 * upscaler.scale**2,
    }


def run_rss(sizes: Sizes, scratch: Path) -> dict[str, Any]:
    short_n, long_n = sizes.rss_frames
    results: dict[str, Any] = {"source": RSS_SOURCE, "short": short_n, "long": long_n}
    for key, n in (("short_run", short_n), ("long_run", long_n)):
        clip = make_clip(SHARED / "media" / RSS_SOURCE, scratch / f"rss-{n}.mp4", n)
        out = scratch / f"rss-out-{n}"
        out.mkdir()
        results[key] = run_child(["--worker", "rss", str(clip), str(out)])
        print(f"  rss: {n} frames: peak {results[key]['peak_rss_mb']} MB", flush=True)
    short, long = results["short_run"], results["long_run"]
    results["growth_mb"] = round(long["peak_rss_mb"] - short["peak_rss_mb"], 1)
    # For scale: what holding the extra upscaled frames in memory would take.
    results["if_frames_were_kept_mb"] = round((long_n - short_n) * long["out_frame_bytes"] / 2**20)
    return results
