"""BlazeFace face detection, written from the paper and MediaPipe's published model layout.

BlazeFace (Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on Mobile
GPUs", arXiv 1907.05047) is an SSD-style detector: a small convolutional backbone built from
"BlazeBlocks", two prediction heads on a coarse and a coarser feature map, a fixed table of
anchors, and a box + 6 keypoints regressed per anchor. What this module implements:

* The network (:class:`BlazeFaceNet`). A *single BlazeBlock* (paper, Fig. 1) is a 3x3
  depthwise convolution followed by a 1x1 pointwise convolution, added to a skip path, then a
  ReLU. When the block halves the resolution (stride 2) the skip path is a 2x2 max pool; when
  it widens the channels, the skip path is padded with zero channels. MediaPipe's trained
  models, whose weights we load, differ from the paper's table in ways the paper itself
  allows: 3x3 rather than 5x5 depthwise kernels and single blocks only. Convolutions use
  TensorFlow "SAME" padding (the models were trained in TF): for stride 2 on an even input
  that is one extra row/column at the bottom/right (0 before, 1 after for 3x3; 1 before, 2
  after for the 5x5 stem). The two variants:

  - front (128x128 in): stem 5x5/2 -> 24 ch at 64x64; blocks 24, 28, 32/2, 36, 42, 48/2, 56,
    64, 72, 80, 88 -> 16x16x88 feeds head A (2 anchors per cell); then 96/2 and four 96
    -> 8x8x96 feeds head B (6 anchors per cell).
  - back (256x256 in): stem 5x5/2 -> 24 ch at 128x128; 7 blocks of 24; 24/2 + 7 of 24;
    48/2 + 7 of 48; 96/2 + 7 of 96 -> 16x16x96 feeds head A; a last 96/2 block without skip
    path -> 8x8x96 feeds head B.

  Channel widths come from the state dicts; where the stride-2 blocks sit does not. The
  feature-map sizes (16x16 and 8x8 for 896 anchors) fix how many there are, and their places
  were checked by measurement on the shared face photos (six faces in three photos): of the 55
  placements of the front model's two, this one finds all six with the highest mean score
  (0.991; next best 0.978); of the 15 placements of the back model's first, this one (after
  seven blocks) finds all six with the highest mean score (0.870; the one before it also finds
  six, at 0.838; the others miss faces).
* Anchors (:func:`generate_anchors`), from the SSD anchor settings MediaPipe publishes for
  these models: 4 layers, strides 8/16/16/16 (front) or 16/32/32/32 (back), aspect ratio 1
  plus one interpolated scale per layer, anchor offset 0.5, fixed anchor size. Layers that
  share a stride share a feature map, so the 16x16 map gets 2 anchors per cell and the 8x8 map
  3 x 2 = 6: 512 + 384 = 896. With a fixed anchor size every anchor is 1 x 1 (in units of the
  input), and boxes are regressed relative to the anchor centre.
* Decoding: per anchor 16 numbers (box centre x/y, width, height, then 6 keypoints x/y), in
  input pixels relative to the anchor centre; scores are sigmoid(logit) with logits clipped to
  +-100 as MediaPipe does.
* Suppression (:func:`weighted_nms`): the paper replaces NMS by "blending": overlapping
  detections are averaged, weighted by their scores, which it reports makes boxes steadier
  from frame to frame than keeping only the best one. We keep the best detection's score.

Input frames are letterboxed to a square (the aspect ratio kept, as MediaPipe does), resized
with antialiasing to the model's input size and scaled to [-1, 1].
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vsrflow.errors import ModelError, UnsupportedArchitectureError
from vsrflow.faces.detections import Detection, box_iou
from vsrflow.faces.registry import (
    DEFAULT_DETECTOR,
    DetectorSpec,
    ResolvedDetector,
    resolve_detector_weights,
)

#: Values regressed per anchor: box (4) + 6 keypoints x 2.
_VALUES_PER_ANCHOR: Final = 16
_NUM_KEYPOINTS: Final = 6
_SCORE_CLIP: Final = 100.0


# --- anchors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AnchorSettings:
    """MediaPipe's ``SsdAnchorsCalculatorOptions`` for the BlazeFace models (SSD, Liu et al.)."""

    input_size: int
    strides: tuple[int, ...]
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    anchor_offset: float = 0.5
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True


