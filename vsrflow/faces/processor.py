"""Detect -> track -> restore for one batch of video frames: the face step of a pipeline.

A pipeline batch is decoded with ``context`` extra frames on each side (clipped at the ends of
the video). :meth:`FaceProcessor.detect` finds faces on the *source* frames (small and cheap;
BlazeFace letterboxes to 128 or 256 pixels anyway), :meth:`FaceProcessor.plan` links and
smooths them with the context frames as neighbours and scales them to the upscaled frames, and
:meth:`FaceProcessor.apply` restores one micro-batch of upscaled frames at a time, after the SR
engine and before the encoder. Context frames are detected, never upscaled or restored.

The processor also keeps what a run summary shows: frames seen, frames with faces, faces
restored, and a before/after crop of the largest face it restored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vsrflow.faces.blazeface import FaceDetector
from vsrflow.faces.detections import Detection, crop_around, scale_detections
from vsrflow.faces.restore import FaceRestorer
from vsrflow.faces.track import TRACK_DEFAULTS, TrackSettings, stabilize


@dataclass(frozen=True)
class FaceSample:
    """One restored face, before and after, cropped from the upscaled frame."""

    frame: int
    detection: Detection
    before: np.ndarray
    after: np.ndarray


@dataclass
class FaceStats:
    """Counts over every frame passed to :meth:`FaceProcessor.apply`."""

    frames: int = 0
    frames_with_faces: int = 0
    faces: int = 0
    #: The largest face restored so far (``None`` when none was).
    sample: FaceSample | None = None
    #: Frame indices (as counted by ``apply``) in which at least one face was restored.
    restored_frames: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "frames_with_faces": self.frames_with_faces,
            "faces": self.faces,
        }


class FaceProcessor:
    """The face step for one worker: a detector, a restorer and the tracking settings."""

    def __init__(
        self,
        detector: FaceDetector,
        restorer: FaceRestorer,
        *,
        strength: float = 1.0,
        tracking: TrackSettings = TRACK_DEFAULTS,
    ) -> None:
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        self.detector = detector
        self.restorer = restorer
        self.strength = float(strength)
        self.tracking = tracking
        self.stats = FaceStats()

    @property
    def context(self) -> int:
        """Frames to decode (and detect) before and after each batch."""
        return self.tracking.context

    def detect(self, frames: np.ndarray, *, chunk: int = 32) -> list[list[Detection]]:
        """Faces of each source frame (N, H, W, 3), in source pixels."""
        out: list[list[Detection]] = []
        for start in range(0, frames.shape[0], chunk):
            out += self.detector.detect(frames[start : start + chunk])
        return out

    def plan(
        self,
        batch: Sequence[Sequence[Detection]],
        *,
        before: Sequence[Sequence[Detection]] = (),
        after: Sequence[Sequence[Detection]] = (),
        scale: tuple[float, float] = (1.0, 1.0),
    ) -> list[list[Detection]]:
        """Smoothed faces of each batch frame, scaled by ``scale`` = (output width / source
        width, output height / source height) to the upscaled frames."""
        steady = stabilize(batch, before=before, after=after, settings=self.tracking)
        return scale_detections(steady, scale[0], scale[1])

    def apply(self, frames: np.ndarray, faces: Sequence[Sequence[Detection]]) -> np.ndarray:
        """Restore the faces of one micro-batch of upscaled frames (see FaceRestorer)."""
        first = self.stats.frames
        out = self.restorer.restore(frames, faces, self.strength)
        self.stats.frames += frames.shape[0]
        pasted = self.restorer.last_pasted
        touched = sorted({p.frame for p in pasted})
        self.stats.frames_with_faces += len(touched)
        self.stats.restored_frames += [first + i for i in touched]
        self.stats.faces += len(pasted)
        for p in pasted:
            current = self.stats.sample
            if current is None or p.detection.width > current.detection.width:
                h, w = frames.shape[1:3]
                x0, y0, x1, y1 = crop_around(p.detection, h, w)
                self.stats.sample = FaceSample(
                    frame=first + p.frame,
                    detection=p.detection,
                    before=frames[p.frame, y0:y1, x0:x1].copy(),
                    after=out[p.frame, y0:y1, x0:x1].copy(),
                )
        return out


__all__ = ["FaceProcessor", "FaceSample", "FaceStats"]
