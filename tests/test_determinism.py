"""The same batch gives the same bytes every time: what makes a chunk computed on any worker
interchangeable with one computed anywhere else (cache reuse, Slurm vs local runs)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from vsrflow.engine import Upscaler
from vsrflow.job import UpscaleJob, make_plan
from vsrflow.media.encode import deterministic_options
from vsrflow.media.probe import probe
from vsrflow.models import get_model
from vsrflow.pipeline import upscale_batch


def _packet_digests(path: Path) -> list[str]:
    with av.open(str(path)) as container:
        return [hashlib.sha256(bytes(p)).hexdigest() for p in container.demux(video=0) if p.size]


def test_a_batch_encodes_to_identical_bytes_every_time(
    shared_media: Callable[[str], Path], shared_model: Callable[[str], Path], tmp_path: Path
) -> None:
    source = shared_media("carphone_176x144_2997fps_noaudio.mp4")  # 704-wide output
    info = probe(source)
    model = get_model(str(shared_model("realesr-animevideov3.pth")))
    job = UpscaleJob()
    plan = make_plan(
        info,
        job,
        weights_sha256=model.weights_sha256,
        model_scale=model.scale,
        source_sha256="test",
        frames_per_batch=20,
    )
    upscaler = Upscaler(model.descriptor, settings=job.engine)
    video = dataclasses.replace(plan.video, path=str(source))
    runs = []
    for attempt in range(6):  # before the fix about one run in three differed
        chunk = tmp_path / f"run{attempt}.mp4"
        upscale_batch(
            video, plan.batches[4], upscaler, chunk, encoder=job.encoder, out_size=plan.out_size
        )
        runs.append(_packet_digests(chunk))
    assert len(runs[0]) == 20
    assert all(run == runs[0] for run in runs[1:])


def test_deterministic_options_only_touch_x264() -> None:
    assert deterministic_options("libx265") == {}
    assert deterministic_options("libx264") in ({}, {"x264-params": "asm=AVX2"})
    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX-512: x264 runs unrestricted here")
    assert deterministic_options("libx264") == {"x264-params": "asm=AVX2"}
