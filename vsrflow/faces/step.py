"""The face step of a video batch or an image, as the pipelines call it.

* :func:`face_processor_for`: a :class:`FaceProcessor` for a :class:`FaceJob` on this worker.
  Detector and restorer are built once per process (the restorer is ~350 MB) and shared by
  every batch the worker runs; each call returns a fresh processor, so its counts are one
  batch's. Device and precision follow the SR engine's settings: the same device, and the
  engine's precision unless the face model cannot run it (GFPGAN has no fp16: "auto" then
  picks bf16 or fp32 as the engine would for such a model).
* :func:`plan_batch_faces`: one pass over the *source* frames of a batch plus
  ``processor.context`` frames on each side (decoded, detected, never upscaled), so that
  smoothing sees the real neighbours at batch edges; returns the smoothed faces of each batch
  frame, scaled to the upscaled frames. Decoding starts a little before the batch: the frames
  just before ``start_pts`` are found by decoding from an estimated earlier time (three times
  the context at the average rate), which costs a few decoded frames and needs no list of
  every frame's timestamp on the worker.
* :func:`sample_png`: the before/after crop of the largest restored face.
"""

from __future__ import annotations

import io
import math
import threading
from collections import deque
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch
from PIL import Image

from vsrflow.compare import compose
from vsrflow.engine import resolve_device
from vsrflow.engine_settings import Precision
from vsrflow.faces.blazeface import FaceDetector
from vsrflow.faces.detections import Detection
from vsrflow.faces.job import FaceJob
from vsrflow.faces.processor import FaceProcessor, FaceSample
from vsrflow.faces.restore import FaceRestorer, get_face_model
from vsrflow.faces.track import TrackSettings
from vsrflow.media.decode import decode_range
from vsrflow.media.probe import VideoParams

#: Source frames detected per forward pass of the detector.
DETECT_CHUNK = 16

_lock = threading.Lock()
_detectors: dict[tuple[str, str], FaceDetector] = {}
_restorers: dict[tuple[str, str, str, int], FaceRestorer] = {}


def _restorer_precision(requested: str) -> Precision:
    # fp16 is the SR engine's CUDA choice; GFPGAN/RestoreFormer overflow in it, so an explicit
    # fp16 request becomes "auto" for the face model (bf16 where the device has it, else fp32).
    return "auto" if requested == "fp16" else requested  # type: ignore[return-value]


def face_processor_for(
    job: FaceJob, *, device: str = "auto", precision: str = "auto"
) -> FaceProcessor:
    """A processor for ``job`` sharing this process's detector and restorer."""
    where = resolve_device(device)
    with _lock:
        key = (job.detector, str(where))
        detector = _detectors.get(key)
        if detector is None:
            detector = _detectors[key] = FaceDetector.from_name(job.detector, device=where)
        model = get_face_model(job.model, device=where, progress=False)
        rkey = (model.weights_sha256, str(where), precision, job.faces_per_pass)
        restorer = _restorers.get(rkey)
        if restorer is None:
            restorer = _restorers[rkey] = FaceRestorer(
                model,
                device=where,
                precision=_restorer_precision(precision),
                faces_per_pass=job.faces_per_pass,
            )
    return FaceProcessor(
        detector, restorer, strength=job.strength, tracking=TrackSettings(window=job.window)
    )


def _context_start(video: VideoParams, start_pts: int, frames: int) -> int:
    """A pts about ``3 * frames`` frames before ``start_pts`` (2 s per frame if the rate is
    unknown): decoding from there yields the ``frames`` frames before the batch."""
    rate = video.average_rate if video.average_rate else Fraction(1, 2)
    span = math.ceil(3 * frames / (float(rate) * float(video.time_base)))
    return start_pts - max(span, 1)


def plan_batch_faces(
    processor: FaceProcessor,
    video: VideoParams,
    start_pts: int,
    end_pts: int | None,
    out_size: tuple[int, int],
    *,
    prepare: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None,
) -> list[list[Detection]]:
    """Smoothed faces of every source frame with ``start_pts <= pts < end_pts``, in the
    coordinates of the upscaled frames (``out_size`` = (width, height)).

    ``prepare(rgb, alpha)`` turns decoded frames into what the SR model sees (e.g. a flattened
    alpha source); by default the decoded colour as is."""
    context = processor.context
    first = start_pts if start_pts <= 0 else _context_start(video, start_pts, context)
    before: deque[list[Detection]] = deque(maxlen=context)
    inside: list[list[Detection]] = []
    after: list[list[Detection]] = []
    pending: list[tuple[int, np.ndarray, np.ndarray | None]] = []

    def flush() -> None:
        if not pending:
            return
        rgb = np.stack([p[1] for p in pending])
        alphas = [p[2] for p in pending]
        alpha = np.stack(alphas) if alphas[0] is not None else None  # type: ignore[arg-type]
        frames = prepare(rgb, alpha) if prepare is not None else rgb
        for (pts, _, _), faces in zip(pending, processor.detect(frames), strict=True):
            if pts < start_pts:
                before.append(faces)
            elif end_pts is None or pts < end_pts:
                inside.append(faces)
            else:
                after.append(faces)
        pending.clear()

    frames_after = 0
    for frame in decode_range(
        video.path,
        video.index,
        first,
        None,
        colour=video.colour,
        bit_depth=video.bit_depth,
        alpha=video.decodes_alpha,
        decoder=video.alpha_decoder if video.decodes_alpha else None,
    ):
        if end_pts is not None and frame.pts >= end_pts:
            frames_after += 1
            if frames_after > context:
                break
        pending.append((frame.pts, frame.rgb, frame.alpha))
        if len(pending) == DETECT_CHUNK:
            flush()
    flush()
    scale = (out_size[0] / video.width, out_size[1] / video.height)
    return processor.plan(inside, before=list(before), after=after, scale=scale)


def _eight_bit(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.dtype == np.uint8 else (pixels >> 8).astype(np.uint8)


#: Longest side of each panel of the face crop image.
SAMPLE_PANEL = 384


def sample_png(sample: FaceSample, *, restorer_label: str) -> bytes:
    """The largest restored face: upscaled (left) and restored (right), side by side."""
    before, after = _eight_bit(sample.before), _eight_bit(sample.after)
    height, width = before.shape[:2]
    factor = min(1.0, SAMPLE_PANEL / max(height, width))
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        before = np.asarray(Image.fromarray(before).resize(size, Image.Resampling.LANCZOS))
        after = np.asarray(Image.fromarray(after).resize(size, Image.Resampling.LANCZOS))
    image = compose(before, after, ("upscaled", f"+ face restoration ({restorer_label})"))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # default zlib level: optimize=True took 6x longer
    return buffer.getvalue()


def clear_face_step_cache() -> None:
    """Forget the detectors and restorers built in this process (tests)."""
    with _lock:
        _detectors.clear()
        _restorers.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = [
    "DETECT_CHUNK",
    "clear_face_step_cache",
    "face_processor_for",
    "plan_batch_faces",
    "sample_png",
]
