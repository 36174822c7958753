"""What Prefect holds about medic's runs of one (runbook, target): the truth the intake caches.

The intake keeps no state of its own that matters: which run of a (runbook, target) is still live,
which one waits for a human, which runs a medic serve instance left behind — all of it is asked of
Prefect here, through its public client and filters, by the tags every medic run carries:

    medic-serve                  every run medic serve created (alert, `/runs`)
    medic-serve:<instance>       which medic serve created it (two intakes never touch each other's runs)
    runbook:<name>, target:<host>, kind:<kind>

`LiveRunCache` remembers the answers briefly, so an alert storm asks Prefect once per (runbook,
target) and a few seconds, not once per notification.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import get_current_settings

from medic.core.net import tls_verifying_context
from medic.errors import PrefectError
from medic.orchestration.api import prefect_auth_headers

__all__ = ["LIVE_STATES", "RUN_TAG", "LiveRunCache", "find_runs", "instance_tag", "is_live", "key_tags", "run_instance",
           "run_state"]

RUN_TAG = "medic-serve"
#: A run in one of these states still owns its (runbook, target): it waits, executes or waits for a human.
LIVE_STATES = (StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING)
Key = tuple[str, str]


def instance_tag(instance: str) -> str:
    return f"{RUN_TAG}:{instance}"


def key_tags(runbook: str, target: str) -> list[str]:
    return [RUN_TAG, f"runbook:{runbook}", f"target:{target}"]


def is_live(state_type: str | None) -> bool:
    return state_type in {s.value for s in LIVE_STATES}


async def _prefect(method: str, path: str, what: str, body: dict[str, Any] | None = None) -> Any:
    """One call to the Prefect API, plain httpx: Prefect's own client sleeps 2**n s on a busy (503)
    SQLite server, which an alert's answer cannot wait for; the caller bounds and retries instead."""
    url = (get_current_settings().api.url or "").rstrip("/")
    if not url:
        raise PrefectError("PREFECT_API_URL is not set; point it at the Prefect server (…/api)")
    try:
        async with httpx.AsyncClient(headers=prefect_auth_headers(), timeout=10, verify=tls_verifying_context()) as http:
            answer = await http.request(method, url + path, json=body)
    except httpx.HTTPError as exc:
        raise PrefectError(f"cannot {what}: Prefect API at {url} unreachable: {exc}") from exc
    if answer.status_code == 404:
        return None
    if answer.status_code >= 300:
        raise PrefectError(f"cannot {what}: Prefect API at {url} answered {answer.status_code} {answer.text[:200]}",
                           status=answer.status_code)
    return answer.json()


async def find_runs(tags: list[str], states: tuple[StateType, ...], *, limit: int = 200) -> list[FlowRun]:
    """medic's runs carrying every tag in `tags` and in one of `states`, oldest first."""
    body = {"flow_runs": {"tags": {"all_": tags}, "state": {"type": {"any_": [s.value for s in states]}}},
            "sort": "START_TIME_ASC", "limit": limit}
    found = await _prefect("POST", "/flow_runs/filter", f"list medic's runs tagged {', '.join(tags)}", body)
    return [FlowRun.model_validate(run) for run in found or []]


async def run_state(run_id: str) -> str | None:
    """The state type of run `run_id` (None if Prefect no longer has it)."""
    run = await _prefect("GET", f"/flow_runs/{run_id}", f"read flow run {run_id}")
    return (run.get("state") or {}).get("type") if run else None


class LiveRunCache:
    """(runbook, target) → the live run Prefect holds for it, from a snapshot at most `ttl_s` old.

    Only a cache: one query lists every live medic run (shared by all the notifications that need
    it at once), so a storm over 50 targets asks Prefect once per `ttl_s`, not once per target; a
    run this process just created is remembered until a snapshot taken after it says otherwise.
    """

    def __init__(self, *, ttl_s: float = 2.0) -> None:
        self.ttl_s = ttl_s
        self._mine: dict[Key, tuple[str, float]] = {}  # created here: (run id, when)
        self._snapshot: dict[Key, str] = {}
        self._taken_at = float("-inf")  # monotonic time the snapshot's query started
        self._refresh: asyncio.Future[None] | None = None

    def remember(self, key: Key, run_id: str) -> None:
        self._mine[key] = (run_id, time.monotonic())

    def cached(self) -> dict[Key, str]:
        return {**self._snapshot, **{key: run_id for key, (run_id, at) in self._mine.items() if at > self._taken_at}}

    async def live_run(self, key: Key) -> str | None:
        """The id of a live run of `key` in Prefect, or None; raises PrefectError if Prefect cannot say."""
        if time.monotonic() - self._taken_at >= self.ttl_s:
            await self._refreshed()
        return self.cached().get(key)

    async def _refreshed(self) -> None:
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(self._take_snapshot())
        refresh = self._refresh
        try:
            await asyncio.shield(refresh)
        finally:
            if self._refresh is refresh and refresh.done():
                self._refresh = None

    async def _take_snapshot(self) -> None:
        started = time.monotonic()
        snapshot: dict[Key, str] = {}
        offset = 0
        while True:  # the API answers at most 200 per page
            body = {"flow_runs": {"tags": {"all_": [RUN_TAG]}, "state": {"type": {"any_": [s.value for s in LIVE_STATES]}}},
                    "sort": "START_TIME_ASC", "limit": 200, "offset": offset}
            page = await _prefect("POST", "/flow_runs/filter", "list medic's live runs", body) or []
            for run in page:
                tags = dict(t.split(":", 1) for t in run.get("tags", []) if ":" in t)
                if "runbook" in tags and "target" in tags:
                    snapshot.setdefault((tags["runbook"], tags["target"]), run["id"])
            if len(page) < 200:
                break
            offset += 200
        self._snapshot, self._taken_at = snapshot, started
        self._mine = {key: (run_id, at) for key, (run_id, at) in self._mine.items() if at > started}


def run_instance(run: Any) -> str | None:
    """The medic serve instance whose tag run `run` carries, if any."""
    prefix = f"{RUN_TAG}:"
    return next((t[len(prefix):] for t in (run.tags or []) if t.startswith(prefix)), None)
