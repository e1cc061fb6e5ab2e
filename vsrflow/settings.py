"""One typed model of every setting that decides what an upscale produces.

Flows take it as one parameter (Prefect renders it as a nested form with these descriptions,
dropdowns, defaults and bounds), the CLI builds its options from it
(:func:`vsrflow.settings_cli.add_settings_options`), the manifest records
:meth:`UpscaleSettings.parameters`, the archive flows compare those parameters to decide
whether an output is up to date, and the batch cache key hashes
:meth:`UpscaleSettings.output_identity`. A new option is one new field here; the test
``tests/test_settings.py`` fails when a field is missing from any of those surfaces.

Every field says, through :class:`Affects`, how it reaches the cache identity: its own value
(changes output bytes), through the resolved weights' sha256 (the model choice), or not at all
(a speed knob such as the micro-batch size, or batching, whose frame ranges are part of every
batch key anyway). Torch-free: the control flows and the CLI import it cheaply.
"""

from __future__ import annotations

import enum
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from vsrflow.engine_settings import ENGINE_DEFAULTS, EngineSettings
from vsrflow.faces.job import FaceJob
from vsrflow.faces.registry import DEFAULT_DETECTOR, list_detectors
from vsrflow.media.codecs import CODEC_PRESETS, EncoderSettings
from vsrflow.media.deinterlace_modes import MODES as DEINTERLACE_MODES
from vsrflow.models.registry import ContentPreset, list_specs, model_for_content
from vsrflow.plan import DEFAULT_MAX_BATCHES

#: Registry names, in registry order: the model dropdown.
REGISTRY_NAMES: tuple[str, ...] = tuple(spec.name for spec in list_specs())
RegistryModel = Literal[REGISTRY_NAMES]  # type: ignore[valid-type]
#: Face restorers in the registry (purpose "face"): the face model dropdown.
FACE_MODEL_NAMES: tuple[str, ...] = tuple(spec.name for spec in list_specs("face"))
FaceModelName = Literal[FACE_MODEL_NAMES]  # type: ignore[valid-type]
DEFAULT_FACE_MODEL = "GFPGANv1.4"
FaceDetectorName = Literal[tuple(d.name for d in list_detectors())]  # type: ignore[valid-type]

#: The default for live action (most archives): the fastest registry model made for real
#: footage, chosen by measurement (docs/model-choice/README.md). ``anime`` is a preset away.
DEFAULT_MODEL = "realesr-general-x4v3"
WEIGHT_SUFFIXES = (".pth", ".safetensors")

Codec = Literal[tuple(CODEC_PRESETS)]  # type: ignore[valid-type]
X26X_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
SVT_AV1_PRESETS = tuple(str(n) for n in range(14))
#: "auto" = the codec's measured default; x264/x265 names; SVT-AV1 numbers (AV1).
EncoderPreset = Literal[("auto", *X26X_PRESETS, *SVT_AV1_PRESETS)]  # type: ignore[valid-type]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
AlphaMode = Literal["model", "bicubic"]
AlphaPolicy = Literal["keep", "flatten", "drop"]
DeinterlaceMode = Literal[DEINTERLACE_MODES]  # type: ignore[valid-type]
DeinterlaceRate = Literal["field", "frame"]
#: Below this tile edge the per-tile overhead dominates (measured: --tile 3 ran 230x slower).
MIN_TILE = 32


class Affects(enum.Enum):
    """How a field reaches the batch cache identity."""

    #: Its value is part of :meth:`UpscaleSettings.output_identity`.
    VALUE = "value"
    #: It chooses weights; their sha256 is part of every batch key.
    WEIGHTS = "weights"
    #: It cannot change an output byte (speed, memory, batching).
    NOTHING = "nothing"


def _field(default: Any, description: str, affects: Affects, cli: str, **bounds: Any) -> Any:
    """A settings field: its form description, how it affects the cache key, its CLI flag."""
    return Field(
        default,
        description=description,
        json_schema_extra={"x-affects": affects.value, "x-cli": cli},
        **bounds,
    )


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _weights_file_name(value: str, field: str, otherwise: str) -> str:
    """A weights path must name a file spandrel can read (checked when the form is filled in,
    not when a worker first opens it); empty means ``otherwise``."""
    value = value.strip()
    if value and not value.lower().endswith(WEIGHT_SUFFIXES):
        raise ValueError(
            f"{field} {value!r} must be a {' or '.join(WEIGHT_SUFFIXES)} file "
            f"(or empty to use {otherwise})"
        )
    return value