def _layer_scale(settings: AnchorSettings, layer: int) -> float:
    n = len(settings.strides)
    if n == 1:
        return (settings.min_scale + settings.max_scale) / 2
    return settings.min_scale + (settings.max_scale - settings.min_scale) * layer / (n - 1)


def generate_anchors(settings: AnchorSettings) -> np.ndarray:
    """Anchor table (n, 4) as (x_centre, y_centre, width, height) in units of the input.

    SSD's rule: layer ``k`` of ``n`` has scale ``min + (max - min) k / (n - 1)``; each layer
    contributes one anchor per aspect ratio and one at the geometric mean of its scale and the
    next layer's (``interpolated_scale_aspect_ratio``). Consecutive layers with the same stride
    are one feature map, whose cells list their anchors together; cells go row by row.
    """
    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    n = len(settings.strides)
    while layer < n:
        sizes: list[tuple[float, float]] = []
        last = layer
        while last < n and settings.strides[last] == settings.strides[layer]:
            scale = _layer_scale(settings, last)
            for ratio in settings.aspect_ratios:
                sizes.append((scale * math.sqrt(ratio), scale / math.sqrt(ratio)))
            if settings.interpolated_scale_aspect_ratio > 0:
                following = 1.0 if last == n - 1 else _layer_scale(settings, last + 1)
                between = math.sqrt(scale * following)
                r = settings.interpolated_scale_aspect_ratio
                sizes.append((between * math.sqrt(r), between / math.sqrt(r)))
            last += 1
        stride = settings.strides[layer]
        rows = cols = math.ceil(settings.input_size / stride)
        for y in range(rows):
            for x in range(cols):
                cx = (x + settings.anchor_offset) / cols
                cy = (y + settings.anchor_offset) / rows
                for w, h in sizes:
                    size = (1.0, 1.0) if settings.fixed_anchor_size else (w, h)
                    anchors.append((cx, cy, *size))
        layer = last
    return np.asarray(anchors, dtype=np.float64)


def anchors_for(spec: DetectorSpec) -> np.ndarray:
    return generate_anchors(AnchorSettings(spec.input_size, spec.anchor_strides))


# --- network -----------------------------------------------------------------------------


def _same_pad(kernel: int) -> tuple[int, int, int, int]:
    """TF "SAME" padding of a stride-2 convolution on an even input: (left, right, top, bottom)."""
    total = kernel - 2
    before = total // 2
    return before, total - before, before, total - before


