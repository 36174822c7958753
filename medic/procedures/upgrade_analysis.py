"""The gates of an upgrade: is the new version as good as the old one, judged from Prometheus?

Three kinds of check, each a plain function returning a ``Check`` (a verdict and why):

* **hard failure** (``hard_failure``), polled every second while a stage is analysed: an upgraded
  server DOWN in HAProxy, its scrape target down, or its ``demo_build_info`` not naming the new
  version. No analysis, no failure limit: the upgrade rolls back at once (a crash loop never gets
  to look "fine on average").
* **threshold** (``threshold_check``, Argo Rollouts / Flagger style): the upgraded hosts' 5xx ratio
  and p95 latency over the last interval against fixed limits. One failed check is a blip; more
  than ``failure_limit`` of them roll back (Flagger's ``threshold``, Argo's ``failureLimit``).
* **baseline** (``baseline_check``, Kayenta style): the upgraded hosts against the hosts still on the
  old version *over the same seconds*: per-scrape mean latencies compared with a one-sided
  Mann–Whitney U test, the 5xx count with a binomial test against the baseline's ratio. A busy hour
  slows both sides and does not look like a regression, so one significant check is enough.

Samples: Prometheus scrapes every second; each point of ``rate(sum[3s]) / rate(count[3s])`` is one
sample of a host's mean latency. Points from the first 3 s after a restart mix in the old process
and are skipped (``since``).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field
from scipy.stats import binomtest, mannwhitneyu  # 0.3-2.5 s to import: paid when the flow loads, not mid-analysis

from medic.clients.haproxy import LoadBalancerError
from medic.clients.prometheus import PrometheusClient
from medic.core.report import utcnow
from medic.core.templates import label_matcher
from medic.errors import MedicError
from medic.procedures.rolling import LBTarget

__all__ = ["Check", "GateKind", "GateSettings", "baseline_check", "hard_failure", "hosts_matcher", "safe", "threshold_check"]

GateKind = Literal["threshold", "baseline", "both"]
JOB = 'job="web"'
RATE_WINDOW_S = 3


class GateSettings(BaseModel):
    """What the gates hold the new version to (flow parameters, validated by medic.procedures.upgrade)."""

    gate: GateKind = "both"
    max_error_ratio: float = Field(0.01, description="threshold gate: highest 5xx ratio of the upgraded hosts")
    max_p95_s: float = Field(0.025, description="threshold gate: highest p95 latency of the upgraded hosts")
    failure_limit: int = Field(1, description="threshold gate: failed checks tolerated; one more rolls back")
    alpha: float = Field(0.01, description="baseline gate: significance level of its tests")
    min_effect: float = Field(0.2, description="baseline gate: smallest latency regression that counts (0.2 = +20 %)")


class Check(BaseModel):
    """One verdict of one gate at one moment."""

    gate: Literal["hard", "threshold", "baseline"]
    at: datetime = Field(default_factory=utcnow)
    passed: bool
    reason: str
    values: dict[str, float] = Field(default_factory=dict)


def hosts_matcher(names: list[str]) -> str:
    """``host=~"web-1|web-2"`` with each (inventory-checked) name regex-escaped and the whole quoted."""
    return label_matcher("host", "|".join(re.escape(n) for n in names), op="=~")


def hard_failure(prom: PrometheusClient, lbs: dict[str, LBTarget | None], version: str) -> Check | None:
    """A failed Check when any upgraded host is plainly broken (DOWN, not scraped, wrong version)."""
    for name, lb in lbs.items():
        if lb is None:
            continue
        try:
            srv = lb.runtime().server(lb.backend, lb.server)
        except LoadBalancerError as exc:
            return Check(gate="hard", passed=False, reason=f"cannot read {name} in HAProxy: {exc}")
        if not srv.up:
            return Check(gate="hard", passed=False,
                         reason=f"{name} is {srv.status or srv.operational_state} in HAProxy (check {srv.check_status})")
    names = list(lbs)
    down = [s.labels.get("host", "?") for s in prom.query(f"up{{{JOB},{hosts_matcher(names)}}} == 0")]
    if down:
        return Check(gate="hard", passed=False, reason=f"Prometheus cannot scrape {', '.join(sorted(down))}")
    serving = {s.labels.get("host"): s.labels.get("version") for s in prom.query(f"demo_build_info{{{JOB},{hosts_matcher(names)}}}")}
    for name in names:
        if serving.get(name) != version:
            found = serving.get(name)
            return Check(gate="hard", passed=False,
                         reason=f"{name} serves {found}, not {version}" if found else f"{name}: version metric absent")
    return None


def threshold_check(prom: PrometheusClient, upgraded: list[str], settings: GateSettings, window_s: float) -> Check:
    """The upgraded hosts' 5xx ratio and p95 latency over the last ``window_s`` against fixed limits."""
    sel, w = f"{JOB},{hosts_matcher(upgraded)}", f"{max(int(round(window_s)), 2)}s"
    errors = prom.value(f'sum(rate(demo_http_responses_total{{{sel},code=~"5.."}}[{w}])) '
                        f'/ sum(rate(demo_http_responses_total{{{sel}}}[{w}]))')
    p95 = prom.value(f"histogram_quantile(0.95, sum by (le) (rate(demo_request_duration_seconds_bucket{{{sel}}}[{w}])))")
    if errors is None or p95 is None or p95 != p95:
        return Check(gate="threshold", passed=False, reason=f"no traffic data for {', '.join(upgraded)} over {w}")
    values = {"error_ratio": round(errors, 5), "p95_s": round(p95, 5)}
    bad = ([f"5xx ratio {errors:.2%} > {settings.max_error_ratio:.2%}"] if errors > settings.max_error_ratio else []) + \
          ([f"p95 {p95 * 1000:.1f} ms > {settings.max_p95_s * 1000:.1f} ms"] if p95 > settings.max_p95_s else [])
    reason = "; ".join(bad) or f"5xx {errors:.2%}, p95 {p95 * 1000:.1f} ms within limits"
    return Check(gate="threshold", passed=not bad, reason=reason, values=values)


