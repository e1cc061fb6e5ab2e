"""The ``vsrflow`` console script: a warm runner's job when one serves this environment, else
the command itself (``flows.cli``), which then leaves a runner starting for the next one.

Standard library only up to the hand-over: this module and :mod:`vsrflow.warm_runner` are all
a warm run imports (tens of milliseconds), where ``flows.cli`` brings pydantic and, on its
way to the upscale stage, Prefect and torch (seconds). ``python -m flows.cli`` always runs
cold.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

from vsrflow import warm_runner


def run() -> NoReturn:
    argv = sys.argv[1:]
    env = dict(os.environ)
    if warm_runner.wanted(argv, env):
        paths = warm_runner.runner_paths(env)
        if paths is not None:
            finished = warm_runner.run_warm(argv, paths.socket)
            if finished is not None:
                warm_runner.exit_as(finished)
            # Its imports run beside this command's (two cores: mostly in parallel). A home
            # it cannot write to means no runner, not a failed command.
            with contextlib.suppress(OSError):
                warm_runner.start_in_background(env, paths)
    from flows import cli

    cli.run()


if __name__ == "__main__":
    run()
