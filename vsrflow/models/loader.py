"""Load verified weights into a ready-to-run spandrel model, safely and once per process.

Reading a weights file, and who does it:

* ``.safetensors``: spandrel's own file loader (``ModelLoader.load_state_dict_from_file``:
  ``safetensors.torch.load_file`` onto the CPU, then ``canonicalize_state_dict``), which is
  exactly what we did by hand; we only translate its errors.
* ``.pth``: ``torch.load(weights_only=True, map_location="cpu")``, then spandrel's
  ``canonicalize_state_dict`` (``params_ema`` before ``params``, ``module.`` prefixes removed).
  Not spandrel's loader, on purpose. spandrel 0.4.2 calls ``torch.load(...,
  pickle_module=RestrictedUnpickle)``; passing a pickle module makes torch default to
  ``weights_only=False``, so safety then rests on spandrel's 9-name ``find_class`` allowlist
  on the full C unpickler instead of torch's own weights-only unpickler (which also restricts
  opcodes and what may be built, and is where torch ships its security fixes). Measured on
  torch 2.14.1: both refuse pickles that would run code or build arbitrary classes, so we do
  not call spandrel's loader unsafe, but it is a weaker guarantee, and it refuses legitimate
  files that ``weights_only=True`` reads: a state dict of ``nn.Parameter`` values (``Global
  'torch._utils._rebuild_parameter' is forbidden``), which we would have to report as unsafe.
  (Its ``.pt`` branch would also run ``torch.jit.load``; we accept no ``.pt`` files.)
  ``map_location="cpu"`` matters: the official realesr-animevideov3 file stores CUDA tensors.

Real-ESRGAN's denoise-strength blend happens on the raw state dicts before spandrel builds the
network. Architecture and scale are then derived from the tensors by spandrel, never
configured.
"""

from __future__ import annotations

import pickle
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import spandrel
import torch
from safetensors import SafetensorError
from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

from vsrflow.errors import (
    CorruptWeightsError,
    ModelError,
    UnsafeWeightsError,
    UnsupportedArchitectureError,
)
from vsrflow.models.facts import blended_digest, check_unit_interval, resolve_partner
from vsrflow.models.weights import ResolvedWeights, resolve_weights

StateDict = dict[str, torch.Tensor]

#: spandrel purposes that map frames to frames. FaceSR models (GFPGAN, CodeFormer...) expect
#: aligned face crops and inpainting models need a mask, so neither fits a video pipeline.
SUPPORTED_PURPOSES: Final = frozenset({"SR", "Restoration"})


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model in eval mode with gradients off, plus what the engine needs to know about it.

    The descriptor is shared by every caller of :func:`get_model`: cast inputs (or use
    autocast) rather than calling ``.half()`` on it.
    """

    descriptor: ImageModelDescriptor[Any]
    #: Registry name, or the file stem for user weights.
    name: str
    #: sha256 of the weights file; for blended models a digest of both files and the strength.
    weights_sha256: str
    scale: int
    supports_half: bool
    supports_bfloat16: bool
    #: spandrel architecture id, e.g. "Compact" or "ESRGAN".
    architecture: str
    denoise_strength: float = 1.0

    @property
    def device(self) -> torch.device:
        """Device the parameters live on."""
        return self.descriptor.device


# --- reading state dicts ---------------------------------------------------------------


def read_state_dict(path: Path) -> StateDict:
    """Read a ``.pth`` (weights_only) or ``.safetensors`` file and unwrap ``params``-style keys.

    Unwrapping uses spandrel's own rule (``params_ema`` before ``params``, then
    ``module.`` prefixes removed), so blended dicts match what spandrel detects.
    """
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    raw = _read_pth(path)
    if not isinstance(raw, Mapping):
        raise UnsupportedArchitectureError(
            f"{path} holds a {type(raw).__name__}, not a state dict of named tensors"
        )
    return dict(spandrel.canonicalize_state_dict(dict(raw)))


def _read_safetensors(path: Path) -> StateDict:
    """spandrel's loader: ``load_file`` onto the CPU plus ``canonicalize_state_dict``."""
    try:
        return dict(ModelLoader(device="cpu").load_state_dict_from_file(path))
    except SafetensorError as exc:
        raise CorruptWeightsError(f"{path} is not a valid safetensors file: {exc}") from exc


