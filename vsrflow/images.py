"""Still images: one file or a folder; png/jpg/webp; grayscale, RGBA and 16-bit PNG.

Images are read with PyAV (FFmpeg's decoders keep 16-bit PNG at 16 bits, which Pillow does
not) and upscaled by the same engine as video. Grayscale goes through the model as three equal
channels and comes back as one; alpha is upscaled separately (through the model, as
Real-ESRGAN does, or bicubic) so colour never bleeds into transparency. PNG is written with
FFmpeg's encoder at the source bit depth; JPEG/WebP (8-bit formats) with Pillow. Every file is
written under a temporary name and renamed into place.

Locations (:func:`upscale_image_at`): a source or output may be a local path or an
``s3://bucket/key``. An S3 source is fetched whole into a private scratch file (one GET
through a presigned URL, :meth:`Locations.readable`) and decoded from there, rather than
streamed into FFmpeg through the URL: images are small and decoded whole anyway, so range
reads would save nothing; the scratch file goes through exactly the demuxer and decoder a
local copy of the image would (same pixels, byte for byte); and FFmpeg never sees the
presigned URL, so no decoder message can carry its signature. Outputs are written to scratch
and published like videos (:meth:`Locations.publish`: local rename, or S3 temporary key ->
verify -> server-side copy), so a reader never sees half an image.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import av
import av.error
import numpy as np
from PIL import Image

from vsrflow import storage
from vsrflow.alpha import AlphaMode, upscale_alpha
from vsrflow.catalog import list_candidates, normalize_prefix
from vsrflow.errors import (
    CorruptMediaError,
    EmptyFileError,
    NotMediaError,
    ObjectNotFoundError,
    StorageAccessDeniedError,
    StorageError,
    StorageUnavailableError,
    redact_urls,
)
from vsrflow.geometry import output_geometry
from vsrflow.locations import Locations

if TYPE_CHECKING:
    from vsrflow.engine import Upscaler
    from vsrflow.faces.processor import FaceProcessor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: The manifest of a folder job, inside the output folder (hidden: never listed as an image).
FOLDER_MANIFEST = ".vsrflow-manifest.json"
#: The manifest of a single-image job sits beside the output: ``<output>.manifest.json``.
MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class LoadedImage:
    """Pixels as (H, W, C) with C in {1, 3, 4}; uint8, or uint16 for 16-bit sources."""

    pixels: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def deep(self) -> bool:
        return self.pixels.dtype == np.uint16


@dataclass(frozen=True)
class ImageResult:
    source: str
    output: str
    width: int
    height: int
    channels: int
    bit_depth: int
    #: Size of the published file or object.
    output_bytes: int = 0
    #: Faces restored (face restoration on; 0 otherwise).
    faces: int = 0


def _pixel_layout(pix_fmt: str) -> tuple[int, bool, bool]:
    """(channels, has_alpha, deep) of a decoder pixel format."""
    fmt = av.VideoFormat(pix_fmt)
    deep = max(c.bits for c in fmt.components) > 8
    names = pix_fmt.lower()
    has_alpha = names.startswith(("rgba", "bgra", "argb", "abgr", "ya", "yuva", "gbrap", "pal8"))
    gray = names.startswith(("gray", "ya", "mono"))
    if gray:
        return (2 if has_alpha else 1), has_alpha, deep
    return (4 if has_alpha else 3), has_alpha, deep


def read_image(path: str | os.PathLike[str], *, label: str | None = None) -> LoadedImage:
    """Decode an image file; specific errors for empty or non-image files.

    ``label`` names the image in messages (the s3:// source of a scratch copy)."""
    path = Path(path)
    name = label or str(path)
    if path.stat().st_size == 0:
        raise EmptyFileError(f"{name} is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, StopIteration, IndexError) as exc:
        detail = str(exc).replace(str(path), name)
        raise NotMediaError(f"{name} is not an image FFmpeg can decode: {detail}") from exc
    channels, has_alpha, deep = _pixel_layout(frame.format.name)
    if channels == 1:
        arr = frame.to_ndarray(format="gray16le" if deep else "gray")[..., None]
    elif channels == 2:  # gray + alpha: keep alpha, expand gray to RGB
        rgba = frame.to_ndarray(format="rgba64le" if deep else "rgba")
        arr = rgba
    elif has_alpha:
        arr = frame.to_ndarray(format="rgba64le" if deep else "rgba")
    else:
        arr = frame.to_ndarray(format="rgb48le" if deep else "rgb24")
    if arr.size == 0:
        raise CorruptMediaError(f"{name}: decoded an empty image")
    return LoadedImage(np.ascontiguousarray(arr))


def upscale_pixels(
    image: LoadedImage,
    upscaler: Upscaler,
    *,
    outscale: float | None = None,
    target_height: int | None = None,
    alpha_mode: AlphaMode = "model",
    faces: FaceProcessor | None = None,
) -> np.ndarray:
    """Upscale colour (and alpha separately); returns the same channel layout and dtype.

    With ``faces``, faces found on the source colour are restored in the upscaled colour
    (one frame: no smoothing applies) before grey or alpha is put back."""
    pixels = image.pixels
    height, width = pixels.shape[:2]
    out_w, out_h = output_geometry(
        width, height, upscaler.scale, outscale=outscale, target_height=target_height, even=False
    )
    colour = pixels[..., :3] if image.channels >= 3 else np.repeat(pixels, 3, axis=2)
    result = upscaler.upscale(colour[None], out_size=(out_h, out_w))[0]
    if faces is not None:
        found = faces.plan(faces.detect(colour[None]), scale=(out_w / width, out_h / height))
        result = faces.apply(result[None], found)[0]
    if image.channels == 1:
        return result.mean(axis=2, keepdims=True).round().astype(pixels.dtype)
    if image.channels == 3:
        return result
    alpha_up = upscale_alpha(pixels[None, ..., 3], upscaler, (out_h, out_w), alpha_mode)[0]
    return np.concatenate([result, alpha_up[..., None]], axis=2)


def _png_bytes(pixels: np.ndarray) -> bytes:
    channels, deep = pixels.shape[2], pixels.dtype == np.uint16
    in_fmt, out_fmt = {
        (1, False): ("gray", "gray"),
        (1, True): ("gray16le", "gray16be"),
        (3, False): ("rgb24", "rgb24"),
        (3, True): ("rgb48le", "rgb48be"),
        (4, False): ("rgba", "rgba"),
        (4, True): ("rgba64le", "rgba64be"),
    }[(channels, deep)]
    data = pixels[..., 0] if channels == 1 else pixels
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(data), format=in_fmt)
    frame = frame.reformat(format=out_fmt)
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.width, frame.height, out_fmt
    packets = list(codec.encode(frame)) + list(codec.encode(None))
    return b"".join(bytes(p) for p in packets)


def write_image(path: str | os.PathLike[str], pixels: np.ndarray, *, quality: int = 95) -> None:
    """Write atomically; PNG keeps 16 bits and alpha, JPEG drops alpha (8-bit formats)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"unsupported image format {suffix!r}; use {', '.join(IMAGE_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        if suffix == ".png":
            tmp.write_bytes(_png_bytes(pixels))
        else:
            eight = (
                pixels if pixels.dtype == np.uint8 else (pixels / 257.0).round().astype(np.uint8)
            )
            if suffix in (".jpg", ".jpeg") and eight.shape[2] == 4:
                eight = eight[..., :3]
            mode = {1: "L", 3: "RGB", 4: "RGBA"}[eight.shape[2]]
            image = Image.fromarray(eight[..., 0] if mode == "L" else eight, mode=mode)
            fmt = "JPEG" if suffix in (".jpg", ".jpeg") else "WEBP"
            image.save(tmp, format=fmt, quality=quality)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def find_images(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Image files directly in ``folder``, sorted by name (hidden and partial files skipped)."""
    for entry in sorted(Path(folder).iterdir()):
        if (
            entry.is_file()
            and entry.suffix.lower() in IMAGE_SUFFIXES
            and not entry.name.startswith(".")
        ):
            yield entry


def upscale_image_file(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    upscaler: Upscaler,
    *,
    outscale: float | None = None,
    target_height: int | None = None,
    alpha_mode: AlphaMode = "model",
) -> ImageResult:
    """Read, upscale and atomically write one local image (see :func:`upscale_image_at`)."""
    return upscale_image_at(
        os.fspath(source),
        os.fspath(output),
        upscaler,
        outscale=outscale,
        target_height=target_height,
        alpha_mode=alpha_mode,
    )


# --------------------------------------------------------------------------------------------
# Images at locations (local paths or s3:// URIs)

#: Seconds a read of an image object may stall before it counts as a failure (transient).
FETCH_TIMEOUT_S = 60.0


def fetch(url: str, dest: Path, *, label: str) -> int:
    """Download ``url`` (a presigned GET, a bearer secret) into ``dest``; returns the bytes.

    Read whole into memory (images are small), so a cut transfer shows as IncompleteRead.
    Failures name ``label`` (the s3:// URI), never the URL: 404 -> ObjectNotFoundError, 403 ->
    StorageAccessDeniedError, 5xx / unreachable / cut transfer -> StorageUnavailableError
    (transient: worth a retry). The original exception is dropped, since it carries the URL.
    """
    failure: StorageError | None = None
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        failure = _http_failure(exc.code, label)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        failure = StorageUnavailableError(
            f"cannot read {label}: S3 endpoint unreachable or the transfer was cut "
            f"({type(exc).__name__}: {redact_urls(str(reason))}); this is transient, retry later"
        )
    if failure is not None:
        raise failure from None
    dest.write_bytes(data)
    return len(data)


def _http_failure(code: int, label: str) -> StorageError:
    if code == 404:
        return ObjectNotFoundError(
            f"cannot read {label}: no object under that key (HTTP 404). Check the key and "
            "the bucket, or upload the object first"
        )
    if code == 403:
        return StorageAccessDeniedError(
            f"cannot read {label}: access denied (HTTP 403). Check the credentials and the "
            "bucket policy"
        )
    if code >= 500:
        return StorageUnavailableError(
            f"cannot read {label}: S3 server error (HTTP {code}); this is transient, retry later"
        )
    return StorageError(f"cannot read {label}: HTTP {code}")


@contextlib.contextmanager
def local_copy(locations: Locations, source: str) -> Iterator[Path]:
    """A local path holding ``source``: the file itself, or a scratch copy of an s3:// object
    (removed afterwards). Why a copy and not the presigned URL: see the module docstring."""
    if not locations.is_remote(source):
        yield Path(source)
        return
    with locations.scratch(PurePosixPath(source).name) as dest:
        fetch(locations.readable(source), dest, label=source)
        yield dest


def _check_stored(locations: Locations, output: str, readable: str, size: tuple[int, int]) -> None:
    """Publish check: the staged output (a local path, or a presigned URL of the temporary
    object) decodes as an image of ``size`` (width, height)."""
    with contextlib.ExitStack() as stack:
        path = Path(readable)
        if locations.is_remote(output):
            path = stack.enter_context(locations.scratch(PurePosixPath(output).name))
            fetch(readable, path, label=f"{output} (staged copy)")
        image = read_image(path, label=f"{output} (staged copy)")
    height, width = image.pixels.shape[:2]
    if (width, height) != size:
        raise CorruptMediaError(
            f"{output}: the stored image is {width}x{height}, expected {size[0]}x{size[1]}; "
            "it was not published"
        )


def upscale_image_at(
    source: str,
    output: str,
    upscaler: Upscaler,
    *,
    locations: Locations | None = None,
    outscale: float | None = None,
    target_height: int | None = None,
    alpha_mode: AlphaMode = "model",
    faces: FaceProcessor | None = None,
) -> ImageResult:
    """Read, upscale (restoring faces with ``faces``) and publish one image; ``source`` and
    ``output`` are local paths or s3:// URIs (any mix). The output is written to scratch,
    checked (it decodes at the expected size) and published atomically
    (:meth:`Locations.publish`)."""
    locations = locations or Locations()
    suffix = PurePosixPath(output).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(
            f"unsupported image format {suffix!r} for {output}; use {', '.join(IMAGE_SUFFIXES)}"
        )
    with local_copy(locations, source) as local:
        image = read_image(local, label=source)
    pixels = upscale_pixels(
        image,
        upscaler,
        outscale=outscale,
        target_height=target_height,
        alpha_mode=alpha_mode,
        faces=faces,
    )
    size = (int(pixels.shape[1]), int(pixels.shape[0]))
    with locations.scratch_for(output) as staged:
        write_image(staged, pixels)
        output_bytes = staged.stat().st_size
        locations.publish(
            staged, output, verify=lambda readable: _check_stored(locations, output, readable, size)
        )
    return ImageResult(
        source=source,
        output=output,
        width=size[0],
        height=size[1],
        channels=int(pixels.shape[2]),
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
        output_bytes=output_bytes,
        faces=faces.stats.faces if faces is not None else 0,
    )


# --------------------------------------------------------------------------------------------
# What a job covers: (source, output) pairs for a file or a folder, local or s3://


@dataclass(frozen=True)
class ImagePairs:
    """The images of one job: ``pairs`` of (source, output) locations, sorted by name;
    ``output`` is the output file or folder; ``manifest`` where the job's manifest goes."""

    pairs: tuple[tuple[str, str], ...]
    folder: bool
    output: str
    manifest: str


def _suffix(location: str) -> str:
    return PurePosixPath(location.rstrip("/")).suffix.lower()


def is_image_folder(location: str) -> bool:
    """A local directory, or an s3:// location that cannot be one image: the bucket itself,
    a key ending in ``/``, or a key without an image suffix (``s3://b/photos`` means the
    prefix ``photos/``)."""
    if storage.is_s3_uri(location):
        key = storage.parse_s3_uri(location, require_key=False)[1]
        return not key or key.endswith("/") or _suffix(key) not in IMAGE_SUFFIXES
    return Path(location).is_dir()


def pair_images(locations: Locations, input_path: str, output_path: str) -> ImagePairs:
    """(source, output) pairs: file -> file (or into a folder, keeping the name), or folder ->
    folder keeping names. Any side may be local or s3://.

    A folder means the images directly in it (like a directory listing, not its subfolders),
    listed by :func:`vsrflow.catalog.list_candidates` (local directory or S3 prefix, one
    listing request per 1000 keys); hidden names (work dirs, manifests, partial uploads) and
    empty (0-byte) files are skipped, as in the archive listings.
    """
    if is_image_folder(input_path):
        if _suffix(output_path) in IMAGE_SUFFIXES:
            raise ValueError("input is a folder, so output_path must be a folder too")
        folder = normalize_prefix(input_path) if storage.is_s3_uri(input_path) else input_path
        patterns = tuple(f"*{suffix}" for suffix in IMAGE_SUFFIXES)
        found = sorted(
            (c for c in list_candidates(locations, folder, patterns) if "/" not in c.relative),
            key=lambda c: c.relative,
        )
        pairs = tuple((c.location, locations.join(output_path, c.relative)) for c in found)
        if not pairs:
            raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {input_path}")
        manifest = locations.join(output_path, FOLDER_MANIFEST)
        result = ImagePairs(pairs, True, output_path, manifest)
    else:
        if not storage.is_s3_uri(input_path) and not Path(input_path).is_file():
            raise FileNotFoundError(f"input not found: {input_path}")
        output = output_path
        if _suffix(output_path) not in IMAGE_SUFFIXES:
            output = locations.join(output_path, PurePosixPath(input_path).name)
        result = ImagePairs(((input_path, output),), False, output, output + MANIFEST_SUFFIX)
    for source, output in result.pairs:
        if _same_location(source, output):
            raise ValueError(f"output {output} is the source itself: choose another output_path")
    return result


def _same_location(a: str, b: str) -> bool:
    if storage.is_s3_uri(a) or storage.is_s3_uri(b):
        return a == b
    return Path(a).resolve() == Path(b).resolve()
