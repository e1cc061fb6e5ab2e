"""Installs the tests' fault injection (tests/faults.py) in processes the tests start.

Python imports ``sitecustomize`` at start-up from PYTHONPATH; the tests put this folder there
only for runs that inject a fault. The wrapper replaces ``vsrflow.pipeline.upscale_batch``
before the upscale task module binds it.
"""

import os

if os.environ.get("VSRFLOW_TEST_FAULT"):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import faults

    import vsrflow.pipeline

    setattr(vsrflow.pipeline, faults.UNWRAPPED, vsrflow.pipeline.upscale_batch)
    vsrflow.pipeline.upscale_batch = faults.faulty(
        "vsrflow.pipeline",
        faults.UNWRAPPED,
        os.environ[faults.KIND_ENV],
        {int(b) for b in os.environ[faults.BATCHES_ENV].split(",") if b},
        Path(os.environ[faults.MARKERS_ENV]),
    )
