"""Face restoration for upscaled frames: detect, align, restore, paste back, keep steady.

Framework-free like the rest of ``vsrflow`` (nothing here imports Prefect). One module per job:

* :mod:`~vsrflow.faces.registry`: the BlazeFace detector records and where their weights are
  found (no download exists for them); the GFPGAN restorer is in the SR registry
  (``purpose="face"``), fetched like the SR weights.
* :mod:`~vsrflow.faces.blazeface`: BlazeFace network, anchors, decoding, blended suppression.
* :mod:`~vsrflow.faces.detections`: the :class:`Detection` record (box, 6 keypoints, score).
* :mod:`~vsrflow.faces.align`: similarity to the FFHQ 512 template, warps, soft blend mask.
* :mod:`~vsrflow.faces.restore`: :class:`FaceRestorer`, all faces of a micro-batch per pass.
* :mod:`~vsrflow.faces.track`: linking, gap bridging and smoothing with batch context.
* :mod:`~vsrflow.faces.processor`: detect -> track -> restore for one pipeline batch.
"""
