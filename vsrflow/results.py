"""What the flows return: small typed records instead of dicts with status strings.

Framework-free and JSON-able (``as_json``), so the CLI prints them, tests read attributes and
Prefect persists them like any other result.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


def as_json(record: Any) -> Any:
    """A dataclass record (nested records, enums, tuples) as plain JSON values."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: as_json(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, enum.Enum):
        return record.value
    if isinstance(record, dict):
        return {str(k): as_json(v) for k, v in record.items()}
    if isinstance(record, list | tuple):
        return [as_json(v) for v in record]
    return record


@dataclass(frozen=True)
class BatchResult:
    """What one batch produced; small and JSON-able so Prefect can persist it as the cache."""

    index: int
    key: str
    chunk: str
    frames: int
    seconds_total: float
    seconds_model: float
    precision: str
    device: str
    host: str
    slurm_job_id: str | None
    #: Size of the stored chunk, recorded with the cache record so a reuse can check it
    #: (0: not recorded, e.g. a record of an older version).
    chunk_bytes: int = 0
    #: Face restoration (0 when off): frames with a restored face, faces restored, width in
    #: output pixels of the largest one, and where its before/after crop PNG was written.
    face_frames: int = 0
    faces: int = 0
    face_largest: float = 0.0
    face_sample: str = ""


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What the flow keeps of one finished batch: what assembly and the run summary need
    (the chunk, its frames and bytes, where and how fast it ran), not the task's result,
    state or future, so the flow's memory per batch stays a few hundred bytes."""

    index: int
    chunk: str
    frames: int
    chunk_bytes: int
    #: The batch's wall time inside its task and the model's share of it.
    seconds_total: float
    seconds_model: float
    host: str
    slurm_job_id: str | None
    #: Face restoration (0/"" when off): frames with a restored face, faces restored, width
    #: of the largest face and its before/after crop beside the chunk (see BatchResult).
    face_frames: int = 0
    faces: int = 0
    face_largest: float = 0.0
    face_sample: str = ""

    @classmethod
    def of(cls, result: BatchResult) -> BatchRecord:
        """The fields of ``result`` this record keeps (same names; the rest is dropped)."""
        return cls(**{f.name: getattr(result, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class BatchOutcome:
    """The batch stage of one video: results in batch order and how they came about."""

    results: tuple[BatchRecord, ...]
    cached: int
    computed: int
    resubmitted: int
    #: Cached chunks that failed their check and were recomputed ("batch 3: ...").
    bad_chunks: tuple[str, ...] = ()
    #: The submission window's record (:meth:`vsrflow.window.WindowLog.as_dict`).
    window: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VideoResult:
    """One published video."""

    output: str
    source: str
    frames: int
    size_bytes: int
    out_size: tuple[int, int]
    model: str
    weights_sha256: str
    #: The settings as recorded in the manifest (``UpscaleSettings.parameters()``).
    parameters: dict[str, Any]
    profile: str
    batches: int
    batches_cached: int
    batches_computed: int
    resubmitted: int
    bad_chunks: tuple[str, ...]
    workers: tuple[str, ...]
    seconds: dict[str, float]
    work_dir: str
    #: Whether the job's files in the work dir (chunks, cache records, progress files) were
    #: removed after publishing (False with keep_chunks).
    chunks_removed: bool
    #: What each batch did, in batch order (chunk, frames, host, Slurm job, model seconds).
    batch_results: tuple[BatchRecord, ...] = ()
    artifacts: dict[str, Any] = field(default_factory=dict)
    #: The submission window: batches per worker slot, tasks submitted, the most batches in
    #: flight per slot count (``{"per_slot": 2, "submitted": 6, "peaks": {"2": 4}}``).
    window: dict[str, Any] = field(default_factory=dict)
    #: Peak resident memory of the process that ran the flow (MB, ``VmHWM``; a warm job's
    #: beyond the pages it shares with the runner): with bounded submission it depends on
    #: the cluster's size, not on the video's length.
    flow_peak_rss_mb: float = 0.0


class ImageStatus(enum.Enum):
    COMPUTED = "computed"
    CACHED = "cached"
    #: The image could not be used (corrupt, not an image, gone): nothing was published for
    #: it; ``ImageEntry.reason`` says why. The other images of the folder were.
    FAILED = "failed"


@dataclass(frozen=True)
class ImageEntry:
    source: str
    output: str
    status: ImageStatus
    #: Why a FAILED image failed (one line); empty otherwise.
    reason: str = ""


@dataclass(frozen=True)
class ImagesResult:
    """One image or a folder of images."""

    images: tuple[ImageEntry, ...]
    model: str
    weights_sha256: str
    parameters: dict[str, Any]
    #: The job's input and output as given (output: the file, or the folder of a folder job).
    source: str = ""
    output: str = ""
    #: Where the manifest was written: ``<output>.manifest.json`` for one image,
    #: ``<output folder>/.vsrflow-manifest.json`` for a folder.
    manifest: str = ""
    #: Where the cache records were kept (local folder or s3:// prefix).
    work_dir: str = ""

    @property
    def outputs(self) -> list[str]:
        return [entry.output for entry in self.images]

    @property
    def computed(self) -> int:
        return sum(entry.status is ImageStatus.COMPUTED for entry in self.images)

    @property
    def cached(self) -> int:
        return sum(entry.status is ImageStatus.CACHED for entry in self.images)

    @property
    def failed(self) -> list[ImageEntry]:
        """The images that could not be upscaled (each with its reason)."""
        return [entry for entry in self.images if entry.status is ImageStatus.FAILED]

    @property
    def partial(self) -> bool:
        """Some images were published and some failed (the CLI exits 3)."""
        return bool(self.failed)


class VideoStatus(enum.Enum):
    """What an archive run did about one source video."""

    LAUNCHED = "launched"
    UP_TO_DATE = "up to date"
    CLAIMED_ELSEWHERE = "claimed by another run"
    GAVE_UP = "gave up"
    COMPLETED = "completed"
    FAILED = "failed"
    NOT_STARTED = "not started (max_videos reached)"


@dataclass(frozen=True)
class ArchiveEntry:
    source: str
    output: str
    status: VideoStatus
    reason: str = ""
    flow_run_id: str | None = None
    attempt: int | None = None


@dataclass(frozen=True)
class ArchiveResult:
    """One backfill or watch run: every candidate video and what happened to it."""

    kind: str
    candidates: int
    entries: tuple[ArchiveEntry, ...]
    artifact: str | None = None

    def with_status(self, *statuses: VideoStatus) -> list[ArchiveEntry]:
        return [e for e in self.entries if e.status in statuses]
