"""Compute profiles: named task-runner configurations read from YAML.

Profiles live in ``deployments/profiles.yaml`` (and optionally a user file named by the
``VSRFLOW_PROFILES`` environment variable, whose profiles override ours by name), so operators
add a Slurm partition or a bigger local cluster without code changes. String values may use
``${VAR}`` or ``${VAR:-default}``, expanded from the environment when the profile is used.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import yaml
from prefect_dask import DaskTaskRunner

BUILTIN_PROFILES = Path(__file__).with_name("profiles.yaml")
#: Dask keeps the last ``low-level-log-length`` (1000) messages each connection sent, and as
#: many scheduler transitions, for debugging. Each batch submission is ~35 KB of pickled task
#: and Prefect context, so the flow process (client and scheduler) grew ~0.15 MB a batch up
#: to the first thousand messages: 248 MB for a 300-batch film against 208 MB for 113
#: batches. A hundred keep the logs useful and the flow flat.
DASK_MESSAGE_LOG = "distributed.admin.low-level-log-length"
DASK_MESSAGE_LOG_LENGTH = 100
PROFILES_ENV = "VSRFLOW_PROFILES"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Profile:
    """Where batches run: the task runner, the Dask resources one batch holds (e.g. a GPU
    slot, so only upscale batches occupy GPU workers), and whether workers are separate
    processes that need a real Prefect API server (not the flow's temporary one)."""

    name: str
    task_runner: dict[str, Any]
    batch_resources: dict[str, float] = field(default_factory=dict)
    needs_api_server: bool = False
    description: str = ""

    @property
    def runs_batches_here(self) -> bool:
        """Batches run in the flow's own process: a local Dask cluster of threads (the
        ``local`` profile), so the flow process loads the model itself."""
        kwargs = self.task_runner.get("cluster_kwargs") or {}
        local = self.task_runner.get("cluster_class") in (None, "distributed.LocalCluster")
        return local and kwargs.get("processes") is False

    def make_task_runner(self) -> DaskTaskRunner:
        # Dask's per-worker INFO banners drown the flow's own log lines.
        logging.getLogger("distributed").setLevel(logging.WARNING)
        dask.config.set({DASK_MESSAGE_LOG: DASK_MESSAGE_LOG_LENGTH})
        return DaskTaskRunner(**self.task_runner)


def _expand(value: Any) -> Any:
    """Expand ${VAR} / ${VAR:-default} in every string of a YAML document."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found:
                return found
            if default is None:
                raise ValueError(f"profile needs the environment variable {name}")
            return default

        expanded = _VARIABLE.sub(substitute, value)
        return yaml.safe_load(expanded) if expanded != value and expanded.strip() else expanded
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def load_profiles() -> dict[str, dict[str, Any]]:
    """All profiles by name (unexpanded): the built-in file, then the user's file on top."""
    profiles: dict[str, dict[str, Any]] = {}
    files = [BUILTIN_PROFILES]
    if os.environ.get(PROFILES_ENV):
        files.append(Path(os.environ[PROFILES_ENV]))
    for path in files:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
        profiles.update(document.get("profiles", {}))
    return profiles


def get_profile(name: str) -> Profile:
    """Profile ``name`` with environment variables expanded; a clear error if unknown."""
    profiles = load_profiles()
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; known profiles: {', '.join(sorted(profiles))}")
    raw = _expand(profiles[name])
    return Profile(
        name=name,
        task_runner=raw.get("task_runner", {}),
        batch_resources=raw.get("batch_resources", {}) or {},
        needs_api_server=bool(raw.get("needs_api_server", False)),
        description=raw.get("description", ""),
    )
