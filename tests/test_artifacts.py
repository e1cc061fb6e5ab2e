"""Per-run artifacts: summary (markdown), before/after image, batch progress; the CLI's bar.

The flow runs for real (in-process, Prefect's temporary server, local Dask cluster) on a small
synthetic clip with the shared animevideov3 weights; the artifacts are read back through the
Prefect client and checked against the files the run produced.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import media_fixtures as mf
import numpy as np
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from flows.upscale_video import upscale_video
from vsrflow.compare import GAP, LABEL_HEIGHT, make_comparison
from vsrflow.report import BatchCounts, artifact_key, parse_progress, progress_description
from vsrflow.results import as_json
from vsrflow.settings import UpscaleSettings

REPO = Path(__file__).resolve().parents[1]
ANIME_SHA = "b8a8376811077954d82ca3fcf476f1ac3da3e8a68a4f4d71363008000a18b75d"


@pytest.fixture(scope="module")
def model_path(shared_model: Callable[[str], Path]) -> str:
    return str(shared_model("realesr-animevideov3.pth"))


def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The flow run's artifacts by type (markdown, progress, image)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_type: dict[str, Any] = {}
    for artifact in found:
        assert artifact.type not in by_type, f"two {artifact.type} artifacts"
        by_type[artifact.type] = artifact
    return by_type


def _settings(model: str) -> UpscaleSettings:
    return UpscaleSettings(model={"weights_path": model}, batching={"frames": 8})


def _run(source: Path, output: Path, model: str, work: Path) -> tuple[Any, dict[str, Any]]:
    state = upscale_video(
        input_path=str(source),
        output_path=str(output),
        settings=_settings(model),
        work_dir=str(work),
        keep_chunks=True,
        return_state=True,
    )
    assert state.is_completed(), state.message
    return state.state_details.flow_run_id, as_json(state.result())


def _middle_frame(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return frames[len(frames) // 2]


@pytest.fixture(scope="module")
def runs(
    no_audio_clip: mf.FixtureInfo, model_path: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A first run (3 batches computed) and a rerun of the same job (3 cached)."""
    root = tmp_path_factory.mktemp("artifacts")
    output, work = root / "out" / "clip_x4.mp4", root / "work"
    first_id, first = _run(no_audio_clip.path, output, model_path, work)
    first_artifacts = _artifacts(first_id)
    second_id, second = _run(no_audio_clip.path, output, model_path, work)
    return {
        "output": output,
        "first": (first, first_artifacts),
        "second": (second, _artifacts(second_id)),
    }


def test_summary_markdown_describes_the_run(
    runs: dict[str, Any], no_audio_clip: mf.FixtureInfo
) -> None:
    result, artifacts = runs["first"]
    output: Path = runs["output"]
    summary = artifacts["markdown"]
    text = summary.data
    assert summary.key == artifact_key(str(output)) == result["artifacts"]["summary_artifact"]
    assert summary.key.startswith("upscale-clip-x4-mp4-")
    assert f"**Output:** `{output}`" in text
    assert f"| location | `{no_audio_clip.path}` | `{output}` |" in text
    assert f"| frames | {no_audio_clip.frame_count} | {no_audio_clip.frame_count} |" in text
    w, h = no_audio_clip.width, no_audio_clip.height
    assert f"| resolution | {w}x{h} | {w * 4}x{h * 4} |" in text
    assert f"({output.stat().st_size:,} bytes)" in text
    assert "| fps | 24.000 | 24.000 |" in text
    assert "**Model:** `" + str(Path(result["model"])) + "`" in text
    assert f"weights sha256 `{ANIME_SHA[:12]}`" in text
    for stage in ("probe", "plan", "upscale", "assemble"):
        assert f"| {stage} | {result['seconds'][stage]:.2f} |" in text
    assert (
        "| batches | computed | cached | resubmitted |\n|---|---|---|---|\n| 3 | 3 | 0 | 0 |"
        in text
    )
    assert "fps** end to end" in text
    assert f"**Workers:** `{os.uname().nodename}`" in text

    rerun, rerun_artifacts = runs["second"]
    assert rerun["batches_cached"] == 3
    assert "| 3 | 0 | 3 | 0 |" in rerun_artifacts["markdown"].data
    assert rerun_artifacts["markdown"].key == summary.key  # versions of one artifact


def test_progress_artifact_reached_100_with_the_batch_counts(runs: dict[str, Any]) -> None:
    first = runs["first"][1]["progress"]
    assert first.data == 100
    assert first.key == artifact_key(str(runs["output"]), "progress")
    assert parse_progress(first.description) == BatchCounts(done=3, total=3, cached=0)
    second = runs["second"][1]["progress"]
    assert second.data == 100
    assert parse_progress(second.description) == BatchCounts(done=3, total=3, cached=3)


def test_comparison_png_is_bicubic_left_and_model_output_right(
    runs: dict[str, Any], no_audio_clip: mf.FixtureInfo
) -> None:
    output: Path = runs["output"]
    result, artifacts = runs["first"]
    png = Path(f"{output}.compare.png")
    assert result["artifacts"]["compare_png"] == str(png)
    image = np.asarray(Image.open(png).convert("RGB"))
    # 64x48 source: the whole frame is the region, shown at the output size (4x).
    pw, ph = no_audio_clip.width * 4, no_audio_clip.height * 4
    assert image.shape == (ph + LABEL_HEIGHT, 2 * pw + GAP, 3)
    left = image[LABEL_HEIGHT:, :pw].astype(np.int16)
    right = image[LABEL_HEIGHT:, pw + GAP :].astype(np.int16)
    assert np.abs(left - right).mean() > 2.0  # model output is not the bicubic one

    # Right: the published output's middle frame. Left: that source frame, bicubic.
    model_frame = _middle_frame(output).astype(np.int16)
    assert np.abs(right - model_frame).mean() < 2.0
    source = Image.fromarray(_middle_frame(Path(no_audio_clip.path)))
    bicubic = np.asarray(source.resize((pw, ph), Image.Resampling.BICUBIC)).astype(np.int16)
    assert np.abs(left - bicubic).mean() < 2.0
    assert np.abs(right - bicubic).mean() > 2.0

    # Published as an image artifact and inside the summary, as a data: URI of this PNG.
    uri = artifacts["image"].data
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png.read_bytes()
    assert f"]({uri})" in artifacts["markdown"].data


