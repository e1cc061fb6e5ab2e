"""The description of one upscaling job, and the plan that turns it into batches.

``UpscaleJob`` is what a user chooses (model, geometry, engine and encoder settings);
``JobPlan`` is what planning derives from it and a probed source (the resolved weights hash,
the output size, and the batches with their cache keys). Both are small frozen dataclasses
that pickle cheaply to Dask workers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vsrflow.engine import EngineSettings, output_geometry
from vsrflow.media.alpha import AlphaOutcome, alpha_outcome, describe_outcome
from vsrflow.media.codecs import get_codec
from vsrflow.media.encode import EncoderSettings
from vsrflow.media.probe import MediaInfo, VideoParams
from vsrflow.memory import check_output_size
from vsrflow.plan import Batch, plan_batches
from vsrflow.settings import UpscaleSettings


@dataclass(frozen=True)
class UpscaleJob:
    """What to do to every frame."""

    model: str = "realesr-animevideov3"
    denoise_strength: float = 1.0
    outscale: float | None = None
    target_height: int | None = None
    device: str = "auto"
    engine: EngineSettings = field(default_factory=EngineSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    alpha_mode: str = "model"

    @classmethod
    def from_settings(cls, settings: UpscaleSettings) -> UpscaleJob:
        """The runtime form of the user's settings (what workers need, nothing more)."""
        return cls(
            model=settings.model.reference,
            denoise_strength=settings.model.denoise_strength,
            outscale=settings.size.outscale_or_none,
            target_height=settings.size.target_height_or_none,
            engine=settings.engine.engine(),
            encoder=settings.encoder.encoder(),
            alpha_mode=settings.alpha_mode,
        )


@dataclass(frozen=True)
class JobPlan:
    """Everything workers need: the slim source description, output size and batches."""

    video: VideoParams
    out_size: tuple[int, int]
    weights_sha256: str
    source_sha256: str
    batches: tuple[Batch, ...]
    #: Indices of batches whose chunk already exists in the work dir (found at planning):
    #: only those may be answered from the cache; the others are recomputed.
    present_chunks: frozenset[int] = frozenset()

    @property
    def frame_count(self) -> int:
        return sum(b.frame_count for b in self.batches)

    @property
    def alpha(self) -> AlphaOutcome:
        """What the job does with the source's alpha ("" when it has none)."""
        return self.video.alpha

    def alpha_description(self) -> str:
        """The same in words, for the manifest and logs."""
        return describe_outcome(self.video.alpha, self.video.alpha_upscale)


def make_plan(
    info: MediaInfo,
    job: UpscaleJob,
    *,
    weights_sha256: str,
    model_scale: int,
    source_sha256: str,
    settings_identity: dict[str, object] | None = None,
    frames_per_batch: int | None = None,
    seconds_per_batch: float | None = None,
) -> JobPlan:
    """Derive output geometry and batches; the settings identity keys every batch's cache.

    ``settings_identity`` is :meth:`UpscaleSettings.output_identity` of the settings the job
    was made from; the resolved weights hash, output size and encoder options are added here
    (what the settings' "auto" values resolved to on this version).

    A source with alpha is kept, flattened or dropped as ``job.encoder.alpha`` says; a
    ``ValueError`` (one line) when the chosen codec cannot keep it."""
    video = info.video
    alpha = alpha_outcome(
        has_alpha=video.alpha,
        readable=video.alpha_readable,
        codec=job.encoder.codec,
        policy=job.encoder.alpha,
        label=info.path,
        decoder=video.alpha_decoder,
    )
    out_size = output_geometry(
        video.width,
        video.height,
        model_scale,
        outscale=job.outscale,
        target_height=job.target_height,
        even=get_codec(job.encoder.codec).needs_even_size,
    )
    # Refused here, before any batch starts, rather than in the first batch.
    check_output_size(video.height * model_scale, video.width * model_scale)
    check_output_size(out_size[1], out_size[0])
    identity = {
        "weights": weights_sha256,
        "denoise": job.denoise_strength,
        "out_size": list(out_size),
        "engine": job.engine.identity(),
        "encoder": job.encoder.identity(),
        "settings": settings_identity or {},
    }
    if alpha:
        identity["alpha"] = [alpha, job.alpha_mode if alpha == "keep" else ""]
    batches = plan_batches(
        video,
        source_id=source_sha256,
        settings_identity=identity,
        frames_per_batch=frames_per_batch,
        seconds_per_batch=seconds_per_batch,
    )
    params = dataclasses.replace(video.params(info.path), alpha=alpha, alpha_upscale=job.alpha_mode)
    return JobPlan(
        video=params,
        out_size=out_size,
        weights_sha256=weights_sha256,
        source_sha256=source_sha256,
        batches=tuple(batches),
    )
