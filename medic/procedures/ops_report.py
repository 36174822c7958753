"""The operations report: what incidents cost, per runbook and per SLO, with percentiles and pictures.

Mean time to recover alone is too noisy to show improvement, so every figure is a distribution
(p50 / p90 / max) and is split by stage. Incidents are runs that acted (recovered or tried to);
runs that found nothing to do are counted apart, as are approvals and how long humans took (time
the run spent Paused). Availability and error budget come from the SLO specs, asked of Prometheus
with the same PromQL the generated rules record (`medic.procedures.slo_rules.error_ratio`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime

from pydantic import BaseModel, Field

from medic.clients.prometheus import PrometheusClient
from medic.core.slo import SLOSpec
from medic.errors import MedicError
from medic.orchestration.run_history import RunRecord
from medic.procedures.slo_rules import error_ratio, prom_duration

__all__ = ["Distribution", "OpsReport", "RunbookStats", "SLOStats", "build_report", "render_markdown",
           "slack_summary", "slo_stats"]

FLAPPING_RUNS = 3  # acted runs on one target within the report period that make it "flapping"


class Distribution(BaseModel):
    n: int
    p50: float
    p90: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> "Distribution | None":
        if not values:
            return None
        ordered = sorted(values)
        return cls(n=len(ordered), p50=_percentile(ordered, 50), p90=_percentile(ordered, 90), max=ordered[-1])

    def text(self) -> str:
        return f"{self.p50:.1f} / {self.p90:.1f} / {self.max:.1f} s (n={self.n})"


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class RunbookStats(BaseModel):
    runbook: str
    runs: int
    incidents: int = Field(description="runs that acted: recovered, or tried to")
    recovered: int
    not_needed: int
    failed: int
    approvals: int = Field(description="runs that asked a human")
    human_wait: Distribution | None = None
    total: Distribution | None = Field(None, description="incident run time, start to end")
    stages: dict[str, Distribution] = Field(default_factory=dict)
    flapping: list[str] = Field(default_factory=list, description=f"targets with ≥ {FLAPPING_RUNS} incidents")
    ttd: Distribution | None = Field(None, description="time to detect: impact → alert fired (incident timelines)")
    tta: Distribution | None = Field(None, description="time to acknowledge: alert fired → human decision or run start")
    ttr: Distribution | None = Field(None, description="time to recover: impact → the SLI good again")


class SLOStats(BaseModel):
    slo: str
    service: str
    objective: float
    availability: float | None = Field(None, description="share of good events over the report period")
    budget_left: float | None = Field(None, description="share of the SLO window's budget not yet spent")
    burned_in_period: float | None = Field(None, description="share of the window's budget spent in the period")
    depends_on: list[str] = Field(default_factory=list)
    chain: float | None = Field(None, description="product of the dependencies' and its own availability")
    error: str | None = None


class OpsReport(BaseModel):
    since: datetime
    until: datetime
    runbooks: list[RunbookStats]
    slos: list[SLOStats] = Field(default_factory=list)
    incidents: list[RunRecord] = Field(default_factory=list, description="runs that acted, oldest first")


def build_report(runs: list[RunRecord], *, since: datetime, until: datetime, slos: list[SLOStats] | None = None,
                 ) -> OpsReport:
    by_runbook: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        by_runbook[run.runbook].append(run)
    stats = []
    for name, group in sorted(by_runbook.items()):
        acted = [r for r in group if r.acted]
        per_stage: dict[str, list[float]] = defaultdict(list)
        for run in acted:
            for stage in run.stages:
                per_stage[stage.stage].append(stage.seconds)
        targets = Counter(r.target for r in acted)
        asked = [r for r in group if r.asked_human]
        timed = [r.incident for r in acted if r.incident is not None]
        stats.append(RunbookStats(
            runbook=name, runs=len(group), incidents=len(acted),
            recovered=sum(1 for r in acted if r.outcome is not None and r.outcome.restored),
            not_needed=sum(1 for r in group if r.outcome is not None and r.outcome.value == "not needed"),
            failed=sum(1 for r in group if r.outcome is not None and not r.outcome.success),
            approvals=len(asked), human_wait=Distribution.of([r.human_wait_s for r in asked]),
            total=Distribution.of([r.seconds for r in acted]),
            stages={k: d for k, v in per_stage.items() if (d := Distribution.of(v)) is not None},
            flapping=sorted(t for t, n in targets.items() if n >= FLAPPING_RUNS),
            ttd=_dist([t.time_to_detect_s for t in timed]), tta=_dist([t.time_to_acknowledge_s for t in timed]),
            ttr=_dist([t.time_to_recover_s for t in timed])))
    return OpsReport(since=since, until=until, runbooks=stats, slos=slos or [],
                     incidents=[r for r in runs if r.acted])


def _dist(values: list[float | None]) -> Distribution | None:
    return Distribution.of([v for v in values if v is not None])


def _one(prom: PrometheusClient, promql: str) -> float | None:
    value = prom.value(promql)
    return None if value is None or math.isnan(value) else value


def slo_stats(slos: list[SLOSpec], prom: PrometheusClient, *, period_s: float) -> list[SLOStats]:
    """Each SLO's availability over the period, budget left over its window, and its chain's product."""
    out: dict[str, SLOStats] = {}
    for slo in slos:
        row = SLOStats(slo=slo.name, service=slo.service, objective=slo.objective, depends_on=slo.depends_on)
        try:
            bad_period = _one(prom, error_ratio(slo, prom_duration(period_s)))
            bad_window = _one(prom, error_ratio(slo, prom_duration(slo.window)))
            row.availability = None if bad_period is None else 1.0 - bad_period
            if bad_window is not None:
                row.budget_left = 1.0 - bad_window / slo.budget
            if bad_period is not None:  # assumes traffic spread evenly over the window: say so in the report
                row.burned_in_period = bad_period * min(1.0, period_s / slo.window) / slo.budget
        except MedicError as exc:
            row.error = str(exc)[:200]
        out[slo.name] = row
    for row in out.values():
        parts = [out[d].availability for d in row.depends_on if d in out] + [row.availability]
        if row.depends_on and all(p is not None for p in parts):
            row.chain = math.prod(p for p in parts if p is not None)
    return list(out.values())


def _pct(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f} %"


def render_markdown(report: OpsReport) -> str:
    span = f"{report.since:%Y-%m-%d %H:%M} → {report.until:%Y-%m-%d %H:%M} UTC"
    lines = [f"# medic operations report, {span}", ""]
    if report.slos:
        lines += ["## SLOs", "", "| SLO | service | objective | availability (period) | budget left (window) | "
                  "budget burned in period | chain (× dependencies) |", "|---|---|---|---|---|---|---|"]
        for s in report.slos:
            chain = f"{_pct(s.chain)} ({' × '.join([*s.depends_on, s.slo])})" if s.chain is not None else "—"
            lines.append(f"| {s.slo} | {s.service} | {s.objective:g} % | {_pct(s.availability)} | "
                         f"{_pct(s.budget_left, 1)} | {_pct(s.burned_in_period, 1)} | {chain} |")
        lines += ["", "Budget burned in the period assumes traffic spread evenly over the SLO window. A chain's "
                  "product differs from the measured end-to-end availability when failures correlate "
                  "(one outage taking several components down counts once end to end, several times in the product).", ""]
    lines += ["## Runbooks", "", "| runbook | runs | incidents | recovered | not needed | failed | approvals "
              "(human p50/p90/max) | incident time p50/p90/max | flapping |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report.runbooks:
        lines.append(f"| {r.runbook} | {r.runs} | {r.incidents} | {r.recovered} | {r.not_needed} | {r.failed} | "
                     f"{r.approvals} ({r.human_wait.text() if r.human_wait else '—'}) | "
                     f"{r.total.text() if r.total else '—'} | {', '.join(r.flapping) or '—'} |")
    timed = [r for r in report.runbooks if r.ttd or r.tta or r.ttr]
    if timed:
        lines += ["", "## Time to detect, acknowledge, recover (p50 / p90 / max)", "",
                  "From each incident's timeline of machine timestamps: detect = impact (first bad sample) → "
                  "alert fired; acknowledge = alert fired → first human decision, or → run start when no human "
                  "was asked; recover = impact → the detect query good again.", "",
                  "| runbook | time to detect | time to acknowledge | time to recover |", "|---|---|---|---|"]
        lines += [f"| {r.runbook} | {r.ttd.text() if r.ttd else '—'} | {r.tta.text() if r.tta else '—'} | "
                  f"{r.ttr.text() if r.ttr else '—'} |" for r in timed]
    for r in report.runbooks:
        if r.stages:
            lines += ["", f"### {r.runbook}: stage durations (p50 / p90 / max)", "",
                      *(f"- {stage}: {d.text()}" for stage, d in r.stages.items())]
    return "\n".join(lines) + "\n"


def slack_summary(report: OpsReport) -> str:
    """The short version for a channel: incidents, recoveries, slowest runbook, budgets."""
    incidents = sum(r.incidents for r in report.runbooks)
    recovered = sum(r.recovered for r in report.runbooks)
    slowest = max((r for r in report.runbooks if r.total), key=lambda r: r.total.p90 if r.total else 0, default=None)
    text = (f"*medic weekly*: {incidents} incident(s), {recovered} recovered hands-off or approved, "
            f"{sum(r.not_needed for r in report.runbooks)} alert(s) needed nothing.")
    if slowest and slowest.total:
        text += f" Slowest: {slowest.runbook} p90 {slowest.total.p90:.0f} s."
    for r in report.runbooks:
        if r.ttr:
            text += f"\n• {r.runbook}: time to recover p50 {r.ttr.p50:.0f} s, p90 {r.ttr.p90:.0f} s (from impact)"
    for s in report.slos:
        text += f"\n• {s.slo}: availability {_pct(s.availability)}, budget left {_pct(s.budget_left, 1)}"
    return text