def test_cli_progress_bar_shows_the_progress_artifact(
    no_audio_clip: mf.FixtureInfo, model_path: str, tmp_path: Path
) -> None:
    """The bar's batch counts come from the run's progress artifact (the API), not files."""
    env = {
        **os.environ,
        "VSRFLOW_MODEL_PATH": str(Path(model_path).parent),
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "upscale", str(no_audio_clip.path)]
    cmd += ["-o", str(tmp_path / "o.mp4"), "--batch-frames", "8", "--content", "anime"]
    result = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    bars = result.stderr.replace("\r", "\n").splitlines()
    final = [b for b in bars if "3/3" in b and "batch" in b]
    assert final, result.stderr[-3000:]
    assert "cached=0, computed=3" in final[-1] and "frames=24/24" in final[-1]
    assert json.loads(result.stdout)["batches_computed"] == 3


# --------------------------------------------------------------------------------------------
# S3 output: presigned links, the PNG beside the output, and no secret anywhere


@pytest.fixture(scope="module")
def s3_env() -> dict[str, str]:
    import infra

    try:
        return infra.ensure_s3()
    except infra.InfraUnavailable as exc:
        pytest.skip(f"S3 (SeaweedFS) cannot run here: {exc}")


def test_s3_output_links_are_presigned_and_no_secret_is_published(
    s3_env: dict[str, str],
    no_audio_clip: mf.FixtureInfo,
    model_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vsrflow import storage
    from vsrflow.storage import S3Config

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    s3 = S3Config.from_env()
    bucket = f"vsrflow-artifacts-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=bucket)
    source, output = f"s3://{bucket}/in/clip.mp4", f"s3://{bucket}/out/clip_x4.mp4"
    storage.upload_file(no_audio_clip.path, source, s3)
    state = upscale_video(
        input_path=source, output_path=output, settings=_settings(model_path), return_state=True
    )
    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id
    artifacts = _artifacts(run_id)
    text = artifacts["markdown"].data
    assert f"| location | `{source}` | `{output}` |" in text
    assert "| 3 | 3 | 0 | 0 |" in text and artifacts["progress"].data == 100
    assert storage.exists(f"{output}.compare.png", s3)

    endpoint = s3_env["VSRFLOW_S3_ENDPOINT"].rstrip("/")
    link = text.split("**Output:** [download clip_x4.mp4](", 1)[1].split(")", 1)[0]
    assert link.startswith(f"{endpoint}/{bucket}/out/clip_x4.mp4?") and "X-Amz-Signature" in link
    assert "X-Amz-Expires=86400" in link
    with urllib.request.urlopen(link, timeout=30) as response:
        assert len(response.read()) == storage.head(output, s3).size
    image_url = artifacts["image"].data
    assert image_url.startswith(f"{endpoint}/{bucket}/out/clip_x4.mp4.compare.png?")
    assert f"![bicubic (left) vs model (right)]({image_url})" in text
    with urllib.request.urlopen(image_url, timeout=30) as response:
        assert response.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(response.read())).size[1] == 48 * 4 + LABEL_HEIGHT

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    published = [text, image_url, *(a.description or "" for a in artifacts.values())]
    published += [log.message for log in logs]
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    assert secret and not any(secret in item for item in published)
    assert not any("X-Amz-Signature" in log.message for log in logs)  # links stay out of logs


# --------------------------------------------------------------------------------------------
# The framework-free parts


def test_progress_text_round_trips_and_keys_are_valid() -> None:
    counts = BatchCounts(done=4, total=6, cached=1, resubmitted=2)
    assert parse_progress(progress_description(counts)) == counts
    assert counts.computed == 3 and counts.percent == pytest.approx(66.67)
    assert parse_progress("something else") is None
    a, b = artifact_key("/a/My Clip_x4.MP4"), artifact_key("/b/My Clip_x4.MP4")
    assert a != b and a.startswith("upscale-my-clip-x4-mp4-")
    assert all(c.islower() or c.isdigit() or c == "-" for c in a + b)


def test_comparison_region_is_the_detailed_part_and_panels_match_geometry() -> None:
    source = np.full((300, 400, 3), 128, np.uint8)
    source[200:260, 20:80] = np.indices((60, 60)).sum(0)[..., None] % 2 * 255  # checkerboard
    output = np.asarray(Image.fromarray(source).resize((800, 600), Image.Resampling.NEAREST))
    result = make_comparison(source, output, model_label="m", frame_index=0, time_s=0.0)
    x, y, w, h = result.source_box
    assert (w, h) == (128, 128) and x <= 20 and x + w >= 80 and y <= 200 and y + h >= 260
    assert result.output_box == (2 * x, 2 * y, 256, 256)
    assert (result.width, result.height) == (2 * 256 + GAP, 256 + LABEL_HEIGHT)
    image = np.asarray(Image.open(io.BytesIO(result.png)).convert("RGB"))
    right = image[LABEL_HEIGHT:, 256 + GAP :]
    assert np.array_equal(right, output[2 * y : 2 * y + 256, 2 * x : 2 * x + 256])