def _read_pth(path: Path) -> object:
    with path.open("rb") as f:
        head = f.read(2)
    if not head:
        raise CorruptWeightsError(f"{path} is empty")
    # torch.save writes a zip archive (current) or a pickle starting with PROTO (legacy).
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise CorruptWeightsError(
            f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line.strip() for line in reason if "global" in line.lower()), "")
        raise UnsafeWeightsError(
            f"{path} holds arbitrary Python objects, not just tensors, so torch's weights_only"
            f" loader refused it for safety (loading it could run code). {detail}".rstrip()
            + " Convert it to .safetensors from a trusted environment if you need it."
        ) from exc
    except Exception as exc:  # zip/stream errors, EOF: the bytes are damaged
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptWeightsError(
            f"{path} could not be read as a PyTorch checkpoint (truncated or damaged?): {first}"
        ) from exc


# --- architecture ----------------------------------------------------------------------


def descriptor_from_state_dict(state: StateDict, *, source: str) -> ImageModelDescriptor[Any]:
    """Let spandrel detect the architecture; accept only frame-to-frame image models.

    ``source`` names the file(s) in error messages.
    """
    try:
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state)
    except UnsupportedModelError as exc:
        sample = ", ".join(list(state)[:4]) or "no keys"
        raise UnsupportedArchitectureError(
            f"{source}: spandrel {spandrel.__version__} does not recognise this model"
            f" (first keys: {sample})"
        ) from exc
    except Exception as exc:  # detected, but the tensors do not fit the architecture
        raise UnsupportedArchitectureError(
            f"{source}: looks like a known architecture but could not be built: {exc}"
        ) from exc
    if not isinstance(descriptor, ImageModelDescriptor):
        raise UnsupportedArchitectureError(
            f"{source}: {descriptor.architecture.name} is a {descriptor.purpose} model"
            " (needs more than one image in), not an image-to-image model"
        )
    if descriptor.purpose not in SUPPORTED_PURPOSES:
        raise UnsupportedArchitectureError(
            f"{source}: {descriptor.architecture.name} is a {descriptor.purpose} model;"
            f" only {', '.join(sorted(SUPPORTED_PURPOSES))} models can process video frames"
        )
    return descriptor


# --- denoise blending ------------------------------------------------------------------


def blend_state_dicts(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], weight_a: float
) -> StateDict:
    """Deep network interpolation: ``weight_a * a + (1 - weight_a) * b`` key by key.

    This is Real-ESRGAN's ``dni`` (inference_realesrgan.py, ``--denoise_strength``).
    Non-float tensors (counters, indices) cannot be interpolated and must be equal.
    Raises ``ValueError`` on mismatched keys or shapes or a weight outside [0, 1].
    """
    weight_a = check_unit_interval(weight_a, "weight_a")
    if a.keys() != b.keys():
        only_a = sorted(set(a) - set(b))[:3]
        only_b = sorted(set(b) - set(a))[:3]
        raise ValueError(f"state dicts differ in keys (only in a: {only_a}, only in b: {only_b})")
    out: StateDict = {}
    for key, va in a.items():
        vb = b[key]
        if va.shape != vb.shape:
            raise ValueError(f"{key}: shape {tuple(va.shape)} != {tuple(vb.shape)}")
        if va.is_floating_point():
            out[key] = weight_a * va + (1.0 - weight_a) * vb.to(va.dtype)
        elif torch.equal(va, vb):
            out[key] = va
        else:
            raise ValueError(f"{key}: non-float tensors differ and cannot be interpolated")
    return out


# --- loading ---------------------------------------------------------------------------


