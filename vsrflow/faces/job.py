"""What a worker needs to restore faces: one small frozen record, torch-free.

Built from the settings' ``faces`` group (:meth:`vsrflow.settings.FaceOptions.job`) only when
face enhancement is on, and carried inside :class:`vsrflow.job.UpscaleJob` to every worker
(it pickles cheaply); :mod:`vsrflow.faces.step` turns it into a detector and a restorer once
per worker process. Torch-free so the control flows and the CLI import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath


@dataclass(frozen=True)
class FaceJob:
    """Face restoration as the user asked for it."""

    #: Registry name of the restorer (``purpose="face"``) or a path to its weights file.
    model: str
    #: Face detector registry name (:mod:`vsrflow.faces.registry`).
    detector: str
    #: 0..1: how much of the restored face replaces the upscaled one inside the mask.
    strength: float
    #: Frames in the centred moving average of boxes and landmarks (odd; 1 = none).
    window: int
    #: Faces per forward pass of the restorer (memory knob; does not change the output).
    faces_per_pass: int

    @property
    def label(self) -> str:
        """The restorer as the manifest and summary name it: the registry name as is, a
        weights file by its stem. (``Path("GFPGANv1.4").stem`` would be "GFPGANv1": a registry
        name's version dot is no file suffix.)"""
        if self.model.lower().endswith((".pth", ".safetensors")):
            return PurePath(self.model).stem
        return self.model


__all__ = ["FaceJob"]
