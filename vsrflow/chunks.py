"""Is a cached chunk still what its cache record says it is?

A batch's cache record (a Prefect result) says which chunk it produced, how many frames it
holds and how many bytes it had when it was stored. A chunk that was cut short by a full disk,
overwritten, or damaged on its way through S3 would otherwise be trusted forever: every rerun
fails in the remux without naming the batch. Reuse therefore checks the chunk first, cheaply
(its size, then its video packet count, no decoding), and a bad one is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import av

from vsrflow.errors import ObjectNotFoundError, redacting
from vsrflow.locations import Locations
from vsrflow.results import BatchResult


@dataclass(frozen=True)
class ChunkProblem:
    """Why a cached chunk cannot be reused."""

    index: int
    chunk: str
    reason: str

    def describe(self) -> str:
        return f"batch {self.index}: {self.reason}"


def _video_packets(url: str) -> int:
    with av.open(url, options={"rw_timeout": "30000000"}) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def check_chunk(locations: Locations, result: BatchResult) -> ChunkProblem | None:
    """None if ``result``'s chunk exists with the recorded size and frame count."""
    try:
        size = locations.size(result.chunk)
    except (FileNotFoundError, ObjectNotFoundError):
        return ChunkProblem(result.index, result.chunk, "chunk missing")
    if result.chunk_bytes and size != result.chunk_bytes:
        return ChunkProblem(
            result.index,
            result.chunk,
            f"chunk has {size} bytes, its cache record says {result.chunk_bytes}",
        )
    try:
        with redacting():
            frames = _video_packets(locations.readable(result.chunk))
    except (av.FFmpegError, IndexError, OSError) as exc:
        return ChunkProblem(result.index, result.chunk, f"chunk unreadable ({type(exc).__name__})")
    if frames != result.frames:
        return ChunkProblem(
            result.index, result.chunk, f"chunk holds {frames} frames, expected {result.frames}"
        )
    return None