class ModelSettings(_Group):
    """Which network upscales the frames."""

    model_config = ConfigDict(title="Model")

    name: RegistryModel = _field(  # type: ignore[valid-type]
        DEFAULT_MODEL,
        "Upscaling model. realesr-general-x4v3: live action, fast (default). "
        "realesr-animevideov3: anime and cartoons, fastest. RealESRGAN_x4plus: live action, "
        "finest detail, about 30 times slower. RealESRGAN_x2plus: 2x. Weights are "
        "downloaded once and checked against their published sha256.",
        Affects.WEIGHTS,
        "--model",
    )
    weights_path: str = _field(
        "",
        "Your own weights instead of the model above: a .pth or .safetensors file (Real-ESRGAN, "
        "SwinIR, Swin2SR, HAT...) that exists on the machines that run the job. "
        "Leave empty to use the model above.",
        Affects.WEIGHTS,
        "--weights",
        max_length=4096,
    )
    denoise_strength: float = _field(
        1.0,
        "realesr-general-x4v3 only (0-1): 1 keeps the model as published; lower values blend "
        "in its denoising twin, 0 = strongest noise removal (and most lost grain).",
        Affects.VALUE,
        "--denoise-strength",
        ge=0.0,
        le=1.0,
    )

    @field_validator("weights_path")
    @classmethod
    def _weights_file(cls, value: str) -> str:
        return _weights_file_name(value, "weights_path", "the model from the list")

    @property
    def reference(self) -> str:
        """What the model loader resolves: the weights path if given, else the name."""
        return self.weights_path or self.name


class SizeSettings(_Group):
    """The output picture size (the model's own factor unless you ask for another)."""

    model_config = ConfigDict(title="Output size")

    outscale: float = _field(
        0.0,
        "Scale factor of the output (0.25-16, e.g. 2 or 1.5); the model's own factor (4 for "
        "most) when 0. Set this or target height, not both.",
        Affects.VALUE,
        "--outscale",
        ge=0.0,
        le=16.0,
    )
    target_height: int = _field(
        0,
        "Output height in pixels (16-8640, e.g. 2160 for 4K); the width follows the picture's "
        "aspect. 0 = use the scale factor.",
        Affects.VALUE,
        "--target-height",
        ge=0,
        le=8640,
    )
    square_pixels: bool = _field(
        False,
        "Anamorphic sources (DVD, SD broadcast: pixels that are not square): resample the "
        "upscaled picture to square pixels with the same display aspect ratio (even sizes, "
        "the height kept). Off: the output keeps non-square pixels and says so in its sample "
        "aspect ratio, so it displays exactly like the source.",
        Affects.VALUE,
        "--square-pixels",
    )

    @model_validator(mode="after")
    def _one_of(self) -> SizeSettings:
        if self.outscale and self.target_height:
            raise ValueError("set outscale or target_height, not both (the other must be 0)")
        if 0 < self.outscale < 0.25:
            raise ValueError("outscale must be 0 (the model's own factor) or 0.25-16")
        if 0 < self.target_height < 16:
            raise ValueError("target_height must be 0 (use the scale factor) or 16-8640")
        return self

    @property
    def outscale_or_none(self) -> float | None:
        return self.outscale or None

    @property
    def target_height_or_none(self) -> int | None:
        return self.target_height or None