def load_model(
    weights: ResolvedWeights,
    *,
    device: torch.device | str = "cpu",
    denoise_strength: float = 1.0,
    cache_dir: Path | None = None,
    search_path: Sequence[Path] | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> LoadedModel:
    """Build the model for ``weights`` on ``device``, in eval mode with gradients off.

    ``denoise_strength`` < 1 blends a model with its registry ``denoise_partner`` (resolved
    with ``cache_dir``/``search_path``/``allow_download``/``progress``), as Real-ESRGAN does
    for realesr-general-x4v3: 1 keeps the model as is, 0 is the partner's weights.
    """
    strength = check_unit_interval(denoise_strength, "denoise_strength")
    spec = weights.spec
    state = read_state_dict(weights.path)
    digest = weights.sha256
    source = str(weights.path)
    if strength != 1.0:
        partner = resolve_partner(
            weights,
            strength,
            cache_dir=cache_dir,
            search_path=search_path,
            allow_download=allow_download,
            progress=progress,
        )
        try:
            state = blend_state_dicts(state, read_state_dict(partner.path), strength)
        except ValueError as exc:
            raise ModelError(f"cannot blend {weights.path} with {partner.path}: {exc}") from exc
        digest = blended_digest(weights.sha256, partner.sha256, strength)
        source = f"{weights.path} blended with {partner.path}"

    descriptor = descriptor_from_state_dict(state, source=source)
    if spec is not None and descriptor.scale != spec.scale:
        raise ModelError(
            f"{source}: registry says {spec.name} is x{spec.scale}, weights are x{descriptor.scale}"
        )
    descriptor.to(torch.device(device))
    descriptor.eval()
    descriptor.model.requires_grad_(False)
    return LoadedModel(
        descriptor=descriptor,
        name=weights.name,
        weights_sha256=digest,
        scale=descriptor.scale,
        supports_half=descriptor.supports_half,
        supports_bfloat16=descriptor.supports_bfloat16,
        architecture=str(descriptor.architecture.id),
        denoise_strength=strength,
    )


_MODEL_MEMO_SIZE: Final = 4
_model_memo: OrderedDict[tuple[str, str, float], LoadedModel] = OrderedDict()
_model_lock = threading.Lock()


def get_model(
    model: str,
    *,
    device: torch.device | str = "cpu",
    denoise_strength: float = 1.0,
    cache_dir: Path | None = None,
    search_path: Sequence[Path] | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> LoadedModel:
    """Resolve and load ``model`` once per process; later calls return the same object.

    Keyed by (weights sha256, device, denoise_strength), so two names or paths for the same
    bytes share one model, and an edited user file is reloaded. Keeps the last few models.
    """
    strength = check_unit_interval(denoise_strength, "denoise_strength")
    weights = resolve_weights(
        model,
        cache_dir=cache_dir,
        search_path=search_path,
        allow_download=allow_download,
        progress=progress,
    )
    key = (weights.sha256, str(torch.device(device)), strength)
    with _model_lock:  # held while loading so concurrent callers do not load twice
        loaded = _model_memo.get(key)
        if loaded is None:
            loaded = load_model(
                weights,
                device=device,
                denoise_strength=strength,
                cache_dir=cache_dir,
                search_path=search_path,
                allow_download=allow_download,
                progress=progress,
            )
            _model_memo[key] = loaded
            while len(_model_memo) > _MODEL_MEMO_SIZE:
                _model_memo.popitem(last=False)
        else:
            _model_memo.move_to_end(key)
        return loaded


def clear_model_cache() -> None:
    """Drop every memoised model (tests; or to free memory between jobs)."""
    with _model_lock:
        _model_memo.clear()


__all__ = [
    "SUPPORTED_PURPOSES",
    "LoadedModel",
    "blend_state_dicts",
    "blended_digest",
    "clear_model_cache",
    "descriptor_from_state_dict",
    "get_model",
    "load_model",
    "read_state_dict",
]
