"""Which failures are worth a retry: transient ones, never a user's mistake.

A missing object, refused credentials, a corrupt file or an unknown model fail the same way
every time; retrying them only delays the clear error. Lost connections, an S3 endpoint that
is briefly down, or a crashed encoder are retried.
"""

from __future__ import annotations

from typing import Any

from vsrflow.errors import (
    BucketNotFoundError,
    MediaError,
    ModelError,
    ObjectNotFoundError,
    StorageAccessDeniedError,
)

PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    MediaError,
    ModelError,
    ObjectNotFoundError,
    BucketNotFoundError,
    StorageAccessDeniedError,
    FileNotFoundError,
    ValueError,
)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is a permanent error."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return not isinstance(data, PERMANENT_ERRORS)
    try:
        state.result(raise_on_failure=True)
    except PERMANENT_ERRORS:
        return False
    except Exception:
        return True
    return True


#: The retry policy of every task that does I/O: two more tries, 2 s apart, for transient
#: failures only. ``@task(name=..., **TRANSIENT_RETRIES)``.
TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": 2,
    "retry_condition_fn": retry_transient,
}
