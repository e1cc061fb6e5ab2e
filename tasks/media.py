"""Tasks around the media: probe the source, plan the batches, assemble and publish."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.retry import TRANSIENT_RETRIES
from tasks.storage import locations_for
from tasks.upscale import chunk_location
from vsrflow.errors import redacting
from vsrflow.faces.facts import check_face_job
from vsrflow.job import JobPlan, UpscaleJob, make_plan
from vsrflow.media.assemble import (
    AssemblyReport,
    assemble,
    check_output_compatible,
    verify_output,
)
from vsrflow.media.probe import DEFAULT_MAX_PIXELS, MediaInfo, probe
from vsrflow.models import model_facts
from vsrflow.progress import write_listing
from vsrflow.settings import UpscaleSettings


@task(
    name="probe",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def probe_source(
    input_path: str, credentials_block: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> MediaInfo:
    """Probe a local file or an s3:// object (read in place through a presigned URL)."""
    locations = locations_for(credentials_block)
    with redacting():
        if locations.is_remote(input_path):
            return probe(
                locations.readable(input_path),
                max_pixels=max_pixels,
                label=input_path,
                size_bytes=locations.size(input_path),
            )
        return probe(input_path, max_pixels=max_pixels)


@task(
    name="plan",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def plan_job(
    info: MediaInfo,
    settings: UpscaleSettings,
    output_path: str,
    work_dir: str,
    credentials_block: str | None = None,
) -> JobPlan:
    """Resolve the weights (download + verify if needed; with faces on, the detector's and
    the face restorer's too: a file of the user's is loaded once in a child process, so a
    wrong one is refused in one line and this process never imports torch), check the output
    container can hold every stream, identify the source content, cut it into keyed batches
    and find which batches' chunks the work dir already holds."""
    job = UpscaleJob.from_settings(settings)
    locations = locations_for(credentials_block)
    with redacting():
        check_output_compatible(
            info,
            output_path,
            job.encoder.codec,
            source=locations.readable(info.path),
            alpha=job.encoder.alpha,
            square_pixels=job.square_pixels,
        )
    model = model_facts(job.model, denoise_strength=job.denoise_strength)
    face_sha256 = None
    if job.faces is not None:  # refused here in one line, before any batch runs
        face_sha256 = check_face_job(job.faces)
    plan = make_plan(
        info,
        job,
        weights_sha256=model.weights_sha256,
        model_scale=model.scale,
        source_sha256=locations.identity(info.path),
        settings_identity=settings.output_identity(),
        face_weights_sha256=face_sha256,
        frames_per_batch=settings.batching.frames_or_none,
        seconds_per_batch=settings.batching.seconds,
        max_batches=settings.batching.max_batches_or_none,
    )
    if not locations.is_remote(work_dir):
        write_listing(work_dir, output_path, [b.key for b in plan.batches], plan.output_frames)
    present = frozenset(
        b.index for b in plan.batches if locations.exists(chunk_location(work_dir, b))
    )
    return dataclasses.replace(plan, present_chunks=present)


def manifest_location(output_path: str) -> str:
    """The manifest sits beside its output: ``<output>.manifest.json``."""
    return output_path + ".manifest.json"


@task(
    name="assemble",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
def assemble_output(
    info: MediaInfo,
    chunks: list[str],
    output_path: str,
    credentials_block: str | None = None,
    manifest: dict[str, Any] | None = None,
) -> AssemblyReport:
    """Remux the chunks and the source's other streams, verify, publish atomically (local
    rename, or S3 temporary key -> verify -> copy), then write the manifest beside it."""
    locations = locations_for(credentials_block)
    with redacting(), locations.scratch_for(output_path) as staged:
        report = assemble(
            info,
            [locations.readable(c) for c in chunks],
            staged,
            source=locations.readable(info.path),
        )
        # The flow holds the output lease (flows/upscale_video.py checks it just before),
        # so any temporary object beside the output is a killed run's: remove it.
        locations.publish(
            staged, output_path, verify=lambda url: verify_output(url, info), exclusive=True
        )
    report = dataclasses.replace(report, path=output_path)
    if manifest is not None:
        document = {
            **manifest,
            "output": output_path,
            "output_bytes": report.size_bytes,
            "frames": report.frames,
            "copied_streams": report.copied_streams,
        }
        locations.write_json(manifest_location(output_path), document)
    return report
