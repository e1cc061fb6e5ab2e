"""S3 clients built from prefect-aws ``AwsCredentials`` blocks (tasks.storage) against the real
SeaweedFS endpoint from scripts/s3: keys, temporary credentials (session token), a profile in
a shared credentials file, TLS verification settings, vsrflow's botocore defaults under the
block's own config, pickling, and a block saved to and loaded from the test Prefect server.

What SeaweedFS 4.48 does with a session token (measured): it reads a request that carries
``X-Amz-Security-Token`` as signed with temporary STS credentials, does not find the access
key among them and answers 403 ``InvalidAccessKeyId`` to every operation and to presigned
URLs. So the token tests assert that the token is sent and that the refusal arrives as
StorageAccessDeniedError without any secret in it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import logging
import pickle
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import infra
import pytest
from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters

from tasks import storage as task_storage
from vsrflow import storage
from vsrflow.errors import StorageAccessDeniedError, StorageError, StorageUnavailableError
from vsrflow.locations import Locations
from vsrflow.storage import S3Config

TOKEN = "FQoGZXIvYXdzEXAMPLE-session-token-" + uuid.uuid4().hex


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def s3_env() -> dict[str, str]:
    return infra.ensure_s3()


@pytest.fixture(scope="module")
def bucket(s3_env: dict[str, str]) -> Iterator[str]:
    with infra.temporary_bucket(S3Config.from_env(s3_env).client(), "vsrflow-creds") as name:
        yield name


@pytest.fixture
def prefix(bucket: str) -> str:
    return f"s3://{bucket}/t-{uuid.uuid4().hex[:8]}/"


def block(
    s3_env: dict[str, str],
    *,
    endpoint: str | None = None,
    client: dict[str, Any] | None = None,
    **kw: Any,
) -> AwsCredentials:
    """An in-memory AwsCredentials block for the test endpoint. Without ``client`` the block
    has no botocore config at all: vsrflow's defaults alone must make it work."""
    params = AwsClientParameters(
        endpoint_url=endpoint or s3_env["VSRFLOW_S3_ENDPOINT"], **(client or {})
    )
    kw.setdefault("region_name", "us-east-1")
    return AwsCredentials(aws_client_parameters=params, **kw)


def keyed(s3_env: dict[str, str], **kw: Any) -> AwsCredentials:
    return block(
        s3_env,
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        **kw,
    )


def secrets_of(s3_env: dict[str, str]) -> tuple[str, ...]:
    return (s3_env["AWS_SECRET_ACCESS_KEY"], s3_env["AWS_ACCESS_KEY_ID"], TOKEN)


def round_trip(cfg: S3Config, prefix: str, tmp_path: Path) -> None:
    """JSON write/read, atomic publish, and a presigned GET, all through ``cfg``'s client."""
    locations = Locations(cfg)
    doc = locations.join(prefix, "state.json")
    locations.write_json(doc, {"frames": 25})
    assert locations.read_json(doc) == {"frames": 25}
    src = tmp_path / f"out-{uuid.uuid4().hex[:6]}.bin"
    src.write_bytes(b"x" * 1000)
    final = locations.join(prefix, "out.bin")
    locations.publish(src, final, verify=lambda url: None)
    assert locations.size(final) == 1000
    with urllib.request.urlopen(locations.readable(final), timeout=10) as resp:
        assert resp.read() == b"x" * 1000
    assert sorted(o.uri for o in storage.list_objects(prefix, cfg)) == sorted([doc, final])


@pytest.fixture(autouse=True)
def _no_env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials must come from the block, never from a developer's environment."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------------------------
# Keys, defaults, identity


