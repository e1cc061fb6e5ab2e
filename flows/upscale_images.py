"""The upscale-images flow: one image or a folder of png/jpg/webp images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow
from prefect.futures import wait
from pydantic import Field

from deployments.profiles import get_profile
from flows.params import ModelChoice, form_descriptions
from flows.upscale_video import Content, PrecisionChoice
from tasks.images import upscale_image
from vsrflow import PIPELINE_VERSION
from vsrflow.engine import EngineSettings
from vsrflow.hashing import file_sha256
from vsrflow.images import IMAGE_SUFFIXES, find_images
from vsrflow.job import UpscaleJob
from vsrflow.models import get_model, model_for_content


def _image_key(source: Path, output: Path, job: UpscaleJob, weights: str, alpha: str) -> str:
    payload = [
        PIPELINE_VERSION,
        file_sha256(source),
        output.suffix.lower(),
        weights,
        job.outscale,
        job.target_height,
        job.engine.identity(),
        alpha,
    ]
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()


def pair_paths(input_path: Path, output_path: Path) -> list[tuple[Path, Path]]:
    """(source, output) pairs: file -> file, or folder -> folder keeping names."""
    if input_path.is_dir():
        if output_path.suffix.lower() in IMAGE_SUFFIXES:
            raise ValueError("input is a folder, so output_path must be a folder too")
        pairs = [(src, output_path / src.name) for src in find_images(input_path)]
        if not pairs:
            raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {input_path}")
        return pairs
    if not input_path.is_file():
        raise FileNotFoundError(f"input not found: {input_path}")
    if output_path.suffix.lower() not in IMAGE_SUFFIXES:
        output_path = output_path / input_path.name
    return [(input_path, output_path)]


@flow(name="upscale-images", log_prints=True)
@form_descriptions
def upscale_images(
    input_path: Annotated[str, Field(description="An image file or a folder of images.")],
    output_path: Annotated[
        str,
        Field(
            description="Output file, or folder for a folder input (names kept; .png keeps 16-bit)."
        ),
    ],
    content: Annotated[
        Content, Field(description="Content preset picking the model when `model` is empty.")
    ] = "real",
    model: Annotated[
        ModelChoice | None,
        Field(description="Registry model name or weights path; overrides `content`."),
    ] = None,
    denoise_strength: Annotated[
        float, Field(ge=0.0, le=1.0, description="realesr-general-x4v3 denoise blend (1 = none).")
    ] = 1.0,
    outscale: Annotated[
        float | None,
        Field(gt=0.0, le=16.0, description="Final scale factor; the model's own scale when empty."),
    ] = None,
    target_height: Annotated[
        int | None,
        Field(ge=16, le=16384, description="Final height in pixels; exclusive with outscale."),
    ] = None,
    alpha_mode: Annotated[
        Literal["model", "bicubic"], Field(description="How the alpha channel is upscaled.")
    ] = "model",
    precision: Annotated[
        PrecisionChoice, Field(description="auto = fp16 on CUDA, bf16 on capable CPUs, else fp32.")
    ] = "auto",
    tile: Annotated[
        int, Field(ge=0, le=4096, description="Tile size in input pixels; 0 = whole image.")
    ] = 0,
    tile_pad: Annotated[int, Field(ge=0, le=256, description="Overlap around each tile.")] = 16,
    profile: Annotated[
        str, Field(description="Compute profile (deployments/profiles.yaml).")
    ] = "local",
    work_dir: Annotated[
        str | None, Field(description="Cached results; default .vsrflow-work beside the output.")
    ] = None,
) -> dict[str, Any]:
    """Upscale images with the same models and engine as videos."""
    pairs = pair_paths(Path(input_path), Path(output_path))
    job = UpscaleJob(
        model=model or model_for_content(content),
        denoise_strength=denoise_strength,
        outscale=outscale,
        target_height=target_height,
        engine=EngineSettings(precision=precision, tile=tile, tile_pad=tile_pad, micro_batch=1),
    )
    weights = get_model(job.model, denoise_strength=denoise_strength).weights_sha256
    work = Path(work_dir) if work_dir else pairs[0][1].parent / ".vsrflow-work"
    return _upscale_all.with_options(task_runner=get_profile(profile).make_task_runner())(
        pairs, job, weights, alpha_mode, str(work)
    )


@flow(name="upscale-image-set")
def _upscale_all(
    pairs: list[tuple[Path, Path]], job: UpscaleJob, weights: str, alpha_mode: str, work_dir: str
) -> dict[str, Any]:
    task = upscale_image.with_options(result_storage=Path(work_dir) / "results")
    futures = []
    for source, output in pairs:
        runner = task if output.is_file() else task.with_options(refresh_cache=True)
        key = _image_key(source, output, job, weights, alpha_mode)
        futures.append(runner.submit(source, output, job, alpha_mode, key))
    wait(futures)
    results = [f.result() for f in futures]
    cached = sum(1 for f in futures if f.state.name == "Cached")
    return {
        "outputs": [r.output for r in results],
        "images": len(results),
        "cached": cached,
        "computed": len(results) - cached,
    }
