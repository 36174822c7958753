"""Seasonal baseline: judge a sample against the same time of day (or of the week) in the past.

A busy Monday 09:00 is normal for Monday 09:00 even if it would page at 03:00. Each slot of the
day (or week) keeps its recent samples; the baseline is their median and the scale is their MAD,
floored by the typical MAD of all slots so that a slot that happened to be quiet does not turn
every wiggle into many σ.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from medic.detect.base import Detector, DetectorParams, fmt_value, z_to_score
from medic.detect.stats import _Streak

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class SeasonalParams(DetectorParams):
    period: Literal["daily", "weekly"] = Field(
        "daily", description="compare with the same time of day or of week"
    )
    slot_minutes: int = Field(60, ge=1, le=1440, description="width of a time slot")
    periods_kept: int = Field(4, ge=2, description="past days/weeks remembered per slot")
    min_periods: int = Field(2, ge=1, description="days/weeks seen before a slot is scored")
    z_half: float = Field(5.0, gt=0, description="deviation in σ that scores 0.5")


class SeasonalBaseline(Detector):
    """z = (value − slot median) / max(slot MAD, typical MAD) · 1/1.4826."""

    name = "seasonal"
    Params = SeasonalParams
    params: SeasonalParams

    def __init__(self, params: SeasonalParams | None = None, **kw: object) -> None:
        super().__init__(params, **kw)
        self.slots: dict[int, deque[float]] = {}
        self.slot_periods: dict[int, set[int]] = {}
        self.spreads: deque[float] = deque(maxlen=128)
        self.slot = 0
        self.baseline = math.nan
        self.z = 0.0
        self.streak = _Streak()

    def _slot_of(self, ts: float) -> tuple[int, int]:
        """(slot id, period number) of a timestamp."""
        minutes = int(ts // 60)
        per_day = 1440 // self.params.slot_minutes
        day_slot = (minutes % 1440) // self.params.slot_minutes
        day = minutes // 1440
        if self.params.period == "daily":
            return day_slot, day
        weekday = datetime.fromtimestamp(ts, UTC).weekday()
        return weekday * per_day + day_slot, (day + 3) // 7  # epoch day 0 was a Thursday

    def _score(self, ts: float, value: float) -> float:
        p = self.params
        if not math.isfinite(value):
            return 0.0
        self.slot, period = self._slot_of(ts)
        past = self.slots.get(self.slot)
        score = 0.0
        self.baseline = math.nan
        if past and len(self.slot_periods.get(self.slot, ())) >= p.min_periods:
            ordered = sorted(past)
            self.baseline = ordered[len(ordered) // 2]
            mad = sorted(abs(v - self.baseline) for v in ordered)[len(ordered) // 2]
            typical = sorted(self.spreads)[len(self.spreads) // 2] if self.spreads else 0.0
            scale = 1.4826 * max(mad, typical) or max(abs(self.baseline) * 1e-3, 1e-9)
            self.spreads.append(mad)
            self.z = (value - self.baseline) / scale
            score = z_to_score(self.z, p.z_half)
            self.streak.update(ts, self.z, p.z_half)
        if past is None:
            past = self.slots[self.slot] = deque()
            self.slot_periods[self.slot] = set()
        past.append(value)
        periods = self.slot_periods[self.slot]
        periods.add(period)
        per_period = max(1, len(past) // max(1, len(periods)))
        while len(past) > per_period * p.periods_kept:
            past.popleft()
        if len(periods) > p.periods_kept + 1:
            periods.discard(min(periods))
        return score

    def slot_name(self) -> str:
        """'Tuesday-10:00' (weekly) or '10:00' (daily), in UTC."""
        per_day = 1440 // self.params.slot_minutes
        minute = (self.slot % per_day) * self.params.slot_minutes
        hhmm = f"{minute // 60:02d}:{minute % 60:02d}"
        return f"{DAYS[self.slot // per_day]}-{hhmm}" if self.params.period == "weekly" else hhmm

    def _reason(self) -> str:
        p = self.params
        v = fmt_value(self.last_value, p.unit)
        if math.isnan(self.baseline):
            need = f"needs {p.min_periods} {p.period} periods"
            return f"{p.metric} {v}: no {p.period} baseline yet for {self.slot_name()} ({need})"
        side = "above" if self.z >= 0 else "below"
        return (
            f"{p.metric} {v} is {abs(self.z):.1f}σ {side} its {self.slot_name()} baseline "
            f"{fmt_value(self.baseline, p.unit)}{self.streak.text(self.last_ts)}"
        )
