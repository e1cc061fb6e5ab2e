"""Deinterlacing and inverse telecine before the model, batch by batch, frame-exact.

The model must see whole progressive pictures: fed woven fields it sharpens the combing. So
interlaced sources go through FFmpeg's deinterlacers (bwdif by default; yadif, w3fdif, estdif
on request) and telecined ones through ``fieldmatch,yadif=deint=interlaced,decimate`` (inverse
telecine back to the film frames), inside the batch pipeline, with PyAV's filter graph.

**Choice** (:func:`choose`): ``auto`` follows the probe's pixel analysis
(:mod:`vsrflow.media.interlace`), never the flags: interlaced -> bwdif, telecined -> inverse
telecine, progressive -> untouched. A forced filter on a source detected progressive (or
inverse telecine on one without pulldown) is done as asked, with a warning in the manifest
and the summary. The parity always comes from the pixels (the flags lie), else the flags,
else top field first.

**Frame and timestamp rules** (the plan computes every output pts; workers assign them,
assembly verifies them):

- field rate (default, 50i -> 50p): source frame *i* with pts *p* and duration *d* (to the
  next frame; the last frame repeats the previous duration) gives two frames, at ``2p`` and
  ``2p + d`` in the output time base ``source time base / 2``: exact, however odd *d* is.
- frame rate: one frame per source frame, at its own pts in the source time base (1:1).
- inverse telecine: frames are taken in cycles of 5 from the first frame; a full cycle gives
  4 frames evenly over its span, at ``4P + k (P' - P)`` (k = 0..3) in the time base
  ``source time base / 4``, where P is the cycle's first pts and P' the next cycle's (the
  last cycle's span is 5 durations); a last, partial cycle keeps its frames (decimate drops
  nothing there) at ``4p``. 29.97 -> 23.976, 5 frames -> 4.

**Batch boundaries**: each filter needs neighbours, so a worker decodes context frames
around its batch (:data:`CONTEXT_FRAMES` each side; inverse telecine also the whole previous
5-frame cycle, so decimate compares the batch's first frame with the same predecessor as
in one pass, and batches start on cycle boundaries), runs the filters over all of them and
keeps only its own batch's outputs. The result is the same, frame for frame and bit for bit,
as filtering the whole source in one pass (tested), so no output frame is dropped, doubled
or moved at a boundary.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import av
import av.error
import av.filter

from vsrflow.errors import CorruptMediaError
from vsrflow.media.colour import ColourInfo
from vsrflow.media.decode import DecodedFrame, frame_to_rgb, native_frames
from vsrflow.media.deinterlace_modes import MODES
from vsrflow.media.interlace import FieldAnalysis

if TYPE_CHECKING:  # the planner imports the probe, which imports this module
    from vsrflow.plan import Batch, Context

Rate = Literal["field", "frame"]
#: Neighbour frames decoded on each side of a batch: bwdif/yadif/estdif read one, w3fdif
#: and fieldmatch followed by yadif read two.
CONTEXT_FRAMES = 2
#: Inverse telecine: frames per pulldown cycle and film frames kept from each.
CYCLE = 5
KEPT = 4


@dataclass(frozen=True)
class Deinterlace:
    """What a worker does to the fields of every frame (decided once, at planning)."""

    #: A deinterlacer (bwdif, yadif, w3fdif, estdif) or "ivtc".
    method: str
    parity: Literal["tff", "bff"]
    #: "field" (two frames per frame), "frame" (one), "film" (inverse telecine, 5 -> 4).
    rate: str
    source_time_base: Fraction
    source_rate: Fraction

    @property
    def divisor(self) -> int:
        """Output time base = source time base / divisor (see the module's rules)."""
        return {"field": 2, "frame": 1, "film": 4}[self.rate]

    @property
    def time_base(self) -> Fraction:
        return self.source_time_base / self.divisor

    @property
    def frame_rate(self) -> Fraction:
        return (
            self.source_rate
            * {"field": Fraction(2), "frame": Fraction(1), "film": Fraction(4, 5)}[self.rate]
        )

    def describe(self) -> str:
        if self.method == "ivtc":
            return (
                f"inverse telecine (fieldmatch order={self.parity}, decimate 5 -> 4): "
                f"{float(self.source_rate):.3f} -> {float(self.frame_rate):.3f} fps"
            )
        rate = "field rate" if self.rate == "field" else "frame rate"
        return (
            f"deinterlaced with {self.method} ({self.parity}) at {rate}: "
            f"{float(self.source_rate):.3f} -> {float(self.frame_rate):.3f} fps"
        )


@dataclass(frozen=True)
class Decision:
    """The planning outcome: what is done (None: nothing), why, and any warnings."""

    deinterlace: Deinterlace | None
    description: str
    warnings: tuple[str, ...] = ()


def _parity(analysis: FieldAnalysis | None) -> Literal["tff", "bff"]:
    if analysis is not None and analysis.field_order:
        return analysis.field_order
    if analysis is not None and analysis.flagged_order in ("bff", "bt"):
        return "bff"
    return "tff"


def choose(
    analysis: FieldAnalysis | None,
    mode: str,
    rate: Rate,
    *,
    source_time_base: Fraction,
    source_rate: Fraction | None,
    vfr: bool,
) -> Decision:
    """Decide what to do with a source's fields (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"deinterlace must be one of {', '.join(MODES)}, not {mode!r}")
    verdict = analysis.verdict if analysis is not None else "progressive"
    seen = analysis.describe() if analysis is not None else "not analysed"
    if mode == "off":
        return Decision(None, f"not deinterlaced (--deinterlace off); detected {seen}")
    warnings: list[str] = []
    method = mode
    if mode == "auto":
        method = {"interlaced": "bwdif", "telecined": "ivtc"}.get(verdict, "")
        if not method:
            return Decision(None, f"progressive, nothing to do; detected {seen}")
    elif verdict == "progressive":
        cost = {"ivtc": ", one frame in five dropped", "field": ", twice the frames"}
        warnings.append(
            f"--deinterlace {mode} forced on a source detected progressive ({seen}): done as "
            "asked, but whole frames are treated as fields (softer"
            f"{cost.get(mode if mode == 'ivtc' else rate, '')})"
        )
    elif mode == "ivtc" and verdict != "telecined":
        warnings.append(
            f"--deinterlace ivtc forced on a source detected {verdict} without 3:2 pulldown "
            f"({seen}): one frame in five is dropped"
        )
    elif mode != "ivtc" and verdict == "telecined":
        warnings.append(
            f"the source is telecined ({seen}); --deinterlace ivtc would restore the film "
            f"frames instead of deinterlacing them with {mode}"
        )
    if method == "ivtc" and (vfr or not source_rate):
        warnings.append("inverse telecine needs a constant frame rate: deinterlaced instead")
        method = "bwdif"
    rate_name = "film" if method == "ivtc" else rate
    nominal = source_rate or Fraction(25)
    choice = Deinterlace(method, _parity(analysis), rate_name, source_time_base, nominal)
    return Decision(choice, f"{choice.describe()}; detected {seen}", tuple(warnings))


# ------------------------------------------------------------------------------------------
# Planning: output timestamps and decode context per batch


def _durations(pts: Sequence[int], time_base: Fraction, rate: Fraction) -> list[int]:
    """Each frame's duration in ticks: to the next frame; the last repeats the one before
    (a single frame lasts one nominal frame)."""
    steps = [b - a for a, b in itertools.pairwise(pts)]
    last = steps[-1] if steps else max(1, round(1 / (rate * time_base)))
    return [*steps, last]


def output_pts(choice: Deinterlace, pts: Sequence[int]) -> list[int]:
    """Every output frame's pts for the whole source, in ``choice.time_base``."""
    if choice.rate == "frame":
        return list(pts)
    durations = _durations(pts, choice.source_time_base, choice.source_rate)
    if choice.rate == "field":
        return [v for p, d in zip(pts, durations, strict=True) for v in (2 * p, 2 * p + d)]
    out: list[int] = []
    for first in range(0, len(pts), CYCLE):
        cycle = pts[first : first + CYCLE]
        if len(cycle) < CYCLE:  # a partial last cycle: decimate drops nothing
            out += [KEPT * p for p in cycle]
            continue
        after = first + CYCLE
        span = pts[after] - cycle[0] if after < len(pts) else CYCLE * durations[-1]
        out += [KEPT * cycle[0] + k * span for k in range(KEPT)]
    return out


def outputs_before(choice: Deinterlace, frames: int) -> int:
    """Output frames made from the first ``frames`` source frames (a cycle boundary for
    inverse telecine)."""
    if choice.rate == "field":
        return 2 * frames
    if choice.rate == "frame":
        return frames
    full, rest = divmod(frames, CYCLE)
    return KEPT * full + rest


def context_for(choice: Deinterlace, pts: Sequence[int], start: int, end: int) -> Context:
    """The decode range of batch ``[start, end)``: :data:`CONTEXT_FRAMES` each side, and for
    inverse telecine the previous cycle too (plus its own fieldmatch context)."""
    from vsrflow.plan import Context

    lead = CONTEXT_FRAMES + (CYCLE if choice.method == "ivtc" else 0)
    first = max(0, start - lead)
    last = min(len(pts), end + CONTEXT_FRAMES)
    return Context(pts[first], start - first, pts[last] if last < len(pts) else None)


# ------------------------------------------------------------------------------------------
# Workers: filter one batch


class _Chain:
    """A linear filter graph fed frame by frame; outputs collected in order."""

    def __init__(
        self,
        filters: Sequence[tuple[str, str]],
        template: av.VideoFrame,
        rate: Fraction,
        time_base: Fraction,
    ) -> None:
        self.graph = av.filter.Graph()
        time_base = template.time_base or time_base
        args = (
            f"video_size={template.width}x{template.height}:pix_fmt={template.format.name}:"
            f"time_base={time_base}:frame_rate={rate}:pixel_aspect=1/1"
        )
        nodes = [self.graph.add("buffer", args)]
        nodes += [self.graph.add(name, options) for name, options in filters]
        nodes.append(self.graph.add("buffersink"))
        for a, b in itertools.pairwise(nodes):
            a.link_to(b)
        self.graph.configure()

    def push(self, frame: av.VideoFrame | None) -> list[av.VideoFrame]:
        self.graph.push(frame)
        out: list[av.VideoFrame] = []
        while True:
            try:
                out.append(self.graph.pull())
            except (av.error.BlockingIOError, av.error.EOFError):
                return out


def _filters(choice: Deinterlace) -> list[list[tuple[str, str]]]:
    """The chains a batch goes through, in order (inverse telecine: two, see the module)."""
    if choice.method == "ivtc":
        return [
            [("fieldmatch", f"order={choice.parity}"), ("yadif", "deint=interlaced")],
            [("decimate", f"cycle={CYCLE}")],
        ]
    field = choice.rate == "field"
    mode = {
        "bwdif": "send_field" if field else "send_frame",
        "yadif": "send_field" if field else "send_frame",
        "w3fdif": "field" if field else "frame",
        "estdif": "field" if field else "frame",
    }[choice.method]
    return [[(choice.method, f"mode={mode}:parity={choice.parity}:deint=all")]]


def filtered_frames(
    choice: Deinterlace,
    path: str | Path,
    stream_index: int,
    context: Context,
    out_pts: Sequence[int],
    *,
    colour: ColourInfo,
    bit_depth: int,
) -> Iterator[DecodedFrame]:
    """One batch's deinterlaced (or inverse-telecined) frames, as RGB with their planned pts.

    Decodes ``context`` (the batch and its neighbours), filters everything and yields only
    the outputs of the batch's own frames, with ``out_pts`` (from :func:`output_pts`); fails
    if the filters made fewer."""
    stages = _filters(choice)
    if choice.method == "ivtc":
        # Stage 1 (fieldmatch) gets everything; decimate gets the previous cycle and the
        # batch, never fieldmatch's own lead, so its 5-frame cycles stay aligned.
        lead_cycle = CYCLE if context.before >= CYCLE else 0
        skip_inputs = [0, context.before - lead_cycle]
        skip_outputs = KEPT if lead_cycle else 0
    else:
        skip_inputs = [0]
        skip_outputs = outputs_before(choice, context.before)
    chains: list[_Chain | None] = [None] * len(stages)
    seen = [0] * len(stages)
    produced = 0
    wanted = len(out_pts)

    def feed(level: int, frame: av.VideoFrame | None) -> Iterator[av.VideoFrame]:
        """Push into stage ``level`` and carry its outputs through the later stages."""
        if frame is not None:
            seen[level] += 1
            if seen[level] <= skip_inputs[level]:
                return
            if chains[level] is None:
                chains[level] = _Chain(
                    stages[level], frame, choice.source_rate, choice.source_time_base
                )
        chain = chains[level]
        if chain is None:
            return
        for out in chain.push(frame):
            if level + 1 < len(stages):
                yield from feed(level + 1, out)
            else:
                yield out
        if frame is None and level + 1 < len(stages):
            yield from feed(level + 1, None)

    def frames() -> Iterator[av.VideoFrame]:
        for frame in native_frames(path, stream_index, context.start_pts, context.end_pts):
            yield from feed(0, frame)
        yield from feed(0, None)

    index = 0
    for out in frames():
        index += 1
        if index <= skip_outputs:
            continue
        if produced == wanted:
            break
        rgb = frame_to_rgb(out, colour, bit_depth)
        yield DecodedFrame(pts=out_pts[produced], rgb=rgb)
        produced += 1
    if produced != wanted:
        raise CorruptMediaError(
            f"{choice.method} made {produced} frames for this batch, {wanted} were planned "
            f"(decoded from pts {context.start_pts}); the source does not decode cleanly"
        )


def with_outputs(choice: Deinterlace, pts: Sequence[int], batches: Sequence[Batch]) -> list[Batch]:
    """``batches`` with their decode context and output pts filled in."""
    every = output_pts(choice, pts)
    out = []
    for batch in batches:
        start, end = batch.start, batch.end
        if choice.method == "ivtc" and start % CYCLE:
            raise ValueError(f"batch {batch.index} starts inside a pulldown cycle (frame {start})")
        first, last = outputs_before(choice, start), outputs_before(choice, end)
        out.append(
            dataclasses.replace(
                batch,
                context=context_for(choice, pts, start, end),
                out_pts=tuple(every[first:last]),
            )
        )
    return out