def test_block_with_keys_and_no_botocore_config_works(
    s3_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    cfg = task_storage.s3_config_for_block(keyed(s3_env), "archive-s3")
    client = cfg.client()
    assert client.meta.config.signature_version == "s3v4"
    assert client.meta.config.s3 == {"addressing_style": "path"}
    assert client.meta.config.retries == {
        "mode": "standard",
        "total_max_attempts": S3Config().max_attempts,
    }
    round_trip(cfg, prefix, tmp_path)
    assert cfg.client() is client  # memoised per process and config


def test_block_botocore_config_wins_over_vsrflow_defaults(s3_env: dict[str, str]) -> None:
    adds = task_storage.s3_config_for_block(
        keyed(s3_env, client={"config": {"s3": {"payload_signing_enabled": True}}})
    ).client()
    assert adds.meta.config.s3 == {"addressing_style": "path", "payload_signing_enabled": True}
    overrides = task_storage.s3_config_for_block(
        keyed(
            s3_env,
            client={
                "config": {
                    "s3": {"addressing_style": "virtual"},
                    "retries": {"mode": "standard", "total_max_attempts": 2},
                    "connect_timeout": 1,
                }
            },
        )
    ).client()
    assert overrides.meta.config.s3 == {"addressing_style": "virtual"}
    assert overrides.meta.config.retries == {"mode": "standard", "total_max_attempts": 2}
    assert overrides.meta.config.connect_timeout == 1
    assert overrides.meta.config.read_timeout == S3Config().read_timeout  # ours


def test_block_config_is_hashable_picklable_and_keeps_secrets_out_of_repr(
    s3_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    creds = keyed(s3_env, aws_session_token=TOKEN)
    cfg = task_storage.s3_config_for_block(creds, "archive-s3")
    assert cfg == task_storage.s3_config_for_block(
        keyed(s3_env, aws_session_token=TOKEN), "archive-s3"
    )
    assert hash(cfg) == hash(task_storage.s3_config_for_block(creds, "archive-s3"))
    text = repr(cfg) + str(cfg) + repr(Locations(cfg))
    for secret in (s3_env["AWS_SECRET_ACCESS_KEY"], TOKEN):
        assert secret not in text
    copy = pickle.loads(pickle.dumps(Locations(cfg)))  # as a Dask task argument would travel
    assert copy.s3 == cfg
    plain = pickle.loads(pickle.dumps(task_storage.s3_config_for_block(keyed(s3_env))))
    round_trip(plain, prefix, tmp_path)  # the unpickled factory builds a working client
    with pytest.raises(ValueError, match="client_factory"):
        S3Config(secret_access_key="x", client_factory=cfg.client_factory)


# --------------------------------------------------------------------------------------------
# Temporary credentials


def test_session_token_is_sent_and_refusal_is_typed_without_secrets(
    s3_env: dict[str, str], bucket: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cfg = dataclasses.replace(
        task_storage.s3_config_for_block(keyed(s3_env, aws_session_token=TOKEN), "temp-creds"),
        max_attempts=1,
    )
    sent: list[str | None] = []

    def capture(request: Any, **kwargs: Any) -> None:
        value = request.headers.get("X-Amz-Security-Token")
        sent.append(value.decode() if isinstance(value, bytes) else value)

    events = cfg.client().meta.events
    events.register("before-send.s3", capture)
    uri = storage.join_uri(prefix, "a.json")
    try:
        # (call, error code expected in the message: HEAD answers have no body, only 403)
        for call, code in (
            (lambda: storage.put_json(uri, 1, cfg), "InvalidAccessKeyId"),
            (lambda: storage.head(uri, cfg), "403"),
            (lambda: storage.get_json(uri, cfg), "InvalidAccessKeyId"),
            (lambda: list(storage.list_objects(prefix, cfg)), "InvalidAccessKeyId"),
        ):
            with pytest.raises(StorageAccessDeniedError) as info:
                call()
            text = str(info.value) + repr(info.value)
            assert "access denied" in text and "temp-creds" in text and code in text
            assert "..." + s3_env["AWS_ACCESS_KEY_ID"][-4:] in text
            for secret in secrets_of(s3_env):
                assert secret not in text
    finally:
        events.unregister("before-send.s3", capture)
    assert sent and all(value == TOKEN for value in sent)
    # Presigned URLs carry the token too (and expire with it); SeaweedFS refuses them alike.
    url = storage.presigned_get(uri, cfg, expires_s=60)
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Security-Token"] == [
        TOKEN
    ]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 403
    for secret in secrets_of(s3_env):
        assert secret not in caplog.text


# --------------------------------------------------------------------------------------------
# Profiles from a shared credentials file


@pytest.fixture
def aws_files(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """A temporary ~/.aws: a good profile, one with a wrong secret. Returns profile names."""
    good, bad = f"vsrflow-{uuid.uuid4().hex[:6]}", f"vsrflow-bad-{uuid.uuid4().hex[:6]}"
    credentials, config = tmp_path / "aws" / "credentials", tmp_path / "aws" / "config"
    credentials.parent.mkdir()
    credentials.write_text(
        f"[{good}]\naws_access_key_id = {s3_env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {s3_env['AWS_SECRET_ACCESS_KEY']}\n\n"
        f"[{bad}]\naws_access_key_id = {s3_env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = WRONG-{TOKEN}\n"
    )
    config.write_text(
        f"[profile {good}]\nregion = us-east-1\n\n[profile {bad}]\nregion = us-east-1\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    return {"good": good, "bad": bad}


def test_profile_from_shared_credentials_file_works(
    s3_env: dict[str, str], aws_files: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    cfg = task_storage.s3_config_for_block(
        block(s3_env, profile_name=aws_files["good"], region_name=None), "by-profile"
    )
    round_trip(cfg, prefix, tmp_path)


def test_profile_errors_are_typed_and_name_the_key_without_secrets(
    s3_env: dict[str, str], aws_files: dict[str, str], prefix: str
) -> None:
    uri = storage.join_uri(prefix, "x.json")
    bad = dataclasses.replace(
        task_storage.s3_config_for_block(block(s3_env, profile_name=aws_files["bad"]), "bad-prof"),
        max_attempts=1,
    )
    with pytest.raises(StorageAccessDeniedError) as info:
        storage.head(uri, bad)
    text = str(info.value)
    # The key id comes from the credentials file, not from the block: its last 4 are shown.
    assert "bad-prof" in text and "..." + s3_env["AWS_ACCESS_KEY_ID"][-4:] in text
    for secret in (*secrets_of(s3_env), f"WRONG-{TOKEN}"):
        assert secret not in text
    missing = task_storage.s3_config_for_block(
        block(s3_env, profile_name="no-such-profile"), "nope"
    )
    with pytest.raises(
        StorageAccessDeniedError, match=r"no usable S3 credentials.*ProfileNotFound"
    ):
        storage.head(uri, missing)


# --------------------------------------------------------------------------------------------
# TLS: verify / verify_cert_path, through a TLS-terminating proxy in front of SeaweedFS


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("vsrflow test CA"))
        .issuer_name(name("vsrflow test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class TlsProxy:
    """https://127.0.0.1:PORT -> the plain-HTTP S3 endpoint, bytes passed through unchanged
    (the Host header the client signed is the one SeaweedFS checks)."""

    def __init__(self, upstream: str, cert: Path, key: Path) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.server.getsockname()[1]}"
        self.handshakes_refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshakes_refused += 1  # the client did not trust the certificate
            conn.close()
            return
        up = socket.create_connection(self.upstream)
        threading.Thread(target=self._pump, args=(up, tls), daemon=True).start()
        self._pump(tls, up)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def tls(
    s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TlsProxy, Path]]:
    ca, cert, key = _certificates(tmp_path_factory.mktemp("tls"))
    proxy = TlsProxy(s3_env["VSRFLOW_S3_ENDPOINT"], cert, key)
    yield proxy, ca
    proxy.close()


def test_tls_certificate_is_verified_by_default(
    s3_env: dict[str, str], tls: tuple[TlsProxy, Path], prefix: str
) -> None:
    proxy, _ = tls
    cfg = dataclasses.replace(
        task_storage.s3_config_for_block(keyed(s3_env, endpoint=proxy.url), "tls-default"),
        max_attempts=1,
    )
    refused = proxy.handshakes_refused
    with pytest.raises(StorageError, match=r"TLS certificate.*verify_cert_path") as info:
        storage.head(storage.join_uri(prefix, "x.json"), cfg)
    assert not isinstance(info.value, StorageUnavailableError)  # a retry cannot fix it
    deadline = time.monotonic() + 5  # the proxy's thread notes the refusal after the client
    while proxy.handshakes_refused == refused and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.handshakes_refused > refused
    for secret in secrets_of(s3_env):
        assert secret not in str(info.value)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_verify_false_is_honoured(
    s3_env: dict[str, str], tls: tuple[TlsProxy, Path], prefix: str, tmp_path: Path
) -> None:
    proxy, _ = tls
    cfg = task_storage.s3_config_for_block(
        keyed(s3_env, endpoint=proxy.url, client={"verify": False}), "tls-off"
    )
    storage.put_json(storage.join_uri(prefix, "over-tls.json"), {"tls": True}, cfg)
    assert storage.get_json(storage.join_uri(prefix, "over-tls.json"), cfg) == {"tls": True}


def test_tls_ca_bundle_path_is_honoured(
    s3_env: dict[str, str], tls: tuple[TlsProxy, Path], prefix: str, tmp_path: Path
) -> None:
    proxy, ca = tls
    cfg = task_storage.s3_config_for_block(
        keyed(s3_env, endpoint=proxy.url, client={"verify_cert_path": ca}), "tls-ca"
    )
    refused = proxy.handshakes_refused
    uri = storage.join_uri(prefix, "ca.json")
    storage.put_json(uri, [1, 2], cfg)
    assert storage.get_json(uri, cfg) == [1, 2]
    assert proxy.handshakes_refused == refused


# --------------------------------------------------------------------------------------------
# A block saved to the Prefect server and loaded by name (what every worker does)


def test_saved_block_with_session_token_loads_by_name(
    s3_env: dict[str, str], prefix: str, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = infra.ensure_prefect()["PREFECT_API_URL"]
    good, temp = f"vsrflow-test-{uuid.uuid4().hex[:8]}", f"vsrflow-test-tok-{uuid.uuid4().hex[:8]}"
    with temporary_settings({PREFECT_API_URL: api}):
        keyed(s3_env).save(good)
        keyed(s3_env, aws_session_token=TOKEN).save(temp)
        try:
            task_storage._s3_config.cache_clear()
            round_trip(task_storage.locations_for(good).s3, prefix, tmp_path)
            # The crash this replaces: AttributeError 'str' object has no attribute
            # 'get_secret_value' (prefect-aws types aws_session_token as a plain str).
            locations = task_storage.locations_for(temp)
            with pytest.raises(
                StorageAccessDeniedError, match=f"AwsCredentials block '{temp}'"
            ) as info:
                locations.exists(storage.join_uri(prefix, "x.json"))
            for secret in secrets_of(s3_env):
                assert secret not in str(info.value)
        finally:
            task_storage._s3_config.cache_clear()
            AwsCredentials.delete(good)
            AwsCredentials.delete(temp)


def test_a_missing_credentials_block_names_the_parameter_to_fix() -> None:
    import infra
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.storage import CredentialsBlockError, locations_for

    with (
        temporary_settings({PREFECT_API_URL: infra.ensure_prefect()["PREFECT_API_URL"]}),
        pytest.raises(CredentialsBlockError) as caught,
    ):
        locations_for("no-such-block-7f3a")
    message = str(caught.value)
    assert message.startswith("credentials_block 'no-such-block-7f3a': no AWS Credentials block")
    assert "leave credentials_block empty" in message
