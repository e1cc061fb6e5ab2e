"""What planning needs to know of a model, without loading it: its identity and its scale.

The flow process plans batches (output sizes, batch keys) but never runs the model. Loading
the model there to learn its scale imported torch and spandrel into every flow process
(~6 s and ~900 MB RSS: issue 11) just to read one integer. Here:

* registry weights (by name, or a user file whose sha256 is a release's) are described by
  the registry once their sha256 has checked out: the bytes are the release's, so its scale
  is the registry's (the loader on the worker checks the two agree);
* any other file is loaded once in a child process (``python -m vsrflow.models.inspect``), so
  a file that is no model is still refused in one line before any batch runs, and what it
  says is kept in the model cache under the file's sha256, so a later run asks no one.

Nothing here imports torch or spandrel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsrflow import errors
from vsrflow.errors import (
    InvalidDenoiseStrengthError,
    ModelError,
    WeightsDownloadError,
    WeightsNotFoundError,
)
from vsrflow.models.registry import ModelPurpose, ModelSpec, list_specs
from vsrflow.models.weights import (
    ResolvedWeights,
    default_cache_dir,
    fetch_hint,
    resolve_weights,
)

#: Folder of the model cache that holds one ``<sha256>.json`` per inspected user file.
FACTS_FOLDER = "facts"
#: Bumped when what an inspection records changes (older records are then ignored).
FACTS_VERSION = 1
#: Seconds a child inspection may take (torch import plus one state dict read).
INSPECT_TIMEOUT_S = 600


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """A model as planning sees it."""

    #: Registry name, or the file stem for user weights.
    name: str
    #: sha256 of the weights file; for blended models a digest of both files and the strength
    #: (the same identity :class:`vsrflow.models.loader.LoadedModel` carries).
    weights_sha256: str
    scale: int


def check_unit_interval(value: float, what: str) -> float:
    """``value`` as a float in [0, 1], else a one-line :class:`InvalidDenoiseStrengthError`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidDenoiseStrengthError(f"{what} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidDenoiseStrengthError(f"{what} must be in [0, 1], got {value}")
    return value


def blended_digest(sha_a: str, sha_b: str, weight_a: float) -> str:
    """Identity of a blend, for batch keys and caches: both files plus the exact weight."""
    text = f"vsrflow-dni-v1\n{sha_a}\n{sha_b}\n{float(weight_a).hex()}"
    return hashlib.sha256(text.encode()).hexdigest()


def denoise_partner(weights: ResolvedWeights, strength: float) -> str:
    """The registry model ``weights`` is blended with at ``strength`` < 1 (Real-ESRGAN's
    denoise strength), or a one-line refusal when it has none."""
    spec = weights.spec
    if spec is None or spec.denoise_partner is None:
        raise InvalidDenoiseStrengthError(
            f"denoise_strength={strength} needs a model with a denoise partner"
            f" (e.g. realesr-general-x4v3); {weights.name} has none"
        )
    return spec.denoise_partner


def resolve_partner(weights: ResolvedWeights, strength: float, **fetch: Any) -> ResolvedWeights:
    """The verified file of ``weights``' denoise partner (``fetch``: the keyword arguments of
    :func:`resolve_weights`). Out of reach, the error names the partner and the step that puts
    it where every run finds it: a user asked for ``realesr-general-x4v3`` and would not guess
    that a second file is needed."""
    partner = denoise_partner(weights, strength)
    try:
        return resolve_weights(partner, **fetch)
    except WeightsNotFoundError as exc:  # downloads off: its message names the fetch step
        why = _blend(weights, partner, strength)
        raise WeightsNotFoundError(f"{why} {exc}. Or use {_NO_BLEND}.") from exc
    except WeightsDownloadError as exc:
        hint = fetch_hint(partner, _NO_BLEND)
        raise WeightsDownloadError(f"{_blend(weights, partner, strength)} {exc} {hint}") from exc


#: The way out of a missing denoise partner that needs no file.
_NO_BLEND = "denoise_strength 1 (no blend, no second file)"


def _blend(weights: ResolvedWeights, partner: str, strength: float) -> str:
    return f"denoise_strength={strength} blends {weights.name} with {partner}:"


def release_for(weights: ResolvedWeights, purpose: ModelPurpose | None = "sr") -> ModelSpec | None:
    """The registry entry these bytes are: named, or a user file with the sha256 of a
    release for ``purpose`` (``None``: any)."""
    if weights.spec is not None:
        return weights.spec
    return next((s for s in list_specs(purpose) if s.sha256 == weights.sha256), None)


def _record_path(cache_dir: Path, sha256: str, *, face: bool = False) -> Path:
    return cache_dir / FACTS_FOLDER / (f"{sha256}.face.json" if face else f"{sha256}.json")


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("version") == FACTS_VERSION
    return record if ok and isinstance(record.get("scale"), int) else None


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Atomically, best effort: a cache that cannot be written only costs a later inspection."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".facts-", suffix=".part")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(record, out)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def inspect_in_child(path: Path, *, face: bool = False) -> dict[str, Any]:
    """Load ``path`` in a child Python (this interpreter, an argument list, no shell) and
    return what it says: ``{"scale": int, "architecture": str}``; ``face``: as a face
    restorer. A file that is no such model raises the loader's own error class (a
    :class:`ModelError`) with its one-line message."""
    flags = ["--face"] if face else []
    try:
        done = subprocess.run(
            [sys.executable, "-m", "vsrflow.models.inspect", *flags, str(path)],
            capture_output=True,
            text=True,
            timeout=INSPECT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelError(f"{path}: loading the model took over {INSPECT_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise _child_error(done.stdout, done.stderr, path)
    try:
        return dict(json.loads(_last_line(done.stdout)))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{path}: the model inspection said {done.stdout[-200:]!r}") from exc


def _last_line(text: str) -> str:
    """The child's report: its last line (a library may print before it)."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _child_error(stdout: str, stderr: str, path: Path) -> ModelError:
    """The refusal the child reported (``{"error": class name, "message": ...}``), as that
    class when it is one of ours, else a :class:`ModelError` with stderr's last line."""
    with contextlib.suppress(ValueError, KeyError, TypeError):  # no report: a crash
        reported = json.loads(_last_line(stdout))
        kind = getattr(errors, str(reported["error"]), None)
        if isinstance(kind, type) and issubclass(kind, ModelError):
            return kind(str(reported["message"]))
    return ModelError(_last_line(stderr) or f"{path}: the model could not be loaded")


def inspected(weights: ResolvedWeights, cache_dir: Path, *, face: bool = False) -> dict[str, Any]:
    """What a child learnt loading the user file ``weights`` (:func:`inspect_in_child`),
    recorded per sha256 in ``cache_dir``: a file is loaded once per cache, not once per job,
    and the flow process never imports torch for it."""
    record_path = _record_path(cache_dir, weights.sha256, face=face)
    record = _read_record(record_path)
    if record is None:
        record = {"version": FACTS_VERSION, **inspect_in_child(weights.path, face=face)}
        _write_record(record_path, record)
    return record


def model_facts(
    model: str,
    *,
    denoise_strength: float = 1.0,
    cache_dir: Path | None = None,
    search_path: list[Path] | tuple[Path, ...] | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> ModelFacts:
    """Resolve (fetch and verify) ``model`` and say what planning needs, without torch.

    Same identity and same refusals as :func:`vsrflow.models.get_model` (unknown name, bad
    sha256, a blend without a partner, a file that is no image model), so a job is refused
    in the flow before any batch is submitted."""
    strength = check_unit_interval(denoise_strength, "denoise_strength")
    cache = default_cache_dir() if cache_dir is None else cache_dir
    fetch: dict[str, Any] = {
        "cache_dir": cache_dir,
        "search_path": search_path,
        "allow_download": allow_download,
        "progress": progress,
    }
    try:
        weights = resolve_weights(model, **fetch)
    except WeightsDownloadError as exc:
        raise WeightsDownloadError(
            f"{exc} {fetch_hint(model, 'your own file with --weights')}"
        ) from exc
    digest = weights.sha256
    if strength != 1.0:  # before any inspection: refused at once
        partner = resolve_partner(weights, strength, **fetch)
        digest = blended_digest(weights.sha256, partner.sha256, strength)
    release = release_for(weights)
    scale = release.scale if release is not None else int(inspected(weights, cache)["scale"])
    return ModelFacts(name=weights.name, weights_sha256=digest, scale=scale)
