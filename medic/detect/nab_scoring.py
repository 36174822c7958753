"""NAB v1.1 scoring, written from its rules, so that detectors are judged the way the published
scoreboard judged its entries (and not by a friendlier rule of our own).

The rules (Lavin & Ahmad 2015; numenta/NAB `sweeper.py`):

- The first 15 % of each file (at most 750 rows) is probation: rows there count for nothing.
- A detection is a row whose score is ≥ the threshold.
- In a window only the earliest detection counts: ``w_tp · σ(p)/σ(−1)`` with
  ``p = −(end − i + 1)/width`` (−1 on the window's first row, about 0 on its last) and
  ``σ(p) = 2/(1 + e^{5p}) − 1``. A window with no detection scores ``−w_fn``.
- Every detection row outside windows costs ``w_fp · σ(p)``, ``p = (i − end_prev)/(width_prev − 1)``
  of the window before it (cheap just after a window, the full ``−w_fp`` from 3 widths on), and the
  full ``−w_fp`` before a file's first window.
- The threshold is the one that maximises the corpus's summed raw score (ties: the higher threshold),
  found by sweeping every distinct score, as NAB's sweep optimiser does.
- Normalised = 100 · (S − S_null)/(S_perfect − S_null); null never fires, perfect fires on every
  window row (so at each window's first row).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

PROBATION_FRACTION = 0.15
PROBATION_CAP_ROWS = 5000  # NAB: min(floor(0.15·n), 0.15·5000) rows
OUTSIDE, PROBATION = -1, -2  # window ids of rows that are in no window / in probation


class Profile(BaseModel):
    """Weights of one NAB application profile."""

    model_config = ConfigDict(frozen=True)
    name: str
    tp: float = Field(description="weight of a window's earliest detection")
    fn: float = Field(description="cost of a window with no detection")
    fp: float = Field(description="cost of a detection far from any window")


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(name="standard", tp=1.0, fn=1.0, fp=0.11),
        Profile(name="reward_low_FP_rate", tp=1.0, fn=1.0, fp=0.22),
        Profile(name="reward_low_FN_rate", tp=1.0, fn=2.0, fp=0.11),
    )
}


def scaled_sigmoid(position: float) -> float:
    """NAB's weighting: ≈1 at a window's start (−1), 0 at its end, −1 from 3 widths past it."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


def probation_rows(n_rows: int) -> int:
    """Rows at the start of a file whose detections NAB ignores."""
    return int(min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_FRACTION * PROBATION_CAP_ROWS))


@dataclass(frozen=True)
class LabelledFile:
    """One data file with its windows as inclusive row ranges ``(first, last)``, in time order."""

    name: str
    timestamps: Sequence[datetime]
    windows: tuple[tuple[int, int], ...]

    @property
    def n_rows(self) -> int:
        return len(self.timestamps)

    def labels(self) -> np.ndarray:
        """1 on every row inside a window (the ``label`` column of NAB's results files)."""
        out = np.zeros(self.n_rows, dtype=np.int8)
        for first, last in self.windows:
            out[first : last + 1] = 1
        return out


def windows_to_rows(
    timestamps: Sequence[datetime], spans: Sequence[tuple[datetime, datetime]]
) -> tuple[tuple[int, int], ...]:
    """Map time windows onto row ranges (rows with ``start ≤ t ≤ end``); empty windows are dropped."""
    stamps = np.array(timestamps, dtype="datetime64[us]")
    rows = []
    for start, end in sorted(spans):
        first = int(np.searchsorted(stamps, np.datetime64(start, "us"), side="left"))
        last = int(np.searchsorted(stamps, np.datetime64(end, "us"), side="right")) - 1
        if first <= last:
            rows.append((first, last))
    return tuple(rows)


