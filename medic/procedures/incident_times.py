"""Fill an incident's timeline (`medic.core.timeline.IncidentTimes`) from Prometheus, after verify.

Range queries of the runbook's detect query over the affected hosts — looking back from the alert's
`startsAt` for the first bad sample (impact: a coarse pass, then finely the one step before its answer),
forward from the recovery's start for the first good one (recovered) — and one instant query per SLO
of the target's service for the budget the incident burned. The look-back grid is aligned on
`startsAt`, so the rule evaluation that fired the alert is one of its points: impact ≤ alert fired
holds by construction.

A look-up that fails leaves its moment unknown (None) and is logged: a timeline is not worth a
failed remediation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import datetime, timezone

from medic.clients.prometheus import PrometheusClient, Series
from medic.core.inventory import Host
from medic.core.runbook import Check, Runbook
from medic.core.slo import SLOSpec
from medic.core.templates import render_promql
from medic.core.timeline import AlertReceipt, BudgetBurn, IncidentTimes, StageSpan
from medic.core.polling import retry
from medic.errors import MedicError, PrometheusUnreachable
from medic.procedures.slo_rules import error_ratio, prom_duration

__all__ = ["COARSE_S", "LOOKBACK_S", "STEP_S", "find_impact", "first_bad", "first_good", "incident_times",
           "slos_for"]

log = logging.getLogger("medic.procedures.incident_times")

STEP_S = 0.1  # a tenth of the lab's 1 s scrape interval: the look-ups add < 0.1 s of error
LOOKBACK_S = 600.0
LOOKUP_RETRY_DELAYS_S = (0.5, 1.0, 2.0)
#: Prometheus answers a range query on its own millisecond grid: a point asked for at x.594543 comes
#: back at x.595 (rounded), which is after x.594543 — within this, a point is still at the anchor.
PROMETHEUS_RESOLUTION_S = 0.001
COARSE_S = 1.0  # the look-back's first pass; only the last coarse step before the impact is read at STEP_S
MAX_POINTS = 10_000  # Prometheus refuses more than 11,000 points per series


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _series(check: Check, hosts: list[Host], prom: PrometheusClient, start: float, end: float,
            step: float) -> list[Series]:
    """The check's series of the affected hosts between start and end (a look-up that meets Prometheus
    busy or restarting is tried again for a few seconds: the run is over, a timeline is worth a wait)."""
    def look(query: str) -> list[Series]:
        return retry(lambda: prom.query_range(query, start=start, end=end, step=step), delays=LOOKUP_RETRY_DELAYS_S,
                     retry_on=PrometheusUnreachable)

    if check.per_host:
        found: list[Series] = []
        for h in hosts:
            found += look(render_promql(check.query, h))
        return found
    names = {h.name for h in hosts}
    return [s for s in look(render_promql(check.query, None)) if s.labels.get(check.host_label) in names]


def first_bad(series: list[Series], bad: Callable[[float], bool], anchor: float) -> tuple[float | None, bool]:
    """Start of the bad run that covers `anchor` (or ends last before it), earliest over the series;
    and whether that run began at the window's first point (impact is earlier than we can see)."""
    best: float | None = None
    truncated = False
    for s in series:
        points = [(t, v) for t, v in s.points if t <= anchor + PROMETHEUS_RESOLUTION_S and not math.isnan(v)]
        last_bad = next((i for i in range(len(points) - 1, -1, -1) if bad(points[i][1])), None)
        if last_bad is None:
            continue
        i = last_bad
        while i > 0 and bad(points[i - 1][1]):
            i -= 1
        if best is None or points[i][0] < best:
            best, truncated = points[i][0], i == 0
    return best, truncated


def find_impact(check: Check, hosts: list[Host], prom: PrometheusClient, bad: Callable[[float], bool], *,
                anchor: float, until: float, step_s: float, lookback_s: float) -> tuple[float | None, bool]:
    """`first_bad` over the `lookback_s` before `until`, on a grid aligned on `anchor`, read in two passes
    (an alert that has fired for hours still gets a window of `lookback_s`, not hours at `step_s`).

    At STEP_S over 10 minutes a look-up was 6,000 points per host; several runs finishing at once made
    medic serve parse 100,000 of them together, a peak its memory never gave back. The first pass reads
    every COARSE_S, the second the one coarse step that ends at the coarse answer, every `step_s`, on the
    same grid: the same moment as one fine pass, except that a good spell shorter than COARSE_S inside
    the bad run is not seen (the impact is then that spell's earlier start)."""
    ratio = max(1, round(max(step_s, COARSE_S) / step_s)) if step_s > 0 else 1
    coarse = ratio * step_s
    start = anchor + math.floor((until - lookback_s - anchor) / coarse + 1e-9) * coarse  # ~lookback_s, on the grid
    rough, truncated = first_bad(_series(check, hosts, prom, start, until, coarse), bad, until)
    if rough is None or truncated or ratio == 1:
        return rough, truncated
    fine = [s for s in _series(check, hosts, prom, rough - coarse, rough, step_s)
            if s.points and abs(s.points[-1][0] - rough) < step_s / 2 and bad(s.points[-1][1])]
    exact, _ = first_bad(fine, bad, rough)
    return (rough if exact is None else exact), False


