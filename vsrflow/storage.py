"""Object storage (S3 and S3-compatible servers) for the core, without Prefect.

Workers read sources and write chunks and outputs through these functions, so every storage
failure reaches the caller as one of a few typed errors (:mod:`vsrflow.errors`): a missing key,
a missing bucket, refused credentials, or an unreachable endpoint. Only the last one is
transient, which is what task retries need to know. Messages name the URI and the fix and
never carry a secret (at most the last 4 characters of the access key id).

Outputs are published atomically (:func:`publish_file`): uploaded under a temporary key, checked,
optionally verified by the caller through a presigned URL, then copied server-side to the final
key. A reader never sees a half-written output, and a failed publish leaves nothing behind.

URIs are ``s3://bucket/key``; the endpoint and credentials come from :class:`S3Config`:
``S3Config.from_env()`` reads the usual AWS variables plus ``VSRFLOW_S3_ENDPOINT``, and a
config with a ``client_factory`` gets its boto3 client from elsewhere (``tasks.storage`` builds
one from a prefect-aws ``AwsCredentials`` block the way prefect-aws does: profiles, assumed
roles, session tokens, TLS settings), so this module stays free of Prefect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import boto3
import botocore.exceptions as bex
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config

from vsrflow.errors import (
    BucketNotFoundError,
    ObjectNotFoundError,
    StorageAccessDeniedError,
    StorageError,
    StorageUnavailableError,
)
from vsrflow.scratch import stale_after_s

__all__ = [
    "ClientFactory",
    "ObjectInfo",
    "S3Config",
    "delete",
    "delete_if_match",
    "download_file",
    "exists",
    "get_bytes",
    "get_json",
    "head",
    "is_s3_uri",
    "join_uri",
    "list_objects",
    "merge_botocore_config",
    "parse_s3_uri",
    "presigned_get",
    "publish_file",
    "put_if_absent",
    "put_if_match",
    "put_json",
    "sweep_stale_partials",
    "upload_file",
]

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
S3_SCHEME: Final = "s3://"
#: S3 refuses multipart parts below 5 MiB (except the last one) and above 5 GiB.
MIN_PART_SIZE: Final = 5 * MiB
MAX_PART_SIZE: Final = 5 * 1024 * MiB
#: SigV4 presigned URLs are valid for at most 7 days.
MAX_PRESIGN_S: Final = 7 * 24 * 3600
#: The URL handed to publish_file's verify callback only needs to live while it probes.
VERIFY_URL_EXPIRES_S: Final = 3600
PARTIAL_MARKER: Final = ".partial-"

_ADDRESSING_STYLES: Final = ("path", "virtual", "auto")
# AWS bucket naming rules (SeaweedFS also refuses names shorter than 3 characters).
_BUCKET_RE: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ENDPOINT_VARS: Final = ("VSRFLOW_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

# --------------------------------------------------------------------------------------------
# Configuration and clients


#: Builds the boto3 S3 client of an :class:`S3Config` that has one (see ``client_factory``).
#: It is called with vsrflow's botocore defaults (:meth:`S3Config.botocore_config`) and should
#: apply them under its own settings (``merge_botocore_config(defaults, its_config)``).
ClientFactory = Callable[[Config], BaseClient]


def _env_number(name: str, default: float) -> float:
    """``VSRFLOW_S3_<name>`` as a number, else ``default``."""
    value = os.environ.get(f"VSRFLOW_S3_{name}", "")
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"VSRFLOW_S3_{name}={value!r} is not a number") from None


@dataclass(frozen=True)
class S3Config:
    """Where and how to reach the object store. Frozen and hashable: it keys the client memo.

    ``None`` for the endpoint means AWS itself; ``None`` credentials mean boto3's default chain
    (environment, profile, instance role). Secrets are left out of ``repr`` so a config can be
    logged or shown in a Prefect parameter without leaking them.

    With ``client_factory`` the client comes from that callable instead (once per process and
    config, like every client here): credentials, profile, role, TLS verification and any
    botocore setting are the factory's business, and ``secret_access_key`` / ``session_token``
    must stay unset. ``endpoint_url``, ``region`` and ``access_key_id`` then only label
    messages, and ``addressing_style``, ``max_attempts`` and the timeouts are the defaults the
    factory receives. ``credentials_source`` names where the credentials come from in error
    messages (e.g. ``"AwsCredentials block 'archive-s3'"``); ``None`` means the environment.
    The factory must be hashable (it is part of the config's identity) and, for configs sent
    to other processes, picklable.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    addressing_style: str = "path"
    #: Attempts per call and timeouts: a store that accepts connections and never answers
    #: fails in about max_attempts x read_timeout (30 s by default), not minutes.
    #: VSRFLOW_S3_MAX_ATTEMPTS / _CONNECT_TIMEOUT / _READ_TIMEOUT change the defaults.
    max_attempts: int = field(default_factory=lambda: int(_env_number("MAX_ATTEMPTS", 3)))
    connect_timeout: float = field(default_factory=lambda: _env_number("CONNECT_TIMEOUT", 3.0))
    read_timeout: float = field(default_factory=lambda: _env_number("READ_TIMEOUT", 10.0))
    client_factory: ClientFactory | None = field(default=None, repr=False)
    credentials_source: str | None = None

    def __post_init__(self) -> None:
        if self.addressing_style not in _ADDRESSING_STYLES:
            raise ValueError(
                f"addressing_style must be one of {_ADDRESSING_STYLES}, "
                f"not {self.addressing_style!r}"
            )
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts}")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("connect_timeout and read_timeout must be > 0 seconds")
        if self.client_factory is not None and (self.secret_access_key or self.session_token):
            raise ValueError(
                "an S3Config with a client_factory takes its credentials from the factory; "
                "leave secret_access_key and session_token unset"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> S3Config:
        """Build a config from AWS-style variables (``os.environ`` unless ``environ`` is given).

        The endpoint is the first set of VSRFLOW_S3_ENDPOINT, AWS_ENDPOINT_URL_S3 and
        AWS_ENDPOINT_URL; the region AWS_DEFAULT_REGION or AWS_REGION. Empty values count as
        unset. ``overrides`` replace fields (e.g. ``max_attempts=1``).
        """
        env = os.environ if environ is None else environ

        def get(*names: str) -> str | None:
            for name in names:
                value = env.get(name)
                if value:
                    return value
            return None

        values: dict[str, Any] = {
            "endpoint_url": get(*_ENDPOINT_VARS),
            "region": get("AWS_DEFAULT_REGION", "AWS_REGION"),
            "access_key_id": get("AWS_ACCESS_KEY_ID"),
            "secret_access_key": get("AWS_SECRET_ACCESS_KEY"),
            "session_token": get("AWS_SESSION_TOKEN"),
        }
        values.update(overrides)
        return cls(**values)

    def client(self) -> BaseClient:
        """A boto3 S3 client for this config, memoised per process (boto3 clients are
        thread-safe to use but not to create, and each one costs ~50 ms and a connection pool)."""
        return _client_for(self)

    def botocore_config(self, override: Config | None = None) -> Config:
        """vsrflow's botocore settings, with ``override``'s explicit settings on top.

        Defaults: SigV4, this config's addressing style, standard retries with
        ``max_attempts`` attempts in all, and the timeouts. ``override`` wins key by key, and
        inside the ``s3`` dict too (so ``{"s3": {"use_accelerate_endpoint": True}}`` keeps the
        path-style default); its ``retries`` dict replaces ours whole.
        """
        defaults = Config(
            signature_version="s3v4",
            s3={"addressing_style": self.addressing_style},
            # total_max_attempts counts the first try; botocore's "max_attempts" counts retries.
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
        )
        return merge_botocore_config(defaults, override)

    @property
    def key_hint(self) -> str:
        """The access key id reduced to what may appear in messages: its last 4 characters."""
        return _hint_for_key(self.access_key_id, self.credentials_source)

    @property
    def endpoint_label(self) -> str:
        """The endpoint as shown in messages."""
        return self.endpoint_url or f"AWS S3 (region {self.region or 'default'})"


def merge_botocore_config(defaults: Config, override: Config | None) -> Config:
    """``defaults`` with ``override``'s explicit settings on top, the ``s3`` dict merged key by
    key (botocore's own ``Config.merge`` would replace it whole)."""
    if override is None:
        return defaults
    merged = defaults.merge(override)
    if defaults.s3 and override.s3:
        merged = merged.merge(Config(s3={**defaults.s3, **override.s3}))
    return merged


def _hint_for_key(key: str | None, source: str | None) -> str:
    if not key:
        return f"from {source}" if source else "from the default AWS credential chain"
    return "..." + key[-4:] if len(key) > 8 else "(short key, hidden)"


_clients: dict[tuple[int, S3Config], BaseClient] = {}
_clients_lock = threading.Lock()


def _new_client(config: S3Config) -> BaseClient:
    """Create a client in its own boto3 session (the default session is not thread-safe), or
    through the config's factory."""
    if config.client_factory is not None:
        return config.client_factory(config.botocore_config())
    return boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        aws_session_token=config.session_token,
        config=config.botocore_config(),
    )


