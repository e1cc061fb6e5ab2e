"""What a finished run reports: the summary (markdown) and batch progress, without Prefect.

The flow publishes these as Prefect artifacts (``tasks/artifacts.py``); everything here is plain
data and text so it can be tested and reused without a server. Nothing here ever receives a
credential: the only link that may carry one (a presigned GET URL, a bearer secret by design)
is handed in ready-made by the caller, which never logs it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

#: Stages timed by the flow, in the order they run.
STAGES = ("probe", "plan", "upscale", "assemble")


@dataclass(frozen=True)
class MediaSide:
    """One end of the job (input or output) as the summary shows it."""

    location: str
    size_bytes: int
    width: int
    height: int
    frames: int
    fps: float | None
    vfr: bool = False


@dataclass(frozen=True)
class FaceSummary:
    """Face restoration in one run: what was found and where the face crop image is."""

    restorer: str
    frames: int
    frames_with_faces: int
    faces: int
    #: ``<output>.face.png``: the largest restored face, upscaled vs restored (None: no face).
    crop: str | None = None

    def manifest(self) -> dict[str, object]:
        return {
            "restorer": self.restorer,
            "frames_with_faces": self.frames_with_faces,
            "faces": self.faces,
            "crop": self.crop,
        }


def face_crop_location(output_location: str) -> str:
    """The face before/after crop sits beside its output: ``<output>.face.png``."""
    return output_location + ".face.png"


@dataclass(frozen=True)
class RunSummary:
    """Everything the summary artifact says about one run."""

    source: MediaSide
    output: MediaSide
    model: str
    weights_sha256: str
    profile: str
    codec: str
    seconds: dict[str, float]
    batches: int
    cached: int
    computed: int
    resubmitted: int
    workers: tuple[str, ...] = ()
    #: Cached chunks found damaged and recomputed ("batch 3: chunk has ... bytes ...").
    bad_chunks: tuple[str, ...] = ()
    #: What the source's fields were found to be and what was done about them, and any
    #: warning (a deinterlacer forced on a progressive source...): vsrflow.media.deinterlace.
    interlace: str = ""
    interlace_warnings: tuple[str, ...] = ()
    #: Face restoration (None when it was off).
    faces: FaceSummary | None = None
    #: The source's archive properties and what was done about each ({"property", "source",
    #: "output"}: vsrflow.media.carry.Handling), so a user sees a converted chroma or a
    #: dropped caption track without opening the file.
    properties: tuple[dict[str, str], ...] = ()

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.get(stage, 0.0) for stage in STAGES)

    @property
    def effective_fps(self) -> float | None:
        """Output frames per second of wall time over every stage (what a user waited for)."""
        total = self.total_seconds
        return self.output.frames / total if total > 0 else None

    @property
    def upscale_fps(self) -> float | None:
        upscale = self.seconds.get("upscale", 0.0)
        return self.output.frames / upscale if upscale > 0 else None


@dataclass(frozen=True)
class ComparisonNote:
    """How the before/after image is shown: ``src`` (a data: URI or a URL) and a caption."""

    caption: str
    src: str | None = None
    location: str | None = None


def worker_label(host: str, slurm_job_id: str | None) -> str:
    return f"{host} (Slurm job {slurm_job_id})" if slurm_job_id else host


def output_name(location: str) -> str:
    """The file name of a local path or an s3:// URI."""
    return PurePosixPath(location.rstrip("/").replace("\\", "/")).name or location


def artifact_key(output_location: str, suffix: str = "") -> str:
    """``upscale-<slug>-<hash6>``: readable (from the output's file name), unique per output
    location, and only what Prefect allows in a key (lowercase letters, digits, dashes). Runs
    for the same output share the key, so the UI lists them as versions of one artifact."""
    slug = re.sub(r"[^a-z0-9]+", "-", output_name(output_location).lower()).strip("-")[:40]
    digest = hashlib.sha256(output_location.encode()).hexdigest()[:6]
    return "-".join(p for p in ("upscale", slug.strip("-"), digest, suffix) if p)


# --------------------------------------------------------------------------------------------
# Batch progress (shared by the flow, the UI's progress artifact and the CLI)


@dataclass(frozen=True)
class BatchCounts:
    """Batches finished so far, of ``total``; ``cached`` of them came from the cache."""

    done: int
    total: int
    cached: int = 0
    resubmitted: int = 0

    @property
    def computed(self) -> int:
        return self.done - self.cached

    @property
    def percent(self) -> float:
        return 100.0 if self.total <= 0 else round(100.0 * self.done / self.total, 2)


_PROGRESS_RE = re.compile(
    r"^(?P<done>\d+) of (?P<total>\d+) batches done \((?P<cached>\d+) cached, "
    r"(?P<computed>\d+) computed, (?P<resubmitted>\d+) resubmitted\)"
)


def progress_description(counts: BatchCounts) -> str:
    """The progress artifact's description; :func:`parse_progress` reads it back."""
    return (
        f"{counts.done} of {counts.total} batches done ({counts.cached} cached, "
        f"{counts.computed} computed, {counts.resubmitted} resubmitted)"
    )


