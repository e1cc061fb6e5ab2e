"""upscale-images with s3:// sources and outputs, against the real SeaweedFS from scripts/s3.

Small copies (64x48) of the shared photos (RGB PNG, JPEG, RGBA PNG) go through the real
animevideov3 weights:

* an S3 prefix -> another S3 prefix: every output decodes at 4x and equals (bytes and pixels)
  a local run of the same images; the folder manifest lists sources, outputs, weights and
  settings; a rerun computes nothing; an output deleted since is recomputed alone; no
  temporary (``.partial``) key is left behind;
* one image S3 -> local file and local -> S3 prefix;
* the ``vsrflow`` command with an AwsCredentials block (no AWS keys in its environment): an
  s3:// image is an image job, and a missing key fails with one clear line and no secret.

In-process flows read the S3 credentials from the environment (the suite's SeaweedFS); the
CLI runs talk to the suite's Prefect server, where the block is saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import infra
import numpy as np
import pytest
from PIL import Image

from flows.cli import _is_image_job
from flows.upscale_images import upscale_images
from vsrflow import storage
from vsrflow.errors import ObjectNotFoundError
from vsrflow.images import FOLDER_MANIFEST, local_copy, read_image
from vsrflow.locations import Locations
from vsrflow.results import ImagesResult
from vsrflow.settings import UpscaleSettings
from vsrflow.storage import S3Config

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("00003.png", "0014.jpg", "children-alpha.png")
SMALL = (64, 48)
BLOCK = "vsrflow-test-images-s3"
_ENV_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def s3(s3_env: dict[str, str]) -> S3Config:
    return S3Config.from_env(s3_env)


@pytest.fixture(scope="module")
def bucket(s3: S3Config) -> Iterator[str]:
    with infra.temporary_bucket(s3.client(), "vsrflow-images") as name:
        yield name


@pytest.fixture(scope="module")
def weights(shared_model: Callable[[str], Path]) -> Path:
    return shared_model("realesr-animevideov3.pth")


@pytest.fixture(scope="module")
def settings(weights: Path) -> UpscaleSettings:
    return UpscaleSettings(model={"weights_path": str(weights)})


@pytest.fixture(scope="module")
def photos(shared_image: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared photos at 64x48 (keeping format and mode), to keep CPU time low."""
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        with Image.open(shared_image(name)) as image:
            small = image.resize(SMALL, Image.Resampling.LANCZOS)
        options = {"quality": 90} if name.endswith(".jpg") else {}
        small.save(folder / name, **options)
    return folder


@pytest.fixture(scope="module")
def uploaded(photos: Path, bucket: str, s3: S3Config) -> str:
    """The photos under ``s3://bucket/in/``, plus an image in a subfolder and a hidden one
    (neither is part of the folder job)."""
    for name in PHOTOS:
        storage.upload_file(photos / name, f"s3://{bucket}/in/{name}", s3)
    storage.upload_file(photos / PHOTOS[0], f"s3://{bucket}/in/sub/nested.png", s3)
    storage.upload_file(photos / PHOTOS[0], f"s3://{bucket}/in/.hidden.png", s3)
    return f"s3://{bucket}/in/"


