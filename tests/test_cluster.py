"""Batches on Slurm GPU workers with S3 storage: real Slurm, real SeaweedFS, real Prefect server.

Every run here is the user's command (`vsrflow upscale s3://... -o s3://... --profile slurm`)
in a subprocess whose environment points at the three services the project's scripts start.
Faults are real: `scancel` of a worker job, SIGKILL of the flow process, SeaweedFS stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import faults
import infra
import numpy as np
import pytest

from vsrflow import storage
from vsrflow.storage import S3Config

REPO = Path(__file__).resolve().parents[1]
SOURCE = "carphone_176x144_2997fps_noaudio.mp4"  # 120 frames -> 6 batches of 20
BATCH_FRAMES = 20
BLOCK = "vsrflow-test-s3"


@pytest.fixture(scope="module")
def cluster_env(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    try:
        slurm = infra.ensure_slurm()
    except infra.InfraUnavailable as exc:
        pytest.skip(f"Slurm cannot be installed on this machine: {exc}")
    env = {**os.environ, **slurm, **infra.ensure_s3(), **infra.ensure_prefect()}
    logs = tmp_path_factory.mktemp("slurm-logs")
    env.update(
        {
            "VSRFLOW_SLURM_CORES": "1",
            "VSRFLOW_SLURM_MEMORY": "3GB",
            "VSRFLOW_SLURM_WALLTIME": "00:20:00",
            "VSRFLOW_SLURM_MIN_JOBS": "2",
            "VSRFLOW_SLURM_MAX_JOBS": "2",
            "VSRFLOW_SCHEDULER_HOST": "127.0.0.1",
            "VSRFLOW_DASHBOARD_ADDRESS": "127.0.0.1:0",
            "VSRFLOW_SLURM_LOG_DIR": str(logs),
            "VSRFLOW_MODEL_PATH": str(shared_dir / "models"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
    )
    env.pop("PREFECT_HOME", None)  # the real server, never a temporary one
    # Credentials live in a Prefect block; workers must not find them in their environment.
    _save_credentials_block(env)
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "VSRFLOW_S3_ACCESS_KEY",
        "VSRFLOW_S3_SECRET_KEY",
    ):
        env.pop(name, None)
    return env


def _save_credentials_block(
    env: dict[str, str], name: str = BLOCK, secret: str | None = None
) -> None:
    code = (
        "import os, sys\n"
        "from prefect_aws import AwsCredentials\n"
        "from prefect_aws.client_parameters import AwsClientParameters\n"
        "AwsCredentials(aws_access_key_id=os.environ['AWS_ACCESS_KEY_ID'],\n"
        "  aws_secret_access_key=os.environ.get('VSRFLOW_BLOCK_SECRET') or\n"
        "    os.environ['AWS_SECRET_ACCESS_KEY'], region_name='us-east-1',\n"
        "  aws_client_parameters=AwsClientParameters(endpoint_url=os.environ[\n"
        "    'VSRFLOW_S3_ENDPOINT'], config={'s3': {'addressing_style': 'path'},\n"
        "    'signature_version': 's3v4'})).save(sys.argv[1], overwrite=True)\n"
    )
    run_env = {**env, "VSRFLOW_BLOCK_SECRET": secret or ""}
    subprocess.run([sys.executable, "-c", code, name], env=run_env, check=True, timeout=120)


@pytest.fixture(scope="module")
def s3(cluster_env: dict[str, str]) -> S3Config:
    return S3Config.from_env(infra.ensure_s3())


@pytest.fixture(scope="module")
def bucket(s3: S3Config, shared_media: Callable[[str], Path]) -> Iterator[str]:
    name = f"vsrflow-cluster-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=name)
    storage.upload_file(shared_media(SOURCE), f"s3://{name}/in/{SOURCE}", s3)
    yield name


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "upscale", *args, "--no-progress"]


def _upscale_args(bucket: str, out: str, *extra: str) -> list[str]:
    return [
        f"s3://{bucket}/in/{SOURCE}",
        "-o",
        f"s3://{bucket}/{out}",
        "--profile",
        "slurm",
        "--credentials-block",
        BLOCK,
        "--batch-frames",
        str(BATCH_FRAMES),
        "--content",
        "anime",
        *extra,
    ]


def _run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cli(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def _frames(path_or_url: str) -> list[np.ndarray]:
    with av.open(path_or_url) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _keys(bucket: str, prefix: str, s3: S3Config) -> list[str]:
    return [o.uri for o in storage.list_objects(f"s3://{bucket}/{prefix}", s3)]


def _squeue_jobs(env: dict[str, str]) -> list[tuple[str, str]]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]  # type: ignore


def _wait_no_jobs(env: dict[str, str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while _squeue_jobs(env) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _squeue_jobs(env), "Slurm jobs outlived the run"


@pytest.fixture(scope="module")
def clean_run(cluster_env: dict[str, str], bucket: str, s3: S3Config) -> dict[str, Any]:
    result = _run(cluster_env, *_upscale_args(bucket, "clean/out.mp4", "--keep-chunks"))
    assert result.returncode == 0, result.stderr[-4000:]
    _wait_no_jobs(cluster_env)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def reference_frames(clean_run: dict[str, Any], bucket: str, s3: S3Config) -> list[np.ndarray]:
    return _frames(storage.presigned_get(f"s3://{bucket}/clean/out.mp4", s3))


def test_every_batch_ran_in_a_slurm_job_and_output_landed_with_manifest(
    clean_run: dict[str, Any], bucket: str, s3: S3Config, reference_frames: list[np.ndarray]
) -> None:
    batches = clean_run["batch_results"]
    assert len(batches) == 120 // BATCH_FRAMES
    job_ids = {b["slurm_job_id"] for b in batches}
    assert None not in job_ids and all(j.isdigit() for j in job_ids)
    # min = max = 2 jobs: adaptive scaling must not cycle through extra jobs.
    assert len(job_ids) <= 2
    assert clean_run["frames"] == 120 and len(reference_frames) == 120
    assert reference_frames[0].shape == (576, 704, 3)
    manifest = storage.get_json(f"s3://{bucket}/clean/out.mp4.manifest.json", s3)
    assert manifest["frames"] == 120
    assert manifest["source"] == f"s3://{bucket}/in/{SOURCE}"
    assert manifest["source_bytes"] == storage.head(f"s3://{bucket}/in/{SOURCE}", s3).size
    assert manifest["weights_sha256"] == clean_run["weights_sha256"]
    assert manifest["parameters"]["profile"] == "slurm"
    assert not [k for k in _keys(bucket, "clean/", s3) if ".partial-" in k]


def test_slurm_output_is_identical_to_a_local_run(
    clean_run: dict[str, Any],
    reference_frames: list[np.ndarray],
    shared_media: Callable[[str], Path],
    shared_dir: Path,
    tmp_path: Path,
) -> None:
    from flows.upscale_video import upscale_video

    local = tmp_path / "local.mp4"
    from vsrflow.settings import UpscaleSettings

    weights = str(shared_dir / "models" / "realesr-animevideov3.pth")
    summary = upscale_video(
        input_path=str(shared_media(SOURCE)),
        output_path=str(local),
        settings=UpscaleSettings(
            model={"weights_path": weights}, batching={"frames": BATCH_FRAMES}
        ),
        work_dir=str(tmp_path / "work"),
    )
    assert summary.weights_sha256 == clean_run["weights_sha256"]
    local_frames = _frames(str(local))
    assert len(local_frames) == len(reference_frames)
    for mine, theirs in zip(local_frames, reference_frames, strict=True):
        assert np.array_equal(mine, theirs)


def test_scancel_of_a_worker_mid_run_still_completes_identically(
    cluster_env: dict[str, str], bucket: str, s3: S3Config, reference_frames: list[np.ndarray]
) -> None:
    process = subprocess.Popen(
        _cli(*_upscale_args(bucket, "scancel/out.mp4")),
        env=cluster_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and process.poll() is None:
        running = [j for j, state in _squeue_jobs(cluster_env) if state == "RUNNING"]
        chunks = _keys(bucket, "scancel/.vsrflow-work/chunks/", s3)
        if running and chunks:
            victim = running[0]
        time.sleep(0.3)
    assert victim is not None, "no worker job was running while chunks were being written"
    subprocess.run(["scancel", victim], env=cluster_env, check=True)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    assert json.loads(stdout)["frames"] == 120
    frames = _frames(storage.presigned_get(f"s3://{bucket}/scancel/out.mp4", s3))
    assert len(frames) == len(reference_frames)
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference_frames, strict=True))
    _wait_no_jobs(cluster_env)


def _finished_batches(bucket: str, work: str, s3: S3Config) -> int:
    """Batches with both a chunk and a cached result record: what a rerun may skip."""
    chunks = {
        k.rsplit("/", 1)[1].removesuffix(".mp4") for k in _keys(bucket, f"{work}/chunks/", s3)
    }
    records = {
        k.rsplit("upscale-batch-", 1)[1]
        for k in _keys(bucket, f"{work}/results/", s3)
        if "upscale-batch-" in k
    }
    return len(chunks & records)


def test_killed_flow_process_resumes_with_only_unfinished_batches(
    cluster_env: dict[str, str], bucket: str, s3: S3Config, reference_frames: list[np.ndarray]
) -> None:
    work = "killed/.vsrflow-work"
    args = _upscale_args(bucket, "killed/out.mp4")
    process = subprocess.Popen(
        _cli(*args),
        env=cluster_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if _finished_batches(bucket, work, s3) >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    # The orphaned worker jobs are what an operator cancels; wait until they are gone.
    subprocess.run(["scancel", "--name", "dask-worker"], env=cluster_env, check=False)
    _wait_no_jobs(cluster_env)
    finished = _finished_batches(bucket, work, s3)
    total = 120 // BATCH_FRAMES
    assert 2 <= finished < total
    assert not storage.exists(f"s3://{bucket}/killed/out.mp4", s3)
    lease = f"s3://{bucket}/killed/.out.mp4.vsrflow-lease"  # beside the output
    assert storage.exists(lease, s3)  # the dead run's lease is still there
    dead_run = storage.get_json(lease, s3)["owner"]
    assert _flow_run_state(cluster_env, dead_run) == "RUNNING"  # prefect#12969

    rerun = _run(cluster_env, *args)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    summary = json.loads(rerun.stdout)
    assert summary["batches_cached"] == finished
    assert summary["batches_computed"] == total - finished
    frames = _frames(storage.presigned_get(f"s3://{bucket}/killed/out.mp4", s3))
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference_frames, strict=True))
    # Published: the job's chunks and cache records are gone from the S3 work dir (issue 11).
    assert _keys(bucket, f"{work}/", s3) == []
    # The rerun took over the dead run's lease and marked that run Crashed.
    assert _flow_run_state(cluster_env, dead_run) == "CRASHED"
    assert not storage.exists(lease, s3)
    _wait_no_jobs(cluster_env)


def _flow_run_state(env: dict[str, str], flow_run_id: str) -> str:
    code = (
        "import sys, uuid\n"
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        "    print(c.read_flow_run(uuid.UUID(sys.argv[1])).state.type.value)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, flow_run_id],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout.strip().splitlines()[-1]


def test_a_worker_killed_twice_over_raises_killedworker_and_the_flow_recovers(
    cluster_env: dict[str, str],
    bucket: str,
    s3: S3Config,
    reference_frames: list[np.ndarray],
    tmp_path: Path,
) -> None:
    markers = tmp_path / "faults"
    env = {
        **cluster_env,
        **faults.subprocess_env("crash", {2}, markers),
        # Dask gives up on a task after this many worker deaths (KilledWorker); 0 makes the
        # first death surface, which is what repeated deaths look like to the flow.
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
    }
    result = _run(env, *_upscale_args(bucket, "killedworker/out.mp4"))
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary["resubmitted"] >= 1
    crash = list(markers.glob("*.json"))
    assert len(crash) == 1 and crash[0].name.endswith(".crash.json")  # the worker really died
    frames = _frames(storage.presigned_get(f"s3://{bucket}/killedworker/out.mp4", s3))
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference_frames, strict=True))
    _wait_no_jobs(cluster_env)


def test_s3_outage_mid_run_never_leaves_a_partial_final_object(
    cluster_env: dict[str, str], bucket: str, s3: S3Config, reference_frames: list[np.ndarray]
) -> None:
    args = _upscale_args(bucket, "outage/out.mp4")
    final = f"s3://{bucket}/outage/out.mp4"
    process = subprocess.Popen(
        _cli(*args),
        env=cluster_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The outage starts once a batch is wholly done: its chunk AND its result record (the
    # cross-run cache entry, written just after the chunk) are in S3, so the rerun has
    # something to resume. Waiting for the chunk alone raced the record's upload.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if _keys(bucket, "outage/.vsrflow-work/chunks/", s3) and _keys(
            bucket, "outage/.vsrflow-work/results/", s3
        ):
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before the outage"
    infra.stop("s3")
    time.sleep(4)
    infra.ensure_s3()
    stdout, stderr = process.communicate(timeout=600)
    _wait_no_jobs(cluster_env)
    if process.returncode != 0:
        # Failing is allowed, but clearly, with nothing under the final key; the rerun resumes.
        assert "vsrflow: error:" in stderr or "Error" in stderr
        assert not storage.exists(final, s3)
        rerun = _run(cluster_env, *args)
        assert rerun.returncode == 0, rerun.stderr[-4000:]
        assert json.loads(rerun.stdout)["batches_cached"] >= 1
    else:
        assert json.loads(stdout)["frames"] == 120
    frames = _frames(storage.presigned_get(final, s3))
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference_frames, strict=True))


def test_wrong_credentials_missing_bucket_and_key_are_specific_and_secret_free(
    cluster_env: dict[str, str], bucket: str
) -> None:
    secret = "wrong-secret-" + uuid.uuid4().hex
    _save_credentials_block({**cluster_env, **infra.ensure_s3()}, "vsrflow-test-wrong", secret)
    wrong = _run(
        cluster_env,
        f"s3://{bucket}/in/{SOURCE}",
        "-o",
        f"s3://{bucket}/x/o.mp4",
        "--profile",
        "slurm",
        "--credentials-block",
        "vsrflow-test-wrong",
    )
    assert wrong.returncode == 2
    assert "access denied" in wrong.stderr.lower()
    assert secret not in wrong.stderr + wrong.stdout
    assert infra.ensure_s3()["AWS_SECRET_ACCESS_KEY"] not in wrong.stderr + wrong.stdout

    no_bucket = _run(
        cluster_env,
        "s3://no-such-bucket-vsrflow/in.mp4",
        "-o",
        f"s3://{bucket}/x/o.mp4",
        "--profile",
        "slurm",
        "--credentials-block",
        BLOCK,
    )
    assert no_bucket.returncode == 2
    assert "no-such-bucket-vsrflow" in no_bucket.stderr and "bucket" in no_bucket.stderr

    no_key = _run(
        cluster_env,
        f"s3://{bucket}/in/missing.mp4",
        "-o",
        f"s3://{bucket}/x/o.mp4",
        "--profile",
        "slurm",
        "--credentials-block",
        BLOCK,
    )
    assert no_key.returncode == 2
    assert f"s3://{bucket}/in/missing.mp4" in no_key.stderr