def first_good(series: list[Series], bad: Callable[[float], bool], after: float) -> float | None:
    """First point after `after` from which a series stays good, latest over the series (all recovered);
    None while any series is still bad at its last point."""
    latest: float | None = None
    for s in series:
        points = [(t, v) for t, v in s.points if t >= after - PROMETHEUS_RESOLUTION_S and not math.isnan(v)]
        if not points or bad(points[-1][1]):
            return None
        i = len(points) - 1
        while i > 0 and not bad(points[i - 1][1]):
            i -= 1
        latest = points[i][0] if latest is None else max(latest, points[i][0])
    return latest


def slos_for(hosts: list[Host], slos: list[SLOSpec]) -> list[SLOSpec]:
    """The SLOs whose service is a group of one of the hosts (web-2 is in group web → SLO of service web)."""
    groups = {g for h in hosts for g in h.groups}
    return [s for s in slos if s.service in groups]


def _burn(slo: SLOSpec, prom: PrometheusClient, impact: datetime, recovered: datetime, share: float) -> BudgetBurn:
    seconds = max(1.0, (recovered - impact).total_seconds())
    row = BudgetBurn(slo=slo.name, objective=slo.objective, window_s=slo.window,
                     if_all_failed=seconds * share / (slo.window * slo.budget))
    try:
        samples = prom.query(error_ratio(slo, prom_duration(seconds)), at=recovered)
        ratio = samples[0].value if samples else math.nan
        row.measured = None if math.isnan(ratio) else max(0.0, ratio) * seconds / (slo.window * slo.budget)
    except MedicError as exc:
        row.error = str(exc)[:200]
    return row


def incident_times(spec: Runbook, hosts: list[Host], prom: PrometheusClient, *, alert: AlertReceipt | None,
                   run_started: datetime, stages: list[StageSpan], human_decision: datetime | None,
                   resolved: datetime, slos: list[SLOSpec], service_size: int, step_s: float = STEP_S,
                   lookback_s: float = LOOKBACK_S, recovered: datetime | None = None) -> IncidentTimes:
    """The incident's timeline; `service_size`: hosts in the target's service (each one's share of traffic).
    `recovered`: the moment service came back when the flow knows it better than the detect query does
    (a failover: the old primary stays down, the write through the endpoint proves the new one)."""
    times = IncidentTimes(alert_fired=alert.fired_at if alert else None, delivered=alert.received_at if alert else None,
                          run_started=run_started, stages=stages, human_decision=human_decision, resolved=resolved,
                          step_s=step_s, recovered=recovered)
    if not hosts:
        return times
    check: Check = spec.detect
    bad = check.condition.holds
    if spec.detect.anomaly is not None:  # no threshold to find the impact by: recovered = verify holds
        check, bad = spec.verify, (lambda v: not spec.verify.condition.holds(v))
    detect_end = next((s.ended for s in stages if s.stage == "detect"), run_started)
    recover_start = next((s.started for s in stages if s.stage == "recover"), None)
    try:
        if spec.detect.anomaly is None:
            anchor = (alert.fired_at if alert else detect_end).timestamp()
            grid = {"anchor": anchor, "step_s": step_s, "lookback_s": lookback_s}
            impact, times.impact_before_lookback = find_impact(check, hosts, prom, bad, until=anchor, **grid)
            if impact is None and alert is not None:  # gone by startsAt? look up to detect's confirmation
                impact, times.impact_before_lookback = find_impact(check, hosts, prom, bad,
                                                                   until=detect_end.timestamp(), **grid)
            times.impact = None if impact is None else _utc(impact)
        if recover_start is not None and recovered is None:
            start, end = recover_start.timestamp(), resolved.timestamp()
            step = max(step_s, (end - start) / MAX_POINTS)
            recovered = first_good(_series(check, hosts, prom, start, end, step), bad, start)
            times.recovered = None if recovered is None else _utc(recovered)
    except MedicError as exc:
        log.warning("incident timeline of %s: Prometheus look-up failed: %s", spec.name, exc)
    if times.impact is not None and times.recovered is not None:
        share = min(1.0, len(hosts) / max(1, service_size))
        times.budget = [_burn(s, prom, times.impact, times.recovered, share) for s in slos_for(hosts, slos)]
    return times
