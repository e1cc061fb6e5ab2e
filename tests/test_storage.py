"""vsrflow.storage against a real S3 server (SeaweedFS from scripts/s3): round trips,
multipart, atomic publish, error mapping without leaked secrets, and PyAV reading (and
seeking in) an mp4 through a presigned URL."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import boto3
import infra
import pytest
from botocore.config import Config

from vsrflow import storage
from vsrflow.errors import (
    BucketNotFoundError,
    CorruptMediaError,
    ObjectNotFoundError,
    StorageAccessDeniedError,
    StorageError,
    StorageUnavailableError,
)
from vsrflow.storage import S3Config

MiB = 1024 * 1024
CLIP = "bikes_640x272_25fps_noaudio.mp4"


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def s3_env() -> dict[str, str]:
    return infra.ensure_s3()


@pytest.fixture(scope="module")
def cfg(s3_env: dict[str, str]) -> S3Config:
    return S3Config.from_env(s3_env)


@pytest.fixture(scope="module")
def bucket(cfg: S3Config) -> Iterator[str]:
    with infra.temporary_bucket(cfg.client(), "vsrflow-storage") as name:
        yield name


@pytest.fixture
def prefix(bucket: str) -> str:
    """A fresh key prefix per test, so tests can list what they wrote."""
    return f"s3://{bucket}/t-{uuid.uuid4().hex[:8]}/"


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def keys_under(prefix_uri: str, cfg: S3Config) -> list[str]:
    return sorted(o.uri for o in storage.list_objects(prefix_uri, cfg))


@contextlib.contextmanager
def count_calls(cfg: S3Config, operation: str, stage: str = "before-call") -> Iterator[list[str]]:
    """Record each S3 API call ``operation`` (e.g. "UploadPart") made through cfg's client
    (``stage="before-send"``: each HTTP attempt, retries included)."""
    calls: list[str] = []
    event = f"{stage}.s3.{operation}"

    def handler(**kwargs: Any) -> None:
        calls.append(operation)

    events = cfg.client().meta.events
    events.register(event, handler)
    try:
        yield calls
    finally:
        events.unregister(event, handler)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Pure: config, URIs


def test_from_env_precedence_and_repr_has_no_secrets() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:2",
        "VSRFLOW_S3_ENDPOINT": "http://127.0.0.1:3",
        "AWS_REGION": "eu-west-3",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEACCESS1234",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t/VALUE+never-shown",
        "AWS_SESSION_TOKEN": "token-never-shown",
    }
    cfg = S3Config.from_env(env)
    assert cfg.endpoint_url == "http://127.0.0.1:3"
    assert cfg.region == "eu-west-3"
    assert cfg.session_token == "token-never-shown"
    assert S3Config.from_env({**env, "VSRFLOW_S3_ENDPOINT": ""}).endpoint_url.endswith(":2")
    assert S3Config.from_env({"AWS_DEFAULT_REGION": "us-east-1", **env}).region == "us-east-1"
    assert S3Config.from_env({}, max_attempts=1).max_attempts == 1
    text = repr(cfg) + str(cfg)
    for secret in ("s3cr3t/VALUE+never-shown", "token-never-shown", "AKIAEXAMPLEACCESS1234"):
        assert secret not in text
    assert cfg.key_hint == "...1234"
    with pytest.raises(ValueError, match="addressing_style"):
        S3Config(addressing_style="dns")
    with pytest.raises(ValueError, match="max_attempts"):
        S3Config(max_attempts=0)


def test_parse_and_join_uri() -> None:
    assert storage.is_s3_uri("s3://bkt/a") and not storage.is_s3_uri("/tmp/a")
    assert not storage.is_s3_uri(None)
    assert storage.parse_s3_uri("s3://bkt/a/b.mp4") == ("bkt", "a/b.mp4")
    assert storage.parse_s3_uri("s3://bkt", require_key=False) == ("bkt", "")
    assert storage.parse_s3_uri("s3://bkt/dir/", require_key=False) == ("bkt", "dir/")
    for bad, why in [
        ("s3://", "no bucket"),
        ("s3:///key", "no bucket"),
        ("s3://ab/x", "invalid bucket name 'ab'"),
        ("s3://Upper/x", "invalid bucket name"),
        ("s3://bkt", "no object key"),
        ("s3://bkt/", "no object key"),
        ("s3://bkt/dir/", "a prefix, not an object"),
        ("http://bkt/x", "not an S3 URI"),
    ]:
        with pytest.raises(ValueError, match=why):
            storage.parse_s3_uri(bad)
    assert storage.join_uri("s3://bkt/out/", "job1/", "/x.mp4") == "s3://bkt/out/job1/x.mp4"
    assert storage.join_uri("s3://bkt", "x.mp4") == "s3://bkt/x.mp4"
    for parts in [("",), ("a/../b",), ("./a",)]:
        with pytest.raises(ValueError):
            storage.join_uri("s3://bkt/out", *parts)


def test_client_is_memoised_per_config_and_thread_safe(cfg: S3Config) -> None:
    other = S3Config.from_env({}, endpoint_url=cfg.endpoint_url, max_attempts=2)
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(cfg.client())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 1
    assert other.client() is not cfg.client()
    assert S3Config.from_env({}, endpoint_url=cfg.endpoint_url, max_attempts=2).client() is (
        other.client()
    )


def test_client_factory_is_called_once_with_the_defaults(
    s3_env: dict[str, str], prefix: str
) -> None:
    """An injected factory (what tasks.storage does for AwsCredentials blocks) builds the
    client once per process and config, gets vsrflow's botocore defaults, and messages name
    the credentials source instead of environment variables."""
    seen: list[Config] = []

    def factory(defaults: Config) -> Any:
        seen.append(defaults)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=s3_env["VSRFLOW_S3_ENDPOINT"],
            region_name="us-east-1",
            aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
            config=storage.merge_botocore_config(defaults, Config(connect_timeout=2)),
        )

    custom = S3Config(
        endpoint_url=s3_env["VSRFLOW_S3_ENDPOINT"],
        client_factory=factory,
        credentials_source="the test factory",
        max_attempts=3,
    )
    threads = [threading.Thread(target=custom.client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 1
    assert seen[0].s3 == {"addressing_style": "path"} and seen[0].signature_version == "s3v4"
    assert seen[0].retries == {"mode": "standard", "total_max_attempts": 3}
    config = custom.client().meta.config
    assert (config.connect_timeout, config.read_timeout) == (2, S3Config().read_timeout)
    uri = storage.join_uri(prefix, "f.json")
    storage.put_json(uri, {"ok": True}, custom)
    assert storage.get_json(uri, custom) == {"ok": True}
    assert custom.key_hint == "from the test factory"
    missing = storage.join_uri(f"s3://vsrflow-missing-{uuid.uuid4().hex[:8]}", "x")
    with pytest.raises(BucketNotFoundError):
        storage.head(missing, custom)


# --------------------------------------------------------------------------------------------
# Round trips


def test_json_head_exists_list_delete(cfg: S3Config, prefix: str) -> None:
    uri = storage.join_uri(prefix, "state", "job.json")
    doc = {"frames": 250, "name": "vidéo", "batches": [1, 2, 3]}
    info = storage.put_json(uri, doc, cfg)
    assert info.uri == uri and info.size > 0 and info.etag and info.last_modified
    assert storage.get_json(uri, cfg) == doc
    assert storage.head(uri, cfg).size == info.size
    assert storage.exists(uri, cfg)
    assert not storage.exists(storage.join_uri(prefix, "state", "other.json"), cfg)
    assert keys_under(prefix, cfg) == [uri]
    storage.delete(uri, cfg)
    storage.delete(uri, cfg)  # idempotent
    assert not storage.exists(uri, cfg)
    assert keys_under(prefix, cfg) == []


def test_list_objects_paginates(cfg: S3Config, prefix: str) -> None:
    uris = [storage.join_uri(prefix, f"k{i}.json") for i in range(5)]
    for i, uri in enumerate(uris):
        storage.put_json(uri, i, cfg)
    with count_calls(cfg, "ListObjectsV2") as calls:
        listed = [o.uri for o in storage.list_objects(prefix, cfg, page_size=2)]
    assert listed == uris
    assert len(calls) == 3
    assert all(o.size == 1 for o in storage.list_objects(prefix, cfg))
    with pytest.raises(ValueError, match="page_size"):
        storage.list_objects(prefix, cfg, page_size=0)  # raised at the call, not on iteration


def test_upload_download_small(cfg: S3Config, prefix: str, tmp_path: Path) -> None:
    src = random_file(tmp_path / "small.bin", 100_000)
    uri = storage.join_uri(prefix, "small.bin")
    info = storage.upload_file(src, uri, cfg, metadata={"job": "j1"})
    assert info.size == 100_000
    assert cfg.client().head_object(Bucket=uri.split("/")[2], Key=uri.split("/", 3)[3])[
        "Metadata"
    ] == {"job": "j1"}
    dst = tmp_path / "out" / "small.bin"
    assert storage.download_file(uri, dst, cfg).size == 100_000
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["small.bin"]


def test_multipart_upload_above_threshold(cfg: S3Config, prefix: str, tmp_path: Path) -> None:
    src = random_file(tmp_path / "six.bin", 6 * MiB)
    uri = storage.join_uri(prefix, "six.bin")
    with count_calls(cfg, "UploadPart") as parts:
        info = storage.upload_file(src, uri, cfg, multipart_threshold=5 * MiB, part_size=5 * MiB)
    assert len(parts) == 2
    assert info.size == 6 * MiB
    dst = tmp_path / "six.down"
    storage.download_file(uri, dst, cfg, multipart_threshold=5 * MiB, part_size=5 * MiB)
    assert sha256(dst) == sha256(src)
    with pytest.raises(ValueError, match="part_size"):
        storage.upload_file(src, uri, cfg, part_size=1 * MiB)


# --------------------------------------------------------------------------------------------
# Atomic publish


def test_publish_file_success(cfg: S3Config, prefix: str, tmp_path: Path) -> None:
    src = random_file(tmp_path / "out.mp4", 6 * MiB)
    final = storage.join_uri(prefix, "job", "out_x4.mp4")
    seen: list[tuple[str, bytes]] = []

    def verify(url: str) -> None:
        assert storage.PARTIAL_MARKER in urllib.parse.urlsplit(url).path
        assert not storage.exists(final, cfg)  # not published yet
        with urllib.request.urlopen(url, timeout=10) as r:
            seen.append((url, r.read()))

    with count_calls(cfg, "UploadPartCopy") as copies:
        info = storage.publish_file(
            src,
            final,
            cfg,
            verify=verify,
            metadata={"source": "bikes"},
            multipart_threshold=5 * MiB,
            part_size=5 * MiB,
        )
    assert len(copies) == 2  # managed multipart copy, the path objects > 5 GB take
    assert len(seen) == 1 and seen[0][1] == src.read_bytes()
    assert info.uri == final and info.size == src.stat().st_size
    assert keys_under(prefix, cfg) == [final]  # no .partial- left
    bucket, key = storage.parse_s3_uri(final)
    head = cfg.client().head_object(Bucket=bucket, Key=key)
    assert head["Metadata"] == {"source": "bikes"}
    assert head["ContentType"] == "video/mp4"
    dst = tmp_path / "back.mp4"
    storage.download_file(final, dst, cfg)
    assert sha256(dst) == sha256(src)


def test_publish_file_small_single_copy(cfg: S3Config, prefix: str, tmp_path: Path) -> None:
    src = random_file(tmp_path / "a.bin", 1000)
    final = storage.join_uri(prefix, "a.bin")
    assert storage.publish_file(src, final, cfg).size == 1000
    assert keys_under(prefix, cfg) == [final]


def test_publish_removes_what_a_killed_publish_left(
    cfg: S3Config, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill -9 between upload and cleanup leaves ``.<name>.partial-*``: the next publish of
    that key removes it (at once when it holds the output lease, else once it is stale), and
    never touches another key's temporaries."""
    src = random_file(tmp_path / "out.mp4", 3000)
    final = storage.join_uri(prefix, "job", "out.mp4")
    left = storage.join_uri(prefix, "job", f".out.mp4{storage.PARTIAL_MARKER}deadrun")
    other = storage.join_uri(prefix, "job", f".other.mp4{storage.PARTIAL_MARKER}liverun")
    for uri in (left, other):
        storage.upload_file(random_file(tmp_path / "junk", 100), uri, cfg)

    storage.publish_file(src, final, cfg)  # not leased, and the leftover is seconds old
    assert keys_under(prefix, cfg) == sorted([final, left, other])

    storage.publish_file(src, final, cfg, exclusive=True)
    assert keys_under(prefix, cfg) == sorted([final, other])

    storage.upload_file(random_file(tmp_path / "junk", 100), left, cfg)
    monkeypatch.setenv("VSRFLOW_SCRATCH_STALE_S", "0")
    assert storage.sweep_stale_partials(final, cfg) == [left]
    assert keys_under(prefix, cfg) == sorted([final, other])


