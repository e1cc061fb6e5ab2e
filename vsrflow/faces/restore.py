"""Restore the faces of upscaled frames: align, restore in one batch, paste back softly.

The restorer is a spandrel "FaceSR" model: GFPGAN (v1.2/v1.3/v1.4 share one architecture) or
RestoreFormer. Its weights are resolved and verified exactly like the SR weights (registry name
-> ``VSRFLOW_MODEL_PATH``, cache, download with sha256 check; or a user file) and read with
``torch.load(weights_only=True)`` (:func:`vsrflow.models.loader.read_state_dict`).

:class:`FaceRestorer` takes a micro-batch of upscaled frames and the faces found in each (in
those frames' coordinates), aligns every face to the 512x512 FFHQ template
(:mod:`vsrflow.faces.align`), runs *all* the faces of the micro-batch through the model in one
forward pass (chunks of ``faces_per_pass`` if there are more), and blends each restored face
back through the inverse transform with a soft mask: ``out = frame + strength * mask *
(restored - frame)``. Pixels where the mask is 0 (everything outside the warped crop, and its
outer 2 template pixels) keep their bytes exactly.

Determinism, which also matters for video: GFPGAN's StyleGAN2 decoder injects noise, fresh
random noise per call by default (``randomize_noise=True`` in GFPGAN's own inference). Fresh
noise makes the same face come out differently in consecutive frames (flicker) and the same
run give different bytes; we pass ``randomize_noise=False``, which uses the fixed noise maps
stored in the weights file.

Precision follows the SR engine: fp32 on request; else bf16 autocast on CPUs with native bf16
and on CUDA devices with bf16, fp16 autocast on CUDA for models spandrel marks as
half-safe (GFPGAN and RestoreFormer are not: their StyleGAN/attention activations overflow).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import spandrel
import torch
from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

from vsrflow.engine import cpu_has_native_bf16, resolve_device
from vsrflow.engine_settings import Precision
from vsrflow.errors import ModelError, UnsupportedArchitectureError
from vsrflow.faces.align import (
    TEMPLATE_SIZE,
    affine_scale,
    alignment_matrix,
    soft_mask,
    template_footprint,
    warp_from_template,
    warp_to_template,
)
from vsrflow.faces.detections import LEFT_EYE, RIGHT_EYE, Detection
from vsrflow.models.loader import read_state_dict
from vsrflow.models.weights import ResolvedWeights, resolve_weights

#: The registry's default face restorer.
DEFAULT_FACE_MODEL: Final = "GFPGANv1.4"
#: spandrel architectures we know how to call on aligned 512x512 faces.
FACE_ARCHITECTURES: Final = ("GFPGAN", "RestoreFormer")


def _call_gfpgan(descriptor: ImageModelDescriptor[Any], x: torch.Tensor) -> torch.Tensor:
    # GFPGAN works in [-1, 1]; spandrel's own call would clamp its output to [0, 1] and use
    # fresh noise. Stored noise: see the module doc.
    out = descriptor.model(x * 2.0 - 1.0, return_rgb=False, randomize_noise=False)[0]
    return (out.float() + 1.0) / 2.0


def _call_spandrel(descriptor: ImageModelDescriptor[Any], x: torch.Tensor) -> torch.Tensor:
    return descriptor(x).float()  # RestoreFormer: spandrel normalises to [-1, 1] itself


_CALLS: Final[dict[str, Callable[[ImageModelDescriptor[Any], torch.Tensor], torch.Tensor]]] = {
    "GFPGAN": _call_gfpgan,
    "RestoreFormer": _call_spandrel,
}


@dataclass(frozen=True, slots=True)
class FaceModel:
    """A face restorer in eval mode with gradients off, and what the restorer needs to know."""

    descriptor: ImageModelDescriptor[Any]
    #: Registry name, or the file stem for user weights.
    name: str
    weights_sha256: str
    #: spandrel architecture id: "GFPGAN" or "RestoreFormer".
    architecture: str
    size: int
    supports_half: bool
    supports_bfloat16: bool


def face_descriptor_from_state_dict(state: dict[str, torch.Tensor], *, source: str) -> Any:
    """Let spandrel detect the architecture; accept only the face restorers we can call."""
    try:
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state)
    except UnsupportedModelError as exc:
        sample = ", ".join(list(state)[:4]) or "no keys"
        raise UnsupportedArchitectureError(
            f"{source}: spandrel {spandrel.__version__} does not recognise these weights"
            f" (first keys: {sample}); a face restorer must be GFPGAN or RestoreFormer"
        ) from exc
    except Exception as exc:
        raise UnsupportedArchitectureError(
            f"{source}: looks like a known architecture but could not be built: {exc}"
        ) from exc
    arch = str(descriptor.architecture.id)
    if arch not in FACE_ARCHITECTURES or not isinstance(descriptor, ImageModelDescriptor):
        raise UnsupportedArchitectureError(
            f"{source}: {descriptor.architecture.name} is a {descriptor.purpose} model, not a face"
            f" restorer; face restoration needs {' or '.join(FACE_ARCHITECTURES)} weights"
        )
    return descriptor


def load_face_model(weights: ResolvedWeights, *, device: torch.device | str = "cpu") -> FaceModel:
    """Build the face restorer for verified ``weights`` on ``device``."""
    if weights.spec is not None and weights.spec.purpose != "face":
        raise UnsupportedArchitectureError(
            f"{weights.spec.name} is a {weights.spec.purpose.upper()} model, not a face restorer"
        )
    state = read_state_dict(weights.path)
    descriptor = face_descriptor_from_state_dict(state, source=str(weights.path))
    descriptor.to(torch.device(device))
    descriptor.eval()
    descriptor.model.requires_grad_(False)
    return FaceModel(
        descriptor=descriptor,
        name=weights.name,
        weights_sha256=weights.sha256,
        architecture=str(descriptor.architecture.id),
        size=TEMPLATE_SIZE,
        supports_half=descriptor.supports_half,
        supports_bfloat16=descriptor.supports_bfloat16,
    )


_MEMO_SIZE: Final = 2
_memo: OrderedDict[tuple[str, str, str], FaceModel] = OrderedDict()
_memo_lock = threading.Lock()


def get_face_model(
    model: str | os.PathLike[str] = DEFAULT_FACE_MODEL,
    *,
    device: torch.device | str = "cpu",
    cache_dir: Path | None = None,
    search_path: Sequence[Path] | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> FaceModel:
    """Resolve (registry name or file) and load once per process (keyed by sha256, name and
    device)."""
    weights = resolve_weights(
        model,
        cache_dir=cache_dir,
        search_path=search_path,
        allow_download=allow_download,
        progress=progress,
    )
    key = (weights.sha256, weights.name, str(torch.device(device)))
    with _memo_lock:
        loaded = _memo.get(key)
        if loaded is None:
            loaded = load_face_model(weights, device=device)
            _memo[key] = loaded
            while len(_memo) > _MEMO_SIZE:
                _memo.popitem(last=False)
        else:
            _memo.move_to_end(key)
        return loaded


def clear_face_model_cache() -> None:
    with _memo_lock:
        _memo.clear()


def resolve_face_precision(
    requested: Precision, device: torch.device, model: FaceModel
) -> Precision:
    """The concrete precision for ``model`` on ``device`` (see the module doc)."""
    if requested == "fp32":
        return "fp32"
    if requested == "fp16":
        if device.type != "cuda" or not model.supports_half:
            raise ModelError(f"{model.architecture} cannot run in fp16 here; use bf16 or fp32")
        return "fp16"
    if requested == "bf16":
        if not model.supports_bfloat16:
            raise ModelError(f"{model.architecture} does not support bf16")
        return "bf16"
    if device.type == "cuda":
        if model.supports_half:
            return "fp16"
        if model.supports_bfloat16 and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if model.supports_bfloat16 and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


#: Faces whose eyes are closer than this in the upscaled frame are left alone.
_MIN_EYE_DISTANCE: Final = 2.0


def _eye_distance(face: Detection) -> float:
    return float(np.linalg.norm(face.keypoints[RIGHT_EYE] - face.keypoints[LEFT_EYE]))


def _usable(matrix: np.ndarray) -> bool:
    """A finite similarity that does not blow a face up by more than 1000x."""
    return bool(np.isfinite(matrix).all()) and 1e-3 < affine_scale(matrix) < 1e3


def _to_device(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8/uint16 -> (3, H, W) uint8/int32 on ``device`` (torch lacks most uint16
    operations, so 16-bit frames travel as int32 as in the SR engine)."""
    array = np.require(image, requirements=["C", "W"])  # torch wants writable memory
    if array.dtype == np.uint16:
        array = array.astype(np.int32)
    return torch.from_numpy(array).to(device).permute(2, 0, 1)