@pytest.fixture(scope="module")
def reference(
    photos: Path, settings: UpscaleSettings, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    """A local run of the same images: name -> output bytes."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = upscale_images(input_path=str(photos), output_path=str(out), settings=settings)
    assert result.computed == len(PHOTOS)
    return {name: (out / name).read_bytes() for name in PHOTOS}


@pytest.fixture(scope="module")
def block(s3_env: dict[str, str]) -> str:
    """An AwsCredentials block for the test SeaweedFS, saved on the suite's Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    api = infra.ensure_prefect()["PREFECT_API_URL"]
    with temporary_settings({PREFECT_API_URL: api}):
        AwsCredentials(
            aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(endpoint_url=s3_env["VSRFLOW_S3_ENDPOINT"]),
        ).save(BLOCK, overwrite=True)
    return BLOCK


# --------------------------------------------------------------------------------------------
# Helpers


def _object(uri: str, s3: S3Config) -> bytes:
    bucket, key = storage.parse_s3_uri(uri)
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def _pixels(data: bytes, name: str, tmp: Path) -> np.ndarray:
    path = tmp / f"decoded-{uuid.uuid4().hex[:6]}{Path(name).suffix}"
    path.write_bytes(data)
    try:
        return read_image(path).pixels
    finally:
        path.unlink()


def _assert_same_as_reference(
    data: bytes, name: str, reference: dict[str, bytes], tmp: Path
) -> None:
    pixels = _pixels(data, name, tmp)
    assert pixels.shape[:2] == (SMALL[1] * 4, SMALL[0] * 4), name
    assert np.array_equal(pixels, _pixels(reference[name], name, tmp)), name
    assert data == reference[name], f"{name}: same pixels but different bytes"


def _keys(bucket: str, s3: S3Config) -> list[str]:
    return [o.uri for o in storage.list_objects(f"s3://{bucket}/", s3)]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "upscale", *args, "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _cli_env(s3_env: dict[str, str]) -> dict[str, str]:
    """The user's shell with the block: the Prefect server, and no S3 keys or endpoint."""
    env = {**os.environ, **infra.ensure_prefect()}
    for name in (*_ENV_SECRETS, "VSRFLOW_S3_ACCESS_KEY", "VSRFLOW_S3_SECRET_KEY"):
        env.pop(name, None)
    for name in ("VSRFLOW_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    return env


# --------------------------------------------------------------------------------------------
# Tests


def test_s3_folder_to_s3_folder_equals_a_local_run_and_reruns_from_cache(
    uploaded: str,
    bucket: str,
    s3: S3Config,
    settings: UpscaleSettings,
    weights: Path,
    reference: dict[str, bytes],
    tmp_path: Path,
) -> None:
    out = f"s3://{bucket}/out/"

    def run() -> ImagesResult:
        return upscale_images(input_path=uploaded, output_path=out, settings=settings)

    first = run()
    expected = [f"{out}{name}" for name in sorted(PHOTOS)]
    assert first.outputs == expected  # not the subfolder's image, not the hidden one
    assert first.computed == len(PHOTOS) and first.cached == 0
    for uri in expected:
        _assert_same_as_reference(_object(uri, s3), uri.rsplit("/", 1)[1], reference, tmp_path)

    assert first.manifest == f"{out}{FOLDER_MANIFEST}"
    manifest = storage.get_json(first.manifest, s3)
    assert manifest["source"] == uploaded and manifest["output"] == out
    assert manifest["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["weights_sha256"] == first.weights_sha256
    assert manifest["parameters"] == json.loads(json.dumps(settings.parameters()))
    locations = Locations(s3)
    listed = {entry["output"]: entry for entry in manifest["images"]}
    assert sorted(listed) == expected
    for uri, entry in listed.items():
        assert entry["source"] == uploaded + uri.rsplit("/", 1)[1]
        assert entry["source_identity"] == locations.identity(entry["source"])
        assert (entry["width"], entry["height"]) == (SMALL[0] * 4, SMALL[1] * 4)
        assert entry["output_bytes"] == storage.head(uri, s3).size
    assert first.work_dir == f"{out}.vsrflow-work"

    second = run()
    assert second.cached == len(PHOTOS) and second.computed == 0

    # A cache record whose output object is gone is not trusted: exactly that image is redone.
    gone = expected[1]
    storage.delete(gone, s3)
    third = run()
    assert third.computed == 1 and third.cached == len(PHOTOS) - 1
    assert [e.output for e in third.images if e.status.value == "computed"] == [gone]
    _assert_same_as_reference(_object(gone, s3), gone.rsplit("/", 1)[1], reference, tmp_path)
    assert not [k for k in _keys(bucket, s3) if ".partial" in k]


def test_one_image_s3_to_local_and_local_to_s3(
    uploaded: str,
    photos: Path,
    bucket: str,
    s3: S3Config,
    settings: UpscaleSettings,
    reference: dict[str, bytes],
    tmp_path: Path,
) -> None:
    name = "0014.jpg"
    local_out = tmp_path / "x4" / "photo_x4.jpg"
    down = upscale_images(input_path=uploaded + name, output_path=str(local_out), settings=settings)
    assert down.outputs == [str(local_out)] and down.computed == 1
    _assert_same_as_reference(local_out.read_bytes(), name, reference, tmp_path)
    manifest = json.loads(Path(f"{local_out}.manifest.json").read_text())
    assert manifest["source"] == uploaded + name and manifest["output"] == str(local_out)
    assert manifest["source_identity"] == Locations(s3).identity(uploaded + name)
    assert sorted(p.name for p in local_out.parent.iterdir() if not p.name.startswith(".")) == [
        "photo_x4.jpg",
        "photo_x4.jpg.manifest.json",
    ]

    name = "children-alpha.png"
    up = upscale_images(
        input_path=str(photos / name), output_path=f"s3://{bucket}/single/", settings=settings
    )
    target = f"s3://{bucket}/single/{name}"
    assert up.outputs == [target] and up.computed == 1
    _assert_same_as_reference(_object(target, s3), name, reference, tmp_path)
    assert read_image(photos / name).channels == 4
    manifest = storage.get_json(f"{target}.manifest.json", s3)
    assert manifest["source"] == str(photos / name) and manifest["output"] == target
    assert not [k for k in _keys(bucket, s3) if ".partial" in k]


def test_a_missing_source_key_fails_before_any_compute_naming_the_key(
    uploaded: str, bucket: str, settings: UpscaleSettings, tmp_path: Path
) -> None:
    missing = uploaded + "missing.png"
    with pytest.raises(ObjectNotFoundError, match=re.escape(missing)):
        upscale_images(input_path=missing, output_path=str(tmp_path / "o"), settings=settings)
    assert not (tmp_path / "o").exists()


def test_a_key_gone_after_planning_fails_in_the_task_naming_the_key_not_the_url(
    bucket: str, s3: S3Config, s3_env: dict[str, str]
) -> None:
    """What upscale_image does with a source deleted between planning and its task."""
    gone = f"s3://{bucket}/in/gone-{uuid.uuid4().hex[:6]}.png"
    with pytest.raises(ObjectNotFoundError) as failure, local_copy(Locations(s3), gone):
        pass
    text = str(failure.value)
    assert gone in text and "X-Amz" not in text and "?" not in text
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in text


def test_cli_with_a_credentials_block_reads_and_writes_s3_images(
    uploaded: str,
    bucket: str,
    s3: S3Config,
    s3_env: dict[str, str],
    block: str,
    weights: Path,
    reference: dict[str, bytes],
    tmp_path: Path,
) -> None:
    env = _cli_env(s3_env)
    name = "00003.png"
    ok = _cli(
        env,
        uploaded + name,
        "-o",
        f"s3://{bucket}/cli/",
        "--weights",
        str(weights),
        "--credentials-block",
        block,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    summary = json.loads(ok.stdout[ok.stdout.index("{") :])
    assert summary["output"] == f"s3://{bucket}/cli/{name}"
    assert [e["status"] for e in summary["images"]] == ["computed"]
    _assert_same_as_reference(_object(summary["output"], s3), name, reference, tmp_path)

    missing = uploaded + "missing.png"
    bad = _cli(
        env,
        missing,
        "-o",
        f"s3://{bucket}/cli-missing/",
        "--weights",
        str(weights),
        "--credentials-block",
        block,
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("vsrflow: error: ") and missing in last and "no object" in last
    text = bad.stdout + bad.stderr
    for secret in (s3_env["AWS_SECRET_ACCESS_KEY"], s3_env["AWS_ACCESS_KEY_ID"]):
        assert secret not in text
    assert "X-Amz-Signature" not in text and "X-Amz-Credential" not in text
    assert not [k for k in _keys(bucket, s3) if "/cli-missing/" in k]


def test_what_counts_as_an_image_job() -> None:
    assert _is_image_job("s3://bucket/photos/")
    assert _is_image_job("s3://bucket")
    assert _is_image_job("s3://bucket/a/b.PNG") and _is_image_job("s3://bucket/c.webp")
    assert not _is_image_job("s3://bucket/clip.mp4")
    assert not _is_image_job("s3://bucket/photos")  # no suffix, no '/': a video key
    assert _is_image_job(str(REPO)) and _is_image_job("x.jpeg")
    assert not _is_image_job("clip.mkv")
