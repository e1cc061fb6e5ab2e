"""Split a probed video into frame-range batches, each with a deterministic cache key.

A batch key is the sha256 of everything that determines the bytes of its chunk: the source's
content hash, the frame range and its timestamps, the model's weights sha256, output geometry,
engine settings that change pixels, encoder settings and the pipeline version. Two runs (on any
machine) that would produce the same chunk compute the same key, so a rerun after a crash
recomputes only missing batches, and changing anything that matters invalidates the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vsrflow import PIPELINE_VERSION

if TYPE_CHECKING:  # settings import this module for its defaults: keep it light
    from vsrflow.media.probe import VideoInfo

#: Default batch length when the caller gives neither frames nor seconds.
DEFAULT_BATCH_SECONDS = 4.0
#: Default cap on the number of batches of one source when its batch length is given in
#: seconds (``batching.max_batches``). Up to 300 x 4 s = 20 minutes nothing changes (so the
#: batch keys, and the cache, of every clip that already worked stay the same); a longer
#: source gets longer batches instead of more of them: a 2-hour film becomes 300 batches of
#: 24 s, not 1,800 of 4 s. Each batch costs a task run on the Prefect server (state changes,
#: a result record, a progress file) and ~0.07 s of scheduling, plus a keyframe seek and an
#: encoder start on the worker; a few hundred keep that under 1 % of model time even for tiny
#: frames, while a crash still loses at most one batch per worker.
DEFAULT_MAX_BATCHES = 300


@dataclass(frozen=True)
class Context:
    """Frames a worker decodes around its batch for the neighbours a filter reads
    (deinterlacing: ``vsrflow.media.deinterlace``)."""

    #: pts of the first frame decoded, and how many frames before the batch that makes.
    start_pts: int
    before: int
    #: pts of the first frame NOT decoded after the batch (None: to the end of the source).
    end_pts: int | None


@dataclass(frozen=True)
class Batch:
    """One frame range ``[start, end)`` of the source, with its pts bounds and cache key."""

    index: int
    start: int
    end: int
    start_pts: int
    #: pts of the first frame AFTER the batch; None for the last batch.
    end_pts: int | None
    key: str
    #: Deinterlacing only (``vsrflow.media.deinterlace``): the frames decoded around the
    #: batch for the filters' neighbours, and the pts of every output frame the batch makes
    #: (in the output time base). Empty: one output per source frame at its own pts.
    context: Context | None = None
    out_pts: tuple[int, ...] = ()

    @property
    def frame_count(self) -> int:
        return self.end - self.start

    @property
    def output_frames(self) -> int:
        """Frames the batch's chunk holds (twice the source frames at field rate...)."""
        return len(self.out_pts) if self.context is not None else self.frame_count


def batch_frames(
    video: VideoInfo,
    *,
    frames_per_batch: int | None,
    seconds_per_batch: float | None,
    max_batches: int | None = None,
) -> int:
    """Frames per batch from an explicit count, or from seconds at the source's average rate.

    Seconds are a minimum: when ``max_batches`` is given and the source would need more
    batches than that, each batch grows to ``ceil(frames / max_batches)`` frames. An explicit
    frame count is taken as it is (the user asked for exactly that)."""
    if frames_per_batch is not None:
        if frames_per_batch < 1:
            raise ValueError("frames_per_batch must be at least 1")
        return frames_per_batch
    seconds = DEFAULT_BATCH_SECONDS if seconds_per_batch is None else seconds_per_batch
    if seconds <= 0:
        raise ValueError("seconds_per_batch must be positive")
    duration = float((video.pts[-1] - video.pts[0]) * video.time_base) if len(video.pts) > 1 else 0
    rate = (len(video.pts) - 1) / duration if duration > 0 else 25.0
    size = max(1, math.ceil(seconds * rate))
    if max_batches is not None:
        if max_batches < 1:
            raise ValueError("max_batches must be at least 1 (or None for no cap)")
        size = max(size, math.ceil(len(video.pts) / max_batches))
    return size


def batch_key(
    source_id: str,
    start: int,
    end: int,
    start_pts: int,
    end_pts: int | None,
    settings_identity: dict[str, Any],
) -> str:
    payload = {
        "pipeline": PIPELINE_VERSION,
        "source": source_id,
        "range": [start, end, start_pts, end_pts],
        "settings": settings_identity,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def plan_batches(
    video: VideoInfo,
    *,
    source_id: str,
    settings_identity: dict[str, Any],
    frames_per_batch: int | None = None,
    seconds_per_batch: float | None = None,
    max_batches: int | None = None,
) -> list[Batch]:
    """Cut ``video`` into consecutive batches covering every frame exactly once (at most
    ``max_batches`` of them when sized by seconds; see :func:`batch_frames`)."""
    size = batch_frames(
        video,
        frames_per_batch=frames_per_batch,
        seconds_per_batch=seconds_per_batch,
        max_batches=max_batches,
    )
    pts = video.pts
    batches: list[Batch] = []
    start = 0
    while start < len(pts):
        end = min(start + size, len(pts))
        # A boundary between two frames with the same pts would be ambiguous: move it on.
        while end < len(pts) and pts[end] == pts[end - 1]:
            end += 1
        end_pts = pts[end] if end < len(pts) else None
        key = batch_key(source_id, start, end, pts[start], end_pts, settings_identity)
        batches.append(Batch(len(batches), start, end, pts[start], end_pts, key))
        start = end
    return batches


def chunk_name(batch: Batch, suffix: str = ".mp4") -> str:
    """Chunk file name derived from the key alone: any worker finds any batch's chunk."""
    return f"{batch.key}{suffix}"
