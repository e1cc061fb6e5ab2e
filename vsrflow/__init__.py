"""vsrflow: video super-resolution core (media I/O, models, engine, planning, storage).

This package is framework-free on purpose: nothing here imports Prefect, so the same
functions run in a unit test, a Dask worker on a Slurm node, or a plain script.
"""

__version__ = "0.1.0"

#: Bumped whenever a change alters the bytes a batch produces; part of every batch key so
#: results cached by an older pipeline are never reused.
PIPELINE_VERSION = "1"
