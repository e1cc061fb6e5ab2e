"""Section "flow" (timed inside the speed section's rounds; its scratch disk is part 3): the
whole Prefect flow ``flows.upscale_video.upscale_video`` on the local profile, after warm-ups
reported separately. The flow is called in exactly one place, ``run_flow``, so a change of the
flow's parameters is adapted there and nowhere else."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    SHARED,
    WEIGHTS_NAME,
    DiskSampler,
    Sample,
    per_frame,
    timed,
    warm_up_prefect,
)


def run_flow(source: Path, output: Path, work_dir: Path) -> dict[str, Any]:
    """The one call of the flow under test: the bench clip through ``upscale_video`` on the
    local profile with the engine's default micro-batch and tiles; returns the flow's summary.
    The flow's parameters appear nowhere else in the bench."""
    from flows.upscale_video import upscale_video
    from vsrflow.results import as_json
    from vsrflow.settings import UpscaleSettings

    settings = UpscaleSettings(model={"weights_path": str(SHARED / "models" / WEIGHTS_NAME)})
    result = upscale_video(
        input_path=str(source), output_path=str(output), settings=settings, work_dir=str(work_dir)
    )
    return as_json(result)


class FlowBench:
    """The full Prefect flow on the local profile, timed in the same rounds as the pipeline
    (so both see the same machine load), after two warm-ups reported separately: a trivial flow
    (Prefect's temporary server: a one-off per process) and an upscale flow on 8 frames (loads
    the model into the worker, which every later batch and flow run in that worker reuses)."""

    def __init__(self, clip: Path, warm_clip: Path, scratch: Path) -> None:
        self.clip, self.warm_clip, self.scratch = clip, warm_clip, scratch
        self.samples: list[Sample] = []
        self.stages: list[dict[str, float]] = []
        self.work_peaks: list[int] = []
        self.all_peaks: list[int] = []
        self.summary: dict[str, Any] = {}
        self.server_s = warm_up_prefect()
        print(f"  flow: temporary server + first flow run {self.server_s:.1f} s", flush=True)
        self.warm_s = self._run(self.warm_clip)[0].wall
        print(f"  flow: warm-up upscale flow (model load) {self.warm_s:.1f} s", flush=True)

    def _run(self, source: Path) -> tuple[Sample, dict[str, Any], int, int]:
        import flows.upscale_video  # noqa: F401  (imported before the clock starts)

        tag = uuid.uuid4().hex[:8]
        work, out_dir = self.scratch / f"flow-work-{tag}", self.scratch / f"flow-out-{tag}"
        out_dir.mkdir()
        with DiskSampler([work]) as work_disk, DiskSampler([work, out_dir]) as all_disk:
            sample, summary = timed(lambda: run_flow(source, out_dir / "out.mp4", work))
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        return sample, summary, work_disk.peak, all_disk.peak

    def run_once(self) -> None:
        sample, self.summary, work_peak, all_peak = self._run(self.clip)
        self.samples.append(sample)
        self.stages.append(self.summary["seconds"])
        self.work_peaks.append(work_peak)
        self.all_peaks.append(all_peak)

    def result(self) -> dict[str, Any]:
        output_bytes = int(self.summary["size_bytes"])
        frames = int(self.summary["frames"])
        # Assembly writes the output while every chunk still exists (they are removed after
        # it), so the true peak is at least the work dir's peak plus the output; sampling every
        # 20 ms can miss that moment.
        written = max(max(self.all_peaks), max(self.work_peaks) + output_bytes)
        return {
            "frames": frames,
            "batches": self.summary.get("batches"),
            "temporary_server_startup_s": round(self.server_s, 2),
            "warmup_flow_8_frames_s": round(self.warm_s, 2),
            **per_frame(self.samples, frames),
            "best_total_s": round(min(s.wall for s in self.samples), 2),
            "flow_stage_seconds": self.stages,
            "output_bytes": output_bytes,
            "peak_work_dir_bytes": max(self.work_peaks),
            "peak_work_dir_plus_output_bytes": written,
            "scratch_over_output": round(max(self.work_peaks) / output_bytes, 3),
            "written_over_output": round(written / output_bytes, 3),
        }
