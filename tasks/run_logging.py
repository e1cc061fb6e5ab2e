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


#: ``logger.warning(..., extra=CLI_REPORTS_IT)``: a record the ``vsrflow`` command prints in
#: its own words (e.g. the images that failed); kept off its console, kept in the API.
CLI_REPORTS_IT = {"vsrflow_cli_reports_it": True}


class FailuresOffTheConsole(logging.Filter):
    """Drop Prefect's ERROR records (a task or flow "Finished in state Failed", "Encountered
    exception during execution") and records marked :data:`CLI_REPORTS_IT` from a console
    handler: the ``vsrflow`` command reports those itself, in one line (or with the traceback
    of an unexpected error), and the records still reach the Prefect API, where the UI shows
    them in full."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "vsrflow_cli_reports_it", False):
            return False
        return not (record.levelno >= logging.ERROR and record.name.startswith("prefect"))


def quiet_failures_on_console() -> None:
    """Add :class:`FailuresOffTheConsole` to Prefect's console handlers in this process (the
    root logger's, where run loggers propagate). The API log handlers, attached to the run
    loggers themselves, are left alone."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, FailuresOffTheConsole) for f in handler.filters
        ):
            handler.addFilter(FailuresOffTheConsole())
