"""One batch of the bench clip, ready to time at every layer with the same upscaler (the
model alone, the engine, the pipeline, the encoder alone, the decoder alone). Both the speed
section and the encoder section time it, so it lives beside them rather than in either."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.common import DiskSampler

if TYPE_CHECKING:
    from vsrflow.engine import Upscaler
    from vsrflow.media.codecs import EncoderSettings


class BatchRig:
    """The bench clip as ONE batch, ready to time at each layer with the same upscaler: the
    model alone on tensors already in memory, the engine (uint8 in and out), the pipeline
    writing a chunk, and the encoder alone. Chunks go to ``chunks`` and are deleted."""

    def __init__(self, upscaler: Upscaler, clip: Path, frames: np.ndarray, chunks: Path) -> None:
        import torch

        from vsrflow.media.probe import probe
        from vsrflow.plan import plan_batches

        self.upscaler, self.frames, self.chunks = upscaler, frames, chunks
        self.n, self.micro_batch = len(frames), max(1, upscaler.settings.micro_batch)
        self.info = probe(str(clip))
        self.video = self.info.video.params(self.info.path)
        self.batch = plan_batches(
            self.info.video, source_id="bench", settings_identity={}, frames_per_batch=self.n
        )[0]
        self.out_size = (self.video.width * upscaler.scale, self.video.height * upscaler.scale)
        # The model's input as the engine builds it (a permuted uint8 view, float, / 255).
        self.tensors = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        self.peak_disk: list[int] = []
        self.output_bytes: list[int] = []
        self.output_frames: list[int] = []
        chunks.mkdir(parents=True, exist_ok=True)

    def model_only(self) -> None:
        import torch

        with torch.inference_mode():
            for i in range(0, self.n, self.micro_batch):
                self.upscaler._forward_tiled(
                    self.tensors[i : i + self.micro_batch], self.upscaler.settings.tile
                )

    def engine_only(self) -> np.ndarray:
        return self.upscaler.upscale(self.frames)

    def pipeline(self, encoder: EncoderSettings | None = None) -> None:
        from vsrflow.media.codecs import EncoderSettings
        from vsrflow.pipeline import upscale_batch

        target = self.chunks / f"{uuid.uuid4().hex}.mp4"
        with DiskSampler([self.chunks]) as disk:
            upscale_batch(
                self.video,
                self.batch,
                self.upscaler,
                target,
                encoder=encoder or EncoderSettings(),
                out_size=self.out_size,
            )
        self.peak_disk.append(disk.peak)
        self.output_bytes.append(target.stat().st_size)
        self.output_frames.append(_count_frames(target))
        target.unlink()

    def encode_only(self, upscaled: np.ndarray, encoder: EncoderSettings, path: Path) -> None:
        from vsrflow.media.encode import ChunkEncoder

        out_w, out_h = self.out_size
        with ChunkEncoder(
            path, settings=encoder, width=out_w, height=out_h, bit_depth=8,
            time_base=self.video.time_base, average_rate=self.video.average_rate,
            colour=self.video.colour,
        ) as chunk:  # fmt: skip
            for rgb, pts in zip(upscaled, self.info.video.pts[: self.n], strict=True):
                chunk.write(rgb, pts)

    def decode_only(self) -> int:
        from vsrflow.media.decode import decode_range

        frames_iter = decode_range(
            self.video.path, self.video.index, self.batch.start_pts, self.batch.end_pts,
            colour=self.video.colour, bit_depth=self.video.bit_depth,
        )  # fmt: skip
        return sum(1 for _ in frames_iter)


def _count_frames(chunk: Path) -> int:
    """Frames decoded back from a written chunk: the pipeline's output is checked, not assumed."""
    import av

    with av.open(str(chunk)) as container:
        return sum(1 for _ in container.decode(video=0))
