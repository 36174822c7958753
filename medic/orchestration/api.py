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

__all__ = ["CREATE_RETRY_DELAYS", "post_query", "post_with_fast_retry", "prefect_auth_headers"]

CREATE_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.0, 1.0)  # ≈5 s in all
_BUSY = (503, 429)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One CA-bundle load per process (each load costs ~30 ms)."""
    return ssl.create_default_context(cafile=certifi.where())


def prefect_auth_headers() -> dict[str, str]:
    """The Authorization header Prefect's own client sends (PREFECT_API_AUTH_STRING as basic auth, or
    PREFECT_API_KEY), for medic's raw httpx calls to Prefect: a server with API auth on answers 401
    without it. Empty when neither is set."""
    api = get_current_settings().api
    if api.auth_string is not None:
        token = base64.b64encode(api.auth_string.get_secret_value().encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if api.key is not None:
        return {"Authorization": f"Bearer {api.key.get_secret_value()}"}
    return {}


def _headers() -> tuple[str, dict[str, str]]:
    """The configured API URL and the headers Prefect's own client would send (auth string or key)."""
    api = get_current_settings().api
    if not api.url:
        raise PrefectError("PREFECT_API_URL is not set; point it at the Prefect server (…/api)")
    return api.url.rstrip("/"), {"Content-Type": "application/json", **prefect_auth_headers()}


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


async def post_query(what: str, path: str, body: dict[str, Any]) -> Any:
    """POST a read (`…/filter`) with explicit JSON: Prefect 3.8.8's client sends `null` for unset
    paging fields, which this server refuses with 422 (MACHINE-NOTES), so reads that page go here."""
    base, headers = _headers()
    async with httpx.AsyncClient(headers=headers, timeout=30, verify=_ssl_context()) as http:
        try:
            response = await http.post(base + path, json=body)
        except httpx.HTTPError as exc:
            raise PrefectError(f"cannot read {what}: Prefect API at {base} unreachable: {exc}") from exc
    if response.status_code >= 300:
        raise PrefectError(f"Prefect API refused to read {what}: {response.status_code} {response.text[:300]}",
                           status=response.status_code)
    return response.json()
