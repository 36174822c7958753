"""Blocking calls to Prefect's REST API for the state every worker shares (audit log, cards, flap guard).

Why not Prefect's own client: it retries a busy (503) or unreachable server for up to ~60 s with
2**n s sleeps, and an audit write must fail within a bound the caller chose (fail closed before an
action), so these calls use one pooled httpx client with medic's bounded retry. Why blocking: the
callers are blocking (a flow's task code, `medic audit`, a card change under a mutex); async code
calls them through `asyncio.to_thread`.

    call(method, path, what=..., json=..., retry_for=...)  -> the decoded JSON answer (None for 204)
    api_url()                                            -> the configured PREFECT_API_URL
    with patient(60): ...                                calls without their own retry_for wait up to 60 s

How long to wait is the caller's: the Slack endpoint must answer within 3 s, so its calls keep the 5 s
default; a run at a step it cannot skip (showing its approval card) waits out a Prefect restart instead
of failing and making the next run ask the human again (`patient(MEDIC_PREFECT_OUTAGE_WAIT_S)`; the
soak's prefect-down faults failed 5 runs that way).

A 404 raises `PrefectError` with `.status == 404` so callers can treat "not there" as an answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpx
from prefect.settings import get_current_settings

from medic.core.net import tls_verifying_context
from medic.core.polling import backoff, retry
from medic.errors import PrefectError
from medic.orchestration.api import prefect_auth_headers

__all__ = ["api_url", "call", "patient"]

_RETRY_STATUS = (429, 502, 503)
DEFAULT_RETRY_S = 5.0
_patience: ContextVar[float] = ContextVar("medic_prefect_patience", default=DEFAULT_RETRY_S)
_clients: dict[tuple[str, tuple[tuple[str, str], ...]], httpx.Client] = {}
_clients_lock = threading.Lock()


def api_url() -> str:
    """PREFECT_API_URL without its trailing slash; a ConfigError-worthy PrefectError when unset."""
    url = get_current_settings().api.url
    if not url:
        raise PrefectError("PREFECT_API_URL is not set: medic keeps its audit log, approval cards and flap "
                           "guard in Prefect; point PREFECT_API_URL at the Prefect server (…/api)")
    return url.rstrip("/")


def _client() -> tuple[str, httpx.Client]:
    """One pooled client per (API URL, credentials): keep-alive saves a connect per call."""
    base, headers = api_url(), {"Content-Type": "application/json", **prefect_auth_headers()}
    key = (base, tuple(sorted(headers.items())))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = httpx.Client(base_url=base, headers=headers, timeout=10.0, verify=tls_verifying_context())
    return base, client


@contextmanager
def patient(seconds: float) -> Iterator[None]:
    """Within the block (and the threads `asyncio.to_thread` starts from it), calls that name no
    `retry_for` of their own ask a busy or unreachable Prefect again for up to `seconds`."""
    token = _patience.set(max(seconds, DEFAULT_RETRY_S))
    try:
        yield
    finally:
        _patience.reset(token)


def call(method: str, path: str, *, what: str, json: Any = None, retry_for: float | None = None) -> Any:
    """`method path` against the Prefect API; busy answers and connection failures are retried for
    about `retry_for` s (default: 5 s, or the enclosing `patient` block's; 50 ms first, growing to
    1 s), then raise PrefectError saying what failed."""
    if retry_for is None:
        retry_for = _patience.get()
    base, client = _client()

    def attempt() -> httpx.Response | httpx.TransportError:
        try:
            return client.request(method, path, json=json)
        except httpx.TransportError as exc:  # refused, reset, timed out: maybe a restart, try again
            return exc

    def busy(answer: httpx.Response | httpx.TransportError) -> bool:
        return isinstance(answer, httpx.TransportError) or answer.status_code in _RETRY_STATUS

    answer = retry(attempt, delays=backoff(0.05, factor=1.6, cap=1.0), retry_if=busy, timeout=retry_for)
    if isinstance(answer, httpx.TransportError):
        raise PrefectError(f"cannot {what}: the Prefect API at {base} is unreachable after {retry_for:g} s of "
                           f"retries ({type(answer).__name__}: {answer}); check that the Prefect server runs "
                           "and PREFECT_API_URL points at it")
    if answer.status_code >= 300:
        hint = " (still busy after retries)" if answer.status_code in _RETRY_STATUS else ""
        raise PrefectError(f"cannot {what}: the Prefect API at {base} answered {answer.status_code}{hint}: "
                           f"{answer.text[:300]}", status=answer.status_code)
    return answer.json() if answer.content else None
