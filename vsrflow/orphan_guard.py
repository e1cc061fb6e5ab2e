"""Run a Python module as ``__main__`` and stop it when the process that started it is gone.

    python -m vsrflow.orphan_guard PARENT_PID MODULE [ARGS...]

A child process outlives a parent killed with SIGKILL: nothing tells it, it is re-parented
(to init or a subreaper) and runs on. ``PR_SET_PDEATHSIG`` does not fit here: it fires when
the *thread* that forked the child ends, and Prefect may start its temporary server from any
thread. So this wrapper runs ``MODULE`` in this very process (no extra process, the module's
own signal handling unchanged) beside a daemon thread that checks every
:data:`POLL_S` seconds whether our parent is still ``PARENT_PID``; once it is not, it sends
this process SIGTERM (a graceful shutdown: uvicorn closes its database) and, if that has
not ended it within :data:`GRACE_S` seconds, exits hard.

Framework-free on purpose (imports only the standard library), so the wrapped module starts
as fast as it would alone.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

POLL_S = 0.5
GRACE_S = 10.0


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(1)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        raise SystemExit("usage: python -m vsrflow.orphan_guard PARENT_PID MODULE [ARGS...]")
    parent, module = int(argv[0]), argv[1]
    if os.getppid() != parent:  # the parent died before we got here
        raise SystemExit(1)
    threading.Thread(target=_watch, args=(parent,), name="orphan-guard", daemon=True).start()
    sys.argv = [module, *argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
