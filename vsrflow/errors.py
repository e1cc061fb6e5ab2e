"""Specific, user-facing errors.

Every failure a user can cause (bad file, unknown model, wrong hash...) has its own class so
callers, the CLI and Prefect task states can tell them apart and print one clear sentence.
"""

import contextlib
import re
from collections.abc import Iterator


class VsrflowError(Exception):
    """Base class for every error vsrflow raises on purpose."""


class MediaError(VsrflowError):
    """The input media cannot be used."""


class EmptyFileError(MediaError):
    """The input file has zero bytes."""


class NotMediaError(MediaError):
    """The input is not a media file FFmpeg can open."""


class NoVideoStreamError(MediaError):
    """The container opened but holds no video stream."""


class CorruptMediaError(MediaError):
    """The file is truncated or its packets cannot be decoded."""


class FrameTooLargeError(MediaError):
    """The frame exceeds the configured pixel limit."""


class AssemblyError(VsrflowError):
    """The assembled output failed verification and was not published."""


class ModelError(VsrflowError):
    """A model cannot be resolved, fetched or loaded."""


class UnknownModelError(ModelError):
    """No registry entry and no file matches the requested model."""


class WeightsHashMismatchError(ModelError):
    """Downloaded or cached weights do not have the expected sha256."""


class UnsupportedArchitectureError(ModelError):
    """spandrel does not recognise the weights, or they are not an image-to-image SR model."""


class WeightsNotFoundError(ModelError):
    """Registry weights are neither on the search path nor in the cache, and downloads are off."""


class WeightsDownloadError(ModelError):
    """Fetching weights failed (HTTP error, unreachable host, interrupted transfer)."""


class CorruptWeightsError(ModelError):
    """The weights file is empty, truncated or not a PyTorch/safetensors file at all."""


class UnsafeWeightsError(ModelError):
    """The pickle holds arbitrary Python objects, so torch's weights_only loader refused it."""


class InvalidDenoiseStrengthError(ModelError, ValueError):
    """denoise_strength is outside [0, 1] or the model has no denoise partner to blend with."""


class StorageError(VsrflowError):
    """An object-storage operation failed (the message names the URI and what to do)."""


class ObjectNotFoundError(StorageError):
    """The bucket exists but holds no object under the key."""


class BucketNotFoundError(StorageError):
    """The bucket does not exist (a typo in the URI, or it was never created)."""


class StorageAccessDeniedError(StorageError):
    """The endpoint refused the request: wrong or missing credentials, or a bucket policy."""


class StorageUnavailableError(StorageError):
    """The endpoint is unreachable, refused the connection, timed out or answered 5xx.

    Transient: retrying later (e.g. a Prefect task retry) may succeed."""


_PRESIGNED_QUERY = re.compile(r"(https?://[^\s'\"?]+)\?[^\s'\"]*")


def redact_urls(text: str) -> str:
    """Drop the query string of every URL in ``text``: presigned S3 URLs carry the access key id
    and a signature that works as a bearer credential, and must not reach logs or UI states."""
    return _PRESIGNED_QUERY.sub(r"\1?<redacted>", text)


@contextlib.contextmanager
def redacting() -> Iterator[None]:
    """Re-raise any exception whose message holds a presigned URL with that URL redacted.

    The original exception (and its chain, which repeats the URL) is dropped on purpose; the
    type is kept when it can be rebuilt from a message, else it becomes a VsrflowError.
    """
    try:
        yield
    except Exception as exc:
        text = str(exc)
        clean = redact_urls(text)
        if clean == text:
            raise
        try:
            replacement = type(exc)(clean)
        except Exception:
            replacement = VsrflowError(f"{type(exc).__name__}: {clean}")
        raise replacement from None
