"""One face found in one frame: a box, six keypoints and a score, in frame pixels.

Coordinates are *pixel-edge* coordinates: a frame of width W spans ``[0, W]``, pixel column
``i`` covers ``[i, i + 1)`` and its centre is at ``i + 0.5``. In that convention changing the
resolution is a plain multiplication (:meth:`Detection.scaled`), which is how detections made
on the decoded source frame are carried to the upscaled frame.

Keypoints follow the BlazeFace/MediaPipe order, named from the *person's* point of view, so on
a frontal face ``right_eye`` is on the image's left: right eye, left eye, nose tip, mouth
centre, right ear tragion, left ear tragion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

KEYPOINT_NAMES: Final = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")
RIGHT_EYE, LEFT_EYE, NOSE, MOUTH, RIGHT_EAR, LEFT_EAR = range(6)


@dataclass(frozen=True, eq=False)
class Detection:
    """A face: ``box`` = (x0, y0, x1, y1), ``keypoints`` = (6, 2) as (x, y), ``score`` 0..1."""

    box: np.ndarray
    keypoints: np.ndarray
    score: float

    def __post_init__(self) -> None:
        box = np.asarray(self.box, dtype=np.float64).reshape(4)
        keypoints = np.asarray(self.keypoints, dtype=np.float64).reshape(len(KEYPOINT_NAMES), 2)
        box.setflags(write=False)
        keypoints.setflags(write=False)
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "keypoints", keypoints)
        object.__setattr__(self, "score", float(self.score))

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def centre(self) -> tuple[float, float]:
        return float(self.box[0] + self.box[2]) / 2, float(self.box[1] + self.box[3]) / 2

    def scaled(self, sx: float, sy: float | None = None) -> Detection:
        """The same face in a frame resized by ``sx`` (and ``sy``, default ``sx``)."""
        factor = np.array([sx, sx if sy is None else sy], dtype=np.float64)
        return Detection(self.box * np.tile(factor, 2), self.keypoints * factor, self.score)

    def shifted(self, dx: float, dy: float) -> Detection:
        """The same face with the frame's origin moved by (-dx, -dy) (crops, letterboxes)."""
        offset = np.array([dx, dy], dtype=np.float64)
        return Detection(self.box + np.tile(offset, 2), self.keypoints + offset, self.score)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able form (manifests, artifacts)."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "keypoints": {
                name: [round(float(x), 2), round(float(y), 2)]
                for name, (x, y) in zip(KEYPOINT_NAMES, self.keypoints, strict=True)
            },
            "score": round(self.score, 4),
        }

    def __repr__(self) -> str:
        x0, y0, x1, y1 = (round(float(v), 1) for v in self.box)
        return f"Detection(box=({x0}, {y0}, {x1}, {y1}), score={self.score:.3f})"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (n, 4) with every box in ``b`` (m, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def scale_detections(
    per_frame: Sequence[Sequence[Detection]], sx: float, sy: float | None = None
) -> list[list[Detection]]:
    """:meth:`Detection.scaled` for every face of every frame."""
    return [[d.scaled(sx, sy) for d in faces] for faces in per_frame]


def crop_around(
    detection: Detection, frame_height: int, frame_width: int, *, margin: float = 0.3
) -> tuple[int, int, int, int]:
    """A square (x0, y0, x1, y1) in whole pixels around the face, ``margin`` x its size on
    each side, clipped to the frame (for before/after crops in reports)."""
    cx, cy = detection.centre
    half = max(detection.width, detection.height) * (0.5 + margin)
    x0 = int(np.clip(np.floor(cx - half), 0, frame_width - 1))
    y0 = int(np.clip(np.floor(cy - half), 0, frame_height - 1))
    x1 = int(np.clip(np.ceil(cx + half), x0 + 1, frame_width))
    y1 = int(np.clip(np.ceil(cy + half), y0 + 1, frame_height))
    return x0, y0, x1, y1


__all__ = [
    "KEYPOINT_NAMES",
    "LEFT_EAR",
    "LEFT_EYE",
    "MOUTH",
    "NOSE",
    "RIGHT_EAR",
    "RIGHT_EYE",
    "Detection",
    "box_iou",
    "crop_around",
    "scale_detections",
]