class ProbeFailed(Exception):
    pass


def test_publish_file_verify_failure_leaves_nothing(
    cfg: S3Config, prefix: str, tmp_path: Path
) -> None:
    src = random_file(tmp_path / "bad.mp4", 2000)
    final = storage.join_uri(prefix, "bad.mp4")

    def verify(url: str) -> None:
        raise ProbeFailed("re-probe found 0 frames")

    with pytest.raises(ProbeFailed, match="0 frames"):
        storage.publish_file(src, final, cfg, verify=verify)
    assert not storage.exists(final, cfg)
    assert keys_under(prefix, cfg) == []


def test_publish_file_failure_keeps_previous_object(
    cfg: S3Config, prefix: str, tmp_path: Path
) -> None:
    final = storage.join_uri(prefix, "keep.bin")
    old = random_file(tmp_path / "old.bin", 3000)
    storage.publish_file(old, final, cfg)

    def verify(url: str) -> None:
        raise ProbeFailed("bad output")

    with pytest.raises(ProbeFailed):
        storage.publish_file(random_file(tmp_path / "new.bin", 5000), final, cfg, verify=verify)
    assert keys_under(prefix, cfg) == [final]
    dst = tmp_path / "check.bin"
    storage.download_file(final, dst, cfg)
    assert dst.read_bytes() == old.read_bytes()


