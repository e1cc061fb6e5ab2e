"""What planning needs of a face job, without torch: the detector and restorer files found
and verified, and the restorer's sha256 for the batch keys.

Why a module of its own: planning runs in the flow process, which orchestrates and stays
small (it never imports torch; issue 11's flat flow memory). Loading the restorer there to
refuse a wrong file put torch and a 350 MB GFPGAN network into it for every job with faces.
A registry release (by name, or a user file with a release's sha256) is known by its hash;
any other file is loaded once in a child process (:func:`vsrflow.models.facts.inspected`,
recorded per sha256 in the model cache), which raises the loader's own one-line refusal.
"""

from __future__ import annotations

from pathlib import Path

from vsrflow.errors import UnsupportedArchitectureError, WeightsDownloadError
from vsrflow.faces.job import FaceJob
from vsrflow.faces.registry import resolve_detector_weights
from vsrflow.models.facts import inspected, release_for
from vsrflow.models.weights import default_cache_dir, fetch_hint, resolve_weights


def check_face_job(job: FaceJob, *, cache_dir: Path | None = None) -> str:
    """Resolve and verify what ``job`` needs, before any batch runs; returns the restorer's
    sha256 (for the batch keys). Raises the typed one-line errors of the weights code: a
    detector file missing or not matching its hash, restorer weights missing, not matching
    the registry's sha256, not downloadable, or not a GFPGAN/RestoreFormer network."""
    resolve_detector_weights(job.detector)
    try:
        weights = resolve_weights(job.model, cache_dir=cache_dir)
    except WeightsDownloadError as exc:
        # Workers are often offline (clusters, air-gapped hosts): say how to get the file
        # there, not just that the download failed.
        hint = fetch_hint(job.model, "your own file with --face-weights")
        raise WeightsDownloadError(f"{exc} {hint}") from exc
    release = release_for(weights, purpose=None)
    if release is not None and release.purpose != "face":
        raise UnsupportedArchitectureError(
            f"{weights.path} is the {release.name} release, a {release.purpose.upper()} model,"
            " not a face restorer; face restoration needs GFPGAN or RestoreFormer weights"
        )
    if release is None:  # a file of the user's: the child loads it as the workers will
        inspected(weights, default_cache_dir() if cache_dir is None else cache_dir, face=True)
    return weights.sha256


__all__ = ["check_face_job"]