class EngineOptions(_Group):
    """How frames go through the model: precision, tiles, frames per pass."""

    model_config = ConfigDict(title="Engine")

    precision: Precision = _field(
        "auto",
        "Arithmetic precision. auto: fp16 on NVIDIA GPUs, bf16 on CPUs that have it, else "
        "fp32. fp32 is the reference and the slowest.",
        Affects.VALUE,
        "--precision",
    )
    tile: int = _field(
        ENGINE_DEFAULTS.tile,
        f"Cut each frame into square tiles of this many source pixels (0 = whole frames, or "
        f"{MIN_TILE}-4096). Only for GPUs short of memory; tile edges are blended invisibly.",
        Affects.VALUE,
        "--tile",
        ge=0,
        le=4096,
    )
    tile_pad: int = _field(
        ENGINE_DEFAULTS.tile_pad,
        "Overlap around each tile in source pixels (0-256), computed and thrown away so tiles "
        "join without seams.",
        Affects.VALUE,
        "--tile-pad",
        ge=0,
        le=256,
    )
    micro_batch: int = _field(
        ENGINE_DEFAULTS.micro_batch,
        "Frames per pass through the model (1-64): more uses more memory; 4 was fastest "
        "measured. Does not change the output.",
        Affects.NOTHING,
        "--micro-batch",
        ge=1,
        le=64,
    )
    compile_model: bool = _field(
        ENGINE_DEFAULTS.compile,
        "Compile the model for this machine first (torch.compile): 9-25 % faster after 2-14 s "
        "of compiling; worth it from a few hundred frames per worker.",
        Affects.VALUE,
        "--compile",
    )

    max_memory_gb: float = _field(
        0.0,
        "Memory one pass through the model may use, in GiB (0-4096). 0 = automatic: 80 % of "
        "the GPU's free memory, or half the free RAM on CPU. Frames that would not fit go "
        "through fewer at a time, then in tiles, instead of running out of memory.",
        Affects.VALUE,
        "--max-memory",
        ge=0.0,
        le=4096.0,
    )

    @field_validator("tile")
    @classmethod
    def _tile_size(cls, value: int) -> int:
        if 0 < value < MIN_TILE:
            raise ValueError(
                f"tile must be 0 (whole frames) or at least {MIN_TILE} pixels: smaller tiles "
                "cost far more time than they save memory"
            )
        return value

    def engine(self) -> EngineSettings:
        return EngineSettings(
            precision=self.precision,
            tile=self.tile,
            tile_pad=self.tile_pad,
            micro_batch=self.micro_batch,
            compile=self.compile_model,
            max_memory_gb=self.max_memory_gb,
        )


class EncoderOptions(_Group):
    """How the upscaled video is compressed."""

    model_config = ConfigDict(title="Encoder")

    codec: Codec = _field(  # type: ignore[valid-type]
        "h264",
        "Video codec of the output. h264: plays everywhere. hevc: about half the size at the "
        "same quality. av1: smallest, slowest to encode. prores (.mov/.mkv) and ffv1 (.mkv, "
        "lossless): for further editing. vp9 (.webm/.mkv, 8-bit): for the web. 10-bit "
        "sources stay 10-bit (not in vp9). Transparency is kept by prores, ffv1 and vp9.",
        Affects.VALUE,
        "--codec",
    )
    crf: int = _field(
        -1,
        "Quality, lower is better (0-63; h264/hevc: 0-51, around 18 looks like the source). "
        "-1 = the codec's default: h264 18, hevc 20, av1 30, vp9 31. prores and ffv1 have "
        "none: keep -1.",
        Affects.VALUE,
        "--crf",
        ge=-1,
        le=63,
    )
    preset: EncoderPreset = _field(  # type: ignore[valid-type]
        "auto",
        "Encoder speed: slower presets make smaller files at the same quality. auto = the "
        "codec's default (h264 veryfast, measured best here; hevc medium; av1 8). h264/hevc: "
        "ultrafast..veryslow; av1: 0 (slowest) .. 13 (fastest).",
        Affects.VALUE,
        "--preset",
    )
    alpha: AlphaPolicy = _field(
        "keep",
        "Sources with an alpha channel (transparency: ProRes 4444, VP9/VP8 WebM, FFV1...). "
        "keep: upscale it too and store it (codec prores, ffv1 or vp9; other codecs are "
        "refused before any work). flatten: composite over black, no alpha in the output. "
        "drop: ignore it (colour as stored). Sources without alpha are not affected.",
        Affects.VALUE,
        "--alpha",
    )

    @model_validator(mode="after")
    def _fits_codec(self) -> EncoderOptions:
        codec = CODEC_PRESETS[self.codec]
        if self.crf >= 0 and codec.quality_option is None:
            raise ValueError(f"crf does not apply to {self.codec} (set it to -1)")
        if self.codec in ("h264", "hevc") and self.crf > 51:
            raise ValueError(f"crf for {self.codec} must be 0-51 (or -1 for the default)")
        if self.preset == "auto":
            return self
        accepted = {"h264": X26X_PRESETS, "hevc": X26X_PRESETS, "av1": SVT_AV1_PRESETS}
        if self.preset not in accepted.get(self.codec, ()):
            choices = accepted.get(self.codec)
            hint = f"one of {', '.join(choices)}" if choices else "auto (it has no presets)"
            raise ValueError(f"preset {self.preset!r} does not fit codec {self.codec}: use {hint}")
        return self

    def encoder(self) -> EncoderSettings:
        return EncoderSettings(
            codec=self.codec,
            quality=self.crf if self.crf >= 0 else None,
            speed=None if self.preset == "auto" else self.preset,
            alpha=self.alpha,
        )


