"""The vsrflow performance benchmark, run as ``python bench/run.py``. A package so that the
entry point, the shared measuring code (common), the batch rig, the sections and the report
writer import one another as ``bench.*``."""