def _client_for(config: S3Config) -> BaseClient:
    """Memoised per (pid, config): a client inherited through fork() shares its parent's
    sockets, so a forked worker builds its own."""
    pid = os.getpid()
    with _clients_lock:
        client = _clients.get((pid, config))
        if client is None:
            for stale in [k for k in _clients if k[0] != pid]:
                del _clients[stale]
            client = _clients[(pid, config)] = _new_client(config)
        return client


def _built_client(config: S3Config) -> BaseClient | None:
    """This process's client for ``config`` if it exists already (error paths must not build
    one: building may be what failed)."""
    with _clients_lock:
        return _clients.get((os.getpid(), config))


def _used_credentials(config: S3Config) -> tuple[str | None, str | None, str | None]:
    """(access key id, secret, token) the client actually signs with, as far as known.

    A factory's client may have credentials this config never saw (profile, assumed role);
    botocore only exposes them through the private ``_get_credentials``, hence the caution.
    """
    access, secret, token = config.access_key_id, config.secret_access_key, config.session_token
    client = _built_client(config)
    getter = getattr(client, "_get_credentials", None)
    if getter is not None:
        try:
            frozen = getter().get_frozen_credentials()
        except Exception:  # no credentials resolved, or a botocore change: keep the config's
            return access, secret, token
        access = frozen.access_key or access
        secret = frozen.secret_key or secret
        token = frozen.token or token
    return access, secret, token