class BatchOptions(_Group):
    """How the video is cut into batches (one task each: the unit of retry and resume)."""

    model_config = ConfigDict(title="Batches")

    seconds: float = _field(
        4.0,
        "Seconds of video per batch (0.1-3600). Shorter batches resume finer after a crash "
        "and spread over more GPUs; each costs a little scheduling time.",
        Affects.NOTHING,
        "--batch-seconds",
        ge=0.1,
        le=3600.0,
    )
    frames: int = _field(
        0,
        "Frames per batch instead of seconds (0 = use seconds). Taken exactly: the batch "
        "limit below does not apply.",
        Affects.NOTHING,
        "--batch-frames",
        ge=0,
        le=1_000_000,
    )
    max_batches: int = _field(
        DEFAULT_MAX_BATCHES,
        f"Most batches one video is cut into when batches are given in seconds (0 = no "
        f"limit; default {DEFAULT_MAX_BATCHES}). Longer videos get longer batches instead of "
        f"more of them (a 2-hour film: {DEFAULT_MAX_BATCHES} batches of 24 s), which keeps "
        "the Prefect server and the flow light; videos up to "
        f"{DEFAULT_MAX_BATCHES} x the batch seconds are not affected.",
        Affects.NOTHING,
        "--max-batches",
        ge=0,
        le=1_000_000,
    )

    @property
    def frames_or_none(self) -> int | None:
        return self.frames or None

    @property
    def max_batches_or_none(self) -> int | None:
        return self.max_batches or None


def _face_model_dropdown(schema: dict[str, Any]) -> None:
    """A dropdown even while the registry holds a single face restorer (pydantic writes a
    one-value Literal as ``const``, which the form would show as a fixed text)."""
    schema["properties"]["model"]["enum"] = list(FACE_MODEL_NAMES)


class DeinterlaceOptions(_Group):
    """Interlaced and telecined sources: what is done to the fields before the model."""

    model_config = ConfigDict(title="Interlacing")

    mode: DeinterlaceMode = _field(  # type: ignore[valid-type]
        "auto",
        "auto: the pixels decide (not the flags): interlaced sources are deinterlaced with "
        "bwdif, telecined ones (3:2 pulldown) restored to their film frames (ivtc), "
        "progressive ones left alone. off: frames go to the model as decoded. bwdif, yadif, "
        "w3fdif, estdif, ivtc: force that filter (a source detected progressive gets a "
        "warning in the summary).",
        Affects.VALUE,
        "--deinterlace",
    )
    rate: DeinterlaceRate = _field(
        "field",
        "Output rate of deinterlaced video. field: one frame per field, smooth motion "
        "(50i -> 50p, 59.94i -> 59.94p). frame: one frame per frame (50i -> 25p). Inverse "
        "telecine always gives the film rate (29.97 -> 23.976).",
        Affects.VALUE,
        "--deinterlace-rate",
    )

    @property
    def at_defaults(self) -> bool:
        return self == DeinterlaceOptions()


