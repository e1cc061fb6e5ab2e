"""Align a detected face to the restorer's template, and paste the result back.

GFPGAN and RestoreFormer were trained on FFHQ faces aligned to one 512x512 template of five
landmarks: the two eye centres, the nose tip and the two mouth corners (the values below are
the template GFPGAN's face helper uses, in OpenCV pixel-index coordinates). A face in a frame
is mapped onto it by a similarity transform (rotation, uniform scale, translation) fitted by
least squares to the landmark correspondences, the face is sampled into a 512x512 crop, and
after restoration the crop is sampled back into the frame through the inverse transform and
blended with a soft mask.

BlazeFace gives eyes, nose and the mouth *centre*, not its corners (plus the ears, which the
template does not have). The mouth centre corresponds to the midpoint of the template's two
corners, so the fit uses four correspondences: right eye, left eye, nose, mouth centre ->
template eye 1, eye 2, nose, midpoint of the corners. Synthesising corners from the mouth centre
(centre +- a fixed fraction of the eye vector) would add no information: it only weights the
mouth centre twice. The ears are left out: BlazeFace's ear points (tragion) are the least
precise and the template has no counterpart.

Coordinates: detections are pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1)``); the
matrices here map pixel-*index* coordinates (pixel ``i`` centred on ``i``), as OpenCV and the
template do, so ``index = edge - 0.5``. Sampling is bilinear ``grid_sample`` with
``align_corners=False``, whose convention is the same (index ``i`` <-> normalised
``(2 i + 1) / size - 1``). When one side is more than 1.5x larger than the other, the source
is first resized with an antialiasing filter, so shrinking a big face to 512 (or a restored
face to a small one) does not alias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F

from vsrflow.faces.detections import LEFT_EYE, MOUTH, NOSE, RIGHT_EYE, Detection

#: The FFHQ 512x512 five-point template (x, y): eye on the image's left (the person's right),
#: eye on the image's right, nose tip, left and right mouth corners (GFPGAN / facexlib).
FFHQ_TEMPLATE_512: Final = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)
TEMPLATE_SIZE: Final = 512

#: Source-to-target size ratio above which the source is pre-filtered before sampling.
_PREFILTER_RATIO: Final = 1.5


def template_points(size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The four template points the BlazeFace landmarks map to (index coordinates), for a
    ``size`` x ``size`` crop: eye, eye, nose, mouth centre (midpoint of the corners)."""
    t = FFHQ_TEMPLATE_512
    points = np.stack([t[0], t[1], t[2], (t[3] + t[4]) / 2])
    if size != TEMPLATE_SIZE:  # scale about the pixel edges, not the first pixel's centre
        points = (points + 0.5) * (size / TEMPLATE_SIZE) - 0.5
    return points


def landmark_points(detection: Detection) -> np.ndarray:
    """The detection's eye, eye, nose, mouth centre, in pixel-index coordinates."""
    kp = detection.keypoints
    return np.stack([kp[RIGHT_EYE], kp[LEFT_EYE], kp[NOSE], kp[MOUTH]]) - 0.5


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (no reflection) that maps ``src`` (n, 2) onto ``dst`` (n, 2) with the
    least squared error: ``dst ~ [[a, -b], [b, a]] @ src + t``, solved linearly in a, b, t."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need matching (n >= 2, 2) point sets, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    design = np.zeros((2 * n, 4))
    design[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    design[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def affine_scale(matrix: np.ndarray) -> float:
    """The uniform scale of a similarity (template pixels per frame pixel)."""
    return float(math.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2]))))


