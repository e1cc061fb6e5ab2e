"""Upscale one batch: decoder -> engine -> encoder, overlapped, frames never touching disk.

As in Video2X 6, frames are decoded once, stay in memory and are encoded once. Decoding and
encoding run in their own threads with small bounded queues, so while the model works on
micro-batch k the decoder prepares k+1 and the encoder compresses k-1; memory stays flat however
long the batch is. The chunk is written under a temporary name and renamed into place only after
its frame count is checked, so a chunk that exists is always complete.

An interlaced or telecined source (``video.deinterlace``, decided at planning) is decoded with
context frames around the batch and filtered (bwdif... or inverse telecine) before the model;
only the batch's own outputs go on, with the output pts the plan gave them
(:mod:`vsrflow.media.deinterlace`), and the chunk uses the output time base and rate.

A source with alpha (``video.alpha``, decided at planning): "keep" decodes the alpha plane with
each frame, upscales it separately (model or bicubic, as for images) and encodes it with the
colour; "flatten" composites colour over black before the model; "drop" ignores it.

Faces (``faces``, a :class:`vsrflow.faces.processor.FaceProcessor`, when face restoration is
on): before the stages start, the batch's source frames and a few context frames on each side
are decoded once more and searched for faces (:func:`vsrflow.faces.step.plan_batch_faces`);
each upscaled micro-batch then has its faces restored, all in one forward pass, before it goes
to the encoder. Pixels outside the faces' blend masks keep the SR model's bytes.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vsrflow.alpha import flatten_over_black, upscale_alpha
from vsrflow.engine import Upscaler
from vsrflow.errors import CorruptMediaError
from vsrflow.media.codecs import EncoderSettings
from vsrflow.media.decode import DecodedFrame, decode_range
from vsrflow.media.deinterlace import filtered_frames
from vsrflow.media.encode import ChunkEncoder
from vsrflow.media.probe import VideoParams
from vsrflow.plan import Batch
from vsrflow.results import BatchResult

if TYPE_CHECKING:
    from vsrflow.faces.processor import FaceProcessor

#: Micro-batches buffered between stages (per queue). Two keep every stage busy.
QUEUE_DEPTH = 2
_DONE = object()

ProgressCallback = Callable[[int], None]


class _Worker(threading.Thread):
    """A stage thread that records its exception instead of dying silently.

    On failure it sets ``abort`` so the other stages stop waiting on its queue (a dead
    decoder never sends _DONE; a dead encoder leaves the model blocked on a full queue).
    """

    def __init__(self, target: Callable[[], None], name: str, abort: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self._abort = abort
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # re-raised in the caller's thread
            self.error = exc
            self._abort.set()


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _drain(q: queue.Queue[Any], stop: threading.Event) -> Iterator[Any]:
    while True:
        try:
            item = q.get(timeout=0.2)
        except queue.Empty:
            if stop.is_set():
                return
            continue
        if item is _DONE:
            return
        yield item


def _deinterlaced(video: VideoParams, batch: Batch) -> Iterator[DecodedFrame]:
    """The batch's frames deinterlaced (or inverse-telecined) with their planned output pts:
    the context frames around it are decoded and filtered too, and their outputs dropped."""
    assert video.deinterlace is not None and batch.context is not None
    return filtered_frames(
        video.deinterlace,
        video.path,
        video.index,
        batch.context,
        batch.out_pts,
        colour=video.colour,
        bit_depth=video.bit_depth,
    )


def upscale_batch(
    video: VideoParams,
    batch: Batch,
    upscaler: Upscaler,
    chunk_path: str | Path,
    *,
    encoder: EncoderSettings,
    out_size: tuple[int, int],
    progress: ProgressCallback | None = None,
    faces: FaceProcessor | None = None,
    face_sample: str | Path | None = None,
) -> BatchResult:
    """Decode ``batch`` of ``video``, upscale to ``out_size`` (width, height), encode the chunk.

    With ``faces``, restore the faces of every frame after upscaling; the before/after crop of
    the largest face is written to ``face_sample`` (if given and a face was restored)."""
    started = time.perf_counter()
    colour = video.colour
    chunk_path = Path(chunk_path)
    chunk_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = chunk_path.with_name(f".{chunk_path.stem}.{uuid.uuid4().hex[:8]}{chunk_path.suffix}")
    group = max(1, upscaler.settings.micro_batch)
    out_w, out_h = out_size
    stop = threading.Event()
    to_model: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
    to_encoder: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)

    keep_alpha = video.alpha == "keep"
    planned_faces: list[Any] = []
    if faces is not None:
        from vsrflow.faces.step import plan_batch_faces

        def as_model_sees(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
            return flatten_over_black(rgb, alpha) if video.alpha == "flatten" else rgb

        planned_faces = plan_batch_faces(
            faces, video, batch.start_pts, batch.end_pts, out_size, prepare=as_model_sees
        )

    def micro_batch(frames: list[np.ndarray], alphas: list[np.ndarray], stamps: list[int]) -> Any:
        rgb = np.stack(frames)
        if video.alpha == "flatten":
            return flatten_over_black(rgb, np.stack(alphas)), None, stamps
        return rgb, (np.stack(alphas) if keep_alpha else None), stamps

    # Side data (A/53 captions) of each source frame, by pts, for the encoder
    # (``video.carry.frame_side_data``): written by the decoder before the frame is queued.
    carriers: dict[int, Any] = {}

    def decode() -> None:
        frames: list[np.ndarray] = []
        alphas: list[np.ndarray] = []
        stamps: list[int] = []
        source = (
            _deinterlaced(video, batch)
            if video.deinterlace is not None
            else decode_range(
                video.path,
                video.index,
                batch.start_pts,
                batch.end_pts,
                colour=colour,
                bit_depth=video.bit_depth,
                alpha=video.decodes_alpha,
                decoder=video.alpha_decoder if video.decodes_alpha else None,
                side_data=video.carry.frame_side_data,
            )
        )
        for frame in source:
            if frame.carrier is not None:
                carriers[frame.pts] = frame.carrier
            frames.append(frame.rgb)
            if frame.alpha is not None:
                alphas.append(frame.alpha)
            stamps.append(frame.pts)
            if len(frames) == group:
                if not _put(to_model, micro_batch(frames, alphas, stamps), stop):
                    return
                frames, alphas, stamps = [], [], []
        if frames and not _put(to_model, micro_batch(frames, alphas, stamps), stop):
            return
        _put(to_model, _DONE, stop)

    with ChunkEncoder(
        tmp,
        settings=encoder,
        width=out_w,
        height=out_h,
        bit_depth=video.bit_depth,
        time_base=video.output_time_base,
        average_rate=video.output_rate,
        colour=colour,
        display_matrix=video.display_matrix,
        alpha=keep_alpha,
        carry=video.carry,
    ) as chunk:

        def encode() -> None:
            for upscaled, alpha_up, stamps in _drain(to_encoder, stop):
                for i, (rgb, pts) in enumerate(zip(upscaled, stamps, strict=True)):
                    carrier = carriers.pop(pts, None)
                    if alpha_up is None:
                        chunk.write(rgb, pts, carrier=carrier)
                    else:
                        chunk.write(rgb, pts, alpha_up[i], carrier=carrier)
                if progress is not None:
                    progress(len(stamps))

        decoder = _Worker(decode, f"decode-{batch.index}", stop)
        writer = _Worker(encode, f"encode-{batch.index}", stop)
        decoder.start()
        writer.start()
        model_seconds = 0.0
        restored = 0
        try:
            for frames, alphas, stamps in _drain(to_model, stop):
                if writer.error is not None:
                    break
                t0 = time.perf_counter()
                upscaled = upscaler.upscale(frames, out_size=(out_h, out_w))
                if faces is not None:
                    count = upscaled.shape[0]
                    found = planned_faces[restored : restored + count]
                    found += [[]] * (count - len(found))  # a short decode fails below
                    upscaled = faces.apply(upscaled, found)
                    restored += count
                alpha_up = None
                if alphas is not None:
                    alpha_up = upscale_alpha(alphas, upscaler, (out_h, out_w), video.alpha_upscale)
                model_seconds += time.perf_counter() - t0
                if not _put(to_encoder, (upscaled, alpha_up, stamps), stop):
                    break
            _put(to_encoder, _DONE, stop)
            writer.join()
            decoder.join()
        finally:
            stop.set()
            decoder.join()
            writer.join()
        for worker in (decoder, writer):
            if worker.error is not None:
                raise worker.error
        written = chunk.frames_written
    if written != batch.output_frames:
        tmp.unlink(missing_ok=True)
        raise CorruptMediaError(
            f"batch {batch.index}: decoded {written} frames, expected {batch.output_frames} "
            f"(pts {batch.start_pts}..{batch.end_pts}); the source does not decode cleanly"
        )
    os.replace(tmp, chunk_path)
    sample_written = ""
    stats = faces.stats if faces is not None else None
    if stats is not None and stats.sample is not None and face_sample is not None:
        from vsrflow.faces.step import sample_png

        Path(face_sample).write_bytes(
            sample_png(stats.sample, restorer_label=faces.restorer.model.name)  # type: ignore[union-attr]
        )
        sample_written = str(face_sample)
    return BatchResult(
        index=batch.index,
        key=batch.key,
        chunk=str(chunk_path),
        frames=written,
        seconds_total=time.perf_counter() - started,
        seconds_model=model_seconds,
        precision=upscaler.precision,
        device=str(upscaler.device),
        host=os.uname().nodename,
        slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        face_frames=stats.frames_with_faces if stats is not None else 0,
        faces=stats.faces if stats is not None else 0,
        face_largest=(
            round(stats.sample.detection.width, 2) if stats and stats.sample is not None else 0.0
        ),
        face_sample=sample_written,
    )
