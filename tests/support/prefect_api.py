"""The tests' own calls to Prefect's REST API, asked again while Prefect is busy or restarting.

Why: a loaded CI's Prefect on SQLite answers 503 now and then (a write waiting for the database lock),
and one a chaos case has just restarted refuses connections for a moment. A test that asked once
failed on that, not on what it tests (stop 21's CI: a flow-run POST answered without an `id`). medic's
own `prefect_rest.call` does the same for the product; this is the tests' version with the base URL
given (the session lab and the cluster labs each run their own Prefect) and a failure that names the
request and the answer.

    prefect_json(api, "POST", "/flow_runs/filter", json={...})  -> decoded JSON (AssertionError if not 2xx)
    prefect_request(api, "GET", f"/v2/concurrency_limits/{name}")  -> the httpx.Response (any status)
"""

from __future__ import annotations

from typing import Any

import httpx

from medic.core.polling import backoff, retry

__all__ = ["prefect_json", "prefect_request"]

_BUSY = (429, 502, 503)


def prefect_request(api: str, method: str, path: str, *, json: Any = None, retry_for: float = 20.0,
                    timeout: float = 10.0) -> httpx.Response:
    """`method api+path`, asked again for up to `retry_for` s while the answer is busy or the connection
    fails; the last answer (any status), or the last connection error (an httpx.TransportError, so a
    `wait_for(..., ignore=httpx.HTTPError)` across a Prefect restart goes on waiting) naming the call."""
    url = f"{api.rstrip('/')}/{path.lstrip('/')}"

    def attempt() -> httpx.Response | httpx.TransportError:
        try:
            return httpx.request(method, url, json=json, timeout=timeout)
        except httpx.TransportError as exc:
            return exc

    answer = retry(attempt, delays=backoff(0.1, factor=1.6, cap=1.0), timeout=retry_for,
                   retry_if=lambda a: isinstance(a, httpx.TransportError) or a.status_code in _BUSY)
    if isinstance(answer, httpx.TransportError):
        raise type(answer)(f"{method} {url}: Prefect unreachable for {retry_for:g} s "
                           f"({type(answer).__name__}: {answer})") from answer
    return answer


def prefect_json(api: str, method: str, path: str, *, json: Any = None, retry_for: float = 20.0) -> Any:
    """The decoded answer of a call that must succeed; AssertionError with status and body if not 2xx."""
    answer = prefect_request(api, method, path, json=json, retry_for=retry_for)
    assert answer.is_success, f"{method} {answer.request.url}: Prefect answered {answer.status_code}: {answer.text[:500]}"
    return answer.json() if answer.content else None
