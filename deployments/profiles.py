"""Compute profiles: named task-runner configurations read from YAML.

Profiles live in ``deployments/profiles.yaml`` (and optionally a user file named by the
``VSRFLOW_PROFILES`` environment variable, whose profiles override ours by name), so operators
add a Slurm partition or a bigger local cluster without code changes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml
from prefect_dask import DaskTaskRunner

BUILTIN_PROFILES = Path(__file__).with_name("profiles.yaml")
PROFILES_ENV = "VSRFLOW_PROFILES"


def load_profiles() -> dict[str, dict[str, Any]]:
    """All profiles by name: the built-in file, then the user's file on top."""
    profiles: dict[str, dict[str, Any]] = {}
    files = [BUILTIN_PROFILES]
    if os.environ.get(PROFILES_ENV):
        files.append(Path(os.environ[PROFILES_ENV]))
    for path in files:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
        profiles.update(document.get("profiles", {}))
    return profiles


def task_runner_for(name: str) -> DaskTaskRunner:
    """A fresh DaskTaskRunner for profile ``name`` (clear error listing the known profiles)."""
    profiles = load_profiles()
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; known profiles: {', '.join(sorted(profiles))}")
    # Dask's per-worker INFO banners drown the flow's own log lines.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    return DaskTaskRunner(**profiles[name].get("task_runner", {}))
