"""The description of one upscaling job, and the plan that turns it into batches.

``UpscaleJob`` is what a user chooses (model, geometry, engine and encoder settings);
``JobPlan`` is what planning derives from it and a probed source (the resolved weights hash,
the output size, and the batches with their cache keys). Both are small frozen dataclasses
that pickle cheaply to Dask workers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vsrflow.engine_settings import EngineSettings
from vsrflow.faces.job import FaceJob
from vsrflow.geometry import check_output_size, output_geometry
from vsrflow.media.alpha import AlphaOutcome, alpha_outcome, describe_outcome
from vsrflow.media.carry import Handling, plan_carry, square_pixel_size, without_captions
from vsrflow.media.codecs import EncoderSettings, get_codec
from vsrflow.media.deinterlace import CYCLE as PULLDOWN_CYCLE
from vsrflow.media.deinterlace import Decision, choose, with_outputs
from vsrflow.media.probe import MediaInfo, VideoParams
from vsrflow.media.timestamps import Timestamps
from vsrflow.plan import Batch, batch_frames, plan_batches
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
    #: Anamorphic sources: resample to square pixels of the same DAR (else keep the SAR).
    square_pixels: bool = False
    alpha_mode: str = "model"
    #: ``settings.deinterlace``: auto/off/a filter, and field or frame rate.
    deinterlace: str = "auto"
    deinterlace_rate: str = "field"
    #: Face restoration after upscaling; None when off (``settings.faces.enhance``).
    faces: FaceJob | None = None

    @classmethod
    def from_settings(cls, settings: UpscaleSettings) -> UpscaleJob:
        """The runtime form of the user's settings (what workers need, nothing more)."""
        return cls(
            model=settings.model.reference,
            denoise_strength=settings.model.denoise_strength,
            outscale=settings.size.outscale_or_none,
            target_height=settings.size.target_height_or_none,
            square_pixels=settings.size.square_pixels,
            engine=settings.engine.engine(),
            encoder=settings.encoder.encoder(),
            alpha_mode=settings.alpha_mode,
            deinterlace=settings.deinterlace.mode,
            deinterlace_rate=settings.deinterlace.rate,
            faces=settings.faces.job(),
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
    #: What was decided about the source's fields (:mod:`vsrflow.media.deinterlace`).
    interlace: Decision | None = None
    #: The source's archive properties (SAR, HDR, captions, timecode, chroma) and what the
    #: job does with each (:func:`vsrflow.media.carry.plan_carry`).
    properties: tuple[Handling, ...] = ()

    @property
    def frame_count(self) -> int:
        return sum(b.frame_count for b in self.batches)

    @property
    def output_frames(self) -> int:
        """Frames of the output (field rate doubles them, inverse telecine keeps 4 in 5)."""
        return sum(b.output_frames for b in self.batches)

    def output_media(self, info: MediaInfo) -> MediaInfo:
        """``info`` as the output must look: the planned output pts and time base when the
        job deinterlaces (what assembly writes and verifies), else ``info`` itself."""
        choice = self.video.deinterlace
        if choice is None:
            return info
        video = dataclasses.replace(
            info.video,
            pts=Timestamps(p for b in self.batches for p in b.out_pts),
            time_base=choice.time_base,
            average_rate=choice.frame_rate,
        )
        return dataclasses.replace(info, video=video)

    def interlace_description(self) -> dict[str, object]:
        """The verdict, what was done and any warning (manifest and summary)."""
        if self.interlace is None:
            return {}
        choice = self.interlace.deinterlace
        return {
            "done": self.interlace.description,
            "filter": choice.method if choice else "",
            "rate": choice.rate if choice else "",
            "warnings": list(self.interlace.warnings),
        }

    @property
    def alpha(self) -> AlphaOutcome:
        """What the job does with the source's alpha ("" when it has none)."""
        return self.video.alpha

    def alpha_description(self) -> str:
        """The same in words, for the manifest and logs."""
        return describe_outcome(self.video.alpha, self.video.alpha_upscale)

    def properties_description(self) -> list[dict[str, str]]:
        """The archive properties and what was done about them (manifest, summary)."""
        return [p.as_dict() for p in self.properties]


def make_plan(
    info: MediaInfo,
    job: UpscaleJob,
    *,
    weights_sha256: str,
    model_scale: int,
    source_sha256: str,
    settings_identity: dict[str, object] | None = None,
    face_weights_sha256: str | None = None,
    frames_per_batch: int | None = None,
    seconds_per_batch: float | None = None,
    max_batches: int | None = None,
) -> JobPlan:
    """Derive output geometry and batches; the settings identity keys every batch's cache.

    ``settings_identity`` is :meth:`UpscaleSettings.output_identity` of the settings the job
    was made from; the resolved weights hash, output size and encoder options are added here
    (what the settings' "auto" values resolved to on this version), and with
    ``job.faces`` the face restorer's resolved sha256 ``face_weights_sha256``.

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
    sar = video.sample_aspect_ratio
    if job.square_pixels and sar is not None and sar != 1:
        # Always even (issue 10: "even dimensions"), whatever the codec's chroma layout.
        out_size = square_pixel_size(out_size[1], video.display_aspect_ratio, even=True)
    carry, properties = plan_carry(
        label=info.path,
        codec=job.encoder.codec,
        width=video.width,
        height=video.height,
        sar=sar,
        pix_fmt=video.pix_fmt,
        hdr=video.hdr,
        captions=video.captions,
        timecode=video.timecode,
        out_size=out_size,
        square_pixels=job.square_pixels,
        alpha_kept=alpha == "keep",
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
    if job.faces is not None:  # absent when off: runs without faces keep their batch keys
        if not face_weights_sha256:
            raise ValueError("face restoration is on: pass the restorer's resolved sha256")
        identity["faces"] = {"weights": face_weights_sha256}
    if alpha:
        identity["alpha"] = [alpha, job.alpha_mode if alpha == "keep" else ""]
    interlace = choose(
        video.fields,
        job.deinterlace,
        job.deinterlace_rate,  # type: ignore[arg-type]
        source_time_base=video.time_base,
        source_rate=video.average_rate,
        vfr=video.is_vfr,
    )
    deinterlace = interlace.deinterlace
    if deinterlace is not None:
        _check_deinterlace_fits(info, alpha, job)
        # Absent when nothing is done: progressive sources keep their batch keys.
        identity["deinterlace"] = [deinterlace.method, deinterlace.parity, deinterlace.rate]
        if deinterlace.method == "ivtc":  # batches start on pulldown cycles
            size = batch_frames(
                video,
                frames_per_batch=frames_per_batch,
                seconds_per_batch=seconds_per_batch,
                max_batches=max_batches,
            )
            frames_per_batch = -(-size // PULLDOWN_CYCLE) * PULLDOWN_CYCLE
    if deinterlace is not None:  # output frames are not source frames: no caption carriers
        carry, properties = without_captions(
            carry, properties, f"{deinterlace.method} output frames are not the source's frames"
        )
    if carry.identity():  # absent for a plain source: its batch keys stay as they were
        identity["carry"] = carry.identity()
    batches = plan_batches(
        video,
        source_id=source_sha256,
        settings_identity=identity,
        frames_per_batch=frames_per_batch,
        seconds_per_batch=seconds_per_batch,
        max_batches=max_batches,
    )
    if deinterlace is not None:
        batches = with_outputs(deinterlace, video.pts, batches)
    params = dataclasses.replace(
        video.params(info.path),
        alpha=alpha,
        alpha_upscale=job.alpha_mode,
        carry=carry,
        deinterlace=deinterlace,
    )
    return JobPlan(
        video=params,
        out_size=out_size,
        weights_sha256=weights_sha256,
        source_sha256=source_sha256,
        batches=tuple(batches),
        interlace=interlace,
        properties=properties,
    )


def _check_deinterlace_fits(info: MediaInfo, alpha: AlphaOutcome, job: UpscaleJob) -> None:
    """Deinterlacing works on the colour frames alone: refuse, before any compute, what it
    cannot carry yet (one line naming the options)."""
    if alpha in ("keep", "flatten"):
        raise ValueError(
            f"{info.path} has an alpha channel and is deinterlaced: alpha cannot be "
            "deinterlaced yet; use --alpha drop or --deinterlace off"
        )
    if job.faces is not None:
        raise ValueError(
            f"{info.path} is deinterlaced, and face restoration follows source frames: "
            "use --deinterlace off or leave face restoration off"
        )
