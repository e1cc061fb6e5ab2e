"""The archive flows on real services: SeaweedFS S3, the Prefect server, a real worker.

* backfill over an S3 prefix with three clips: a first run limited to one video, then a
  full run upscales exactly the other two, then a third run starts nothing;
* two watch runs started at the same moment upscale each new clip exactly once;
* claims: many concurrent claimers of one piece of work, exactly one wins (S3 conditional
  PUT and local O_EXCL), and check_done follows the manifest.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deploy_support as ds
import infra
import pytest

from vsrflow import catalog, storage
from vsrflow.locations import Locations
from vsrflow.settings import UpscaleSettings
from vsrflow.storage import S3Config

FRAMES = 12
#: The shared weights hold the official animevideov3 file (the default live-action model's
#: official file is not in ../shared).
ANIME = {"model": {"name": "realesr-animevideov3"}}


@pytest.fixture(scope="module")
def s3() -> S3Config:
    return S3Config.from_env(infra.ensure_s3())


@pytest.fixture(scope="module")
def bucket(s3: S3Config) -> str:
    name = f"vsrflow-archive-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def worker(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ds.Worker]:
    ds.deploy()
    ds.save_credentials_block()
    worker = ds.Worker(tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield worker
    worker.stop()


def _upload_clips(
    s3: S3Config, bucket: str, prefix: str, names: list[str], tmp: Path, offset: int
) -> list[str]:
    uris = []
    for i, name in enumerate(names):
        clip = ds.make_clip(tmp / prefix / name, offset=offset + 7 * i, frames=FRAMES)
        uri = f"s3://{bucket}/{prefix}/{name}"
        storage.upload_file(clip, uri, s3)
        uris.append(uri)
    return uris


def _run_archive(deployment: str, worker: ds.Worker, params: dict[str, Any]) -> tuple[str, str]:
    args = []
    for name, value in params.items():
        args += ["--param", f"{name}={value if isinstance(value, str) else json.dumps(value)}"]
    result = ds.prefect_cli(
        "deployment",
        "run",
        deployment,
        *args,
        "--watch",
        "--watch-interval",
        "2",
        "--watch-timeout",
        "300",
        timeout=360,
    )
    detail = f"{result.stdout}\n{result.stderr}\n--- worker log ---\n{worker.tail()}"
    assert result.returncode == 0 and "Completed" in result.stdout, detail
    run_id = next(
        line.split("UUID:")[1].strip() for line in result.stdout.splitlines() if "UUID:" in line
    )
    return run_id, detail


def _outputs(s3: S3Config, bucket: str, prefix: str) -> dict[str, list[str]]:
    keys = [o.uri for o in storage.list_objects(f"s3://{bucket}/{prefix}/", s3)]
    return {
        "videos": sorted(k for k in keys if k.endswith(".mp4") and "/." not in k),
        "manifests": sorted(k for k in keys if k.endswith(".manifest.json")),
        "claims": sorted(k for k in keys if f"/{catalog.CLAIMS_DIR}/" in k),
    }


@pytest.mark.slow
def test_backfill_upscales_only_what_is_not_done_and_a_rerun_starts_nothing(
    worker: ds.Worker, s3: S3Config, bucket: str, tmp_path: Path
) -> None:
    sources = _upload_clips(s3, bucket, "archive", ["a.mp4", "b.mp4", "sub/c.mp4"], tmp_path, 0)
    # Not videos, or not sources: a text file, a hidden partial upload.
    storage.put_json(f"s3://{bucket}/archive/notes.txt", {"x": 1}, s3)
    storage.upload_file(tmp_path / "archive" / "a.mp4", f"s3://{bucket}/archive/.a.partial", s3)
    params = {
        "source_prefix": f"s3://{bucket}/archive/",
        "target_prefix": f"s3://{bucket}/x4/",
        "patterns": ["*.mp4"],
        "credentials_block": ds.BLOCK,
        "settings": ANIME,
    }
    source_prefix = f"s3://{bucket}/archive/"

    # First night, one video allowed: exactly one is done afterwards.
    _run_archive("archive-backfill/archive-backfill", worker, {**params, "max_videos": 1})
    first = ds.runs_of("upscale-video/upscale-video", source_prefix)
    assert len(first) == 1 and first[0].state.is_completed()
    assert len(_outputs(s3, bucket, "x4")["manifests"]) == 1

    # Full run: exactly the two others.
    _, detail = _run_archive("archive-backfill/archive-backfill", worker, params)
    runs = ds.runs_of("upscale-video/upscale-video", source_prefix)
    assert len(runs) == 3, detail
    assert sorted(r.parameters["input_path"] for r in runs) == sorted(sources)
    assert all(r.state.is_completed() for r in runs)
    assert {"vsrflow-archive", "vsrflow-backfill"} <= set(runs[0].tags)
    found = _outputs(s3, bucket, "x4")
    expected = sorted(f"s3://{bucket}/x4/{n}" for n in ["a.mp4", "b.mp4", "sub/c.mp4"])
    assert found["videos"] == expected
    assert found["manifests"] == [f"{v}.manifest.json" for v in expected]
    assert len(found["claims"]) == 3
    for video in expected:
        assert ds.decoded_frames(storage.presigned_get(video, s3)) == (FRAMES, (256, 192))
        manifest = storage.get_json(f"{video}.manifest.json", s3)
        assert manifest["source_identity"].startswith("s3-etag:")
        assert manifest["parameters"]["model.name"] == "realesr-animevideov3"

    # Third run: nothing left, and its table artifact says so for every video.
    run_id, detail = _run_archive("archive-backfill/archive-backfill", worker, params)
    assert len(ds.runs_of("upscale-video/upscale-video", source_prefix)) == 3, detail
    rows = ds.table_rows(uuid.UUID(run_id))
    assert sorted(r["video"] for r in rows) == sorted(sources)
    assert {r["status"] for r in rows} == {"up to date"}, rows

    # Other settings are other work: the done check says so, naming them.
    other = UpscaleSettings.model_validate({**ANIME, "encoder": {"crf": 30}})
    check = catalog.check_done(Locations(s3), sources[0], expected[0], other.decisive_parameters())
    assert not check.done and check.reason == "parameters differ: encoder.crf"


@pytest.mark.slow
def test_two_overlapping_watch_runs_upscale_each_new_video_exactly_once(
    worker: ds.Worker, s3: S3Config, bucket: str, tmp_path: Path
) -> None:
    sources = _upload_clips(s3, bucket, "incoming", ["n1.mp4", "n2.mp4"], tmp_path, 40)
    params = {
        "source_prefix": f"s3://{bucket}/incoming/",
        "target_prefix": f"s3://{bucket}/upscaled/",
        "credentials_block": ds.BLOCK,
        "settings": ANIME,
    }
    watch_id = ds.deployment_id("watch-arrivals/watch-arrivals")
    with ds.api() as client:
        watchers = [
            client.create_flow_run_from_deployment(watch_id, parameters=params).id for _ in range(2)
        ]
    states = ds.wait_final(watchers, timeout=240)
    assert set(states.values()) == {"Completed"}, states
    rows = [row for w in watchers for row in ds.table_rows(w)]
    statuses = [r["status"] for r in rows]
    assert statuses.count("launched") == 2, rows
    # The other watcher saw each video and left it alone (claimed, or already done).
    assert statuses.count("claimed by another run") + statuses.count("up to date") == 2, rows
    launched = [r for r in rows if r["status"] == "launched"]
    assert all(r["flow run"] for r in launched), rows  # a link to each started run

    runs = ds.runs_of("upscale-video/upscale-video", f"s3://{bucket}/incoming/")
    assert sorted(r.parameters["input_path"] for r in runs) == sorted(sources)
    finals = ds.wait_final([r.id for r in runs], timeout=300)
    assert set(finals.values()) == {"Completed"}, f"{finals}\n{worker.tail()}"
    for source in sources:
        output = source.replace("/incoming/", "/upscaled/")
        assert ds.decoded_frames(storage.presigned_get(output, s3)) == (FRAMES, (256, 192))

    # A later check finds both done and starts nothing.
    with ds.api() as client:
        again = client.create_flow_run_from_deployment(watch_id, parameters=params).id
    assert ds.wait_final([again], timeout=240)[again] == "Completed"
    assert [r["status"] for r in ds.table_rows(again)] == ["up to date"] * 2
    assert len(ds.runs_of("upscale-video/upscale-video", f"s3://{bucket}/incoming/")) == 2


def _race(store: catalog.ClaimStore, claimers: int) -> list[catalog.Claim]:
    barrier = threading.Barrier(claimers)
    results: list[catalog.Claim] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        got = catalog.claim(store, "work", {"who": threading.get_ident()}, lambda _: "active")
        with lock:
            results.append(got)

    threads = [threading.Thread(target=one) for _ in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("where", ["s3", "local"])
def test_exactly_one_of_many_concurrent_claimers_wins(
    where: str, s3: S3Config, bucket: str, tmp_path: Path
) -> None:
    locations = Locations(s3)
    root = f"s3://{bucket}/race-{uuid.uuid4().hex[:6]}/" if where == "s3" else str(tmp_path)
    store = catalog.ClaimStore(locations, root)
    results = _race(store, 8)
    assert sorted(r.kind for r in results) == ["busy"] * 7 + ["new"]
    assert {r.name for r in results} == {"work.1.json"}

    # The winner records its run; a finished-but-failed run frees the next attempt, once.
    store.write("work.1.json", {"flow_run_id": "run-1", "claimed_at": 0})
    states = {"run-1": "failed"}
    nxt = catalog.claim(store, "work", {}, lambda r: states.get(r, "missing"))
    assert (nxt.kind, nxt.attempt) == ("new", 2)
    assert catalog.claim(store, "work", {}, lambda r: "failed").kind == "busy"
    # A claim whose creator vanished before recording a run is recoverable after the grace.
    late = catalog.claim(store, "work", {}, lambda r: "failed", grace_s=5, now=10**10)
    assert (late.kind, late.name) == ("recover", "work.2.json")
    store.write("work.2.json", {"flow_run_id": "run-2"})
    store.write("work.3.json", {"flow_run_id": "run-3"})
    assert catalog.claim(store, "work", {}, lambda r: "failed").kind == "exhausted"


def test_candidates_outputs_and_done_check_on_a_local_tree(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "src" / "x4"
    ds.make_clip(src / "one.MP4", offset=1, frames=4)
    ds.make_clip(src / "deep" / "two.webm.mkv", offset=2, frames=4)
    (src / ".vsrflow-work").mkdir()
    ds.make_clip(src / ".vsrflow-work" / "chunk.mp4", offset=3, frames=4)
    ds.make_clip(dst / "one.MP4", offset=4, frames=4)  # an output inside the source tree
    (src / "readme.txt").write_text("not a video")
    locations = Locations()
    found = catalog.list_candidates(
        locations, str(src), ["*.mp4", "*.mkv"], exclude_prefixes=[str(dst)]
    )
    assert sorted(c.relative for c in found) == ["deep/two.webm.mkv", "one.MP4"]
    one = next(c for c in found if c.relative == "one.MP4")
    output = catalog.output_for(one, str(dst))
    assert output == str(dst / "one.MP4")
    assert catalog.check_done(locations, one.location, output, {}).reason == "no manifest"
    params = {"model.name": "realesr-animevideov3", "engine.tile": 0}
    manifest = {
        "source_identity": locations.identity(one.location),
        "source_bytes": one.size,
        "parameters": {**params, "profile": "slurm"},
    }
    Path(catalog.manifest_location(output)).write_text(json.dumps(manifest))
    assert catalog.check_done(locations, one.location, output, {**params, "profile": "local"}).done
    changed = {**params, "engine.tile": 256}
    assert catalog.check_done(locations, one.location, output, changed).reason == (
        "parameters differ: engine.tile"
    )
    ds.make_clip(Path(one.location), offset=9, frames=4)  # the source was replaced
    assert not catalog.check_done(locations, one.location, output, params).done
    with pytest.raises(FileNotFoundError):
        catalog.list_candidates(locations, str(tmp_path / "missing"))
