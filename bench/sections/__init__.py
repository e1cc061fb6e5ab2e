"""The benchmark's sections, one module each (bench/run.py runs them in its own order, and
``--only`` picks them). Each exposes ``run_*(...)`` returning the dict stored under its key in
results.json; a section that measures per process also has ``worker_*`` functions, which
bench/run.py calls in a child process started with ``--worker KIND ...``."""