def _max_attempts(config: S3Config) -> int:
    """HTTP attempts per call (first one included) of the client in use."""
    client = _built_client(config)
    retries = dict(getattr(getattr(client, "meta", None), "config", Config()).retries or {})
    if "total_max_attempts" in retries:
        return int(retries["total_max_attempts"])
    if "max_attempts" in retries:
        return int(retries["max_attempts"]) + 1
    if client is None:
        return config.max_attempts
    return 3 if retries.get("mode") == "standard" else 5  # botocore's defaults


def _transfer_config(multipart_threshold: int, part_size: int) -> TransferConfig:
    """boto3's managed transfers (multipart above the threshold, parallel parts)."""
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(f"part_size must be within [5 MiB, 5 GiB] (S3 limits), not {part_size}")
    if multipart_threshold < MIN_PART_SIZE:
        raise ValueError(f"multipart_threshold must be >= 5 MiB, not {multipart_threshold}")
    return TransferConfig(
        multipart_threshold=multipart_threshold,
        multipart_chunksize=part_size,
        max_concurrency=4,
        preferred_transfer_client="classic",  # same code path whether or not awscrt is present
    )


# --------------------------------------------------------------------------------------------
# URIs


def is_s3_uri(s: object) -> bool:
    """True for strings starting with ``s3://`` (the form is checked by parse_s3_uri)."""
    return isinstance(s, str) and s.startswith(S3_SCHEME)