class FaceOptions(_Group):
    """Face restoration after upscaling (off by default)."""

    model_config = ConfigDict(title="Faces", json_schema_extra=_face_model_dropdown)

    enhance: bool = _field(
        False,
        "Restore faces after upscaling (GFPGAN): faces are found on the source frames, kept "
        "steady from frame to frame, restored and blended into the upscaled picture; the "
        "rest of the picture is the upscaling model's. For real footage with people.",
        Affects.VALUE,
        "--face-enhance",
    )
    strength: float = _field(
        1.0,
        "How much of the restored face replaces the upscaled one (0-1): 1 = the restorer's "
        "face inside a soft mask, 0.5 = half and half, 0 = no change.",
        Affects.VALUE,
        "--face-strength",
        ge=0.0,
        le=1.0,
    )
    model: FaceModelName = _field(  # type: ignore[valid-type]
        DEFAULT_FACE_MODEL,
        "Face restorer. GFPGANv1.4: the official release, downloaded once and checked "
        "against its published sha256.",
        Affects.WEIGHTS,
        "--face-model",
    )
    weights_path: str = _field(
        "",
        "Your own face restorer weights instead of the model above: a GFPGAN or "
        "RestoreFormer .pth or .safetensors file on the machines that run the job. Leave "
        "empty to use the model above.",
        Affects.WEIGHTS,
        "--face-weights",
        max_length=4096,
    )
    detector: FaceDetectorName = _field(  # type: ignore[valid-type]
        DEFAULT_DETECTOR,
        "Face detector (BlazeFace). blazeface-back: faces down to about 5 % of the picture "
        "(default). blazeface-front: close-ups only (faces over about 20 %), a little faster.",
        Affects.VALUE,
        "--face-detector",
    )
    smoothing: int = _field(
        5,
        "Frames over which face positions are averaged (odd, 1-15; 1 = none). Steadies the "
        "restored faces: 5 frames cut landmark jitter by 75 % (measured).",
        Affects.VALUE,
        "--face-smoothing",
        ge=1,
        le=15,
    )
    faces_per_pass: int = _field(
        8,
        "Faces restored per pass through the face model (1-64): more uses more memory. Does "
        "not change the output.",
        Affects.NOTHING,
        "--faces-per-pass",
        ge=1,
        le=64,
    )

    @field_validator("weights_path")
    @classmethod
    def _face_weights_file(cls, value: str) -> str:
        return _weights_file_name(value, "face weights_path", "the face model from the list")

    @field_validator("smoothing")
    @classmethod
    def _odd_window(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"smoothing must be an odd number of frames (got {value})")
        return value

    def job(self) -> FaceJob | None:
        """What workers need, or None when face restoration is off."""
        if not self.enhance:
            return None
        return FaceJob(
            model=self.weights_path or self.model,
            detector=self.detector,
            strength=self.strength,
            window=self.smoothing,
            faces_per_pass=self.faces_per_pass,
        )


