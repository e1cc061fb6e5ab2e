"""The Prefect flows end to end on the embedded server: outputs, cross-run cache, retries.

These run the real flows in-process (local profile: a Dask LocalCluster), exactly what the CLI
and the demo do, on tiny synthetic clips and the real animevideov3 weights.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import faults
import media_fixtures as mf
import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import ParameterTypeError

from flows.upscale_images import upscale_images
from flows.upscale_video import upscale_video
from vsrflow.images import read_image
from vsrflow.results import VideoResult
from vsrflow.settings import UpscaleSettings


def _decoded(path: Path) -> tuple[list[int], list[np.ndarray]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return [f.pts for f in frames], [f.to_ndarray(format="rgb24") for f in frames]


def _pts_seconds(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(float(p.pts * stream.time_base) for p in container.demux(stream) if p.size)


@pytest.fixture(scope="module")
def model_path(shared_model: Callable[[str], Path]) -> str:
    return str(shared_model("realesr-animevideov3.pth"))


def _settings(model: str, **groups: Any) -> UpscaleSettings:
    return UpscaleSettings.model_validate(
        {"model": {"weights_path": model}, "batching": {"frames": 8}, **groups}
    )


def _run(
    source: Path, output: Path, model: str, work: Path, *, keep_chunks: bool = False, **groups: Any
) -> VideoResult:
    return upscale_video(
        input_path=str(source),
        output_path=str(output),
        settings=_settings(model, **groups),
        work_dir=str(work),
        keep_chunks=keep_chunks,
    )


def test_video_flow_output_and_cache_across_runs(
    vfr_clip: mf.FixtureInfo, model_path: str, tmp_path: Path
) -> None:
    output, work = tmp_path / "out.mp4", tmp_path / "work"
    first = _run(vfr_clip.path, output, model_path, work, keep_chunks=True)
    batches = first.batches
    assert batches == -(-vfr_clip.frame_count // 8) and batches >= 2
    assert first.batches_computed == batches and first.batches_cached == 0
    assert first.frames == vfr_clip.frame_count
    assert first.out_size == (vfr_clip.width * 4, vfr_clip.height * 4)
    source_seconds = _pts_seconds(vfr_clip.path)
    assert np.allclose(_pts_seconds(output), source_seconds, atol=0.001)
    first_bytes = output.read_bytes()

    second = _run(vfr_clip.path, output, model_path, work, keep_chunks=True)
    assert second.batches_computed == 0
    assert second.batches_cached == batches
    assert output.read_bytes() == first_bytes

    # A cache record whose chunk disappeared is not trusted: exactly that batch is recomputed.
    chunks = sorted((work / "chunks").glob("*.mp4"))
    assert len(chunks) == batches
    chunks[1].unlink()
    third = _run(vfr_clip.path, output, model_path, work, keep_chunks=True)
    assert third.batches_computed == 1 and third.batches_cached == batches - 1
    assert _decoded(output)[0] == _decoded(Path(vfr_clip.path))[0]


def test_a_damaged_cached_chunk_is_recomputed_and_named(
    no_audio_clip: mf.FixtureInfo, model_path: str, tmp_path: Path
) -> None:
    output, work = tmp_path / "out.mp4", tmp_path / "work"
    first = _run(no_audio_clip.path, output, model_path, work, keep_chunks=True)
    good = output.read_bytes()
    chunks = {r.index: Path(r.chunk) for r in first.batch_results}
    assert all(r.chunk_bytes == chunks[r.index].stat().st_size for r in first.batch_results)
    # Batch 1: cut short (a full disk); batch 2: same size, garbage inside.
    cut = chunks[1].read_bytes()
    chunks[1].write_bytes(cut[: len(cut) // 2])
    chunks[2].write_bytes(bytes(len(chunks[2].read_bytes())))
    second = _run(no_audio_clip.path, output, model_path, work, keep_chunks=True)
    assert second.batches_computed == 2 and second.batches_cached == first.batches - 2
    assert [p.split(":")[0] for p in second.bad_chunks] == ["batch 1", "batch 2"]
    assert "bytes, its cache record says" in second.bad_chunks[0]
    assert output.read_bytes() == good
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    assert manifest["recomputed_bad_chunks"] == list(second.bad_chunks)


def test_changed_settings_invalidate_the_cache(
    no_audio_clip: mf.FixtureInfo, model_path: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    base = _run(no_audio_clip.path, tmp_path / "a.mp4", model_path, work, keep_chunks=True)
    other = _run(
        no_audio_clip.path,
        tmp_path / "b.mp4",
        model_path,
        work,
        keep_chunks=True,
        encoder={"crf": 30},
    )
    assert base.batches_computed == base.batches
    assert other.batches_computed == other.batches


def test_chunks_are_removed_after_publish_by_default(
    no_audio_clip: mf.FixtureInfo, model_path: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    result = _run(no_audio_clip.path, tmp_path / "out.mp4", model_path, work)
    assert result.frames == no_audio_clip.frame_count
    assert list((work / "chunks").glob("*.mp4")) == []
    assert not list(tmp_path.glob(".out.partial-*"))


async def _batch_run_counts(flow_run_id: Any) -> dict[str, int]:
    """Run count of each batch task of the flow run (batches are its own tasks: no subflow)."""
    async with get_client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        return {t.name: t.run_count for t in task_runs if t.name.startswith("batch-")}


def test_a_batch_that_fails_once_is_retried_and_the_run_succeeds(
    no_audio_clip: mf.FixtureInfo,
    model_path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    markers = tmp_path / "faults"
    faults.install(monkeypatch, "fail", {1}, markers)
    work, output = tmp_path / "work", tmp_path / "out.mp4"
    state = upscale_video(
        input_path=str(no_audio_clip.path),
        output_path=str(output),
        settings=_settings(model_path),
        work_dir=str(work),
        return_state=True,
    )
    assert state.is_completed()
    result = state.result()
    assert result.batches_computed == result.batches >= 2
    assert len(list(markers.glob("*.json"))) == 1  # the fault really fired
    counts = asyncio.run(_batch_run_counts(state.state_details.flow_run_id))
    assert counts["batch-1"] == 2  # failed once, retried once
    assert all(n == 1 for name, n in counts.items() if name != "batch-1")
    assert _decoded(output)[0] == _decoded(Path(no_audio_clip.path))[0]


async def _run_log_lines(flow_run_id: Any, wait_for: str, timeout: float = 30) -> list[str]:
    """Every log message of a flow run (tasks included); logs ship in batches, so poll."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = asyncio.get_running_loop().time() + timeout
    async with get_client() as client:
        while True:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            messages = [log.message for log in logs]
            if any(wait_for in m for m in messages) or asyncio.get_running_loop().time() > deadline:
                return messages
            await asyncio.sleep(0.5)


