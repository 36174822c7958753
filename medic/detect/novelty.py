"""Novelty: "the last few samples look like nothing this series has done before".

This is medic's best detector on NAB. Three steps, each for a reason:

1. Nearest-neighbour distance: the last ``window`` samples, compared (RMS distance) with every
   earlier stretch of the same length in the last ``history`` samples. A daily backup spike that
   has happened before finds its twin and stays quiet; a new shape, level or spike does not.
2. Anomaly likelihood (as Numenta's HTM detector does): the distance, relative to its usual size,
   averaged over the last ``short`` rows, compared with the mean and spread of all earlier
   distances. The score is the Gaussian tail probability on a log scale: 0.5 ⇔ p = 1e-5,
   1.0 ⇔ p = 1e-10. One odd sample among noisy ones moves it little; a run of them, a lot.
3. Out of range: a value further outside the range seen so far than ``spatial_tolerance`` of that
   range scores 1 at once (Numenta's NAB detector does the same with the same 5 %: a level never seen
   needs no likelihood to be news; the k-NN distance alone reacts to it only over several rows).
4. Cool-down: after a score reaches ``alarm``, the next ``cooldown`` rows score 0, so an incident
   pages once instead of once per sample.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from datetime import datetime

import numpy as np
from pydantic import Field

from medic.detect.base import Cooldown, Detector, DetectorParams, fmt_duration

LOG_FLOOR = math.log(1e-10)


class NoveltyParams(DetectorParams):
    window: int = Field(8, ge=2, description="samples compared at once (8 = 40 min at 5 min)")
    history: int = Field(5000, ge=50, description="samples searched for a similar stretch")
    clip: float = Field(
        8.0, gt=0, description="distances are capped at this many times their 95th percentile"
    )
    short: int = Field(3, ge=1, description="rows averaged before comparing with the long-run spread")
    learn_rows: int = Field(300, ge=0, description="rows seen before any score is given")
    spatial_tolerance: float | None = Field(
        0.05, ge=0, description="a value beyond the range seen so far by this share of the range scores 1; "
        "None: off")
    alarm: float = Field(0.25, ge=0, le=1, description="score that starts a cool-down")
    cooldown: int = Field(60, ge=0, description="rows scored 0 after a score reaches `alarm`")


class Novelty(Detector):
    """k-NN novelty of recent windows → anomaly likelihood → cool-down."""

    name = "novelty"
    Params = NoveltyParams
    params: NoveltyParams

    def __init__(self, params: NoveltyParams | None = None, **kw: object) -> None:
        super().__init__(params, **kw)
        p = self.params
        self.buf = np.empty(2 * (p.history + p.window) + 16, dtype=np.float64)
        self.n_buf = 0
        self.sq = np.empty(0)
        self.since_exact = 0
        self.rows = 0
        self.distances: deque[float] = deque()
        self.ordered: list[float] = []
        self.raw_sum = self.raw_sq = 0.0
        self.raw_n = 0
        self.recent: deque[float] = deque(maxlen=p.short)
        self.distance = math.nan
        self.usual = math.nan
        self.tail_p = 1.0
        self.first_ts = math.nan
        self.step_s = math.nan
        self.low = math.inf
        self.high = -math.inf
        self.outside = 0.0  # how far the last value was beyond the range seen before it, in ranges
        self.range_cool = Cooldown(1.0, self.params.cooldown)

    def _push(self, value: float) -> None:
        if self.n_buf == len(self.buf):
            keep = self.params.history + 2 * self.params.window + 1
            self.buf[:keep] = self.buf[self.n_buf - keep : self.n_buf]
            self.n_buf = keep
        self.buf[self.n_buf] = value
        self.n_buf += 1

    def _exact(self, lags: np.ndarray) -> np.ndarray:
        """Sum of squared differences between the current window and the windows `lags` rows back."""
        w, n, b = self.params.window, self.n_buf, self.buf
        current = b[n - w : n]
        starts = n - w - lags
        idx = starts[:, None] + np.arange(w)[None, :]
        return ((b[idx] - current) ** 2).sum(axis=1)

    def _nearest(self) -> float:
        """RMS distance of the last `window` samples to the closest earlier, non-overlapping stretch.

        The squared distance at every lag is updated in O(history) per row (one sample enters the
        window, one leaves), recomputed exactly every 512 rows against rounding drift; the winner's
        distance is always recomputed exactly."""
        w, n, b = self.params.window, self.n_buf, self.buf
        top = min(self.params.history, n - w)  # largest lag whose window is complete
        if top < w + 10:
            self.sq = np.empty(0)
            return math.nan
        have = len(self.sq)
        if have and self.since_exact < 512:
            # lags w .. w+have-1, as reversed slices (views, no gather)
            lag_in = b[n - w - have : n - w][::-1]
            lag_out = b[n - 2 * w - have : n - 2 * w][::-1]
            self.sq += (b[n - 1] - lag_in) ** 2 - (b[n - 1 - w] - lag_out) ** 2
            self.since_exact += 1
            if top > w + have - 1:
                self.sq = np.concatenate([self.sq, self._exact(np.arange(w + have, top + 1))])
        else:
            self.sq = self._exact(np.arange(w, top + 1))
            self.since_exact = 0
        lag = w + int(np.argmin(self.sq))
        diff = b[n - w - lag : n - lag] - b[n - w : n]
        return math.sqrt(float(diff @ diff) / w)

    def _score(self, ts: float, value: float) -> float:
        p = self.params
        if math.isnan(self.first_ts):
            self.first_ts = ts
        elif self.rows == 1:
            self.step_s = ts - self.first_ts
        self.rows += 1
        if not math.isfinite(value):
            return 0.0
        self._push(value)
        self.outside = self._beyond_range(value)
        d = self._nearest()
        self.distance = d
        raw = 0.0
        if math.isfinite(d):
            if len(self.ordered) >= 20:
                self.usual = self.ordered[int(0.95 * (len(self.ordered) - 1))]
                raw = min(d / (p.clip * self.usual), 1.0) if self.usual > 0 else (1.0 if d > 0 else 0.0)
            self.distances.append(d)
            bisect.insort(self.ordered, d)
            if len(self.distances) > p.history:
                del self.ordered[bisect.bisect_left(self.ordered, self.distances.popleft())]
        self.recent.append(raw)
        score = 0.0
        if self.rows > p.learn_rows and self.raw_n > 1:
            mean = self.raw_sum / self.raw_n
            sd = math.sqrt(max(self.raw_sq / self.raw_n - mean * mean, 0.0)) or 1e-6 * (abs(mean) + 1e-3)
            z = (sum(self.recent) / len(self.recent) - mean) / sd
            self.tail_p = 0.5 * math.erfc(z / math.sqrt(2.0))
            score = max(0.0, math.log(self.tail_p + 1e-10) / LOG_FLOOR) if self.tail_p < 1 else 0.0
        self.raw_sum += raw
        self.raw_sq += raw * raw
        self.raw_n += 1
        return score

    @property
    def out_of_range(self) -> bool:
        p = self.params
        return self.rows > p.learn_rows and p.spatial_tolerance is not None and self.outside > p.spatial_tolerance

    def update(self, timestamp: datetime | float, value: float) -> float:
        """The likelihood score (with its cool-down), or 1 for a value out of range — with a cool-down
        of its own: a new extreme is news even while an earlier shape change is being kept quiet."""
        score = super().update(timestamp, value)
        if self.range_cool(1.0 if self.out_of_range else 0.0) >= 1.0:
            self.last_score = score = 1.0
        return score

    def _beyond_range(self, value: float) -> float:
        """How far `value` lies outside [low, high] of all earlier values, as a share of that range;
        then widen the range to include it."""
        span = self.high - self.low
        if span > 0 and math.isfinite(span):
            outside = max(value - self.high, self.low - value, 0.0) / span
        else:
            outside = 0.0
        self.low, self.high = min(self.low, value), max(self.high, value)
        return outside

    def _reason(self) -> str:
        p = self.params
        span = f"last {p.window} samples"
        if math.isfinite(self.step_s) and self.step_s > 0:
            span += f" ({fmt_duration(p.window * self.step_s)})"
        if self.rows <= p.learn_rows or not math.isfinite(self.usual):
            return f"{p.metric}: still learning what is usual ({self.rows}/{p.learn_rows} samples)"
        if self.out_of_range:
            return (f"{p.metric}: {self.last_value:g} is outside everything seen in {self.rows} samples "
                    f"by {self.outside:.0%} of their range (tolerance {p.spatial_tolerance:.0%})")
        searched = min(self.n_buf, p.history)
        ratio = self.distance / self.usual if self.usual > 0 else math.inf
        text = (
            f"{p.metric}: the {span} are {ratio:.1f}× further from any earlier stretch of the past "
            f"{searched} samples than usual (anomaly likelihood p={self.tail_p:.1e})"
        )
        return text