def row_values(f: LabelledFile, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the window id it counts for (or OUTSIDE/PROBATION), and what a detection there earns."""
    n = f.n_rows
    window_of = np.full(n, OUTSIDE, dtype=np.int64)
    value = np.full(n, -profile.fp, dtype=np.float64)  # before the first window: the full cost
    for k, (first, last) in enumerate(f.windows):
        width = last - first + 1
        for i in range(first, last + 1):
            window_of[i] = k
            value[i] = profile.tp * scaled_sigmoid(-(last - i + 1) / width) / MAX_TP
        following = f.windows[k + 1][0] if k + 1 < len(f.windows) else n
        for i in range(last + 1, following):
            past = abs(i - last) / (width - 1) if width > 1 else 3.0
            value[i] = profile.fp * scaled_sigmoid(past)
    window_of[: probation_rows(n)] = PROBATION
    return window_of, value


def counted_windows(window_of: np.ndarray) -> set[int]:
    """Windows that have at least one row after probation (the only ones NAB scores)."""
    return {int(k) for k in np.unique(window_of) if k >= 0}


class FileScore(BaseModel):
    """One file at one threshold: raw score and what made it."""

    name: str
    score: float
    true_positives: int = Field(description="windows detected")
    false_negatives: int = Field(description="windows missed")
    false_positive_rows: int = Field(description="detection rows outside every window (after probation)")
    scored_days: float = Field(description="time span after probation, in days")
    delays_rows: list[int] = Field(default_factory=list, description="window start → first detection")
    delays_s: list[float] = Field(default_factory=list)


def score_file(f: LabelledFile, scores: np.ndarray, threshold: float, profile: Profile) -> FileScore:
    """Score one file's anomaly scores at a threshold, NAB's way."""
    window_of, value = row_values(f, profile)
    detected = np.asarray(scores, dtype=np.float64) >= threshold
    total, tp, fn, delays_rows, delays_s = 0.0, 0, 0, [], []
    for k in sorted(counted_windows(window_of)):
        hits = np.flatnonzero(detected & (window_of == k))
        if hits.size == 0:
            total -= profile.fn
            fn += 1
            continue
        first_hit = int(hits[0])
        total += float(value[first_hit])
        tp += 1
        start = f.windows[k][0]
        delays_rows.append(first_hit - start)
        delays_s.append((f.timestamps[first_hit] - f.timestamps[start]).total_seconds())
    fp_rows = np.flatnonzero(detected & (window_of == OUTSIDE))
    total += float(value[fp_rows].sum())
    p = probation_rows(f.n_rows)
    span = (f.timestamps[-1] - f.timestamps[min(p, f.n_rows - 1)]).total_seconds() / 86400.0
    return FileScore(
        name=f.name,
        score=total,
        true_positives=tp,
        false_negatives=fn,
        false_positive_rows=int(fp_rows.size),
        scored_days=span,
        delays_rows=delays_rows,
        delays_s=delays_s,
    )


class Sweep(BaseModel):
    """The best threshold for one detector and profile over a corpus."""

    threshold: float
    score: float


def best_threshold(
    files: Sequence[LabelledFile], scores: Mapping[str, np.ndarray], profile: Profile
) -> Sweep:
    """Sweep every distinct score as threshold and keep the best corpus total (NAB's optimiser).

    Lowering the threshold past a row adds it: outside windows its (negative) value is added; in a
    window it replaces the window's current value if it earns more (an earlier row earns more)."""
    rows_score: list[np.ndarray] = []
    rows_window: list[np.ndarray] = []
    rows_value: list[np.ndarray] = []
    base = 0.0
    offset = 0
    for f in files:
        window_of, value = row_values(f, profile)
        keep = window_of != PROBATION
        ids = window_of[keep].copy()
        ids[ids >= 0] += offset
        offset += len(f.windows)
        base -= profile.fn * len(counted_windows(window_of))
        rows_score.append(np.asarray(scores[f.name], dtype=np.float64)[keep])
        rows_window.append(ids)
        rows_value.append(value[keep])
    if not rows_score:
        return Sweep(threshold=1.1, score=0.0)
    s = np.concatenate(rows_score)
    w = np.concatenate(rows_window)
    v = np.concatenate(rows_value)
    order = np.argsort(-s, kind="stable")
    s, w, v = s[order].tolist(), w[order].tolist(), v[order].tolist()
    window_value: dict[int, float] = {}
    total = base
    best = Sweep(threshold=1.1, score=base)  # above every score: nothing fires
    for i, (score, window, val) in enumerate(zip(s, w, v)):
        if window < 0:
            total += val
        else:
            old = window_value.get(window)
            if old is None:
                total += profile.fn + val
                window_value[window] = val
            elif val > old:
                total += val - old
                window_value[window] = val
        last_of_level = i + 1 == len(s) or s[i + 1] != score
        if last_of_level and total > best.score:
            best = Sweep(threshold=score, score=total)
    return best


def normalised(raw: float, null: float, perfect: float) -> float:
    """NAB's 0-100 scale: 0 = the detector that never fires, 100 = the perfect one."""
    if perfect == null:
        return 0.0
    return 100.0 * (raw - null) / (perfect - null)


def null_scores(files: Sequence[LabelledFile]) -> dict[str, np.ndarray]:
    """The null detector: the same score everywhere, so no threshold can do better than silence."""
    return {f.name: np.full(f.n_rows, 0.5) for f in files}


def perfect_scores(files: Sequence[LabelledFile]) -> dict[str, np.ndarray]:
    """The perfect detector: 1 on every window row (its earliest row earns the full ``w_tp``)."""
    return {f.name: f.labels().astype(np.float64) for f in files}
