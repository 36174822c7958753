"""What every streaming detector shares: rows in, a score in [0, 1] and a reason out.

A detector sees one row at a time, in time order, and keeps only what it needs from the past, so
the same object can watch a live metric (one ``update`` per evaluation step) or replay a history
(``run``) and give identical scores. ``update`` returns the bare score because benches and
schedulers call it millions of times; the reason is formatted only when someone asks for it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medic.errors import DetectError


class DetectorParams(BaseModel):
    """Common parameters. Subclasses add their own; unknown keys are an error, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str = Field("value", description="what the series measures, as a human calls it (for reasons)")
    unit: str = Field("", description="unit appended to values in reasons, e.g. 'ms' or '%'")
    alarm: float = Field(0.5, ge=0, le=1, description="score that starts a cool-down (when cooldown > 0)")
    cooldown: int = Field(0, ge=0, description="rows scored 0 after a score reaches `alarm` (0 = none)")


class Verdict(BaseModel):
    """One scored row: what a runbook, an alert or a chart receives."""

    model_config = ConfigDict(frozen=True)
    detector: str
    timestamp: float = Field(description="seconds since the epoch of the row scored")
    value: float
    score: float = Field(ge=0.0, le=1.0, description="0 = normal, 1 = certainly anomalous")
    reason: str = Field(description="why, in words an operator can check against a graph")


def to_epoch(ts: datetime | float) -> float:
    """Seconds since the epoch; naive datetimes are taken as UTC (as NAB's and Prometheus' are)."""
    if isinstance(ts, datetime):
        return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
    return float(ts)


def z_to_score(z: float, half: float) -> float:
    """Map a deviation in σ to [0, 1]: 0.5 at ``half`` σ, 0.8 at 2·``half`` σ, → 1 beyond."""
    z2 = z * z
    return z2 / (z2 + half * half)


Direction = Literal["both", "up", "down"]


def directed_score(z: float, half: float, direction: Direction) -> float:
    """`z_to_score` counting only deviations the caller cares about: a memory that drops after a
    restart is not a leak, a latency that falls is not a drift."""
    signed = {"both": abs(z), "up": z, "down": -z}[direction]
    return z_to_score(signed, half) if signed > 0 else 0.0


def fmt_duration(seconds: float) -> str:
    """'45 s', '6 min', '2.5 h', '3 d' — the way an operator reads a graph's x-axis."""
    s = abs(seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 36 * 3600:
        return f"{s / 3600:.1f} h".replace(".0 h", " h")
    return f"{s / 86400:.1f} d".replace(".0 d", " d")


def fmt_value(v: float, unit: str = "") -> str:
    """Four significant digits, no exponent for everyday magnitudes."""
    if not math.isfinite(v):
        return str(v)
    text = f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3e}"
    return f"{text} {unit}".rstrip() if unit else text


class Detector(ABC):
    """A streaming detector. Subclasses set ``name`` and ``Params`` and implement ``_score``."""

    name: str = "detector"
    Params: type[DetectorParams] = DetectorParams

    def __init__(self, params: DetectorParams | None = None, **overrides: object) -> None:
        try:
            self.params = params if params is not None else self.Params(**overrides)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise DetectError(
                f"detector {self.name!r}: invalid parameters ({problems}); "
                f"allowed: {', '.join(self.Params.model_fields)}"
            ) from exc
        self.last_ts = math.nan
        self.last_value = math.nan
        self.last_score = 0.0
        self.cool = Cooldown(self.params.alarm, self.params.cooldown)

    @classmethod
    def describe_params(cls) -> dict[str, str]:
        """Parameter → description, for CLIs and runbook validation messages."""
        return {k: (f.description or "") for k, f in cls.Params.model_fields.items()}

    def update(self, timestamp: datetime | float, value: float) -> float:
        """Take the next row (in time order) and return its score in [0, 1]."""
        ts = to_epoch(timestamp)
        if ts < self.last_ts:
            raise DetectError(
                f"detector {self.name!r}: row at {ts} is older than the previous row at {self.last_ts}; "
                "feed rows in time order"
            )
        score = min(1.0, max(0.0, self._score(ts, float(value))))
        self.last_ts, self.last_value = ts, float(value)
        self.last_score = self.cool(score) if self.params.cooldown else score
        return self.last_score

    @abstractmethod
    def _score(self, ts: float, value: float) -> float:
        """Score one row; may use only this row and the state kept from earlier rows."""

    @abstractmethod
    def _reason(self) -> str:
        """Why the last row got its score, in words (also when the score is low)."""

    def reason(self) -> str:
        """Why the last row got its score, and whether a cool-down silenced it."""
        text = self._reason()
        if self.params.cooldown and self.cool.silenced:
            text += f"; alarm raised {self.cool.since_alarm} samples ago, silent for {self.params.cooldown}"
        return text

    def verdict(self) -> Verdict:
        """The last row's score with its reason."""
        return Verdict(
            detector=self.name,
            timestamp=self.last_ts,
            value=self.last_value,
            score=self.last_score,
            reason=self.reason(),
        )

    def observe(self, timestamp: datetime | float, value: float) -> Verdict:
        """``update`` and ``verdict`` in one call: for callers that want every reason."""
        self.update(timestamp, value)
        return self.verdict()

    def run(self, timestamps: Iterable[datetime | float], values: Iterable[float]) -> np.ndarray:
        """Replay a history row by row; the scores are what a live run would have produced."""
        return np.array([self.update(t, v) for t, v in zip(timestamps, values)], dtype=np.float64)


class Cooldown:
    """Silence after an alarm: once a score reaches ``level``, the next ``rows`` rows score 0.

    An operator wants one page per incident, not one per sample while it lasts; NAB charges every
    extra detection outside a window as a false positive for the same reason."""

    def __init__(self, level: float, rows: int) -> None:
        self.level, self.rows = level, rows
        self.since_alarm = rows + 1

    def __call__(self, score: float) -> float:
        self.since_alarm += 1
        if self.since_alarm <= self.rows:
            return 0.0
        if score >= self.level:
            self.since_alarm = 0
        return score

    @property
    def silenced(self) -> bool:
        return self.since_alarm <= self.rows
