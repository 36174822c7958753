"""POST to the Prefect API with a fast retry on SQLite-busy answers (the two run-creating calls).

A flow run is created in a DEFERRED SQLite transaction (read, then insert). When the server's
task-run recorder or event persister commits in between, SQLite answers "database is locked" at
once, the server turns that into 503, and Prefect's client sleeps 2**n s (≈2 s) before retrying —
even with `PREFECT_CLIENT_MAX_RETRIES=0` it sleeps once before giving up (prefect/client/base.py).
So these POSTs go through a plain httpx client (same URL and credentials) that retries after
50 ms … 1 s instead (docs/prefect-runtime.md, "Where the time goes" 2).
"""

from __future__ import annotations

import base64
import functools
import ssl
from typing import Any

import certifi
import httpx
from prefect.settings import get_current_settings

from medic.core.polling import retry_async
from medic.errors import PrefectError

__all__ = ["CREATE_RETRY_DELAYS", "post_with_fast_retry"]

CREATE_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.0, 1.0)  # ≈5 s in all
_BUSY = (503, 429)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One CA-bundle load per process (each load costs ~30 ms)."""
    return ssl.create_default_context(cafile=certifi.where())


def _headers() -> tuple[str, dict[str, str]]:
    """The configured API URL and the headers Prefect's own client would send (auth string or key)."""
    api = get_current_settings().api
    if not api.url:
        raise PrefectError("PREFECT_API_URL is not set; point it at the Prefect server (…/api)")
    headers = {"Content-Type": "application/json"}
    if api.auth_string is not None:
        token = base64.b64encode(api.auth_string.get_secret_value().encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif api.key is not None:
        headers["Authorization"] = f"Bearer {api.key.get_secret_value()}"
    return api.url.rstrip("/"), headers


async def post_with_fast_retry(what: str, path: str, body: dict[str, Any]) -> Any:
    """POST `body` to `<PREFECT_API_URL><path>` and return the JSON answer.

    503/429 are retried after `CREATE_RETRY_DELAYS`; any other refusal, the last busy answer and an
    unreachable server raise PrefectError (with `.status` when the server answered).
    """
    base, headers = _headers()
    async with httpx.AsyncClient(headers=headers, timeout=30, verify=_ssl_context()) as http:

        async def attempt() -> httpx.Response:
            try:
                return await http.post(base + path, json=body)
            except httpx.HTTPError as exc:
                raise PrefectError(f"cannot create {what}: Prefect API at {base} unreachable: {exc}") from exc

        response = await retry_async(attempt, delays=CREATE_RETRY_DELAYS,
                                     retry_if=lambda r: r.status_code in _BUSY)
    if response.status_code >= 300:
        busy = " (still busy after ≈5 s of retries)" if response.status_code in _BUSY else ""
        raise PrefectError(
            f"Prefect API refused to create {what}: {response.status_code} {response.text[:300]}{busy}",
            status=response.status_code,
        )
    return response.json()