class BlazeBlock(nn.Module):
    """Depthwise 3x3 (stride 1 or 2) + pointwise 1x1, plus a skip path, then ReLU.

    ``residual=False`` drops the skip path (the back model's last block).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, *, residual: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2) or cout < cin:
            raise ValueError(f"unsupported BlazeBlock {cin}->{cout} stride {stride}")
        self.stride = stride
        self.extra_channels = cout - cin
        self.residual = residual
        self.convs = nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1 if stride == 1 else 0, groups=cin),
            nn.Conv2d(cin, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.convs(F.pad(x, _same_pad(3)) if self.stride == 2 else x)
        if not self.residual:
            return F.relu(main)
        skip = F.max_pool2d(x, 2) if self.stride == 2 else x
        if self.extra_channels:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(main + skip)


def _stage(stem: bool, layout: Sequence[tuple[int, int]], cin: int) -> nn.Sequential:
    """``layout`` = (out channels, stride) per block; the stem (if any) is indices 0-1."""
    layers: list[nn.Module] = []
    if stem:
        layers += [nn.Conv2d(3, 24, 5, stride=2), nn.ReLU()]
    for cout, stride in layout:
        layers.append(BlazeBlock(cin, cout, stride))
        cin = cout
    return nn.Sequential(*layers)


_FRONT_STAGE_A: Final = (
    (24, 1), (28, 1), (32, 2), (36, 1), (42, 1), (48, 2),
    (56, 1), (64, 1), (72, 1), (80, 1), (88, 1),
)  # fmt: skip
_FRONT_STAGE_B: Final = ((96, 2), (96, 1), (96, 1), (96, 1), (96, 1))
_BACK_STAGE_A: Final = (
    *[(24, 1)] * 7, (24, 2), *[(24, 1)] * 7,
    (48, 2), *[(48, 1)] * 7,
    (96, 2), *[(96, 1)] * 7,
)  # fmt: skip


class BlazeFaceNet(nn.Module):
    """The front (128 px) or back (256 px) BlazeFace network; parameter names match the
    converted MediaPipe state dicts. ``forward`` returns (raw boxes (N, 896, 16), logits (N,
    896))."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.stem_pad = _same_pad(5)
        if variant == "front":
            self.backbone1 = _stage(True, _FRONT_STAGE_A, 24)
            self.backbone2 = _stage(False, _FRONT_STAGE_B, 88)
            ca, cb = 88, 96
        elif variant == "back":
            self.backbone = _stage(True, _BACK_STAGE_A, 24)
            self.final = BlazeBlock(96, 96, 2, residual=False)
            ca, cb = 96, 96
        else:
            raise ValueError(f"unknown BlazeFace variant {variant!r}")
        self.classifier_8 = nn.Conv2d(ca, 2, 1)
        self.classifier_16 = nn.Conv2d(cb, 6, 1)
        self.regressor_8 = nn.Conv2d(ca, 2 * _VALUES_PER_ANCHOR, 1)
        self.regressor_16 = nn.Conv2d(cb, 6 * _VALUES_PER_ANCHOR, 1)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.pad(x, self.stem_pad)
        if self.variant == "front":
            a = self.backbone1(x)
            return a, self.backbone2(a)
        a = self.backbone(x)
        return a, self.final(a)

    @staticmethod
    def _per_anchor(head: torch.Tensor, values: int) -> torch.Tensor:
        # (N, anchors * values, H, W) -> (N, H * W * anchors, values): cells row by row.
        n = head.shape[0]
        return head.permute(0, 2, 3, 1).reshape(n, -1, values)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self._features(x)
        boxes = torch.cat(
            [
                self._per_anchor(self.regressor_8(a), _VALUES_PER_ANCHOR),
                self._per_anchor(self.regressor_16(b), _VALUES_PER_ANCHOR),
            ],
            dim=1,
        )
        logits = torch.cat(
            [self._per_anchor(self.classifier_8(a), 1), self._per_anchor(self.classifier_16(b), 1)],
            dim=1,
        )
        return boxes, logits.squeeze(-1)


# --- decoding and suppression ------------------------------------------------------------


def decode(raw: np.ndarray, anchors: np.ndarray, input_size: int) -> np.ndarray:
    """Raw regressor output (n, 16) -> (n, 16) as box (x0, y0, x1, y1) + 6 (x, y) keypoints,
    normalised to [0, 1] over the model input."""
    scale = float(input_size)
    ax, ay, aw, ah = (anchors[:, i : i + 1] for i in range(4))
    out = np.empty_like(raw, dtype=np.float64)
    cx = raw[:, 0:1] / scale * aw + ax
    cy = raw[:, 1:2] / scale * ah + ay
    w = raw[:, 2:3] / scale * aw
    h = raw[:, 3:4] / scale * ah
    out[:, 0:1], out[:, 1:2] = cx - w / 2, cy - h / 2
    out[:, 2:3], out[:, 3:4] = cx + w / 2, cy + h / 2
    out[:, 4::2] = raw[:, 4::2] / scale * aw + ax
    out[:, 5::2] = raw[:, 5::2] / scale * ah + ay
    return out