def parse_s3_uri(uri: str, *, require_key: bool = True) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``.

    With ``require_key`` (object operations) the key must be present and must not end in
    ``/`` (that names a prefix, not an object). Without it (listings) the key may be empty.
    Raises ValueError naming what is wrong, before any request is made.
    """
    if not is_s3_uri(uri):
        raise ValueError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI has no bucket name: {uri!r}")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(
            f"invalid bucket name {bucket!r} in {uri!r}: 3-63 characters of lowercase letters, "
            "digits, '.' and '-', starting and ending with a letter or digit"
        )
    if require_key:
        if not key:
            raise ValueError(f"S3 URI names a bucket but no object key: {uri!r}")
        if key.endswith("/"):
            raise ValueError(f"S3 URI ends with '/' (a prefix, not an object): {uri!r}")
    return bucket, key


def join_uri(prefix: str, *parts: str) -> str:
    """Join an ``s3://bucket[/prefix]`` URI and key parts with single slashes.

    ``join_uri("s3://b/out/", "job1", "x.mp4") == "s3://b/out/job1/x.mp4"``. Empty parts and
    ``.``/``..`` segments are refused: S3 keeps them literally, which makes keys that look
    like paths but do not behave like them.
    """
    bucket, key = parse_s3_uri(prefix, require_key=False)
    segments = [key.strip("/")] if key.strip("/") else []
    for part in parts:
        stripped = part.strip("/")
        if not stripped:
            raise ValueError(f"empty key part in join_uri({prefix!r}, *{parts!r})")
        if any(seg in ("", ".", "..") for seg in stripped.split("/")):
            raise ValueError(f"key part {part!r} contains an empty, '.' or '..' segment")
        segments.append(stripped)
    return f"{S3_SCHEME}{bucket}/" + "/".join(segments)


def _uri(bucket: str, key: str) -> str:
    return f"{S3_SCHEME}{bucket}/{key}"


def _partial_key(key: str) -> str:
    """``dir/name`` -> ``dir/.name.partial-<uuid>``: beside the final key (same bucket, so a
    server-side copy is possible) and hidden-looking so listings of outputs can skip it."""
    directory, _, name = key.rpartition("/")
    hidden = f".{name}{PARTIAL_MARKER}{uuid.uuid4().hex}"
    return f"{directory}/{hidden}" if directory else hidden


# --------------------------------------------------------------------------------------------
# Error mapping

_NOT_FOUND_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_AMBIGUOUS_404: Final = frozenset({"404", "NotFound"})  # HEAD responses have no error body
_NO_BUCKET_CODES: Final = frozenset({"NoSuchBucket"})
_DENIED_CODES: Final = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AllAccessDisabled",
    }
)
_UNAVAILABLE_CODES: Final = frozenset(
    {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown"}
)
_UNREACHABLE_EXC: Final = (bex.ConnectionError, bex.HTTPClientError)  # refused, timeouts, closed
_NO_CREDENTIALS_EXC: Final = (
    bex.NoCredentialsError,
    bex.PartialCredentialsError,
    bex.ProfileNotFound,
    bex.CredentialRetrievalError,
)
_CERT_FAILED: Final = "CERTIFICATE_VERIFY_FAILED"


def _redact(text: str, config: S3Config) -> str:
    """Remove every credential of ``config`` (and of its client, which may have resolved
    others: a profile, an assumed role) from a message (servers may echo some back)."""
    access, secret, token = _used_credentials(config)
    for hidden in {config.secret_access_key, config.session_token, secret, token}:
        if hidden:
            text = text.replace(hidden, "***")
    for key in {config.access_key_id, access}:
        if key:
            text = text.replace(key, _hint_for_key(key, config.credentials_source))
    return text


def _key_hint(config: S3Config) -> str:
    """The last 4 characters of the access key id the client signs with."""
    return _hint_for_key(_used_credentials(config)[0], config.credentials_source)


def _credentials_to_check(config: S3Config) -> str:
    if config.credentials_source:
        return config.credentials_source
    return "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)"


def _endpoint_to_check(config: S3Config) -> str:
    if config.credentials_source:
        return f"the endpoint in {config.credentials_source}"
    return "VSRFLOW_S3_ENDPOINT"


def _root_cause(exc: BaseException) -> BaseException:
    """The botocore error behind boto3's transfer wrappers (S3UploadFailedError keeps only
    the text of the ClientError; the object itself is its __context__)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, bex.ClientError | bex.BotoCoreError):
            return current
        last = getattr(current, "last_exception", None)  # RetriesExceededError
        current = last or current.__cause__ or current.__context__
    return exc