def test_bad_input_fails_the_flow_with_the_specific_error_in_one_line(
    not_media_file: mf.FixtureInfo, model_path: str, tmp_path: Path
) -> None:
    from vsrflow.errors import NotMediaError

    state = upscale_video(
        input_path=str(not_media_file.path),
        output_path=str(tmp_path / "out.mp4"),
        settings=_settings(model_path),
        work_dir=str(tmp_path / "work"),
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(NotMediaError, match="not a media file"):
        state.result()
    assert not (tmp_path / "out.mp4").exists()
    messages = asyncio.run(_run_log_lines(state.state_details.flow_run_id, "not a media file"))
    failures = [m for m in messages if "not a media file" in m]
    assert failures, messages
    # An expected failure: its message, no Prefect traceback (task or flow level).
    assert not [m for m in messages if "Traceback" in m], messages
    assert all(len(m.splitlines()) == 1 for m in failures), failures


def test_archive_flows_say_which_prefix_to_set() -> None:
    from flows.archive import ArchiveSetupError, archive_backfill, watch_arrivals

    with pytest.raises(ArchiveSetupError, match="source_prefix is not set: set it to the folder"):
        archive_backfill()
    with pytest.raises(ArchiveSetupError, match="target_prefix is not set"):
        watch_arrivals(source_prefix="s3://archive/videos/")
    with pytest.raises(ArchiveSetupError, match="must differ"):
        archive_backfill(source_prefix="s3://a-b/v/", target_prefix="s3://a-b/v")


def test_flow_parameters_are_validated_by_field(model_path: str, tmp_path: Path) -> None:
    out = str(tmp_path / "o.mp4")
    with pytest.raises(ParameterTypeError, match=r"(?s)outscale.*greater than or equal to 0"):
        upscale_video(input_path="x.mp4", output_path=out, settings={"size": {"outscale": -2}})
    with pytest.raises(ParameterTypeError, match="codec"):
        upscale_video(input_path="x.mp4", output_path=out, settings={"encoder": {"codec": "divx"}})
    with pytest.raises(ParameterTypeError, match="two slashes after s3:"):
        upscale_video(input_path="x.mp4", output_path="s3:/bucket/o.mp4")
    with pytest.raises(ParameterTypeError, match=r"ending in \.mp4 or \.mkv or \.mov"):
        upscale_video(input_path="x.mp4", output_path=str(tmp_path / "o"))


def test_image_flow_folder_keeps_modes_and_caches(
    image_set: mf.ImageSetInfo, model_path: str, tmp_path: Path
) -> None:
    source = tmp_path / "in"
    shutil.copytree(image_set.directory, source)
    out = tmp_path / "out"
    settings = UpscaleSettings(model={"weights_path": model_path})
    first = upscale_images(
        input_path=str(source),
        output_path=str(out),
        settings=settings,
        work_dir=str(tmp_path / "work"),
    )
    names = sorted(p.name for p in source.iterdir())
    assert sorted(Path(p).name for p in first.outputs) == names
    assert first.computed == len(names)
    for name in names:
        src, dst = read_image(source / name), read_image(out / name)
        assert dst.pixels.shape[:2] == (src.pixels.shape[0] * 4, src.pixels.shape[1] * 4)
        if name.endswith(".png"):
            assert dst.pixels.dtype == src.pixels.dtype
            assert dst.channels == src.channels
    second = upscale_images(
        input_path=str(source),
        output_path=str(out),
        settings=settings,
        work_dir=str(tmp_path / "work"),
    )
    assert second.cached == len(names) and second.computed == 0


def test_a_second_run_on_the_same_output_is_refused_while_the_first_lives(
    no_audio_clip: mf.FixtureInfo, model_path: str, tmp_path: Path
) -> None:
    import json
    import os
    import socket
    import time

    from vsrflow.lease import OutputLockedError, lease_location
    from vsrflow.locations import Locations

    # The lease lives beside the output (not in the work dir): another run with another work
    # dir holds it.
    output, work = tmp_path / "out.mp4", tmp_path / "work"
    held = Path(lease_location(Locations(), str(output)))
    assert held.parent == tmp_path.resolve()
    held.write_text(
        json.dumps(
            {
                "owner": "other-run",
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "renewed_at": time.time(),
            }
        )
    )
    with pytest.raises(OutputLockedError, match="other-run"):
        _run(no_audio_clip.path, output, model_path, work)
    assert not output.exists()
    assert json.loads(held.read_text())["owner"] == "other-run"  # not stolen
    held.unlink()