def weighted_nms(
    decoded: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> list[tuple[np.ndarray, float]]:
    """The paper's "blending" suppression: group each best-scoring detection with every
    remaining one overlapping it by more than ``iou_threshold``; the group's box and keypoints
    are the score-weighted mean of its members, its score the best one's."""
    order = np.argsort(-scores, kind="stable")
    remaining = order
    kept: list[tuple[np.ndarray, float]] = []
    while remaining.size:
        best = remaining[0]
        overlap = box_iou(decoded[best, :4], decoded[remaining, :4])[0]
        group = remaining[overlap > iou_threshold]
        if group.size == 0:  # degenerate (zero-area) best box: keep it alone
            group = remaining[:1]
        remaining = remaining[~np.isin(remaining, group)]
        weights = scores[group][:, None]
        merged = (decoded[group] * weights).sum(axis=0) / weights.sum()
        kept.append((merged, float(scores[best])))
    return kept


# --- detector ----------------------------------------------------------------------------


def load_detector_net(resolved: ResolvedDetector) -> BlazeFaceNet:
    """Build the network for a verified weights file; weights load with weights_only=True."""
    net = BlazeFaceNet(resolved.spec.variant)
    try:
        state = torch.load(resolved.path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{resolved.path} could not be read as a state dict: {exc}") from exc
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsupportedArchitectureError(
            f"{resolved.path} does not fit the BlazeFace {resolved.spec.variant} network: {first}"
        ) from exc
    return net.eval().requires_grad_(False)


class FaceDetector:
    """Find faces in batches of RGB frames with one BlazeFace model; create once, reuse.

    ``detect`` returns, per frame, the faces found, in that frame's pixel-edge coordinates
    (see :mod:`vsrflow.faces.detections`).
    """

    def __init__(
        self,
        resolved: ResolvedDetector,
        *,
        device: str | torch.device = "cpu",
        min_score: float | None = None,
        nms_iou: float | None = None,
    ) -> None:
        self.spec = resolved.spec
        self.device = torch.device(device)
        self.net = load_detector_net(resolved).to(self.device)
        self.anchors = anchors_for(self.spec)
        self.min_score = self.spec.min_score if min_score is None else float(min_score)
        self.nms_iou = self.spec.nms_iou if nms_iou is None else float(nms_iou)

    @classmethod
    def from_name(
        cls,
        name: str = DEFAULT_DETECTOR,
        *,
        path: str | os.PathLike[str] | None = None,
        search_path: Sequence[str | os.PathLike[str]] | None = None,
        device: str | torch.device = "cpu",
        min_score: float | None = None,
    ) -> FaceDetector:
        dirs = None if search_path is None else [Path(p) for p in search_path]
        resolved = resolve_detector_weights(name, path=path, search_path=dirs)
        return cls(resolved, device=device, min_score=min_score)

    def _prepare(self, frames: np.ndarray) -> tuple[torch.Tensor, float, float, float]:
        """Letterbox to a square and resize; returns (input, side, x offset, y offset)."""
        _, h, w, _ = frames.shape
        side = max(h, w)
        x = torch.from_numpy(np.require(frames, requirements=["C", "W"])).to(self.device)
        peak = 255.0 if frames.dtype == np.uint8 else 65535.0
        x = x.permute(0, 3, 1, 2).float() * (255.0 / peak)
        left, top = (side - w) // 2, (side - h) // 2
        if side != w or side != h:
            x = F.pad(x, (left, side - w - left, top, side - h - top))
        size = self.spec.input_size
        if side != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return x / 127.5 - 1.0, float(side), float(left), float(top)

    @torch.inference_mode()
    def detect(self, frames: np.ndarray) -> list[list[Detection]]:
        """(N, H, W, 3) uint8/uint16 RGB -> per frame, the faces, best first."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) frames, got shape {frames.shape}")
        if frames.shape[0] == 0:
            return []
        x, side, left, top = self._prepare(frames)
        raw, logits = self.net(x)
        raw_np = raw.float().cpu().numpy().astype(np.float64)
        scores = torch.sigmoid(logits.float().clamp(-_SCORE_CLIP, _SCORE_CLIP)).cpu().numpy()
        result: list[list[Detection]] = []
        for i in range(frames.shape[0]):
            keep = scores[i] >= self.min_score
            faces: list[Detection] = []
            if keep.any():
                decoded = decode(raw_np[i][keep], self.anchors[keep], self.spec.input_size)
                for values, score in weighted_nms(decoded, scores[i][keep], self.nms_iou):
                    pixels = values * side
                    pixels[0::2] -= left
                    pixels[1::2] -= top
                    faces.append(Detection(pixels[:4], pixels[4:].reshape(-1, 2), score))
            result.append(faces)
        return result


__all__ = [
    "AnchorSettings",
    "BlazeBlock",
    "BlazeFaceNet",
    "FaceDetector",
    "anchors_for",
    "decode",
    "generate_anchors",
    "load_detector_net",
    "weighted_nms",
]