def _samples(prom: PrometheusClient, names: list[str], since: float, until: float) -> list[float]:
    sel = f"{JOB},{hosts_matcher(names)}"
    series = prom.query_range(f"rate(demo_request_duration_seconds_sum{{{sel}}}[{RATE_WINDOW_S}s]) "
                              f"/ rate(demo_request_duration_seconds_count{{{sel}}}[{RATE_WINDOW_S}s])",
                              start=since, end=until, step=1)
    return [v for s in series for _t, v in s.points if v == v]


def _counts(prom: PrometheusClient, names: list[str], window: str) -> tuple[float, float]:
    sel = f"{JOB},{hosts_matcher(names)}"
    errors = prom.value(f'sum(increase(demo_http_responses_total{{{sel},code=~"5.."}}[{window}]))') or 0.0
    total = prom.value(f"sum(increase(demo_http_responses_total{{{sel}}}[{window}]))") or 0.0
    return errors, total


def baseline_check(prom: PrometheusClient, upgraded: list[str], baseline: list[str], settings: GateSettings,
                   *, since: float, until: float | None = None, min_samples: int = 5) -> Check:
    """The upgraded hosts against the old-version hosts over the same seconds (``since`` → now)."""
    if not baseline:
        return Check(gate="baseline", passed=True, reason="no host left on the old version to compare with")
    until = until or time.time()
    since = max(since + RATE_WINDOW_S, until - 60)
    canary, base = _samples(prom, upgraded, since, until), _samples(prom, baseline, since, until)
    if len(canary) < min_samples or len(base) < min_samples:
        return Check(gate="baseline", passed=True,
                     reason=f"not enough samples yet ({len(canary)} upgraded, {len(base)} baseline; need {min_samples})")
    p_latency = float(mannwhitneyu(canary, base, alternative="greater").pvalue)
    ratio = statistics.median(canary) / max(statistics.median(base), 1e-9)
    window = f"{max(int(until - since), RATE_WINDOW_S)}s"
    c_err, c_total = _counts(prom, upgraded, window)
    b_err, b_total = _counts(prom, baseline, window)
    base_ratio = b_err / b_total if b_total else 0.0
    c_ratio = c_err / c_total if c_total else 0.0
    k, n = int(round(c_err)), int(round(c_total))
    p_errors = float(binomtest(k, n, max(base_ratio, 0.001), alternative="greater").pvalue) if n and k <= n else 1.0
    values = {"latency_ratio": round(ratio, 3), "p_latency": p_latency, "error_ratio": round(c_ratio, 5),
              "baseline_error_ratio": round(base_ratio, 5), "p_errors": p_errors,
              "samples": float(len(canary)), "baseline_samples": float(len(base))}
    bad = []
    if p_latency < settings.alpha and ratio > 1 + settings.min_effect:
        bad.append(f"latency {ratio:.2f}× the baseline's (Mann–Whitney p={p_latency:.1g}, "
                   f"{len(canary)} vs {len(base)} samples)")
    if p_errors < settings.alpha and c_ratio > base_ratio + 0.005:
        bad.append(f"5xx {c_ratio:.2%} vs baseline {base_ratio:.2%} (binomial p={p_errors:.1g}, {k}/{n})")
    reason = "; ".join(bad) or (f"latency {ratio:.2f}× baseline (p={p_latency:.2g}), 5xx {c_ratio:.2%} vs "
                                f"{base_ratio:.2%}: no significant regression")
    return Check(gate="baseline", passed=not bad, reason=reason, values=values)


def safe(check: Callable[[], Check], gate: Literal["threshold", "baseline"]) -> Check:
    """A check whose query failed is a failed check (it counts against the failure limit), not a crash."""
    try:
        return check()
    except MedicError as exc:
        return Check(gate=gate, passed=False, reason=f"query failed: {exc}")
