"""Still images: one file or a folder; png/jpg/webp; grayscale, RGBA and 16-bit PNG.

Images are read with PyAV (FFmpeg's decoders keep 16-bit PNG at 16 bits, which Pillow does
not) and upscaled by the same engine as video. Grayscale goes through the model as three equal
channels and comes back as one; alpha is upscaled separately (through the model, as
Real-ESRGAN does, or bicubic) so colour never bleeds into transparency. PNG is written with
FFmpeg's encoder at the source bit depth; JPEG/WebP (8-bit formats) with Pillow. Every file is
written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import av.error
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vsrflow.engine import Upscaler, output_geometry
from vsrflow.errors import CorruptMediaError, EmptyFileError, NotMediaError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
AlphaMode = Literal["model", "bicubic"]


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


def read_image(path: str | os.PathLike[str]) -> LoadedImage:
    """Decode an image file; specific errors for empty or non-image files."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise EmptyFileError(f"{path} is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, StopIteration, IndexError) as exc:
        raise NotMediaError(f"{path} is not an image FFmpeg can decode: {exc}") from exc
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
        raise CorruptMediaError(f"{path}: decoded an empty image")
    return LoadedImage(np.ascontiguousarray(arr))


def _resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of one (H, W) integer plane to (H', W')."""
    peak = 255.0 if plane.dtype == np.uint8 else 65535.0
    t = torch.from_numpy(plane.astype(np.float32) / peak)[None, None]
    out = F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True)
    return (out[0, 0].clamp(0, 1) * peak).round().numpy().astype(plane.dtype)


def upscale_pixels(
    image: LoadedImage,
    upscaler: Upscaler,
    *,
    outscale: float | None = None,
    target_height: int | None = None,
    alpha_mode: AlphaMode = "model",
) -> np.ndarray:
    """Upscale colour (and alpha separately); returns the same channel layout and dtype."""
    pixels = image.pixels
    height, width = pixels.shape[:2]
    out_w, out_h = output_geometry(
        width, height, upscaler.scale, outscale=outscale, target_height=target_height, even=False
    )
    colour = pixels[..., :3] if image.channels >= 3 else np.repeat(pixels, 3, axis=2)
    result = upscaler.upscale(colour[None], out_size=(out_h, out_w))[0]
    if image.channels == 1:
        return result.mean(axis=2, keepdims=True).round().astype(pixels.dtype)
    if image.channels == 3:
        return result
    alpha = pixels[..., 3]
    if alpha_mode == "model":
        alpha_up = upscaler.upscale(
            np.repeat(alpha[..., None], 3, axis=2)[None], out_size=(out_h, out_w)
        )[0].mean(axis=2)
        alpha_up = alpha_up.round().astype(pixels.dtype)
    else:
        alpha_up = _resize_plane(alpha, (out_h, out_w))
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
    """Read, upscale and atomically write one image."""
    image = read_image(source)
    pixels = upscale_pixels(
        image, upscaler, outscale=outscale, target_height=target_height, alpha_mode=alpha_mode
    )
    write_image(output, pixels)
    return ImageResult(
        source=str(source),
        output=str(output),
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        channels=int(pixels.shape[2]),
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
    )