def _status(exc: bex.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _is_404(exc: bex.ClientError) -> bool:
    return _status(exc) == 404 or exc.response.get("Error", {}).get("Code") in _NO_BUCKET_CODES


def _bucket_missing(config: S3Config, bucket: str) -> bool:
    """True only if HEAD bucket answers 404; any other answer leaves the question open."""
    try:
        config.client().head_bucket(Bucket=bucket)
    except bex.ClientError as exc:
        return _is_404(exc)
    except bex.BotoCoreError:
        return False
    return False


def _no_bucket_error(action: str, uri: str, bucket: str, config: S3Config) -> BucketNotFoundError:
    return BucketNotFoundError(
        f"cannot {action} {uri}: bucket {bucket!r} does not exist at {config.endpoint_label}. "
        "Check the bucket name in the URI, or create the bucket"
    )


def _storage_error(exc: BaseException, action: str, uri: str, config: S3Config) -> StorageError:
    """Map a boto3/botocore exception to the vsrflow error a caller can act on."""
    cause = _root_cause(exc)
    bucket = uri[len(S3_SCHEME) :].partition("/")[0]
    where = f"at {config.endpoint_label}"
    if isinstance(cause, bex.SSLError) and _CERT_FAILED in str(cause):
        detail = _redact(str(cause), config)
        fix = (
            f"set verify_cert_path (the CA bundle that signed it) in the client parameters of "
            f"{config.credentials_source}, or verify=False there for a trusted private endpoint"
            if config.credentials_source
            else "point AWS_CA_BUNDLE at the CA bundle that signed it"
        )
        # Not StorageUnavailableError: retrying cannot fix a certificate.
        return StorageError(
            f"cannot {action} {uri}: the TLS certificate of {config.endpoint_label} could not "
            f"be verified ({detail}); {fix}"
        )
    if isinstance(cause, _UNREACHABLE_EXC):
        detail = _redact(f"{type(cause).__name__}: {cause}", config)
        return StorageUnavailableError(
            f"cannot {action} {uri}: S3 endpoint {config.endpoint_label} is unreachable "
            f"({detail}; {_max_attempts(config)} attempt(s)). Check "
            f"{_endpoint_to_check(config)} and that the server is up; this is transient, "
            "retry later"
        )
    if isinstance(cause, _NO_CREDENTIALS_EXC):
        detail = _redact(f"{type(cause).__name__}: {cause}", config)
        fix = (
            f"Check {config.credentials_source}"
            if config.credentials_source
            else "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile / role)"
        )
        return StorageAccessDeniedError(
            f"cannot {action} {uri}: no usable S3 credentials ({detail}). {fix}"
        )
    if isinstance(cause, bex.ClientError):
        error = cause.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = _redact(str(error.get("Message", "")), config)
        status = _status(cause)
        reason = f"{code}: {message}" if message else code
        if code in _NO_BUCKET_CODES or (code in _AMBIGUOUS_404 and _bucket_missing(config, bucket)):
            return _no_bucket_error(action, uri, bucket, config)
        if code in _NOT_FOUND_CODES:
            return ObjectNotFoundError(
                f"cannot {action} {uri}: no object under that key (the bucket exists). "
                "Check the key, or upload the object first"
            )
        if code in _DENIED_CODES or status == 403:
            return StorageAccessDeniedError(
                f"cannot {action} {uri}: access denied {where} for access key "
                f"{_key_hint(config)} ({reason}). Check {_credentials_to_check(config)} and "
                "the bucket policy"
            )
        if code in _UNAVAILABLE_CODES or status >= 500:
            return StorageUnavailableError(
                f"cannot {action} {uri}: S3 server error {where} ({reason}) after "
                f"{_max_attempts(config)} attempt(s); this is transient, retry later"
            )
        return StorageError(f"cannot {action} {uri}: {reason} (HTTP {status}) {where}")
    detail = _redact(f"{type(cause).__name__}: {cause}", config)
    return StorageError(f"cannot {action} {uri}: {detail} {where}")


@contextlib.contextmanager
def _translated(action: str, uri: str, config: S3Config) -> Iterator[None]:
    """Run a block of boto3 calls, re-raising their failures as vsrflow StorageErrors."""
    try:
        yield
    except StorageError:
        raise
    except (
        bex.ClientError,
        bex.BotoCoreError,
        S3UploadFailedError,
        RetriesExceededError,
    ) as exc:
        raise _storage_error(exc, action, uri, config) from exc


_known_buckets: set[tuple[S3Config, str]] = set()
_known_buckets_lock = threading.Lock()


def _require_bucket(config: S3Config, bucket: str, uri: str, action: str) -> None:
    """Refuse writes into a missing bucket before sending them.

    Some servers (SeaweedFS with an admin identity) silently create the bucket on PutObject,
    so a typo in an output URI would otherwise scatter outputs into new buckets. Existing
    buckets are remembered per config; a 403 on HEAD bucket (write-only policies) is left for
    the write itself to report; an unreachable endpoint fails here, without a second round of
    retries in the write.
    """
    with _known_buckets_lock:
        if (config, bucket) in _known_buckets:
            return
    try:
        config.client().head_bucket(Bucket=bucket)
    except bex.ClientError as exc:
        if _is_404(exc):
            raise _no_bucket_error(action, uri, bucket, config) from exc
        if _status(exc) == 403:
            return
        raise _storage_error(exc, action, uri, config) from exc
    except bex.BotoCoreError as exc:
        raise _storage_error(exc, action, uri, config) from exc
    with _known_buckets_lock:
        _known_buckets.add((config, bucket))


# --------------------------------------------------------------------------------------------
# Objects


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD (or a listing) says about one object. ``etag`` is unquoted; do not compare
    it across servers (multipart ETags are not content hashes)."""

    uri: str
    size: int
    etag: str
    last_modified: datetime
    version_id: str | None = None


def _info(uri: str, resp: Mapping[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        uri=uri,
        size=int(resp.get("ContentLength", resp.get("Size", 0))),
        etag=str(resp.get("ETag", "")).strip('"'),
        last_modified=resp["LastModified"],
        version_id=resp.get("VersionId") or None,
    )


def head(uri: str, config: S3Config) -> ObjectInfo:
    """Metadata of one object; ObjectNotFoundError / BucketNotFoundError if absent."""
    bucket, key = parse_s3_uri(uri)
    with _translated("read metadata of", uri, config):
        resp = config.client().head_object(Bucket=bucket, Key=key)
    return _info(uri, resp)


def exists(uri: str, config: S3Config) -> bool:
    """False only when the bucket exists and the key does not; every other failure (missing
    bucket, denied, unreachable) raises, so "not there" is never confused with "can't tell"."""
    try:
        head(uri, config)
    except ObjectNotFoundError:
        return False
    return True


def presigned_get(uri: str, config: S3Config, expires_s: int = 12 * 3600) -> str:
    """A plain HTTP(S) GET URL for ``uri``, valid ``expires_s`` seconds (at most 7 days).

    Lets FFmpeg/PyAV read (and seek in, via Range requests) an object without credentials and
    without downloading it first. The URL is a bearer credential: never log it. With temporary
    credentials (session token) it also expires with the token. No request is made, so a
    missing object only shows when the URL is used.
    """
    bucket, key = parse_s3_uri(uri)
    if not 1 <= expires_s <= MAX_PRESIGN_S:
        raise ValueError(f"expires_s must be within [1, {MAX_PRESIGN_S}] seconds, not {expires_s}")
    with _translated("presign", uri, config):
        return config.client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_s)
        )


def upload_file(
    local_path: str | os.PathLike[str],
    uri: str,
    config: S3Config,
    *,
    multipart_threshold: int = 64 * MiB,
    part_size: int = 16 * MiB,
    metadata: Mapping[str, str] | None = None,
    content_type: str | None = None,
) -> ObjectInfo:
    """Upload a local file (multipart above ``multipart_threshold``) and check the stored size.

    ``content_type`` defaults to a guess from the file name, so browsers and presigned
    downloads get e.g. ``video/mp4``.
    """
    bucket, key = parse_s3_uri(uri)
    path = Path(local_path)
    size = path.stat().st_size  # FileNotFoundError for a missing local file, as usual
    transfer = _transfer_config(multipart_threshold, part_size)
    extra: dict[str, Any] = {
        "ContentType": content_type
        or mimetypes.guess_type(path.name)[0]
        or "application/octet-stream"
    }
    if metadata:
        extra["Metadata"] = dict(metadata)
    _require_bucket(config, bucket, uri, "upload to")
    with _translated("upload to", uri, config):
        config.client().upload_file(str(path), bucket, key, ExtraArgs=extra, Config=transfer)
    info = head(uri, config)
    if info.size != size:
        raise StorageError(
            f"upload to {uri} stored {info.size} bytes but {path} has {size}: the file changed "
            "during the upload or the transfer was cut; upload it again"
        )
    return info


def download_file(
    uri: str,
    local_path: str | os.PathLike[str],
    config: S3Config,
    *,
    multipart_threshold: int = 64 * MiB,
    part_size: int = 16 * MiB,
) -> ObjectInfo:
    """Download ``uri`` to ``local_path`` atomically: into a temporary name beside the target,
    renamed only once its size matches the object's. A crash never leaves a truncated file
    under the real name. Parent directories are created."""
    bucket, key = parse_s3_uri(uri)
    target = Path(local_path)
    transfer = _transfer_config(multipart_threshold, part_size)
    info = head(uri, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}{PARTIAL_MARKER}{uuid.uuid4().hex}")
    try:
        with _translated("download", uri, config):
            config.client().download_file(bucket, key, str(tmp), Config=transfer)
        got = tmp.stat().st_size
        if got != info.size:
            raise StorageError(
                f"download of {uri} gave {got} bytes, expected {info.size}: the object changed "
                "during the download or the transfer was cut; download it again"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return info


def publish_file(
    local_path: str | os.PathLike[str],
    final_uri: str,
    config: S3Config,
    *,
    verify: Callable[[str], None] | None = None,
    metadata: Mapping[str, str] | None = None,
    content_type: str | None = None,
    multipart_threshold: int = 64 * MiB,
    part_size: int = 16 * MiB,
    exclusive: bool = False,
) -> ObjectInfo:
    """Publish a local file at ``final_uri`` so that readers see all of it or nothing.

    0. remove temporary objects a killed publish of the same key left behind
       (:func:`sweep_stale_partials`): all of them when ``exclusive`` (the caller holds the
       output's lease, so no live run can own one), else those older than the scratch
       staleness limit;

    1. upload to ``<dir>/.<name>.partial-<uuid>`` beside the final key, HEAD it and compare its
       size with the local file;
    2. ``verify(url)`` if given, with a presigned GET URL of that temporary object (valid one
       hour): the caller re-probes the media as stored; raising aborts the publish and the
       exception propagates unchanged;
    3. server-side copy to the final key (boto3's managed copy: multipart copy above the
       threshold, so objects over 5 GB work) and HEAD the result;
    4. always delete the temporary object, on failure too.

    If anything fails before step 3, nothing is written under ``final_uri`` (an existing object
    there stays as it was). The copy replaces the final object in one step.
    """
    bucket, key = parse_s3_uri(final_uri)
    sweep_stale_partials(final_uri, config, older_than_s=0.0 if exclusive else None)
    transfer = _transfer_config(multipart_threshold, part_size)
    temp_key = _partial_key(key)
    temp_uri = _uri(bucket, temp_key)
    try:
        staged = upload_file(
            local_path,
            temp_uri,
            config,
            multipart_threshold=multipart_threshold,
            part_size=part_size,
            metadata=metadata,
            content_type=content_type,
        )
        if verify is not None:
            verify(presigned_get(temp_uri, config, expires_s=VERIFY_URL_EXPIRES_S))
        with _translated("publish (server-side copy) to", final_uri, config):
            config.client().copy(
                CopySource={"Bucket": bucket, "Key": temp_key},
                Bucket=bucket,
                Key=key,
                Config=transfer,
            )
        final = head(final_uri, config)
        if final.size != staged.size:
            delete(final_uri, config)
            raise StorageError(
                f"publish to {final_uri}: the copy has {final.size} bytes, the staged upload "
                f"{staged.size}; the object was removed, publish again"
            )
        return final
    finally:
        _delete_quietly(temp_uri, config)


def sweep_stale_partials(
    final_uri: str, config: S3Config, *, older_than_s: float | None = None
) -> list[str]:
    """Delete the ``.<name>.partial-*`` objects beside ``final_uri`` that a killed publish left
    (a ``kill -9`` between upload and cleanup); returns their URIs.

    A partial carries no owner a remote reader could check, so age decides: objects last
    modified more than ``older_than_s`` seconds ago (default ``$VSRFLOW_SCRATCH_STALE_S``,
    6 hours); ``0`` removes every one, which only a holder of the output's lease may ask.
    """
    limit = stale_after_s() if older_than_s is None else older_than_s
    bucket, key = parse_s3_uri(final_uri)
    directory, _, name = key.rpartition("/")
    prefix = f"{directory}/.{name}{PARTIAL_MARKER}" if directory else f".{name}{PARTIAL_MARKER}"
    now = datetime.now(UTC)
    removed = []
    for item in list_objects(_uri(bucket, prefix), config):
        if limit <= 0 or (now - item.last_modified).total_seconds() >= limit:
            _delete_quietly(item.uri, config)
            removed.append(item.uri)
    if removed:
        log.info(
            "removed %d temporary object(s) a killed publish left beside %s",
            len(removed),
            final_uri,
        )
    return removed


def _delete_quietly(uri: str, config: S3Config) -> None:
    """Best-effort cleanup that must not mask the error (or result) it follows."""
    try:
        delete(uri, config)
    except StorageError as exc:
        log.warning("could not delete temporary object %s: %s", uri, exc)


def put_json(uri: str, obj: Any, config: S3Config) -> ObjectInfo:
    """Store ``obj`` as UTF-8 JSON (sorted keys, so equal data gives equal bytes)."""
    bucket, key = parse_s3_uri(uri)
    body = json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=2).encode("utf-8")
    _require_bucket(config, bucket, uri, "write JSON to")
    with _translated("write JSON to", uri, config):
        config.client().put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="application/json"
        )
    return head(uri, config)


def get_json(uri: str, config: S3Config) -> Any:
    """Read a JSON object written by put_json (or anyone else)."""
    bucket, key = parse_s3_uri(uri)
    with _translated("read JSON from", uri, config):
        resp = config.client().get_object(Bucket=bucket, Key=key)
        data = resp["Body"].read()
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageError(f"{uri} is not valid UTF-8 JSON ({exc}); rewrite it") from exc


def delete(uri: str, config: S3Config) -> None:
    """Delete one object. Deleting a missing key succeeds (S3 semantics: idempotent); a missing
    bucket raises BucketNotFoundError."""
    bucket, key = parse_s3_uri(uri)
    with _translated("delete", uri, config):
        config.client().delete_object(Bucket=bucket, Key=key)


# --------------------------------------------------------------------------------------------
# Conditional requests (compare-and-swap on one key)
#
# Measured on SeaweedFS 4.48: PutObject honours If-None-Match: * and If-Match (on a missing key
# too: 412), DeleteObject honours If-Match, and of 8 threads released together on one key
# exactly one conditional request succeeds (create: 50 of 50 rounds; If-Match PUT/DELETE mixed:
# 30 of 30). AWS S3 has them since 2024 (If-Match on DeleteObject: general purpose buckets
# since 2025); a server that ignores these headers makes them unconditional.

#: 412 Precondition Failed; AWS answers 409 ConditionalRequestConflict to the loser of two
#: concurrent conditional writes of one key.
_PRECONDITION_CODES: Final = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def _precondition_failed(exc: BaseException) -> bool:
    cause = _root_cause(exc)
    if not isinstance(cause, bex.ClientError):
        return False
    code = str(cause.response.get("Error", {}).get("Code", ""))
    return _status(cause) in (409, 412) or code in _PRECONDITION_CODES


def _quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _put_conditional(
    uri: str, body: bytes, config: S3Config, content_type: str, **condition: str
) -> str | None:
    bucket, key = parse_s3_uri(uri)
    _require_bucket(config, bucket, uri, "write")
    with _translated("write", uri, config):
        try:
            resp = config.client().put_object(
                Bucket=bucket, Key=key, Body=body, ContentType=content_type, **condition
            )
        except bex.ClientError as exc:
            if _precondition_failed(exc):
                return None
            raise
    return str(resp.get("ETag", "")).strip('"')


def put_if_absent(
    uri: str, body: bytes, config: S3Config, *, content_type: str = "application/json"
) -> str | None:
    """``PutObject`` with ``If-None-Match: *``: store ``body`` only if no object has that key.
    Returns the new ETag (unquoted), or ``None`` if an object was there (or a concurrent
    conditional write won)."""
    return _put_conditional(uri, body, config, content_type, IfNoneMatch="*")


def put_if_match(
    uri: str, body: bytes, etag: str, config: S3Config, *, content_type: str = "application/json"
) -> str | None:
    """``PutObject`` with ``If-Match: etag``: replace the object only if it is still the
    version with that ETag. Returns the new ETag, or ``None`` if it changed or is gone."""
    return _put_conditional(uri, body, config, content_type, IfMatch=_quoted(etag))


def get_bytes(uri: str, config: S3Config) -> tuple[bytes, ObjectInfo]:
    """The body of one object and what its GET said about it (ETag of that very version);
    ObjectNotFoundError if absent."""
    bucket, key = parse_s3_uri(uri)
    with _translated("read", uri, config):
        resp = config.client().get_object(Bucket=bucket, Key=key)
        data = resp["Body"].read()
    return data, _info(uri, resp)


def delete_if_match(uri: str, etag: str, config: S3Config) -> bool:
    """``DeleteObject`` with ``If-Match: etag``: delete only that version. False if the object
    changed or is gone."""
    bucket, key = parse_s3_uri(uri)
    try:
        with _translated("delete", uri, config):
            try:
                config.client().delete_object(Bucket=bucket, Key=key, IfMatch=_quoted(etag))
            except bex.ClientError as exc:
                if _precondition_failed(exc):
                    return False
                raise
    except ObjectNotFoundError:
        return False
    return True


def list_objects(
    prefix_uri: str, config: S3Config, *, page_size: int = 1000
) -> Iterator[ObjectInfo]:
    """Every object whose key starts with the prefix, lazily, ``page_size`` keys per request
    (S3 caps pages at 1000), so a huge prefix is never held in memory.

    A plain string prefix, as in S3: ``s3://b/out/a`` also lists ``out/ab.mp4``; end it with
    ``/`` to list a "directory".
    """
    bucket, prefix = parse_s3_uri(prefix_uri, require_key=False)
    if not 1 <= page_size <= 1000:
        raise ValueError(f"page_size must be within [1, 1000], not {page_size}")
    return _iter_objects(prefix_uri, bucket, prefix, config, page_size)


def _iter_objects(
    prefix_uri: str, bucket: str, prefix: str, config: S3Config, page_size: int
) -> Iterator[ObjectInfo]:
    """The lazy part of list_objects (so bad arguments raise at the call, not at first use)."""
    with _translated("list", prefix_uri, config):
        paginator = config.client().get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield _info(_uri(bucket, item["Key"]), item)
