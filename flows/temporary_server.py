"""Prefect's temporary API server dies with the process that started it.

Without ``PREFECT_API_URL``, Prefect 3.8 starts a temporary ``uvicorn`` server as a child
process (``prefect.server.api.server.SubprocessASGIServer``) and stops it from an ``atexit``
hook. A ``vsrflow`` command killed with SIGKILL runs no hook, so the server (about 250 MB)
ran on, orphaned. :func:`guard` makes Prefect launch it through
:mod:`vsrflow.orphan_guard`, which stops the server within a second of its parent's death,
however the parent ended.

How: ``SubprocessASGIServer._run_uvicorn_command`` calls ``subprocess.Popen([sys.executable,
"-m", "uvicorn", ...])`` through the server module's ``subprocess`` name. That name is
pointed at a stand-in whose ``Popen`` rewrites exactly that command line to ``python -m
vsrflow.orphan_guard <our pid> uvicorn ...`` and passes everything else through, so Prefect's
own arguments and environment are kept as they are. Pinned by
``tests/test_safety.py::test_kill_9_of_the_cli_leaves_no_prefect_server``: if a Prefect
upgrade starts the server another way, that test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

_lock = threading.Lock()


class _GuardedSubprocess:
    """The ``subprocess`` module, except that Popen of ``python -m uvicorn`` is guarded."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args: Sequence[str], *rest: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        command = [os.fspath(a) for a in args]
        if command[:3] == [sys.executable, "-m", "uvicorn"]:
            guard = [sys.executable, "-m", "vsrflow.orphan_guard", str(os.getpid()), "uvicorn"]
            command = guard + command[3:]
        return subprocess.Popen(command, *rest, **kwargs)


def guard() -> bool:
    """Launch Prefect's temporary server (from now on, in this process) under the orphan
    guard. Idempotent; returns whether the guard is in place."""
    from prefect.server.api import server

    with _lock:
        if not isinstance(server.subprocess, _GuardedSubprocess):
            server.subprocess = _GuardedSubprocess()  # type: ignore[assignment]
    return True