# --------------------------------------------------------------------------------------------
# Errors


def test_missing_key(cfg: S3Config, prefix: str, tmp_path: Path) -> None:
    uri = storage.join_uri(prefix, "nope.mp4")
    for call in (
        lambda: storage.head(uri, cfg),
        lambda: storage.get_json(uri, cfg),
        lambda: storage.download_file(uri, tmp_path / "nope.mp4", cfg),
    ):
        with pytest.raises(ObjectNotFoundError, match=r"s3://.*nope\.mp4.*upload the object"):
            call()
    assert not storage.exists(uri, cfg)
    assert list(tmp_path.iterdir()) == []  # no partial download left


def test_missing_bucket(cfg: S3Config, tmp_path: Path) -> None:
    name = f"vsrflow-missing-{uuid.uuid4().hex[:10]}"
    uri = f"s3://{name}/a/b.json"
    src = random_file(tmp_path / "x.bin", 10)
    for call in (
        lambda: storage.head(uri, cfg),
        lambda: storage.exists(uri, cfg),
        lambda: storage.get_json(uri, cfg),
        lambda: storage.download_file(uri, tmp_path / "y.bin", cfg),
        lambda: list(storage.list_objects(f"s3://{name}/a/", cfg)),
        lambda: storage.delete(uri, cfg),
        lambda: storage.put_json(uri, {}, cfg),
        lambda: storage.upload_file(src, uri, cfg),
        lambda: storage.publish_file(src, uri, cfg),
    ):
        with pytest.raises(BucketNotFoundError, match=f"bucket '{name}' does not exist"):
            call()
    # SeaweedFS would auto-create the bucket on PutObject; the writes above must not have.
    with pytest.raises(BucketNotFoundError):
        storage.head(uri, cfg)


