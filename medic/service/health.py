"""What /healthz and /metrics ask Prefect, asked at most once per `ttl_s` however often they are hit.

A load balancer's health check or a scrape storm must not turn into a storm of Prefect calls, so each
answer (Prefect's health, the count of paused medic runs) is kept for a few seconds
(MEDIC_HEALTH_CACHE_S) and concurrent hits share one call in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import httpx

from medic.core.net import tls_verifying_context
from medic.orchestration.api import prefect_auth_headers

__all__ = ["PrefectProbe"]

log = logging.getLogger("medic.service.health")
T = TypeVar("T")


class _Cached(Generic[T]):
    def __init__(self, fetch: Callable[[], Awaitable[T]], ttl_s: float) -> None:
        self.fetch, self.ttl_s = fetch, ttl_s
        self._value: T | None = None
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def get(self) -> T:
        async with self._lock:  # hits arriving during a call wait for its answer instead of calling too
            if self._value is None or time.monotonic() - self._at >= self.ttl_s:
                self._value, self._at = await self.fetch(), time.monotonic()
            return self._value


class PrefectProbe:
    """Prefect's health and paused-run count, each fetched at most once per `ttl_s`."""

    def __init__(self, api_url: str | None, *, ttl_s: float) -> None:
        self.api_url = api_url
        self.calls = 0  # Prefect calls made: what the cache saves shows in tests as a count, not a time
        self._healthy = _Cached(self._fetch_healthy, ttl_s)
        self._paused = _Cached(self._fetch_paused, ttl_s)

    async def healthy(self) -> bool:
        return await self._healthy.get()

    async def paused(self) -> float | None:
        """Paused medic runs (None when Prefect could not say)."""
        value = await self._paused.get()
        return None if value < 0 else value

    async def _fetch_healthy(self) -> bool:
        self.calls += 1
        try:
            async with httpx.AsyncClient(timeout=2, headers=prefect_auth_headers(), verify=tls_verifying_context()) as client:
                return (await client.get(f"{self.api_url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _fetch_paused(self) -> float:
        self.calls += 1
        try:
            async with httpx.AsyncClient(timeout=2, headers=prefect_auth_headers(), verify=tls_verifying_context()) as client:
                paused = await client.post(f"{self.api_url}/flow_runs/count", json={
                    "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}, "tags": {"all_": ["medic"]}}})
                return float(paused.json())
        except (httpx.HTTPError, ValueError, TypeError):
            log.warning("could not count paused runs for medic_approvals_pending")
            return -1.0
