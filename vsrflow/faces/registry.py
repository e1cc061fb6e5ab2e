"""The face detectors vsrflow knows: small frozen records, and where their weights are found.

Like :class:`vsrflow.models.registry.ModelSpec`, each record pins one weights file by sha256,
so a detector name always means the same bytes. What differs from the SR registry: there is no
official release file to download. The weights are MediaPipe's BlazeFace detectors converted
to PyTorch state dicts by M. Hollemans (repository hollance/BlazeFace-PyTorch, commit
852bfd8e, Apache-2.0 like MediaPipe); MediaPipe itself publishes only TFLite files, and no
download URL for these state dicts is reachable from the machines this project is built on. So
the files are looked for, never fetched: ``<dir>/face/<file>`` or ``<dir>/<file>`` for every
directory in ``VSRFLOW_MODEL_PATH``, then ``<VSRFLOW_MODEL_CACHE>/face/<file>``, or an
explicit path. A file whose sha256 differs is refused (a wrong file next to the right name is a
mistake to report, not to use).

The restorers (GFPGAN) are downloadable release files and live in the SR registry
(:mod:`vsrflow.models.registry`, ``purpose="face"``), fetched and verified by the same code as
the SR weights.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from vsrflow.errors import UnknownModelError, WeightsHashMismatchError, WeightsNotFoundError
from vsrflow.hashing import file_sha256
from vsrflow.models.weights import ENV_MODEL_PATH, default_cache_dir, default_search_path

DetectorVariant = Literal["front", "back"]

#: Subdirectory of each model directory that holds face-detector files.
FACE_SUBDIR: Final = "face"

_SOURCE: Final = "hollance/BlazeFace-PyTorch @ 852bfd8e (MediaPipe BlazeFace converted to PyTorch)"


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """One BlazeFace state dict and the settings its network and decoder need."""

    name: str
    filename: str
    sha256: str
    size_bytes: int
    variant: DetectorVariant
    #: Square input edge in pixels (the frame is letterboxed to a square, then resized).
    input_size: int
    #: Feature-map strides of the SSD anchor layers (MediaPipe's anchor options); the
    #: network's two heads see ``input_size / strides[0]`` and ``input_size / strides[-1]``.
    anchor_strides: tuple[int, ...]
    #: Scores below this are dropped before suppression.
    min_score: float
    #: Boxes that overlap the best one by more than this IoU are blended into it.
    nms_iou: float
    description: str
    source: str = _SOURCE
    #: No download exists (see the module doc); kept so the record says so explicitly.
    url: str | None = None


_DETECTORS: dict[str, DetectorSpec] = {
    spec.name: spec
    for spec in (
        DetectorSpec(
            name="blazeface-front",
            filename="blazeface.pth",
            sha256="54ecff653feaaaf1f7d44b6aff28fd2fc50e483a4e847563b6dd261369c43ba4",
            size_bytes=420_224,
            variant="front",
            input_size=128,
            anchor_strides=(8, 16, 16, 16),
            min_score=0.75,
            nms_iou=0.3,
            description="MediaPipe front-camera model, 128x128: faces over ~20 % of the image.",
        ),
        DetectorSpec(
            name="blazeface-back",
            filename="blazefaceback.pth",
            sha256="e2c03bb3ae45e769eaaa0a7cc7d4f61f54a5e3fbae6367d870166702e7022b11",
            size_bytes=594_825,
            variant="back",
            input_size=256,
            anchor_strides=(16, 32, 32, 32),
            min_score=0.65,
            nms_iou=0.3,
            description="MediaPipe back-camera model, 256x256: faces down to ~5 % of the image.",
        ),
    )
}

#: The detector used when none is named: video faces are rarely selfie-sized. Measured
#: (tests/test_faces.py): the back model finds every face the front one finds on the shared
#: photos, and faces of ~35-40 px in a 700 px frame that the front one misses.
DEFAULT_DETECTOR: Final = "blazeface-back"


@dataclass(frozen=True, slots=True)
class ResolvedDetector:
    """A local detector weights file whose sha256 matched its record."""

    path: Path
    spec: DetectorSpec


def list_detectors() -> tuple[DetectorSpec, ...]:
    return tuple(_DETECTORS.values())


def get_detector_spec(name: str) -> DetectorSpec:
    """The record called ``name``; an unknown name fails listing the known ones."""
    try:
        return _DETECTORS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_DETECTORS), n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownModelError(
            f"unknown face detector {name!r}.{hint} Known detectors: {', '.join(_DETECTORS)}."
        ) from None


def detector_search_dirs(search_path: Sequence[Path] | None = None) -> tuple[Path, ...]:
    """Where detector files are looked for, in order."""
    dirs = default_search_path() if search_path is None else tuple(search_path)
    out: list[Path] = []
    for directory in dirs:
        out += [directory / FACE_SUBDIR, directory]
    out.append(default_cache_dir() / FACE_SUBDIR)
    return tuple(out)


def resolve_detector_weights(
    name: str = DEFAULT_DETECTOR,
    *,
    path: str | os.PathLike[str] | None = None,
    search_path: Sequence[Path] | None = None,
) -> ResolvedDetector:
    """A verified local file for detector ``name``: ``path`` if given, else the search dirs.

    Raises :class:`WeightsHashMismatchError` for a file with other bytes and
    :class:`WeightsNotFoundError` (naming every directory tried) when there is none.
    """
    spec = get_detector_spec(name)
    if path is not None:
        candidates: tuple[Path, ...] = (Path(path).expanduser(),)
        if not candidates[0].is_file():
            raise WeightsNotFoundError(f"face detector weights {candidates[0]} do not exist")
    else:
        candidates = tuple(d / spec.filename for d in detector_search_dirs(search_path))
    for candidate in candidates:
        if not candidate.is_file():
            continue
        actual = file_sha256(candidate)
        if actual != spec.sha256:
            raise WeightsHashMismatchError(
                f"{candidate} is not the {spec.name} weights ({spec.filename} from {spec.source}):"
                f" expected sha256 {spec.sha256}, got {actual}. Replace or remove it."
            )
        return ResolvedDetector(candidate, spec)
    tried = ", ".join(str(c.parent) for c in candidates)
    raise WeightsNotFoundError(
        f"face detector weights {spec.filename} ({spec.name}) not found in {tried}. There is no"
        f" download for them: copy {spec.filename} from {spec.source} into a '{FACE_SUBDIR}'"
        f" folder of a directory listed in {ENV_MODEL_PATH}, or pass its path."
    )


__all__ = [
    "DEFAULT_DETECTOR",
    "FACE_SUBDIR",
    "DetectorSpec",
    "DetectorVariant",
    "ResolvedDetector",
    "detector_search_dirs",
    "get_detector_spec",
    "list_detectors",
    "resolve_detector_weights",
]
