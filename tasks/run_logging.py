"""Expected failures in one log line; tracebacks only for the unexpected.

A missing file, a corrupt source, refused credentials or a wrong parameter fail the same way
every time and their message says everything (``tasks.retry.PERMANENT_ERRORS``). Prefect logs
every task and flow failure with its traceback, once per task and once more per flow: 100+
lines that bury the one line a user needs. This filter keeps those records but drops the
traceback of permanent errors; any other exception keeps its full traceback.
"""

from __future__ import annotations

import logging

from tasks.retry import PERMANENT_ERRORS

#: The loggers Prefect's task and flow engines report failures on.
RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class ExpectedErrorsInOneLine(logging.Filter):
    """Strip the traceback from records about a permanent (expected) error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PERMANENT_ERRORS):
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Add the filter to Prefect's run loggers (once per process)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExpectedErrorsInOneLine) for f in logger.filters):
            logger.addFilter(ExpectedErrorsInOneLine())
