"""The single-node Slurm test cluster (scripts/slurm) with real daemons: GPU gres accounting,
pending on resources, and dask-jobqueue workers running as Slurm jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import infra
import pytest


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    try:
        return infra.ensure_slurm()
    except infra.InfraUnavailable as exc:
        pytest.skip(f"Slurm cannot be installed on this machine (needs root and apt): {exc}")


@pytest.fixture
def sh(slurm_env: dict[str, str]) -> Callable[..., str]:
    env = {**os.environ, **slurm_env}

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{cmd} failed: {proc.stdout}{proc.stderr}"
        return proc.stdout

    return run


@pytest.fixture
def jobs(sh: Callable[..., str]) -> Iterator[list[str]]:
    """Job ids submitted by a test; cancelled (and waited for) afterwards."""
    ids: list[str] = []
    yield ids
    if ids:
        sh("scancel", *ids)
        wait_for(lambda: not sh("squeue", "-h", "-t", "PD,R,CG", "-j", ",".join(ids)).strip())


def wait_for(cond: Callable[[], object], timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def sbatch(sh: Callable[..., str], tmp_path: Path, script: str, *opts: str) -> str:
    log = str(tmp_path / "slurm-%j.out")
    out = sh("sbatch", "--parsable", "-p", "gpu", "-o", log, *opts, "--wrap", script)
    return out.strip().split(";")[0]


def job_field(sh: Callable[..., str], job_id: str, field: str) -> str:
    for word in sh("scontrol", "show", "job", "-o", job_id).split():
        if word.startswith(field + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"no {field} in scontrol show job {job_id}")


def queue(sh: Callable[..., str], ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state compact code, reason) from squeue."""
    out = sh("squeue", "-h", "-j", ",".join(ids), "-o", "%i|%t|%r")
    rows = (line.split("|") for line in out.splitlines() if line.strip())
    return {r[0]: (r[1], r[2]) for r in rows}


def test_node_is_idle_with_two_gpus(sh: Callable[..., str], slurm_env: dict[str, str]) -> None:
    out = sh("sinfo", "-h", "-N", "-o", "%N|%P|%T|%G")
    node, partition, state, gres = out.split()[0].split("|")
    assert node == slurm_env["VSRFLOW_SLURM_NODE"]
    assert partition == "gpu*"  # the default partition
    assert state in {"idle", "mixed", "allocated"}
    assert gres == "gpu:2"


def test_gpu_job_sees_its_id_and_a_gpu(
    sh: Callable[..., str], tmp_path: Path, jobs: list[str]
) -> None:
    result = tmp_path / "result.txt"
    job_id = sbatch(
        sh, tmp_path, f'echo "$SLURM_JOB_ID $CUDA_VISIBLE_DEVICES" > {result}', "--gres=gpu:1"
    )
    jobs.append(job_id)
    assert job_id.isdigit()
    # It is in squeue until it finishes, then scontrol still knows it (MinJobAge=300).
    wait_for(lambda: job_field(sh, job_id, "JobState") == "COMPLETED", what=f"job {job_id}")
    assert job_field(sh, job_id, "ExitCode") == "0:0"
    seen_id, cuda = result.read_text().split()
    assert seen_id == job_id
    assert cuda in {"0", "1"}


def test_two_gpu_jobs_run_and_a_third_pends(
    sh: Callable[..., str], tmp_path: Path, jobs: list[str]
) -> None:
    for i in range(3):
        script = f'echo "$CUDA_VISIBLE_DEVICES" > {tmp_path}/gpu-$SLURM_JOB_ID; sleep 120'
        jobs.append(sbatch(sh, tmp_path, script, "--gres=gpu:1", "-J", f"gpu{i}"))

    def settled() -> dict[str, tuple[str, str]] | None:
        q = queue(sh, jobs)
        states = sorted(s for s, _ in q.values())
        pending_reasons = {r for s, r in q.values() if s == "PD"}
        return q if states == ["PD", "R", "R"] and pending_reasons == {"Resources"} else None

    q = wait_for(settled, what="2 running + 1 pending (Resources) jobs")
    running = [j for j, (s, _) in q.items() if s == "R"]
    gpus = wait_for(
        lambda: (
            all((tmp_path / f"gpu-{j}").exists() for j in running)
            and {(tmp_path / f"gpu-{j}").read_text().strip() for j in running}
        ),
        what="running jobs to write CUDA_VISIBLE_DEVICES",
    )
    assert gpus == {"0", "1"}  # each running job has its own GPU