def alignment_matrix(detection: Detection, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """Frame (index coordinates) -> ``size`` x ``size`` template crop, from the landmarks."""
    return similarity_transform(landmark_points(detection), template_points(size))


# --- sampling ----------------------------------------------------------------------------


def _sample(source: torch.Tensor, coords: torch.Tensor, ratio: float, padding: str) -> torch.Tensor:
    """Bilinear sample ``source`` (1, C, h, w) at index coordinates ``coords`` (Ho, Wo, 2).

    ``ratio`` = source pixels per output pixel; above 1.5 the source is first resized with
    antialiasing to about one source pixel per output pixel (coordinates rescaled to match).
    """
    _, _, h, w = source.shape
    if ratio > _PREFILTER_RATIO:
        hs, ws = max(1, round(h / ratio)), max(1, round(w / ratio))
        source = F.interpolate(source, size=(hs, ws), mode="bilinear", antialias=True)
        scale = coords.new_tensor([ws / w, hs / h])
        coords = (coords + 0.5) * scale - 0.5
        h, w = hs, ws
    size = coords.new_tensor([w, h])
    grid = (2.0 * coords + 1.0) / size - 1.0
    return F.grid_sample(
        source, grid.unsqueeze(0), mode="bilinear", padding_mode=padding, align_corners=False
    )


def _index_grid(x0: int, y0: int, width: int, height: int, device: torch.device) -> torch.Tensor:
    ys = torch.arange(y0, y0 + height, device=device, dtype=torch.float64)
    xs = torch.arange(x0, x0 + width, device=device, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def _mapped(matrix: np.ndarray, grid: torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(matrix, dtype=torch.float64, device=grid.device)
    return (grid @ m[:, :2].T + m[:, 2]).float()


@dataclass(frozen=True)
class Region:
    """A rectangle of whole pixels, ``[x0, x1) x [y0, y1)``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0


def template_footprint(
    matrix: np.ndarray, frame_height: int, frame_width: int, size: int = TEMPLATE_SIZE
) -> Region:
    """The frame pixels the ``size`` x ``size`` template covers under ``matrix`` (clipped, with
    one pixel of margin for bilinear sampling)."""
    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5] * 2])
    frame = apply_affine(invert_affine(matrix), corners)
    x0 = max(0, math.floor(frame[:, 0].min()) - 1)
    y0 = max(0, math.floor(frame[:, 1].min()) - 1)
    x1 = min(frame_width, math.ceil(frame[:, 0].max()) + 2)
    y1 = min(frame_height, math.ceil(frame[:, 1].max()) + 2)
    return Region(x0, y0, max(x0, x1), max(y0, y1))


def warp_to_template(
    frame: torch.Tensor, matrix: np.ndarray, size: int = TEMPLATE_SIZE
) -> torch.Tensor:
    """Sample the face under ``matrix`` from ``frame`` (C, H, W) into (C, size, size), float32
    in the frame's value range (integer frames are converted region by region, never whole).

    Only the frame region the template covers is read. Template pixels that fall outside the
    frame repeat its border (what the restorer sees there does not reach the output: the paste
    never writes outside the frame).
    """
    _, h, w = frame.shape
    region = template_footprint(matrix, h, w, size)
    if region.empty:  # the face is entirely outside the frame
        return torch.zeros((frame.shape[0], size, size), device=frame.device)
    crop = frame[:, region.y0 : region.y1, region.x0 : region.x1].unsqueeze(0)
    grid = _index_grid(0, 0, size, size, frame.device)
    to_frame = invert_affine(matrix)
    to_frame = to_frame - np.array([[0, 0, region.x0], [0, 0, region.y0]])
    coords = _mapped(to_frame, grid)
    ratio = 1.0 / affine_scale(matrix)
    return _sample(crop.float(), coords, ratio, "border")[0]


def warp_from_template(
    face: torch.Tensor, matrix: np.ndarray, region: Region, *, padding: str = "zeros"
) -> torch.Tensor:
    """Sample a template-space image ``face`` (C, S, S) back into the frame pixels of
    ``region`` through ``matrix`` (frame -> template): (C, region.height, region.width)."""
    grid = _index_grid(region.x0, region.y0, region.width, region.height, face.device)
    coords = _mapped(matrix, grid)
    return _sample(face.unsqueeze(0).float(), coords, affine_scale(matrix), padding)[0]


# --- blend mask --------------------------------------------------------------------------


def _gaussian_kernel(radius: int, device: torch.device) -> torch.Tensor:
    sigma = max(radius / 3.0, 1e-6)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def soft_mask(
    size: int = TEMPLATE_SIZE,
    *,
    erode: int | None = None,
    blur: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The blend mask in template space (size, size), 1 on the face, 0 at the crop's edges.

    A full square eroded by ``erode`` pixels (default 1/20 of the size, as GFPGAN's paste-back
    erodes by about 1/20 of the face), then blurred by a Gaussian truncated at ``blur`` pixels
    (default ``erode - 2``): the mask is exactly 0 within 2 pixels of the crop's border, so the
    frame outside the warped crop keeps its bytes, and it rises smoothly to 1 inside.
    """
    device = torch.device(device)
    erode = max(3, round(size / 20)) if erode is None else int(erode)
    blur = max(1, erode - 2) if blur is None else int(blur)
    if not (0 < erode < size // 2) or not (0 < blur <= erode):
        raise ValueError(f"bad mask settings for size {size}: erode={erode}, blur={blur}")
    mask = torch.zeros((1, 1, size, size), device=device)
    mask[..., erode : size - erode, erode : size - erode] = 1.0
    kernel = _gaussian_kernel(blur, device)
    mask = F.conv2d(mask, kernel.view(1, 1, 1, -1), padding=(0, blur))
    mask = F.conv2d(mask, kernel.view(1, 1, -1, 1), padding=(blur, 0))
    mask = mask[0, 0].clamp_(0.0, 1.0)
    edge = erode - blur  # >= 0: untouched by the blur, exactly 0
    mask[:edge] = 0
    mask[size - edge :] = 0
    mask[:, :edge] = 0
    mask[:, size - edge :] = 0
    return mask


__all__ = [
    "FFHQ_TEMPLATE_512",
    "TEMPLATE_SIZE",
    "Region",
    "affine_scale",
    "alignment_matrix",
    "apply_affine",
    "invert_affine",
    "landmark_points",
    "similarity_transform",
    "soft_mask",
    "template_footprint",
    "template_points",
    "warp_from_template",
    "warp_to_template",
]
