"""Fail in seconds, in one line, when the orchestration API a run needs does not answer.

Prefect's client waits up to its request timeout and retries (measured: 421 s, then a
traceback) when PREFECT_API_URL points at a server that accepts connections and never
answers. One short health request first turns that into a clear error before any work.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from vsrflow.errors import VsrflowError, redact_urls

#: How long the health request may take (connect and each read).
HEALTH_TIMEOUT_S = 5.0


class ApiUnreachableError(VsrflowError):
    """The configured Prefect API did not answer its health check."""


def check_api(api_url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """GET ``<api_url>/health``; raise :class:`ApiUnreachableError` unless it answers 200."""
    url = api_url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        problem = str(reason) or type(reason).__name__
    raise ApiUnreachableError(
        f"the Prefect API at {redact_urls(api_url)} does not answer ({problem} within "
        f"{timeout_s:.0f} s): start the server, fix PREFECT_API_URL, or unset it to run on "
        "a temporary local server"
    )
