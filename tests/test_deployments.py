"""prefect.yaml as a user runs it: `deployments/setup.sh` (pool, queues, limit, then
`prefect --no-prompt deploy --all` from the repo root), a real `prefect worker start` process,
`prefect deployment run ... --watch`, and parameters the server refuses, naming the field.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import deploy_support as ds
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(shared_dir: Path) -> str:
    return ds.deploy()


@pytest.fixture(scope="module")
def worker(deployed: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ds.Worker]:
    worker = ds.Worker(tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield worker
    worker.stop()
    assert worker.process is not None and worker.process.poll() is not None


def test_prefect_yaml_deploys_every_deployment_onto_the_process_pool(deployed: str) -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    expected = {
        "upscale-video/upscale-video": ("flows/upscale_video.py:upscale_video", "videos"),
        "upscale-images/upscale-images": ("flows/upscale_images.py:upscale_images", "videos"),
        "archive-backfill/archive-backfill": ("flows/archive.py:archive_backfill", "control"),
        "watch-arrivals/watch-arrivals": ("flows/archive.py:watch_arrivals", "control"),
    }
    with ds.api() as client:
        pool = client.read_work_pool(ds.POOL)
        assert pool.type == "process"
        queues = {q.name: q for q in client.read_work_queues(work_pool_name=ds.POOL)}
        assert queues["videos"].concurrency_limit == 1
        assert queues["control"].concurrency_limit is None
        gcl = client.read_global_concurrency_limit_by_name("vsrflow-gpu")
        assert gcl.limit >= 1
        for name, (entrypoint, queue) in expected.items():
            deployment = client.read_deployment_by_name(name)
            assert deployment.entrypoint == entrypoint
            assert deployment.work_pool_name == ds.POOL
            assert deployment.work_queue_name == queue
            assert deployment.enforce_parameter_schema
            assert deployment.pull_steps == [
                {
                    "prefect.deployments.steps.set_working_directory": {
                        "directory": "{{ $VSRFLOW_REPO }}"
                    }
                }
            ]
        backfill = client.read_deployment_by_name("archive-backfill/archive-backfill")
        assert [s.schedule.cron for s in backfill.schedules] == ["0 2 * * *"]
        assert backfill.global_concurrency_limit is not None
        assert backfill.global_concurrency_limit.limit == 1
        assert backfill.concurrency_options is not None
        assert (
            backfill.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
        )
        watch = client.read_deployment_by_name("watch-arrivals/watch-arrivals")
        assert [s.schedule.interval.total_seconds() for s in watch.schedules] == [60]
        # Shipped off: they need the user's prefixes first (deployments/README.md).
        assert not any(s.active for s in [*backfill.schedules, *watch.schedules])


def test_deployment_run_watch_upscales_through_a_real_worker(
    worker: ds.Worker, tmp_path: Path, shared_model
) -> None:
    weights = shared_model("realesr-animevideov3.pth")
    clip = ds.make_clip(tmp_path / "in" / "clip.mp4", offset=3, frames=12)
    output = tmp_path / "out" / "clip_x4.mp4"
    result = ds.prefect_cli(
        "deployment",
        "run",
        "upscale-video/upscale-video",
        "--param",
        f"input_path={clip}",
        "--param",
        f"output_path={output}",
        "--param",
        # A nested settings value as JSON, as a user types it.
        "settings=" + json.dumps({"model": {"weights_path": str(weights)}, "encoder": {"crf": 20}}),
        "--watch",
        "--watch-interval",
        "2",
        "--watch-timeout",
        "240",
        timeout=300,
    )
    detail = f"{result.stdout}\n{result.stderr}\n--- worker log ---\n{worker.tail()}"
    assert result.returncode == 0, detail
    assert "Completed" in result.stdout, detail
    assert ds.decoded_frames(str(output)) == (12, (256, 192))
    manifest = json.loads(Path(f"{output}.manifest.json").read_text())
    assert manifest["frames"] == 12
    assert manifest["source"] == str(clip)
    assert manifest["source_identity"].startswith("sha256:")
    assert manifest["model"] == manifest["parameters"]["model.weights_path"] == str(weights)
    assert manifest["parameters"]["encoder.crf"] == 20


_VIDEO = {"input_path": "/data/in.mp4", "output_path": "/data/out.mp4"}
_ARCHIVE = {"source_prefix": "s3://archive/videos/", "target_prefix": "/data/x4"}
_UPSCALE = "upscale-video/upscale-video"
#: (deployment, parameters, field the server names, words the refusal must contain)
INVALID = [
    (_UPSCALE, {**_VIDEO, "settings": {"size": {"outscale": -2}}}, "settings.size.outscale", "0"),
    (
        _UPSCALE,
        {**_VIDEO, "settings": {"model": {"name": "realesr-animevideo"}}},
        "settings.model.name",
        "realesr-animevideov3",
    ),
    (_UPSCALE, {**_VIDEO, "input_path": "ftp://host/in.mp4"}, "input_path", "no other scheme"),
    (_UPSCALE, {**_VIDEO, "output_path": "s3:/bucket/out.mp4"}, "output_path", "two slashes"),
    (_UPSCALE, {**_VIDEO, "output_path": "s3//bucket/out.mp4"}, "output_path", "a colon"),
    (_UPSCALE, {**_VIDEO, "output_path": "S3://bucket/out.mp4"}, "output_path", "lower case"),
    (_UPSCALE, {**_VIDEO, "output_path": "/data/out.mp4 "}, "output_path", "no spaces"),
    (_UPSCALE, {**_VIDEO, "output_path": "s3://bucket/out"}, "output_path", "ending in .mp4"),
    (
        _UPSCALE,
        {**_VIDEO, "settings": {"encoder": {"codec": "divx"}}},
        "settings.encoder.codec",
        "h264",
    ),
    (
        "archive-backfill/archive-backfill",
        {**_ARCHIVE, "settings": {"model": {"name": "nope"}}},
        "settings.model.name",
        "RealESRGAN_x4plus",
    ),
    (
        "archive-backfill/archive-backfill",
        {**_ARCHIVE, "source_prefix": "http://example/v/"},
        "source_prefix",
        "no other scheme",
    ),
    ("watch-arrivals/watch-arrivals", {**_ARCHIVE, "max_videos": 0}, "max_videos", "1"),
    ("watch-arrivals/watch-arrivals", {**_ARCHIVE, "patterns": []}, "patterns", "non-empty"),
]


@pytest.mark.parametrize(("deployment", "parameters", "field", "words"), INVALID)
def test_cli_rejects_invalid_parameters_naming_the_field(
    deployed: str, deployment: str, parameters: dict, field: str, words: str
) -> None:
    args = []
    for name, value in parameters.items():
        args += ["--param", f"{name}={json.dumps(value) if not isinstance(value, str) else value}"]
    before = len(ds.runs_of(deployment, ""))
    result = ds.prefect_cli("deployment", "run", deployment, *args, timeout=120)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output
    assert f"Validation failed for field '{field}'" in output, output
    assert words in output.split("Failure reason:", 1)[1], output
    assert "does not match" not in output, output  # words, not a regular expression
    assert len(ds.runs_of(deployment, "")) == before  # nothing was created


@pytest.mark.parametrize(("deployment", "parameters", "field", "words"), INVALID)
def test_api_rejects_invalid_parameters_naming_the_field(
    deployed: str, deployment: str, parameters: dict, field: str, words: str
) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    deployment_id = ds.deployment_id(deployment)
    with ds.api() as client, pytest.raises(PrefectHTTPStatusError) as caught:
        client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    assert caught.value.response.status_code == 409
    detail = caught.value.response.json()["detail"]
    assert f"Validation failed for field '{field}'" in detail and words in detail, detail


def test_video_runs_wait_for_a_free_vsrflow_gpu_slot(
    worker: ds.Worker, tmp_path: Path, shared_model
) -> None:
    """Every slot of the `vsrflow-gpu` global concurrency limit is held here, so a video run
    gets as far as its plan and then waits; freeing the slots lets it finish."""
    from prefect.concurrency.sync import concurrency

    clip = ds.make_clip(tmp_path / "in.mp4", offset=11, frames=12)
    output = tmp_path / "gated.mp4"
    parameters = {
        "input_path": str(clip),
        "output_path": str(output),
        "settings": {"model": {"weights_path": str(shared_model("realesr-animevideov3.pth"))}},
    }
    deployment_id = ds.deployment_id("upscale-video/upscale-video")
    with ds.api() as client:
        slots = client.read_global_concurrency_limit_by_name("vsrflow-gpu").limit
        with concurrency("vsrflow-gpu", occupy=slots):
            run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
            deadline = time.monotonic() + 120
            while " batches -> " not in ds.run_logs(run.id):
                assert time.monotonic() < deadline, worker.tail()
                time.sleep(1)
            time.sleep(8)
            state = client.read_flow_run(run.id).state
            assert state is not None and state.is_running(), state
            assert not output.exists()
        assert ds.wait_final([run.id], timeout=180)[run.id] == "Completed", worker.tail()
    assert ds.decoded_frames(str(output)) == (12, (256, 192))