def parse_progress(description: str | None) -> BatchCounts | None:
    match = _PROGRESS_RE.match(description or "")
    if match is None:
        return None
    return BatchCounts(
        done=int(match["done"]),
        total=int(match["total"]),
        cached=int(match["cached"]),
        resubmitted=int(match["resubmitted"]),
    )


# --------------------------------------------------------------------------------------------
# Markdown


def _code(text: str) -> str:
    """An inline code span holding ``text`` verbatim (table-safe)."""
    text = text.replace("|", "\\|").replace("\n", " ")
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _bytes(n: int) -> str:
    value, unit = float(n), "B"
    for bigger in ("KB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    shown = f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
    return f"{shown} ({n:,} bytes)"


def _fps(side: MediaSide) -> str:
    if side.fps is None:
        return "unknown"
    return f"{side.fps:.3f} (variable)" if side.vfr else f"{side.fps:.3f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} fps"


def render_summary(
    summary: RunSummary,
    *,
    output_link: str | None = None,
    link_expires_h: float | None = None,
    comparison: ComparisonNote | None = None,
    face_crop_src: str | None = None,
) -> str:
    """The summary artifact as markdown.

    ``face_crop_src``: a URL (data: URI or presigned) showing the face crop image, if any.

    ``output_link`` is a URL for the output (an s3:// output's presigned GET URL, valid
    ``link_expires_h`` hours); without one the output's location (a local path) is shown.
    """
    src, out = summary.source, summary.output
    lines = [f"# Upscaled {_code(output_name(out.location))}", ""]
    if output_link:
        valid = f", valid {link_expires_h:g} h" if link_expires_h else ""
        lines.append(f"**Output:** [download {output_name(out.location)}]({output_link}){valid}")
    else:
        lines.append(f"**Output:** {_code(out.location)}")
    lines += [
        "",
        "| | input | output |",
        "|---|---|---|",
        f"| location | {_code(src.location)} | {_code(out.location)} |",
        f"| size | {_bytes(src.size_bytes)} | {_bytes(out.size_bytes)} |",
        f"| resolution | {src.width}x{src.height} | {out.width}x{out.height} |",
        f"| frames | {src.frames} | {out.frames} |",
        f"| fps | {_fps(src)} | {_fps(out)} |",
        "",
        f"**Model:** {_code(summary.model)} · weights sha256 {_code(summary.weights_sha256[:12])}"
        f" · codec {summary.codec} · profile {_code(summary.profile)}",
        "",
        "## Time",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {stage} | {summary.seconds.get(stage, 0.0):.2f} |" for stage in STAGES]
    lines += [
        f"| **total** | **{summary.total_seconds:.2f}** |",
        "",
        f"Effective speed: **{_rate(summary.effective_fps)}** end to end "
        f"({out.frames} frames in {summary.total_seconds:.2f} s); upscale stage "
        f"{_rate(summary.upscale_fps)}.",
        "",
        "## Batches",
        "",
        "| batches | computed | cached | resubmitted |",
        "|---|---|---|---|",
        f"| {summary.batches} | {summary.computed} | {summary.cached} | {summary.resubmitted} |",
        "",
    ]
    if summary.bad_chunks:
        lines += ["**Recomputed damaged cached chunks:**", ""]
        lines += [f"- {problem}" for problem in summary.bad_chunks] + [""]
    if summary.interlace:
        lines += [f"**Fields:** {summary.interlace}", ""]
    lines += [f"**Warning:** {warning}" for warning in summary.interlace_warnings]
    lines += [""] if summary.interlace_warnings else []
    if summary.properties:
        lines += ["## Properties", "", "| property | source | output |", "|---|---|---|"]
        lines += [
            f"| {p['property']} | {p['source']} | {p['output']} |" for p in summary.properties
        ]
        lines.append("")
    if summary.workers:
        shown = ", ".join(_code(w) for w in summary.workers[:20])
        more = f" and {len(summary.workers) - 20} more" if len(summary.workers) > 20 else ""
        lines += [f"**Workers:** {shown}{more}", ""]
    if summary.faces is not None:
        lines += _face_lines(summary.faces, face_crop_src)
    if comparison is not None:
        lines += ["## Before / after", ""]
        if comparison.src:
            lines += [f"![bicubic (left) vs model (right)]({comparison.src})", ""]
        lines.append(comparison.caption)
        if comparison.location:
            lines[-1] += f" Image: {_code(comparison.location)}"
        lines.append("")
    return "\n".join(lines)


def _face_lines(faces: FaceSummary, src: str | None) -> list[str]:
    lines = [
        "## Faces",
        "",
        f"Face restoration with {_code(faces.restorer)}: **{faces.faces}** faces restored in "
        f"**{faces.frames_with_faces}** of {faces.frames} frames.",
        "",
    ]
    if faces.crop is None:
        return lines
    if src:
        lines += [f"![largest face: upscaled (left) vs restored (right)]({src})", ""]
    lines += [f"Largest face, upscaled (left) and restored (right): {_code(faces.crop)}", ""]
    return lines