def test_wrong_credentials_denied_without_leaking(
    cfg: S3Config, s3_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    wrong_secret = f"WRONG-{uuid.uuid4().hex}"
    access = s3_env["AWS_ACCESS_KEY_ID"]
    real_secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    bad = S3Config.from_env(s3_env, secret_access_key=wrong_secret, max_attempts=1)
    unknown_key = f"AKIAUNKNOWN{uuid.uuid4().hex[:9].upper()}"
    bad_key = S3Config.from_env(s3_env, access_key_id=unknown_key, max_attempts=1)
    uri = storage.join_uri(prefix, "x.json")
    storage.put_json(uri, 1, cfg)
    src = random_file(tmp_path / "x.bin", 10)
    calls: list[tuple[S3Config, Callable[[S3Config], object]]] = [
        (bad, lambda c: storage.head(uri, c)),
        (bad, lambda c: storage.exists(uri, c)),  # 403 is not "missing"
        (bad, lambda c: storage.get_json(uri, c)),
        (bad, lambda c: storage.upload_file(src, uri, c)),
        (bad, lambda c: storage.publish_file(src, uri, c)),
        (bad, lambda c: list(storage.list_objects(prefix, c))),
        (bad_key, lambda c: storage.get_json(uri, c)),
        (bad_key, lambda c: storage.head(uri, c)),
    ]
    for config, call in calls:
        with pytest.raises(StorageAccessDeniedError) as info:
            call(config)
        text = str(info.value) + repr(info.value)
        assert uri in text or prefix in text
        assert "AWS_SECRET_ACCESS_KEY" in text  # says what to check
        for secret in (wrong_secret, real_secret, access, unknown_key):
            assert secret not in text
        assert config.access_key_id[-4:] in text
    assert storage.get_json(uri, cfg) == 1  # the failed writes changed nothing


def test_unreachable_endpoint_is_unavailable(bucket: str, tmp_path: Path) -> None:
    port = closed_port()

    def dead(attempts: int) -> S3Config:
        return S3Config(
            endpoint_url=f"http://127.0.0.1:{port}",
            region="us-east-1",
            access_key_id="AKIADEADENDPOINT0000",
            secret_access_key="dead-endpoint-secret",
            max_attempts=attempts,
            connect_timeout=0.5,
            read_timeout=0.5,
        )

    src = random_file(tmp_path / "x.bin", 10)
    uri = f"s3://{bucket}/x.json"
    start = time.monotonic()
    for call in (
        lambda c: storage.head(uri, c),
        lambda c: storage.exists(uri, c),
        lambda c: storage.get_json(uri, c),
        lambda c: storage.put_json(uri, 1, c),
        lambda c: storage.upload_file(src, uri, c),
        lambda c: storage.publish_file(src, uri, c),
        lambda c: list(storage.list_objects(f"s3://{bucket}/", c)),
    ):
        with pytest.raises(StorageUnavailableError, match=f"127.0.0.1:{port}.*retry") as info:
            call(dead(1))
        assert isinstance(info.value, StorageError)
        assert "dead-endpoint-secret" not in str(info.value) + repr(info.value)
        assert "AKIADEADENDPOINT0000" not in str(info.value) + repr(info.value)
    assert time.monotonic() - start < 5
    # max_attempts counts every HTTP attempt, the first one included.
    two = dead(2)
    with (
        count_calls(two, "HeadObject", stage="before-send") as sends,
        pytest.raises(StorageUnavailableError, match="2 attempt"),
    ):
        storage.head(uri, two)
    assert len(sends) == 2


# --------------------------------------------------------------------------------------------
# Presigned URLs: urllib and PyAV (seeking via HTTP Range requests)


@pytest.fixture(scope="module")
def clip_uri(cfg: S3Config, bucket: str, shared_media: Callable[[str], Path]) -> str:
    uri = f"s3://{bucket}/media/{CLIP}"
    storage.upload_file(shared_media(CLIP), uri, cfg)
    return uri


def test_presigned_url_readable_with_urllib(
    cfg: S3Config, clip_uri: str, shared_media: Callable[[str], Path]
) -> None:
    url = storage.presigned_get(clip_uri, cfg, expires_s=600)
    data = shared_media(CLIP).read_bytes()
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == data
    req = urllib.request.Request(url, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 206 and r.read() == data[100:200]
    with pytest.raises(ValueError, match="expires_s"):
        storage.presigned_get(clip_uri, cfg, expires_s=8 * 24 * 3600)


class ByteCountingProxy:
    """A loopback HTTP proxy that forwards GETs (with their Range header) to the S3 endpoint
    and counts the response bytes it hands to the client. The request target is passed
    through unchanged and the upstream Host header is the signed one, so a presigned URL's
    signature stays valid. A small send buffer keeps kernel read-ahead out of the count."""

    def __init__(self, upstream_url: str) -> None:
        up = urllib.parse.urlsplit(upstream_url)
        self.host, self.port = up.hostname or "127.0.0.1", up.port or 80
        self.bytes = 0
        self.requests: list[tuple[str | None, int, int]] = []  # (Range, status, bytes)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._forward(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url_for(self, presigned: str) -> str:
        parts = urllib.parse.urlsplit(presigned)
        return f"http://127.0.0.1:{self.server.server_address[1]}{parts.path}?{parts.query}"

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        rng = handler.headers.get("Range")
        status = sent = 0
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", handler.path, headers={"Range": rng} if rng else {})
            resp = conn.getresponse()
            status = resp.status
            handler.send_response(resp.status)
            for name, value in resp.getheaders():
                if name.lower() not in ("connection", "keep-alive", "transfer-encoding"):
                    handler.send_header(name, value)
            handler.end_headers()
            while chunk := resp.read(4096):
                handler.wfile.write(chunk)
                sent += len(chunk)
                with self._lock:
                    self.bytes += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client seeked away: normal
        finally:
            conn.close()
            with self._lock:
                self.requests.append((rng, status, sent))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_pyav_reads_and_seeks_presigned_url(
    cfg: S3Config, clip_uri: str, shared_media: Callable[[str], Path]
) -> None:
    size = shared_media(CLIP).stat().st_size
    url = storage.presigned_get(clip_uri, cfg, expires_s=600)

    # Direct: open the URL, seek into the middle, decode frames from there.
    with av.open(url, timeout=10) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        middle = duration / 2
        container.seek(int(middle / stream.time_base), stream=stream, backward=True)
        times = []
        for frame in container.decode(stream):
            if frame.time >= middle:
                times.append(frame.time)
            if len(times) == 10:
                break
        assert len(times) == 10 and abs(times[0] - middle) < 0.05

    # Through the counting proxy: seek to the last second and decode it.
    proxy = ByteCountingProxy(url)
    try:
        with av.open(proxy.url_for(url), timeout=10) as container:
            stream = container.streams.video[0]
            opened = proxy.bytes
            target = duration - 1.0
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
            last = [f.time for f in container.decode(stream) if f.time >= target]
        assert len(last) == 25  # 25 fps
    finally:
        proxy.close()
    starts = [int(r[0].split("=")[1].split("-")[0]) for r in proxy.requests if r[0]]
    print(
        f"\nPyAV over presigned URL ({CLIP}, {size} bytes): open {opened} B, "
        f"open+seek+decode last 1 s {proxy.bytes} B ({proxy.bytes / size:.0%} of the file); "
        f"requests (Range, status, bytes): {proxy.requests}"
    )
    # It seeks with Range requests (no sequential download up to the target).
    assert any(start > size // 2 for start in starts)
    assert all(status in (200, 206) for _, status, _ in proxy.requests)


@pytest.mark.parametrize("fixture", ["multitrack_mkv_clip", "multitrack_clip"])
def test_probe_rejects_a_truncated_object_over_range_requests(
    cfg: S3Config, prefix: str, fixture: str, request: pytest.FixtureRequest
) -> None:
    """A cut upload in S3 is caught by the container check through a handful of range
    requests on the presigned URL (no download), and the message names the s3:// URI, never
    the signed URL."""
    from vsrflow.media.probe import probe

    clip = request.getfixturevalue(fixture)
    data = clip.path.read_bytes()
    intact, cut = f"{prefix}intact{clip.path.suffix}", f"{prefix}cut{clip.path.suffix}"
    client = cfg.client()
    for uri, body in ((intact, data), (cut, data[: int(len(data) * 0.9)])):
        bucket, key = storage.parse_s3_uri(uri)
        client.put_object(Bucket=bucket, Key=key, Body=body)

    url = storage.presigned_get(intact, cfg, expires_s=600)
    info = probe(url, label=intact, size_bytes=len(data))
    assert info.video.pts == clip.pts
    proxy = ByteCountingProxy(url)
    try:
        signed = storage.presigned_get(cut, cfg, expires_s=600)
        with pytest.raises(CorruptMediaError, match="is truncated") as caught:
            probe(proxy.url_for(signed), label=cut, size_bytes=int(len(data) * 0.9))
    finally:
        proxy.close()
    message = str(caught.value)
    assert message.startswith(cut) and "X-Amz" not in message and "Signature" not in message
    assert proxy.bytes < 1024, proxy.requests  # header reads only, not the file


def test_a_store_that_never_answers_fails_within_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port that accepts connections and never answers: the default budget is well under a
    minute (attempts x read timeout), and the timeouts really apply (run with a small budget
    set through the environment, as an operator would)."""
    import socket
    import time

    from vsrflow.errors import StorageUnavailableError

    default = S3Config()
    assert default.max_attempts * (default.connect_timeout + default.read_timeout) <= 40
    monkeypatch.setenv("VSRFLOW_S3_READ_TIMEOUT", "0.5")
    monkeypatch.setenv("VSRFLOW_S3_MAX_ATTEMPTS", "2")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (the kernel completes the handshake), never answers
    try:
        cfg = S3Config(
            endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
            region="us-east-1",
            access_key_id="AKIDEXAMPLE",
            secret_access_key="not-a-real-secret",
        )
        assert (cfg.read_timeout, cfg.max_attempts) == (0.5, 2)
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as caught:
            storage.head("s3://bucket/key.mp4", cfg)
        assert time.monotonic() - started < 10
        assert "2 attempt(s)" in str(caught.value)
        assert "not-a-real-secret" not in str(caught.value)
    finally:
        silent.close()
