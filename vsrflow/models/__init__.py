"""Framework-free model layer: which weights (registry), where (weights), how to run (loader).

Nothing here imports Prefect; tasks wrap these functions. The names are resolved lazily (PEP 562):
``vsrflow.models.registry`` (settings, parameter validation, control flows) must not import
torch and spandrel through this package, which only ``loader`` needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vsrflow.models.facts import ModelFacts, blended_digest, model_facts
    from vsrflow.models.loader import (
        SUPPORTED_PURPOSES,
        LoadedModel,
        blend_state_dicts,
        clear_model_cache,
        descriptor_from_state_dict,
        get_model,
        load_model,
        read_state_dict,
    )
    from vsrflow.models.registry import (
        CONTENT_PRESETS,
        GFPGAN_RELEASE_BASE_URL,
        RELEASE_BASE_URL,
        ContentPreset,
        ModelPurpose,
        ModelSpec,
        get_spec,
        list_specs,
        model_for_content,
    )
    from vsrflow.models.weights import (
        ENV_MODEL_BASE_URL,
        ENV_MODEL_CACHE,
        ENV_MODEL_PATH,
        WEIGHT_SUFFIXES,
        ResolvedWeights,
        clear_hash_memo,
        default_cache_dir,
        default_search_path,
        download_url,
        fetch_weights,
        file_sha256,
        resolve_weights,
    )

_LAZY: dict[str, str] = {
    "SUPPORTED_PURPOSES": "vsrflow.models.loader",
    "LoadedModel": "vsrflow.models.loader",
    "blend_state_dicts": "vsrflow.models.loader",
    "blended_digest": "vsrflow.models.facts",
    "ModelFacts": "vsrflow.models.facts",
    "model_facts": "vsrflow.models.facts",
    "clear_model_cache": "vsrflow.models.loader",
    "descriptor_from_state_dict": "vsrflow.models.loader",
    "get_model": "vsrflow.models.loader",
    "load_model": "vsrflow.models.loader",
    "read_state_dict": "vsrflow.models.loader",
    "CONTENT_PRESETS": "vsrflow.models.registry",
    "GFPGAN_RELEASE_BASE_URL": "vsrflow.models.registry",
    "RELEASE_BASE_URL": "vsrflow.models.registry",
    "ContentPreset": "vsrflow.models.registry",
    "ModelPurpose": "vsrflow.models.registry",
    "ModelSpec": "vsrflow.models.registry",
    "get_spec": "vsrflow.models.registry",
    "list_specs": "vsrflow.models.registry",
    "model_for_content": "vsrflow.models.registry",
    "ENV_MODEL_BASE_URL": "vsrflow.models.weights",
    "ENV_MODEL_CACHE": "vsrflow.models.weights",
    "ENV_MODEL_PATH": "vsrflow.models.weights",
    "WEIGHT_SUFFIXES": "vsrflow.models.weights",
    "ResolvedWeights": "vsrflow.models.weights",
    "clear_hash_memo": "vsrflow.models.weights",
    "default_cache_dir": "vsrflow.models.weights",
    "default_search_path": "vsrflow.models.weights",
    "download_url": "vsrflow.models.weights",
    "fetch_weights": "vsrflow.models.weights",
    "file_sha256": "vsrflow.models.weights",
    "resolve_weights": "vsrflow.models.weights",
}


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CONTENT_PRESETS",
    "ENV_MODEL_BASE_URL",
    "ENV_MODEL_CACHE",
    "ENV_MODEL_PATH",
    "GFPGAN_RELEASE_BASE_URL",
    "RELEASE_BASE_URL",
    "SUPPORTED_PURPOSES",
    "WEIGHT_SUFFIXES",
    "ContentPreset",
    "LoadedModel",
    "ModelFacts",
    "ModelPurpose",
    "ModelSpec",
    "ResolvedWeights",
    "blend_state_dicts",
    "blended_digest",
    "clear_hash_memo",
    "clear_model_cache",
    "default_cache_dir",
    "default_search_path",
    "descriptor_from_state_dict",
    "download_url",
    "fetch_weights",
    "file_sha256",
    "get_model",
    "get_spec",
    "list_specs",
    "load_model",
    "model_facts",
    "model_for_content",
    "read_state_dict",
    "resolve_weights",
]
