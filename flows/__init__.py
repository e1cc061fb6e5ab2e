"""Prefect flows composing the tasks: probe -> plan -> upscale batches -> assemble.

Importing any flow installs :mod:`tasks.run_logging`: expected failures are logged in one
line, without Prefect's per-task and per-flow tracebacks.
"""

from tasks import run_logging

run_logging.install()
