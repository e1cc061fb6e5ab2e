"""Keep faces steady from frame to frame: link detections into tracks, bridge misses, smooth.

Per-frame detection jitters by a pixel or two (more on small or blurred faces), and every
pixel of jitter in the landmarks moves the aligned crop, so a restored face would shimmer even
with a perfectly stable restorer. And a face the detector misses for one frame would be
restored, not restored, restored: a visible blink. So, for a run of frames:

1. Link: each frame's detections are matched to the tracks of the frames before by box IoU
   (greedy, best overlap first, at least ``iou_threshold``). A track whose face was missed for
   up to ``max_gap`` frames can still be continued.
2. Bridge: the frames a track skipped get a detection interpolated linearly between its two
   neighbours (score: the lower of the two), so a one- or two-frame miss is restored too.
3. Smooth: box and keypoints of each track are replaced by a centred moving average over
   ``window`` frames. Centred, so a face moving at constant speed keeps its true position (no
   lag); near a track's first or last frame the window shrinks symmetrically (a face that
   appears is not pulled towards where it will be).

Batches. A batch is processed alone (on its own worker), but its first and last frames must be
smoothed exactly as if the whole video had been processed at once, or faces would jump at every
batch edge. :func:`stabilize` therefore takes the detections of a few *context* frames before
and after the batch (decoded and detected, not restored); with ``settings.context`` frames on
each side (``window // 2 + max_gap + 1``) the result for every batch frame equals the
whole-video result (pinned by tests/test_faces.py), except where two faces cross and the greedy
matching could pair them differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vsrflow.faces.detections import Detection, box_iou


@dataclass(frozen=True)
class TrackSettings:
    """How detections are linked, bridged and smoothed."""

    #: Frames in the centred moving average (odd; 1 = no smoothing).
    window: int = 5
    #: Least box overlap for a detection to continue a track.
    iou_threshold: float = 0.3
    #: Missed frames a track may skip (and that are then filled by interpolation).
    max_gap: int = 2

    def __post_init__(self) -> None:
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"window must be an odd number >= 1, got {self.window}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {self.max_gap}")

    @property
    def context(self) -> int:
        """Context frames needed on each side of a batch for batch-independent results."""
        return self.window // 2 + self.max_gap + 1


#: The defaults as one value.
TRACK_DEFAULTS = TrackSettings()


@dataclass
class Track:
    """One face over consecutive frames (after :func:`bridge_gaps`, without holes)."""

    frames: list[int] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)

    @property
    def last_frame(self) -> int:
        return self.frames[-1]


def link_tracks(
    per_frame: Sequence[Sequence[Detection]], settings: TrackSettings = TRACK_DEFAULTS
) -> list[Track]:
    """Group detections into tracks by box overlap with each track's latest detection."""
    tracks: list[Track] = []
    for t, faces in enumerate(per_frame):
        active = [tr for tr in tracks if t - tr.last_frame <= settings.max_gap + 1]
        taken_tracks: set[int] = set()
        taken_faces: set[int] = set()
        if active and faces:
            iou = box_iou(
                np.stack([tr.detections[-1].box for tr in active]),
                np.stack([f.box for f in faces]),
            )
            # Best overlap first; ties broken by the more recent track, then by order.
            pairs = sorted(
                ((iou[i, j], active[i].last_frame, -i, -j) for i in range(len(active))
                 for j in range(len(faces))),
                reverse=True,
            )  # fmt: skip
            for overlap, _, neg_i, neg_j in pairs:
                i, j = -neg_i, -neg_j
                if overlap < settings.iou_threshold:
                    break
                if i in taken_tracks or j in taken_faces:
                    continue
                active[i].frames.append(t)
                active[i].detections.append(faces[j])
                taken_tracks.add(i)
                taken_faces.add(j)
        for j, face in enumerate(faces):
            if j not in taken_faces:
                tracks.append(Track([t], [face]))
    return tracks


def _interpolate(a: Detection, b: Detection, w: float) -> Detection:
    return Detection(
        (1 - w) * a.box + w * b.box,
        (1 - w) * a.keypoints + w * b.keypoints,
        min(a.score, b.score),
    )


def bridge_gaps(track: Track) -> Track:
    """The same track with every skipped frame filled by linear interpolation."""
    frames, detections = [track.frames[0]], [track.detections[0]]
    for f, d in zip(track.frames[1:], track.detections[1:], strict=True):
        f0, d0 = frames[-1], detections[-1]
        for missing in range(f0 + 1, f):
            frames.append(missing)
            detections.append(_interpolate(d0, d, (missing - f0) / (f - f0)))
        frames.append(f)
        detections.append(d)
    return Track(frames, detections)


def smooth_track(track: Track, window: int) -> Track:
    """Centred moving average of box and keypoints over ``window`` frames (shrinking
    symmetrically at the ends); scores are kept. ``track`` must have no holes."""
    radius = window // 2
    n = len(track.detections)
    if radius == 0 or n < 3:
        return track
    boxes = np.stack([d.box for d in track.detections])
    points = np.stack([d.keypoints for d in track.detections])
    out = []
    for i, d in enumerate(track.detections):
        r = min(radius, i, n - 1 - i)
        span = slice(i - r, i + r + 1)
        out.append(Detection(boxes[span].mean(axis=0), points[span].mean(axis=0), d.score))
    return Track(list(track.frames), out)


def stabilize(
    batch: Sequence[Sequence[Detection]],
    *,
    before: Sequence[Sequence[Detection]] = (),
    after: Sequence[Sequence[Detection]] = (),
    settings: TrackSettings = TRACK_DEFAULTS,
) -> list[list[Detection]]:
    """Linked, bridged and smoothed detections for each frame of ``batch``.

    ``before``/``after``: the detections of the frames just before and after the batch (in
    order; up to ``settings.context`` of each is used), so the batch's edge frames are smoothed
    with their real neighbours. Returns one list per batch frame, best score first.
    """
    before = list(before)[-settings.context :] if before else []
    after = list(after)[: settings.context]
    sequence = [*before, *batch, *after]
    first, end = len(before), len(before) + len(batch)
    out: list[list[Detection]] = [[] for _ in batch]
    for track in link_tracks(sequence, settings):
        smoothed = smooth_track(bridge_gaps(track), settings.window)
        for f, d in zip(smoothed.frames, smoothed.detections, strict=True):
            if first <= f < end:
                out[f - first].append(d)
    for faces in out:
        faces.sort(key=lambda d: -d.score)
    return out


__all__ = [
    "TRACK_DEFAULTS",
    "Track",
    "TrackSettings",
    "bridge_gaps",
    "link_tracks",
    "smooth_track",
    "stabilize",
]
