"""The rules operators already write in Prometheus, as streaming detectors with reasons.

threshold+for: a level crossed and held (Prometheus' ``expr > X for: D``);
absence: the series stopped reporting (``absent_over_time``);
rate of change: the series moves faster than a limit, or than it usually does.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

from pydantic import Field, model_validator

from medic.detect.base import (
    Detector,
    DetectorParams,
    Direction,
    directed_score,
    fmt_duration,
    fmt_value,
)


class ThresholdParams(DetectorParams):
    above: float | None = Field(None, description="alarm while the value is above this")
    below: float | None = Field(None, description="alarm while the value is below this")
    for_s: float = Field(0.0, ge=0, description="seconds the condition must hold before the score reaches 1")
    learn_rows: int = Field(
        0,
        ge=0,
        description="with no above/below: learn the normal range from this many first rows and "
        "alarm outside it (widened by `margin`)",
    )
    margin: float = Field(0.1, ge=0, description="learned range widened by this fraction of its width")

    @model_validator(mode="after")
    def _one_rule(self) -> ThresholdParams:
        if self.above is None and self.below is None and self.learn_rows == 0:
            raise ValueError("give `above`, `below`, or `learn_rows` to learn the normal range")
        return self


class ThresholdFor(Detector):
    """Score = fraction of ``for_s`` the condition has held (1 once it held long enough)."""

    name = "threshold"
    Params = ThresholdParams
    params: ThresholdParams

    def __init__(self, params: ThresholdParams | None = None, **kw: object) -> None:
        super().__init__(params, **kw)
        self.above, self.below = self.params.above, self.params.below
        self.rows_seen = 0
        self.lo, self.hi = math.inf, -math.inf
        self.since: float | None = None

    def _score(self, ts: float, value: float) -> float:
        p = self.params
        if p.above is None and p.below is None and self.rows_seen < p.learn_rows:
            self.rows_seen += 1
            if math.isfinite(value):
                self.lo, self.hi = min(self.lo, value), max(self.hi, value)
            if self.rows_seen == p.learn_rows and self.hi >= self.lo:
                pad = p.margin * max(self.hi - self.lo, abs(self.hi) * 1e-6, 1e-12)
                self.above, self.below = self.hi + pad, self.lo - pad
            return 0.0
        breach = (self.above is not None and value > self.above) or (
            self.below is not None and value < self.below
        )
        if not breach:
            self.since = None
            return 0.0
        if self.since is None:
            self.since = ts
        held = ts - self.since
        return 1.0 if held >= p.for_s else held / p.for_s

    def _reason(self) -> str:
        p = self.params
        v = fmt_value(self.last_value, p.unit)
        if self.above is None and self.below is None:
            return f"{p.metric} {v}: still learning its normal range ({self.rows_seen}/{p.learn_rows} rows)"
        if self.since is None:
            return f"{p.metric} {v} is within its limits ({self._limits()})"
        side = "above" if self.above is not None and self.last_value > self.above else "below"
        limit = self.above if side == "above" else self.below
        held = fmt_duration(self.last_ts - self.since)
        need = f" (alarm after {fmt_duration(p.for_s)})" if self.last_score < 1 else ""
        return f"{p.metric} {v} {side} {fmt_value(limit or 0.0, p.unit)} for {held}{need}"

    def _limits(self) -> str:
        parts = []
        if self.below is not None:
            parts.append(f"≥ {fmt_value(self.below, self.params.unit)}")
        if self.above is not None:
            parts.append(f"≤ {fmt_value(self.above, self.params.unit)}")
        return " and ".join(parts)


class AbsenceParams(DetectorParams):
    after_s: float | None = Field(
        None,
        gt=0,
        description="seconds without a sample before the score reaches 1 "
        "(default: `missing_steps` of the usual step)",
    )
    missing_steps: float = Field(3.0, gt=1, description="with no after_s: steps that may go missing")


class Absence(Detector):
    """Score = silence so far / the silence allowed. A NaN value counts as no sample.

    A gap is only visible when the next row arrives, so a scheduler should also call
    ``silence_at(now)`` between samples (that is what ``absent_over_time`` does)."""

    name = "absence"
    Params = AbsenceParams
    params: AbsenceParams

    def __init__(self, params: AbsenceParams | None = None, **kw: object) -> None:
        super().__init__(params, **kw)
        self.last_seen = math.nan
        self.steps: deque[float] = deque(maxlen=64)
        self.gap = 0.0

    def allowed(self) -> float:
        if self.params.after_s is not None:
            return self.params.after_s
        if not self.steps:
            return math.inf
        usual = sorted(self.steps)[len(self.steps) // 2]
        return self.params.missing_steps * usual

    def silence_at(self, now: float) -> float:
        """Score of the silence since the last good sample, as of ``now`` (no row needed)."""
        if math.isnan(self.last_seen):
            return 0.0
        self.gap = max(0.0, now - self.last_seen)
        return min(1.0, self.gap / self.allowed())

    def _score(self, ts: float, value: float) -> float:
        score = self.silence_at(ts)
        if math.isfinite(value):
            if not math.isnan(self.last_seen) and self.gap > 0:
                self.steps.append(self.gap)
            self.last_seen = ts
        return score

    def _reason(self) -> str:
        p = self.params
        allowed = self.allowed()
        if math.isinf(allowed):
            return f"{p.metric}: too few samples yet to know its usual step"
        if self.last_score >= 1:
            return f"no {p.metric} sample for {fmt_duration(self.gap)} (allowed {fmt_duration(allowed)})"
        return f"{p.metric} reporting: last gap {fmt_duration(self.gap)} (allowed {fmt_duration(allowed)})"


class RateParams(DetectorParams):
    window_s: float = Field(300.0, gt=0, description="the rate is the change over this many seconds")
    limit_per_s: float | None = Field(
        None, gt=0, description="alarm when |rate| exceeds this (units per second)"
    )
    z_half: float = Field(6.0, gt=0, description="with no limit: σ of unusual rate that scores 0.5")
    history: int = Field(2000, ge=20, description="rates remembered to learn what is usual")
    learn_above: float | None = Field(
        None, ge=0, le=1, description="rates scoring at least this are not learned as usual (a leak that lasts "
        "stays a leak); None: learn every rate")
    direction: Direction = Field("both", description="which rates score: both, up (growth) or down")


class RateOfChange(Detector):
    """Rate over ``window_s``; scored against a limit, or robustly against its own usual rates."""

    name = "rate_of_change"
    Params = RateParams
    params: RateParams

    def __init__(self, params: RateParams | None = None, **kw: object) -> None:
        super().__init__(params, **kw)
        self.rows: deque[tuple[float, float]] = deque()
        self.rates: deque[float] = deque(maxlen=self.params.history)
        self.ordered: list[float] = []
        self.rate = 0.0
        self.z = 0.0

    def _score(self, ts: float, value: float) -> float:
        p = self.params
        if not math.isfinite(value):
            return 0.0
        self.rows.append((ts, value))
        while len(self.rows) > 2 and ts - self.rows[1][0] >= p.window_s:
            self.rows.popleft()
        t0, v0 = self.rows[0]
        if ts - t0 <= 0:
            return 0.0
        self.rate = (value - v0) / (ts - t0)
        if p.limit_per_s is not None:
            signed = {"both": abs(self.rate), "up": self.rate, "down": -self.rate}[p.direction]
            return min(1.0, max(0.0, signed) / p.limit_per_s)
        score = 0.0
        n = len(self.ordered)
        if n >= 20:
            med = self.ordered[n // 2]
            iqr = self.ordered[(3 * n) // 4] - self.ordered[n // 4]  # IQR/1.349 ≈ σ; O(1) on a sorted list
            scale = iqr / 1.349 or (self.ordered[-1] - self.ordered[0]) / 6 or 1e-12
            self.z = (self.rate - med) / scale
            score = directed_score(self.z, p.z_half, p.direction)
        if p.learn_above is not None and score >= p.learn_above:
            return score
        if len(self.rates) == self.rates.maxlen:
            del self.ordered[bisect.bisect_left(self.ordered, self.rates[0])]
        self.rates.append(self.rate)
        bisect.insort(self.ordered, self.rate)
        return score

    def _reason(self) -> str:
        p = self.params
        per_min = fmt_value(self.rate * 60, f"{p.unit}/min") if p.unit else f"{fmt_value(self.rate * 60)}/min"
        way = "rising" if self.rate >= 0 else "falling"
        if p.limit_per_s is not None:
            limit = fmt_value(p.limit_per_s * 60)
            return f"{p.metric} {way} {per_min} over {fmt_duration(p.window_s)} (limit {limit}/min)"
        if len(self.rates) <= 20:
            return f"{p.metric} {way} {per_min}: still learning its usual rate"
        over = fmt_duration(p.window_s)
        return f"{p.metric} {way} {per_min} over {over}, {abs(self.z):.1f}σ from its usual rate"
