"""An incident's timeline from machine timestamps, and what it cost: time to detect, acknowledge, recover.

The clock starts at *impact* — the first sample of the runbook's detect query that went bad, read
back from Prometheus — not at the alert: an alert fires only after its rule's `for`, and a run
starts only after Alertmanager delivered it. Every timestamp here comes from a machine:

| moment | source |
|---|---|
| impact | Prometheus: first bad sample of the detect query, looking back from the alert's `startsAt` |
| alert fired | Alertmanager's `startsAt` for the alert (Prometheus's FiredAt) |
| delivered | medic serve received the webhook (carried into the run's Prefect context) |
| run started | the flow run began |
| stages | each stage's start and end, as the flow timed them (the Prefect task runs) |
| human decision | the approval's `decided_at` |
| recovered | Prometheus: first good sample of the detect query after the bad run |
| resolved | the run ended |

Derived: time to detect (impact → alert fired, and → run started), time to acknowledge (alert fired
→ first human decision, or → run started when no human was asked), time to recover (impact →
recovered), and the error budget the incident burned for each SLO of the target's service.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from pydantic import BaseModel, Field

__all__ = ["ALERT_CONTEXT_KEY", "TIMELINE_PREFIX", "AlertReceipt", "BudgetBurn", "IncidentTimes", "StageClock", "StageSpan"]

#: Where medic serve's intake leaves the alert's times in the flow run's Prefect `context`.
ALERT_CONTEXT_KEY = "medic_alert"
TIMELINE_PREFIX = "timeline-"  # key of each run's timeline artifact: timeline-<runbook>-<target>


def _now() -> datetime:
    return datetime.now(timezone.utc)


class AlertReceipt(BaseModel):
    """The alert that started a run, as the intake received it (kept in the run's Prefect context)."""

    alertname: str
    fingerprint: str
    fired_at: datetime = Field(description="Alertmanager's startsAt")
    received_at: datetime = Field(description="when medic serve received the webhook")


class StageSpan(BaseModel):
    stage: str
    started: datetime
    ended: datetime

    @property
    def seconds(self) -> float:
        return (self.ended - self.started).total_seconds()


class StageClock:
    """Times each stage of a run where it runs: `with clock.stage("detect"): ...`.

    Prefect records task runs through events, written a moment later: a report built at the end of
    the run cannot wait for them, so the flow keeps its own clock (the same moments, ±ms)."""

    def __init__(self, spans: list[StageSpan] | None = None) -> None:
        self.spans: list[StageSpan] = [] if spans is None else spans  # e.g. a report's own list

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = _now()
        try:
            yield
        finally:
            self.spans.append(StageSpan(stage=name, started=started, ended=_now()))


class BudgetBurn(BaseModel):
    """The share of an SLO's error budget (over its whole window) that one incident spent."""

    slo: str
    objective: float
    window_s: float
    measured: float | None = Field(None, description="from the SLI's bad events between impact and recovery")
    if_all_failed: float | None = Field(
        None, description="if every request to the affected hosts failed during the incident (a dead service "
                          "records no requests of its own): duration × their share of traffic ÷ (window × budget)")
    error: str | None = None


class IncidentTimes(BaseModel):
    """The machine timestamps of one incident and what follows from them (None: not known)."""

    impact: datetime | None = Field(None, description="first bad sample of the detect query")
    impact_before_lookback: bool = Field(False, description="bad since before the look-back window: impact is earlier")
    alert_fired: datetime | None = None
    delivered: datetime | None = None
    run_started: datetime
    stages: list[StageSpan] = Field(default_factory=list)
    human_decision: datetime | None = None
    recovered: datetime | None = Field(None, description="first good sample of the detect query after the bad run")
    recovered_by: str = Field("the detect query good again (Prometheus)", description="how `recovered` was found")
    resolved: datetime
    step_s: float = Field(description="resolution of the impact/recovered look-ups (range-query step)")
    budget: list[BudgetBurn] = Field(default_factory=list)

    @staticmethod
    def _span(a: datetime | None, b: datetime | None) -> float | None:
        return None if a is None or b is None else (b - a).total_seconds()

    @property
    def time_to_detect_s(self) -> float | None:
        """Impact → alert fired (what monitoring costs)."""
        return self._span(self.impact, self.alert_fired)

    @property
    def time_to_start_s(self) -> float | None:
        """Impact → the run started (monitoring and delivery)."""
        return self._span(self.impact, self.run_started)

    @property
    def time_to_acknowledge_s(self) -> float | None:
        """Alert fired → the first human decision, or → run started when no human was asked."""
        return self._span(self.alert_fired, self.human_decision or self.run_started)

    @property
    def time_to_recover_s(self) -> float | None:
        """Impact → recovered (the SLI good again)."""
        return self._span(self.impact, self.recovered)

    def ordered(self) -> list[tuple[str, datetime]]:
        """Every known moment, in the order they happened."""
        moments: list[tuple[str, datetime | None]] = [
            ("impact", self.impact), ("alert fired", self.alert_fired), ("delivered to medic", self.delivered),
            ("run started", self.run_started),
            *((f"{s.stage} started", s.started) for s in self.stages),
            *((f"{s.stage} ended", s.ended) for s in self.stages),
            ("human decision", self.human_decision), ("recovered", self.recovered), ("resolved", self.resolved)]
        return sorted(((k, v) for k, v in moments if v is not None), key=lambda kv: kv[1])

    def markdown_lines(self) -> list[str]:
        origin = self.impact or self.alert_fired or self.run_started
        lines = ["## Incident timeline", "",
                 f"Machine timestamps (UTC); impact from Prometheus at a {self.step_s:g} s step; recovered: "
                 f"{self.recovered_by}.", "",
                 "| moment | time | since impact |", "|---|---|---|"]
        for name, at in self.ordered():
            since = (at - origin).total_seconds()
            lines.append(f"| {name} | {at.strftime('%H:%M:%S.%f')[:-3]} | {since:+.1f} s |")
        if self.impact_before_lookback:
            lines += ["", "The detect query was bad since before the look-back window: impact is earlier than shown."]

        def fmt(v: float | None) -> str:
            return "—" if v is None else f"{v:.1f} s"

        lines += ["", f"- time to detect: {fmt(self.time_to_detect_s)} (impact → alert fired), "
                      f"{fmt(self.time_to_start_s)} (impact → run started)",
                  f"- time to acknowledge: {fmt(self.time_to_acknowledge_s)} (alert fired → "
                  f"{'human decision' if self.human_decision else 'run started, no human asked'})",
                  f"- time to recover: {fmt(self.time_to_recover_s)} (impact → recovered)"]
        for b in self.budget:
            if b.error:
                lines.append(f"- error budget of SLO {b.slo}: unknown ({b.error})")
                continue
            measured = "no data" if b.measured is None else f"{b.measured * 100:.3g} %"
            worst = "" if b.if_all_failed is None else f", {b.if_all_failed * 100:.3g} % if every request to the affected hosts failed"
            lines.append(f"- error budget burned, SLO {b.slo} ({b.objective:g} % over {b.window_s / 86400:g} d): "
                         f"{measured} measured{worst} (assumes traffic spread evenly over the window)")
        return lines
