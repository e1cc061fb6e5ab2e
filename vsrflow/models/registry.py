"""Registry of known model weights: small frozen records, no loading logic.

Each entry pins one official release file by URL, byte size and sha256, so a name in a config
always means the same bytes on every machine. Everything that can be derived from the weights
themselves (architecture, channels) is left to spandrel and is deliberately not configured
here a second time; ``scale`` is kept because planning needs output sizes before any weights
are fetched.

Two purposes share the registry, so both are fetched and verified by the same code
(``vsrflow models fetch NAME``): ``"sr"`` entries (Real-ESRGAN releases) upscale whole frames;
``"face"`` entries (GFPGAN releases) restore aligned face crops and are used by
:mod:`vsrflow.faces.restore`. :func:`list_specs` returns the SR entries unless asked for
another purpose, so the model choices offered for upscaling never include a face restorer.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Final, Literal, get_args

from vsrflow.errors import UnknownModelError

ContentPreset = Literal["anime", "real", "general"]
#: What an entry's weights do: upscale frames, or restore aligned 512x512 face crops.
ModelPurpose = Literal["sr", "face"]

#: Where the official release assets live. Mirrors replace this base (see
#: ``VSRFLOW_MODEL_BASE_URL`` in :mod:`vsrflow.models.weights`); the path below it is kept.
RELEASE_BASE_URL: Final = "https://github.com/xinntao/Real-ESRGAN/releases/download/"
#: Where GFPGAN's official release assets live (face restorers).
GFPGAN_RELEASE_BASE_URL: Final = "https://github.com/TencentARC/GFPGAN/releases/download/"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One downloadable weights file and what it is meant for."""

    name: str
    filename: str
    url: str
    sha256: str
    size_bytes: int
    scale: int
    content: ContentPreset
    description: str
    #: Registry name of a model whose weights can be blended with this one (Real-ESRGAN's
    #: "denoise strength"); ``None`` when the model has no such partner.
    denoise_partner: str | None = None
    purpose: ModelPurpose = "sr"
    #: The release site ``url`` lies under; mirrors replace it and keep the path below.
    release_base: str = RELEASE_BASE_URL

    @property
    def release_path(self) -> str:
        """The URL path below :attr:`release_base`, e.g. ``v0.2.5.0/x.pth``.

        Mirrors are expected to keep this layout, so only the base URL needs overriding.
        """
        if not self.url.startswith(self.release_base):
            raise ValueError(f"{self.name}: url {self.url} is not under {self.release_base}")
        return self.url[len(self.release_base) :]


def _release(
    name: str,
    tag: str,
    sha256: str,
    size_bytes: int,
    scale: int,
    content: ContentPreset,
    description: str,
    denoise_partner: str | None = None,
) -> ModelSpec:
    filename = f"{name}.pth"
    return ModelSpec(
        name=name,
        filename=filename,
        url=f"{RELEASE_BASE_URL}{tag}/{filename}",
        sha256=sha256,
        size_bytes=size_bytes,
        scale=scale,
        content=content,
        description=description,
        denoise_partner=denoise_partner,
    )


# A plain dict (not exposed) so tests can substitute an entry with monkeypatch.setitem.
_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _release(
            "realesr-animevideov3",
            "v0.2.5.0",
            "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d",
            2_504_012,
            4,
            "anime",
            "Small SRVGG (Compact) model tuned for anime video; fast enough for whole films.",
        ),
        _release(
            "realesr-general-x4v3",
            "v0.2.5.0",
            "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292",
            4_885_111,
            4,
            "general",
            "Small Compact model for general scenes; blends with its WDN partner to tune denoise.",
            denoise_partner="realesr-general-wdn-x4v3",
        ),
        _release(
            "realesr-general-wdn-x4v3",
            "v0.2.5.0",
            "1641f8c4464b9f097c9fdda5589273713f67cf59f3d909e0bd688f0cee269dca",
            4_885_111,
            4,
            "general",
            "Weak-denoise variant of realesr-general-x4v3; mostly used as its blend partner.",
        ),
        _release(
            "RealESRGAN_x4plus",
            "v0.1.0",
            "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
            67_040_989,
            4,
            "real",
            "Large RRDB (ESRGAN) model for real-world footage; best quality, ~30x slower.",
        ),
        _release(
            "RealESRGAN_x4plus_anime_6B",
            "v0.2.2.4",
            "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
            17_938_799,
            4,
            "anime",
            "6-block RRDB model for anime illustrations; sharper than animevideov3, slower.",
        ),
        _release(
            "RealESRGAN_x2plus",
            "v0.2.1",
            "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
            67_061_725,
            2,
            "real",
            "Large RRDB model for real-world footage at 2x.",
        ),
        # Face restorer (purpose "face"): GFPGAN v1.4, published in the v1.3.0 release. It maps
        # an aligned 512x512 face crop to a restored 512x512 crop (scale 1). The sha256 is
        # the release file's (../shared/README.md); the size is the one other projects' download
        # manifests list beside that sha256 (it only sizes the progress bar when a server sends
        # no Content-Length). The file cannot be downloaded from the machines this project is
        # built on (no internet): tests serve a stand-in under the same release path.
        ModelSpec(
            name="GFPGANv1.4",
            filename="GFPGANv1.4.pth",
            url=f"{GFPGAN_RELEASE_BASE_URL}v1.3.0/GFPGANv1.4.pth",
            sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
            size_bytes=348_632_874,
            scale=1,
            content="real",
            description="GFPGAN v1.4 face restorer (512x512 aligned faces; StyleGAN2 prior).",
            purpose="face",
            release_base=GFPGAN_RELEASE_BASE_URL,
        ),
    )
}

#: Content preset -> registry name; mirrors the IS_ANIME switch of existing workflows, with
#: "general" for mixed material.
_CONTENT_DEFAULTS: Final[dict[ContentPreset, str]] = {
    "anime": "realesr-animevideov3",
    "real": "RealESRGAN_x4plus",
    "general": "realesr-general-x4v3",
}

CONTENT_PRESETS: Final[tuple[ContentPreset, ...]] = get_args(ContentPreset)


def list_specs(purpose: ModelPurpose | None = "sr") -> tuple[ModelSpec, ...]:
    """Registry entries for ``purpose`` (default: the SR models; ``None``: all), in order."""
    return tuple(s for s in _REGISTRY.values() if purpose is None or s.purpose == purpose)


def get_spec(name: str) -> ModelSpec:
    """The entry called exactly ``name``.

    Raises :class:`UnknownModelError` listing every known name and the closest matches, so
    a typo in a config fails with the fix in the message.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        pass
    known = list(_REGISTRY)
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(by_lower[c]) for c in close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} Known models: {', '.join(known)}."
        " A path to a .pth or .safetensors file also works."
    )


def model_for_content(content: str) -> str:
    """The default registry name for a content preset ('anime', 'real' or 'general')."""
    try:
        return _CONTENT_DEFAULTS[content]  # type: ignore[index]
    except KeyError:
        raise UnknownModelError(
            f"unknown content preset {content!r}; choose one of {', '.join(CONTENT_PRESETS)}"
        ) from None