def test_gpus_not_cpus_are_the_limit(
    sh: Callable[..., str], tmp_path: Path, jobs: list[str]
) -> None:
    """One job holding both GPUs blocks a GPU job while a CPU is free; a CPU job still runs."""
    both = sbatch(sh, tmp_path, "sleep 120", "--gres=gpu:2")
    jobs.append(both)
    wait_for(lambda: queue(sh, [both]).get(both, ("", ""))[0] == "R", what="2-GPU job running")
    gpu_job = sbatch(sh, tmp_path, "sleep 120", "--gres=gpu:1")
    cpu_job = sbatch(sh, tmp_path, "sleep 120")
    jobs.extend([gpu_job, cpu_job])
    expected = {gpu_job: ("PD", "Resources"), cpu_job: ("R", "None")}
    wait_for(
        lambda: queue(sh, [gpu_job, cpu_job]) == expected,
        what="GPU job pending on Resources while the CPU-only job runs",
    )


def test_dask_slurmcluster_worker_is_a_slurm_job(
    sh: Callable[..., str],
    slurm_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)  # sbatch/squeue/scancel run by dask-jobqueue need them

    def job_info() -> tuple[str, str]:
        import os

        return os.environ["SLURM_JOB_ID"], os.environ.get("CUDA_VISIBLE_DEVICES", "")

    with SLURMCluster(
        queue="gpu",
        cores=1,
        memory="1GB",
        processes=1,
        walltime="00:10:00",
        job_extra_directives=["--gres=gpu:1"],
        interface="lo",  # workers listen on 127.0.0.1
        scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        python=sys.executable,
        log_directory=str(tmp_path),
        death_timeout=60,
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        cluster.scale(1)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=120)
            job_id, cuda = client.submit(job_info, pure=False).result(timeout=60)
            worker_addrs = list(client.scheduler_info()["workers"])
            submitted = {job.job_id for job in cluster.workers.values()}
            assert job_id in submitted
            assert queue(sh, [job_id]) == {job_id: ("R", "None")}
            assert job_field(sh, job_id, "JobState") == "RUNNING"
            assert cuda in {"0", "1"}
            assert all(a.startswith("tcp://127.0.0.1:") for a in worker_addrs)
    # Closing the cluster cancels its job.
    wait_for(
        lambda: job_field(sh, job_id, "JobState") in {"CANCELLED", "COMPLETED"},
        what=f"dask worker job {job_id} to end",
    )


def test_start_is_idempotent_and_survives_restart(
    sh: Callable[..., str], tmp_path: Path, jobs: list[str]
) -> None:
    t0 = time.monotonic()
    again = infra.start("slurm")
    assert again.status == "already running"
    assert time.monotonic() - t0 < 10

    was_ours = "slurm" in infra.STARTED
    infra.stop("slurm")
    restarted = infra.start("slurm")
    if not was_ours:  # it ran before the tests: leave it running for stop_started()
        infra.STARTED.discard("slurm")
    assert restarted.status == "started"
    result = tmp_path / "after-restart.txt"
    job_id = sbatch(sh, tmp_path, f'echo "$SLURM_JOB_ID" > {result}', "--gres=gpu:1")
    jobs.append(job_id)
    wait_for(lambda: job_field(sh, job_id, "JobState") == "COMPLETED", what=f"job {job_id}")
    assert result.read_text().strip() == job_id
