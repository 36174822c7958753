"""Deviation from the recent past: a robust rolling z-score and an EWMA z-score.

Robust (median/MAD over a window) because one spike must not inflate the scale that judges the
next one; EWMA because it needs O(1) memory and time, so it is what you run on ten thousand series.
Both count how long the deviation has lasted, so the reason can say "for 6 min".
"""

from __future__ import annotations

import bisect
import math
from collections import deque

from pydantic import Field

from medic.detect.base import (
    Detector,
    DetectorParams,
    Direction,
    directed_score,
    fmt_duration,
    fmt_value,
    z_to_score,
)


class _Streak:
    """When the current run of large deviations (same sign) started."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.sign = 0

    def update(self, ts: float, z: float, half: float) -> None:
        sign = (z > 0) - (z < 0)
        if abs(z) < half or sign != self.sign:
            self.since = ts if abs(z) >= half else None
            self.sign = sign if abs(z) >= half else 0
        elif self.since is None:
            self.since = ts

    def text(self, now: float) -> str:
        return f" for {fmt_duration(now - self.since)}" if self.since is not None and now > self.since else ""


class RobustZParams(DetectorParams):
    window: int = Field(288, ge=10, description="rows in the rolling window (288 = one day at 5 min)")
    z_half: float = Field(5.0, gt=0, description="deviation in σ that scores 0.5")
    min_rows: int = Field(30, ge=5, description="rows needed before scoring")


class RobustZScore(Detector):
    """z = (value − rolling median) / (1.4826 · rolling MAD), scored by ``z_to_score``."""

    name = "robust_z"
    Params = RobustZParams
    params: RobustZParams

    def __init__(self, params: RobustZParams | None = None, **kw: object) -> None:
        super().__init__(params, **kw)
        self.window: deque[float] = deque()
        self.ordered: list[float] = []
        self.median = math.nan
        self.scale = math.nan
        self.z = 0.0
        self.streak = _Streak()

    def _score(self, ts: float, value: float) -> float:
        p = self.params
        if not math.isfinite(value):
            return 0.0
        score = 0.0
        n = len(self.ordered)
        if n >= p.min_rows:
            self.median = self.ordered[n // 2]
            devs = sorted(abs(v - self.median) for v in self.ordered)
            # floor: a window that is mostly one repeated value (a step, a plateau) has MAD 0; its
            # 5-95 % range keeps ordinary steps from counting as hundreds of σ
            spread = self.ordered[int(0.95 * (n - 1))] - self.ordered[int(0.05 * (n - 1))]
            self.scale = max(1.4826 * devs[n // 2], spread / 4) or max(abs(self.median) * 1e-3, 1e-9)
            self.z = (value - self.median) / self.scale
            score = z_to_score(self.z, p.z_half)
            self.streak.update(ts, self.z, p.z_half)
        self.window.append(value)
        bisect.insort(self.ordered, value)
        if len(self.window) > p.window:
            old = self.window.popleft()
            del self.ordered[bisect.bisect_left(self.ordered, old)]
        return score

    def _reason(self) -> str:
        p = self.params
        v = fmt_value(self.last_value, p.unit)
        if math.isnan(self.median):
            return f"{p.metric} {v}: still learning (needs {p.min_rows} rows)"
        side = "above" if self.z >= 0 else "below"
        return (
            f"{p.metric} {v} is {abs(self.z):.1f}σ {side} its rolling median "
            f"{fmt_value(self.median, p.unit)} "
            f"(last {len(self.window)} samples){self.streak.text(self.last_ts)}"
        )


class EwmaParams(DetectorParams):
    half_life: float = Field(144.0, gt=0, description="rows after which an old sample weighs half")
    z_half: float = Field(5.0, gt=0, description="deviation in σ that scores 0.5")
    min_rows: int = Field(30, ge=2, description="rows needed before scoring")
    learn_above: float | None = Field(
        None, ge=0, le=1, description="values scoring at least this do not move the average (a drift that "
        "lasts stays a drift); None: learn every value")
    direction: Direction = Field("both", description="which deviations score: both, up or down")
    min_change: float = Field(0.0, ge=0, description="a deviation smaller than this, in the metric's unit, "
                              "scores 0 however many σ it is (a quiet series' 0.2 ms is noise, not drift)")


class Ewma(Detector):
    """z against an exponentially weighted mean and variance: O(1) per row."""

    name = "ewma"
    Params = EwmaParams
    params: EwmaParams

    def __init__(self, params: EwmaParams | None = None, **kw: object) -> None:
        super().__init__(params, **kw)
        self.alpha = 1.0 - 0.5 ** (1.0 / self.params.half_life)
        self.mean = math.nan
        self.var = 0.0
        self.rows = 0
        self.z = 0.0
        self.streak = _Streak()

    def _score(self, ts: float, value: float) -> float:
        p = self.params
        if not math.isfinite(value):
            return 0.0
        score = 0.0
        if self.rows == 0:
            self.mean = value
        else:
            diff = value - self.mean
            if self.rows >= p.min_rows:
                sd = math.sqrt(self.var) or max(abs(self.mean) * 1e-3, 1e-9)
                self.z = diff / sd
                score = directed_score(self.z, p.z_half, p.direction) if abs(diff) >= p.min_change else 0.0
                self.streak.update(ts, self.z if score else 0.0, p.z_half)
                if p.learn_above is not None and score >= p.learn_above:
                    self.rows += 1
                    return score
            incr = self.alpha * diff
            self.mean += incr
            self.var = (1.0 - self.alpha) * (self.var + diff * incr)
        self.rows += 1
        return score

    def _reason(self) -> str:
        p = self.params
        v = fmt_value(self.last_value, p.unit)
        if self.rows <= p.min_rows:
            return f"{p.metric} {v}: still learning (needs {p.min_rows} rows)"
        side = "above" if self.z >= 0 else "below"
        return (
            f"{p.metric} {v} is {abs(self.z):.1f}σ {side} its moving average {fmt_value(self.mean, p.unit)} "
            f"(half-life {p.half_life:g} samples){self.streak.text(self.last_ts)}"
        )
