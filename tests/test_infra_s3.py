"""The local S3 endpoint (scripts/s3: SeaweedFS `weed mini`) with a real server: SigV4,
multipart, presigned URLs, bad credentials, loopback-only listening, restarts."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import infra
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

MiB = 1024 * 1024


def make_client(env: dict[str, str], access: str | None = None, secret: str | None = None):
    return boto3.client(
        "s3",
        endpoint_url=env["VSRFLOW_S3_ENDPOINT"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=access or env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or env["AWS_SECRET_ACCESS_KEY"],
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2},
        ),
    )


@pytest.fixture(scope="module")
def s3_env() -> dict[str, str]:
    return infra.ensure_s3()


@pytest.fixture(scope="module")
def bucket(s3_env: dict[str, str]) -> Iterator[str]:
    name = f"vsrflow-test-{uuid.uuid4().hex[:12]}"
    make_client(s3_env).create_bucket(Bucket=name)
    yield name
    s3 = make_client(infra.ensure_s3())  # the last test restarts the server
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


def test_env_sh_exports(s3_env: dict[str, str]) -> None:
    assert s3_env["VSRFLOW_S3_ENDPOINT"].startswith("http://127.0.0.1:")
    assert s3_env["AWS_ENDPOINT_URL_S3"] == s3_env["VSRFLOW_S3_ENDPOINT"]
    assert s3_env["AWS_ACCESS_KEY_ID"] == s3_env["VSRFLOW_S3_ACCESS_KEY"]
    assert s3_env["AWS_SECRET_ACCESS_KEY"] == s3_env["VSRFLOW_S3_SECRET_KEY"]
    assert len(s3_env["AWS_SECRET_ACCESS_KEY"]) >= 20
    assert s3_env["AWS_DEFAULT_REGION"] == "us-east-1"
    env_file = Path(s3_env["VSRFLOW_S3_DIR"]) / "env.sh"
    assert env_file.stat().st_mode & 0o077 == 0  # holds the secret: owner-only


def test_put_get_bytes(s3_env: dict[str, str], bucket: str) -> None:
    s3 = make_client(s3_env)
    payload = os.urandom(1000) + b"\x00\xff"
    s3.put_object(Bucket=bucket, Key="dir/small.bin", Body=payload)
    assert s3.get_object(Bucket=bucket, Key="dir/small.bin")["Body"].read() == payload
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert "dir/small.bin" in keys
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_multipart_upload_12mib(s3_env: dict[str, str], bucket: str) -> None:
    s3 = make_client(s3_env)
    data = os.urandom(12 * MiB)
    key = "multipart/12mib.bin"
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MiB), start=1):
        chunk = data[start : start + 5 * MiB]  # 5 MiB, 5 MiB, 2 MiB
        etag = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=chunk
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    assert len(parts) == 3
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(data)
    got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_presigned_get_and_anonymous_denied(s3_env: dict[str, str], bucket: str) -> None:
    s3 = make_client(s3_env)
    payload = b"presigned payload"
    s3.put_object(Bucket=bucket, Key="presigned.txt", Body=payload)
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "presigned.txt"}, ExpiresIn=120
    )
    assert url.startswith(s3_env["VSRFLOW_S3_ENDPOINT"] + "/")
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == payload
    plain = f"{s3_env['VSRFLOW_S3_ENDPOINT']}/{bucket}/presigned.txt"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(plain, timeout=10)
    assert err.value.code == 403


@pytest.mark.parametrize(
    ("which", "codes"),
    [("secret", {"SignatureDoesNotMatch"}), ("access", {"InvalidAccessKeyId"})],
)
def test_wrong_credentials_are_rejected(
    s3_env: dict[str, str], bucket: str, which: str, codes: set[str]
) -> None:
    if which == "secret":
        bad = make_client(s3_env, secret=s3_env["AWS_SECRET_ACCESS_KEY"] + "x")
    else:
        bad = make_client(s3_env, access="NOSUCHACCESSKEY00000")
    for call in (bad.list_buckets, lambda: bad.get_object(Bucket=bucket, Key="dir/small.bin")):
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert err.value.response["Error"]["Code"] in codes


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of the TCP sockets in LISTEN state that process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = f[1].split(":")
            raw = bytes.fromhex(hex_ip)
            if width == 4:
                ip = ".".join(str(b) for b in raw[::-1])
            else:  # four little-endian 32-bit words
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                ip = ":".join(b"".join(words).hex()[i : i + 4] for i in range(0, 32, 4))
            found.add((ip, int(hex_port, 16)))
    return found


def test_listens_on_loopback_only(s3_env: dict[str, str]) -> None:
    pid = int((Path(s3_env["VSRFLOW_S3_DIR"]) / "weed.pid").read_text())
    addrs = _listening_addresses(pid)
    port = int(s3_env["VSRFLOW_S3_ENDPOINT"].rsplit(":", 1)[1])
    assert ("127.0.0.1", port) in addrs
    assert {ip for ip, _ in addrs} == {"127.0.0.1"}, addrs


def test_start_is_idempotent_and_never_prints_the_secret(s3_env: dict[str, str]) -> None:
    again = infra.start("s3")
    assert again.status == "already running"
    assert again.env == s3_env
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in again.output


def test_restart_keeps_data_and_credentials(s3_env: dict[str, str], bucket: str) -> None:
    s3 = make_client(s3_env)
    s3.put_object(Bucket=bucket, Key="persist.txt", Body=b"still here")
    was_ours = "s3" in infra.STARTED
    infra.stop("s3")
    restarted = infra.start("s3")
    if not was_ours:  # it ran before the tests: leave it running for stop_started()
        infra.STARTED.discard("s3")
    assert restarted.status == "started"
    assert restarted.env == s3_env
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in restarted.output
    body = make_client(restarted.env).get_object(Bucket=bucket, Key="persist.txt")["Body"]
    assert body.read() == b"still here"