class UpscaleSettings(_Group):
    """Everything that decides the output of an upscale, grouped as the form shows it."""

    model_config = ConfigDict(title="Settings")

    model: ModelSettings = Field(
        default_factory=ModelSettings, description="Which network upscales the frames."
    )
    size: SizeSettings = Field(
        default_factory=SizeSettings,
        description="Output size: the model's own factor unless you set one.",
    )
    engine: EngineOptions = Field(
        default_factory=EngineOptions,
        description="How frames go through the model (precision, tiles, frames per pass).",
    )
    encoder: EncoderOptions = Field(
        default_factory=EncoderOptions, description="How the upscaled video is compressed."
    )
    batching: BatchOptions = Field(
        default_factory=BatchOptions,
        description="How a video is cut into batches (the unit of retry and resume).",
    )
    deinterlace: DeinterlaceOptions = Field(
        default_factory=DeinterlaceOptions,
        description="Interlaced and telecined sources: deinterlacing or inverse telecine "
        "before the model, chosen from the pixels.",
    )
    faces: FaceOptions = Field(
        default_factory=FaceOptions,
        description="Face restoration after upscaling (off unless enabled).",
    )
    alpha_mode: AlphaMode = _field(
        "model",
        "Images and videos with transparency: upscale the alpha channel with the model "
        "(sharp edges) or bicubic (smooth, faster).",
        Affects.VALUE,
        "--alpha-mode",
    )

    @classmethod
    def for_content(cls, content: ContentPreset, **groups: Any) -> UpscaleSettings:
        """Settings whose model is the preset's (anime, real, general)."""
        model = dict(groups.pop("model", {}) or {})
        model["name"] = model_for_content(content)
        return cls.model_validate({**groups, "model": model})

    # ----------------------------------------------------------------------------------
    # Derived surfaces

    def parameters(self) -> dict[str, Any]:
        """Flat ``group.field -> value`` of every setting (the manifest's ``parameters`` and
        what the archive flows compare to decide whether an output is up to date)."""
        return {name: value for name, value, _ in self._leaves()}

    def decisive_parameters(self) -> dict[str, Any]:
        """The parameters an existing output must have been made with to count as up to
        date (the archive flows' check): every setting that can change an output byte."""
        return {
            n: v
            for n, v, affects in self._leaves()
            if affects is not Affects.NOTHING and not self._switched_off(n)
        }

    def output_identity(self) -> dict[str, Any]:
        """The settings whose values change output bytes (part of every batch cache key;
        the model choice enters the key as the resolved weights' sha256)."""
        return {
            name: value
            for name, value, affects in self._leaves()
            if affects is Affects.VALUE and not self._switched_off(name)
        }

    def _switched_off(self, name: str) -> bool:
        """A setting of a group that is switched off (faces without ``faces.enhance``) cannot
        change an output byte, so it stays out of the cache identity and the archive check:
        runs without the option keep the batch keys and up-to-date outputs they had before
        the group existed. Deinterlacing at its defaults (auto, field rate) is left out the
        same way: the plan keys what auto resolved to for the source (nothing for a
        progressive one, which so keeps its keys; the filter, parity and rate otherwise)."""
        return (name.startswith("faces.") and not self.faces.enhance) or (
            name.startswith("deinterlace.") and self.deinterlace.at_defaults
        )

    def _leaves(self) -> list[tuple[str, Any, Affects]]:
        out = []
        for path, info in leaf_fields():
            value: Any = self
            for part in path.split("."):
                value = getattr(value, part)
            out.append((path, value, affects_of(info)))
        return out


def affects_of(info: FieldInfo) -> Affects:
    extra = info.json_schema_extra
    assert isinstance(extra, dict), "every settings field is declared with _field()"
    return Affects(extra["x-affects"])


def cli_flag_of(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    assert isinstance(extra, dict), "every settings field is declared with _field()"
    return str(extra["x-cli"])


def leaf_fields(model: type[BaseModel] = UpscaleSettings) -> list[tuple[str, FieldInfo]]:
    """``(dotted name, field)`` of every leaf setting, in form order."""
    leaves: list[tuple[str, FieldInfo]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves += [(f"{name}.{sub}", f) for sub, f in leaf_fields(annotation)]
        else:
            leaves.append((name, info))
    return leaves


def choices_of(info: FieldInfo) -> tuple[Any, ...] | None:
    """The allowed values of a Literal field (None for free values)."""
    args = get_args(info.annotation)
    return args if args and all(isinstance(a, str) for a in args) else None


def settings_from_flat(values: dict[str, Any]) -> UpscaleSettings:
    """Build settings from ``group.field -> value`` (the CLI's and the manifest's shape)."""
    nested: dict[str, Any] = {}
    for path, value in values.items():
        group, _, field = path.rpartition(".")
        target = nested.setdefault(group, {}) if group else nested
        target[field] = value
    return UpscaleSettings.model_validate(nested)


__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY_NAMES",
    "Affects",
    "BatchOptions",
    "DeinterlaceOptions",
    "EncoderOptions",
    "EngineOptions",
    "FaceOptions",
    "ModelSettings",
    "SizeSettings",
    "UpscaleSettings",
    "affects_of",
    "choices_of",
    "cli_flag_of",
    "leaf_fields",
    "settings_from_flat",
]
