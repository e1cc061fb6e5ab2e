"""Cache policies keyed by content, not by run: what makes a rerun skip finished work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext


@dataclass
class KeyedBy(CachePolicy):
    """Cache key = a precomputed key carried by one task input (a ``str``, or any object with
    a ``key`` attribute such as a Batch), independent of flow run, task source and the other
    inputs. The key already hashes everything that determines the result."""

    parameter: str = "key"
    prefix: str = ""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        value = inputs.get(self.parameter)
        key = getattr(value, "key", value)
        return f"{self.prefix}{key}" if isinstance(key, str) and key else None