@dataclass(frozen=True)
class PastedFace:
    """Where one restored face went: its frame, its detection, the frame pixels changed."""

    frame: int
    detection: Detection
    region: tuple[int, int, int, int]


class FaceRestorer:
    """Restore every face of a micro-batch of upscaled frames in one forward pass.

    Create once per process and reuse. ``restore`` never changes pixels outside the faces'
    blend masks, and returns the input's bytes untouched when there is nothing to do.
    """

    def __init__(
        self,
        model: FaceModel,
        *,
        device: str | torch.device | None = None,
        precision: Precision = "auto",
        faces_per_pass: int = 8,
        mask_erode: int | None = None,
        mask_blur: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if model.descriptor.device != self.device:
            model.descriptor.to(self.device)
        self.model = model
        self.precision = resolve_face_precision(precision, self.device, model)
        if faces_per_pass < 1:
            raise ValueError(f"faces_per_pass must be at least 1, got {faces_per_pass}")
        self.faces_per_pass = faces_per_pass
        self.mask = soft_mask(model.size, erode=mask_erode, blur=mask_blur, device=self.device)
        self._call = _CALLS[model.architecture]
        #: What the last ``restore`` did: one entry per face pasted.
        self.last_pasted: list[PastedFace] = []
        #: Forward passes run by the last ``restore`` (0 when no face).
        self.last_passes = 0

    def _autocast(self) -> AbstractContextManager[object]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        if self.precision == "fp16":
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        return nullcontext()

    @torch.inference_mode()
    def restore_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """Aligned faces (F, 3, 512, 512) in [0, 1] -> restored faces, same shape, float32."""
        outputs = []
        self.last_passes = 0
        for start in range(0, crops.shape[0], self.faces_per_pass):
            part = crops[start : start + self.faces_per_pass].to(self.device)
            with self._autocast():
                outputs.append(self._call(self.model.descriptor, part).float().clamp_(0.0, 1.0))
            self.last_passes += 1
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    @torch.inference_mode()
    def restore(
        self,
        frames: np.ndarray,
        detections: Sequence[Sequence[Detection]],
        strength: float = 1.0,
    ) -> np.ndarray:
        """(N, H, W, 3) uint8/uint16 upscaled frames + the faces of each frame (in those
        frames' pixel-edge coordinates) -> frames with the faces restored, blended by
        ``strength`` (0 = unchanged, 1 = the restorer's face inside the mask).

        The input is never modified; when there is nothing to restore (no usable face, or
        strength 0) the input array itself is returned.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) frames, got shape {frames.shape}")
        if frames.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"expected uint8 or uint16 frames, got {frames.dtype}")
        if len(detections) != frames.shape[0]:
            raise ValueError(f"{frames.shape[0]} frames but detections for {len(detections)}")
        strength = float(strength)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        self.last_pasted, self.last_passes = [], 0
        _, height, width, _ = frames.shape
        size = self.model.size
        jobs: list[tuple[int, Detection, np.ndarray]] = []
        for index, faces in enumerate(detections):
            for face in faces:
                if _eye_distance(face) < _MIN_EYE_DISTANCE:
                    continue  # a few pixels (or degenerate landmarks): nothing to restore
                matrix = alignment_matrix(face, size)
                if not _usable(matrix):
                    continue
                if not template_footprint(matrix, height, width, size).empty:
                    jobs.append((index, face, matrix))
        if not jobs or strength == 0.0:
            return frames
        peak = 255.0 if frames.dtype == np.uint8 else 65535.0
        frame_tensors: dict[int, torch.Tensor] = {}

        def frame_tensor(index: int) -> torch.Tensor:
            if index not in frame_tensors:
                frame_tensors[index] = _to_device(frames[index], self.device)
            return frame_tensors[index]

        crops = torch.stack([warp_to_template(frame_tensor(i), m, size) / peak for i, _, m in jobs])
        restored = self.restore_crops(crops)
        out = frames.copy()
        for (index, face, matrix), face_out in zip(jobs, restored, strict=True):
            region = template_footprint(matrix, height, width, size)
            alpha = warp_from_template(self.mask[None], matrix, region)[0] * strength
            back = warp_from_template(face_out, matrix, region, padding="border") * peak
            view = out[index, region.y0 : region.y1, region.x0 : region.x1]
            current = _to_device(view, self.device)
            blended = current.float() + alpha * (back - current.float())
            blended = blended.round_().clamp_(0.0, peak).to(current.dtype)
            blended = torch.where(alpha > 0.0, blended, current)  # mask 0: bytes kept
            view[...] = blended.permute(1, 2, 0).cpu().numpy().astype(frames.dtype)
            self.last_pasted.append(
                PastedFace(index, face, (region.x0, region.y0, region.x1, region.y1))
            )
        return out


__all__ = [
    "DEFAULT_FACE_MODEL",
    "FACE_ARCHITECTURES",
    "FaceModel",
    "FaceRestorer",
    "PastedFace",
    "clear_face_model_cache",
    "face_descriptor_from_state_dict",
    "get_face_model",
    "load_face_model",
    "resolve_face_precision",
]
