"""Detect by anomaly: score each host's recent history of a query with a streaming detector.

A runbook's `detect: {anomaly: {query, detector, params, lookback, step, threshold, within}}` is
evaluated here: the query over `lookback` (a PromQL range), each host's series replayed through a
fresh detector row by row (it uses only the past, so the scores are what a live watcher would have
produced), and the host counts when a score at or above `threshold` came within `within` of now.
The same function feeds `medic detect` (a chart in the terminal), the flow (a PNG artifact beside
the report) and the scheduled watcher that raises alerts (flows/watch.py).
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, Field

from medic.clients.prometheus import PrometheusClient, Series
from medic.core.inventory import Host
from medic.core.report import CheckResult, HostValue
from medic.core.runbook import Anomaly, Detect
from medic.core.templates import placeholders, render_promql
from medic.detect import build

__all__ = ["HostScore", "anomaly_check", "score_hosts"]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class HostScore(BaseModel):
    """One host's anomaly score now, why, and the history behind it (for the chart)."""

    host: str
    score: float = Field(description="the highest score within `within` of now (0 with no data)")
    reason: str = Field(description="the detector's words for that score")
    at: float | None = Field(None, description="when that score was given (epoch seconds)")
    times: list[float] = Field(default_factory=list)
    values: list[float] = Field(default_factory=list)
    scores: list[float] = Field(default_factory=list)


def _metric(spec: Anomaly) -> str:
    """What the reason calls the series: the detector's `metric` parameter, else the query's metric name."""
    given = spec.params.get("metric")
    if isinstance(given, str) and given:
        return given
    found = _METRIC_NAME.search(re.sub(r"\b(rate|irate|increase|deriv|sum|avg|max|min|by|histogram_quantile)\b", "",
                                       spec.query))
    return found.group(0) if found else "the series"


def _fetch(spec: Anomaly, hosts: list[Host], prom: PrometheusClient, now: float) -> dict[str, list[Series]]:
    def rng(query: str) -> list[Series]:
        return prom.query_range(query, start=now - spec.lookback, end=now, step=spec.step)

    grouped: dict[str, list[Series]] = {h.name: [] for h in hosts}
    if "host" in placeholders(spec.query):
        with ThreadPoolExecutor(max_workers=min(8, len(hosts) or 1)) as pool:
            for h, series in zip(hosts, pool.map(lambda h: rng(render_promql(spec.query, h)), hosts)):
                grouped[h.name].extend(series)
    else:
        for s in rng(render_promql(spec.query, None)):
            name = s.labels.get("host")
            if name in grouped:
                grouped[name].append(s)
    return grouped


def _score_series(spec: Anomaly, series: Series, now: float, host: str) -> HostScore:
    # A runbook confirms an incident the watcher (or Alertmanager) already saw: no cool-down unless the
    # runbook asks, so an alarm earlier in the lookback cannot hide the score of the last rows.
    params = {"cooldown": 0, "metric": _metric(spec), **spec.params}
    detector = build(spec.detector, **params)
    best = HostScore(host=host, score=0.0, reason=f"{params['metric']}: no score yet")
    for ts, value in series.points:
        score = detector.update(ts, value)
        best.times.append(ts)
        best.values.append(value)
        best.scores.append(score)
        if now - ts <= spec.within and (score > best.score or best.at is None):
            best.score, best.reason, best.at = score, detector.reason(), ts
    if best.at is None and series.points:
        best.reason = detector.reason()
    return best


def score_hosts(spec: Anomaly, hosts: list[Host], prom: PrometheusClient, *, now: float | None = None) -> list[HostScore]:
    """Each host's anomaly score (the worst of its series), with the history for a chart."""
    now = time.time() if now is None else now
    results = []
    for host, series_list in _fetch(spec, hosts, prom, now).items():
        scored = [_score_series(spec, s, now, host) for s in series_list if s.points]
        if not scored:
            results.append(HostScore(host=host, score=0.0, reason=f"{_metric(spec)}: no data for {host} in the "
                                                                  f"last {spec.lookback:g} s"))
            continue
        results.append(max(scored, key=lambda s: s.score))
    return results


def anomaly_check(spec: Detect, hosts: list[Host], prom: PrometheusClient) -> tuple[CheckResult, list[HostScore]]:
    """The detect stage's answer for an anomaly spec, shaped like a threshold check's, plus the scores."""
    assert spec.anomaly is not None
    began = time.monotonic()
    scores = score_hosts(spec.anomaly, hosts, prom)
    values = [HostValue(host=s.host, value=round(s.score, 3), matches=s.score >= spec.anomaly.threshold)
              for s in scores]
    result = CheckResult(query=spec.query, condition=f"anomaly score ({spec.anomaly.detector}) {spec.condition}",
                         values=values, matching=[v.host for v in values if v.matches],
                         waited_s=time.monotonic() - began, reasons={s.host: s.reason for s in scores})
    return result, scores
