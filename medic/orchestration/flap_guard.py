"""The flap guard: past K real remediations of one (runbook, target) within a window, ask a human first.

Its history is the audit log in Prefect (`medic.orchestration.audit_store`), not a file: a flow
writes an `intent` record — confirmed by Prefect before it changes anything, and only when it really
acts (never in check mode) — wherever it runs, so every medic serve and every worker counts the same
remediations, and a restart forgets nothing. A run that found the target healthy, a dry run, a
rejected or timed-out approval wrote no intent: a storm of false alerts never makes the next real
incident wait for a human.

    guard = FlapGuard(max_runs=3, window_s=3600)     # or FlapGuard.from_settings(settings)
    await guard.tripped(("service-down", "web-2"))   # K or more intents within the window?
    await guard.explain(key)                         # the sentence carried in the run's reason

Asking costs one `POST /artifacts/filter` (intents within the window, newest first), shared: the
intents read are kept `fresh_s` (1 s) and concurrent askers wait for the one read in flight, so a storm
of 1,000 notifications over 50 targets asks Prefect about once a second, not 1,000 times. An intent is
therefore seen up to 1 s late — a remediation still running is deduplicated as live anyway, and a run
this process saw act drops the copy at once (`record`). Prefect unreachable raises PrefectError — the
caller decides (the launcher answers 503, so the alert comes again).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

from medic.core.report import RemediationReport
from medic.core.audit import AuditRecord
from medic.orchestration.audit_store import read_records
from medic.settings import Settings

__all__ = ["FlapGuard", "Key"]

Key = tuple[str, str]  # (runbook, target)


class FlapGuard:
    """How often each (runbook, target) was really remediated within the last `window_s` seconds."""

    def __init__(self, *, max_runs: int, window_s: float, fresh_s: float = 1.0) -> None:
        self.max_runs, self.window_s, self.fresh_s = max_runs, window_s, fresh_s
        self._intents: tuple[float, list[AuditRecord]] | None = None  # (monotonic read time, records)
        self._reading: asyncio.Future[list[AuditRecord]] | None = None  # the read in flight, shared
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "FlapGuard":
        return cls(max_runs=settings.flap_max_runs, window_s=settings.flap_window_s)

    def count(self, key: Key, now: datetime | None = None) -> int:
        """Blocking: the intents of `key` within the window ending `now` (default: the current time)."""
        now = now or datetime.now(timezone.utc)
        return self._within(read_records(kinds=["intent"], since=now - timedelta(seconds=self.window_s)), key, now)

    def _within(self, intents: list[AuditRecord], key: Key, now: datetime) -> int:
        """How many of `intents` are of `key` and inside the window ending `now`."""
        since = now - timedelta(seconds=self.window_s)
        return sum(1 for e in intents if (e.runbook, e.target) == key and since <= e.at <= now)

    async def recent(self, key: Key, now: datetime | None = None) -> int:
        """The intents of `key` within the window, from a read at most `fresh_s` old (one read in flight)."""
        if now is not None:
            return await asyncio.to_thread(self.count, key, now)
        return self._within(await self._recent_intents(), key, datetime.now(timezone.utc))

    async def _recent_intents(self) -> list[AuditRecord]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a read in flight belongs to its loop; what was read stays good
            self._loop, self._reading = loop, None
        if self._intents is not None and time.monotonic() - self._intents[0] < self.fresh_s:
            return self._intents[1]
        if self._reading is None:  # one read for every asker; an asker that gives up does not cancel it
            since = datetime.now(timezone.utc) - timedelta(seconds=self.window_s)
            self._reading = asyncio.ensure_future(self._read(since))
            self._reading.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        return await asyncio.shield(self._reading)

    async def _read(self, since: datetime) -> list[AuditRecord]:
        try:
            records = await asyncio.to_thread(read_records, kinds=["intent"], since=since)
        finally:
            self._reading = None
        self._intents = (time.monotonic(), records)
        return records

    async def tripped(self, key: Key) -> bool:
        return await self.recent(key) >= self.max_runs

    async def explain(self, key: Key) -> str:
        """Why the guard asks a human — carried in the run's `reason`, so its logs, card and report say so."""
        return (f"flap guard: {key[0]} on {key[1]} was remediated {await self.recent(key)} time(s) within the "
                f"last {self.window_s:g} s (limit {self.max_runs}), so a human decides before it acts again")

    def record(self, key: Key, at: float | None = None) -> None:
        """A run of `key` acted: forget the intents read, so the next question sees its intent at once.
        The flow's own `intent` audit record is the history; calling this never counts a run twice."""
        self._intents = None

    @staticmethod
    def acted(result: object) -> bool:
        """Whether a finished run was a remediation: its recovery really ran (not in check mode)."""
        return isinstance(result, RemediationReport) and result.recovery is not None and not result.recovery.check_mode
