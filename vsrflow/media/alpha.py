"""Transparency in video: where a stream keeps its alpha plane, and what a job does with it.

Two ways a video carries alpha:

* in its pixel format (ProRes 4444 ``yuva444p12le``, FFV1 ``yuva420p``, PNG/QTRLE in mov...):
  every decoder returns it;
* as a side channel (VP8/VP9 in WebM/Matroska): a second VP8/VP9 stream stored in each
  block's BlockAdditional, announced by the track's AlphaMode element (read back as the
  ``alpha_mode`` stream tag). FFmpeg's native vp8/vp9 decoders ignore it; only the libvpx
  decoders (``libvpx`` for VP8, ``libvpx-vp9``) return ``yuva420p`` frames.

The tag alone is not trusted: it is only a promise, and a file whose tag was copied onto a
stream without alpha (older versions of this tool did) has none. A side-channel stream has
alpha when its packets carry BlockAdditional side data.

A job's ``encoder.alpha`` setting decides what happens to a source's alpha: ``keep`` (the
default: needs a codec that stores it, else the job is refused before any compute), ``flatten``
(composite over black, no alpha in the output) or ``drop`` (ignore it: the colour planes as
stored, no alpha). Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import av

from vsrflow.media.codecs import alpha_codecs, get_codec

AlphaPolicy = Literal["keep", "flatten", "drop"]
#: What a job did with the source's alpha: "" (the source has none), or the policy applied.
AlphaOutcome = Literal["", "keep", "flatten", "drop"]

#: The Matroska AlphaMode element as FFmpeg exposes it (stream or container metadata).
ALPHA_TAG = "alpha_mode"
#: Packet side data holding a libvpx alpha frame (Matroska BlockAdditional).
BLOCK_ADDITIONAL = "matroska_block_additional"
#: Codecs whose alpha travels in BlockAdditional, and the decoders that return it.
SIDE_CHANNEL_DECODERS = {"vp9": "libvpx-vp9", "vp8": "libvpx"}
#: Packets looked at when checking an encoded file for alpha side data.
SIDE_DATA_PACKETS = 8

_DESCRIPTIONS = {
    "": "none (the source has no alpha channel)",
    "keep": "kept: the alpha plane is upscaled ({mode}) and stored in the output",
    "flatten": "flattened: composited over black; the output has no alpha channel",
    "drop": "dropped: the colour planes as stored; the output has no alpha channel",
}


def pix_fmt_has_alpha(pix_fmt: str | None) -> bool:
    """True when a pixel format has an alpha component (yuva420p, rgba, gbrap...)."""
    if not pix_fmt:
        return False
    try:
        return any(c.is_alpha for c in av.VideoFormat(pix_fmt).components)
    except ValueError:
        return False


def is_alpha_tag(key: str) -> bool:
    """Tags that announce alpha (never copied onto a stream: they are written only where the
    output really has alpha)."""
    return key.lower() == ALPHA_TAG


def alpha_tagged(metadata: Mapping[str, str]) -> bool:
    """True when the metadata announces alpha (``alpha_mode`` / ``ALPHA_MODE`` nonzero)."""
    return any(is_alpha_tag(k) and str(v).strip() not in ("", "0") for k, v in metadata.items())


def side_channel_decoder(codec: str) -> str | None:
    """The decoder that returns the alpha side channel of ``codec``, if this FFmpeg has it."""
    name = SIDE_CHANNEL_DECODERS.get(codec)
    return name if name is not None and name in av.codecs_available else None


def stream_has_alpha(path: str | os.PathLike[str], stream_index: int | None = None) -> bool:
    """Whether a file's video stream carries alpha: an alpha pixel format, or (VP8/VP9) alpha
    side data on its first packets. Used on chunks and outputs."""
    with av.open(os.fspath(path)) as container:
        stream = (
            container.streams.video[0] if stream_index is None else container.streams[stream_index]
        )
        cc = stream.codec_context
        if cc is None:
            return False
        if pix_fmt_has_alpha(cc.pix_fmt):
            return True
        if cc.name not in SIDE_CHANNEL_DECODERS:
            return False
        seen = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.has_sidedata(BLOCK_ADDITIONAL):
                return True
            seen += 1
            if seen >= SIDE_DATA_PACKETS:
                break
    return False


def alpha_outcome(
    *,
    has_alpha: bool,
    readable: bool,
    codec: str,
    policy: str,
    label: str,
    decoder: str | None = None,
) -> AlphaOutcome:
    """What a job does with the source's alpha; a one-line ``ValueError`` when it cannot.

    ``readable``: this FFmpeg can decode the alpha plane (False for a VP9 alpha side channel
    without the libvpx decoder). ``keep`` needs a codec that stores alpha; ``flatten`` needs
    the alpha plane; ``drop`` always works.
    """
    if not has_alpha:
        return ""
    if policy == "drop":
        return "drop"
    if not readable:
        raise ValueError(
            f"{label} has an alpha channel that this FFmpeg cannot decode (it lacks the "
            f"{decoder or 'libvpx'} decoder): set --alpha drop (encoder.alpha) to upscale the "
            "colour without it"
        )
    if policy == "flatten":
        return "flatten"
    if policy != "keep":
        raise ValueError(f"unknown alpha policy {policy!r}: use keep, flatten or drop")
    preset = get_codec(codec)
    if not preset.keeps_alpha:
        raise ValueError(
            f"{label} has an alpha channel (transparency) and --codec {preset.name} "
            f"(encoder.codec) cannot store it: keep it with --codec {alpha_codecs()}, or set "
            "--alpha flatten (composite over black) or --alpha drop (encoder.alpha)"
        )
    return "keep"


def describe_outcome(outcome: str, alpha_mode: str = "model") -> str:
    """Words for the manifest and logs: what happened to the source's alpha."""
    mode = "by the model" if alpha_mode == "model" else "bicubic"
    return _DESCRIPTIONS[outcome].format(mode=mode)
