"""Framework-free model layer: which weights (registry), where (weights), how to run (loader).

Nothing here imports Prefect; tasks wrap these functions.
"""

from vsrflow.models.loader import (
    SUPPORTED_PURPOSES,
    LoadedModel,
    blend_state_dicts,
    blended_digest,
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
    "model_for_content",
    "read_state_dict",
    "resolve_weights",
]
