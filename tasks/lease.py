"""Tasks around the output lease: one run per output, and runs that died marked Crashed."""

from __future__ import annotations

import contextlib
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from tasks.retry import TRANSIENT_RETRIES
from tasks.storage import locations_for
from vsrflow.errors import VsrflowError
from vsrflow.lease import OutputLease


@task(
    name="take-output-lease",
    cache_policy=NO_CACHE,
    persist_result=False,
    **TRANSIENT_RETRIES,
)
def acquire_lease(
    output_path: str, work_dir: str, owner: str, credentials_block: str | None = None
) -> OutputLease:
    """Take the lease on ``output_path`` (renewed in the background until released); a run
    whose process died holding it is marked Crashed (it would stay Running forever).

    The lease is keyed on the real output (any spelling, any ``work_dir``: see
    :mod:`vsrflow.lease`); ``work_dir`` is only recorded in it for other runs' messages."""
    lease = OutputLease(locations_for(credentials_block), output_path, owner, work_dir=work_dir)
    dead = lease.acquire()
    if dead is not None:
        try:
            mark_crashed(
                dead.owner,
                f"its process stopped renewing the lease on {output_path}; run {owner} took over",
            )
        except BaseException:
            with contextlib.suppress(VsrflowError, OSError):
                lease.release()  # a retry of this task takes it again
            raise
    return lease


@task(name="release-output-lease", cache_policy=NO_CACHE, persist_result=False)
def release_lease(lease: OutputLease) -> None:
    """Remove the lease if it is still this run's; fails (LeaseLostError) if another run took
    it over while this one worked."""
    lease.release()


def mark_crashed(flow_run_id: str, reason: str) -> None:
    """Mark a flow run whose process died as Crashed (prefect#12969)."""
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        try:
            stale = client.read_flow_run(UUID(flow_run_id))
        except (ObjectNotFound, ValueError):
            return
        if stale.state is not None and not stale.state.is_final():
            client.set_flow_run_state(stale.id, Crashed(message=reason), force=True)
            logger.warning("marked run %s Crashed: %s", flow_run_id, reason)
