"""Pictures of a detector's work: the series and its anomaly score, for a terminal and as a PNG.

A score alone ("0.83") convinces nobody at 3 a.m.; the series above its score, with the threshold
drawn and the alarm marked, shows at a glance what the detector saw. `terminal_chart` needs nothing
but text; `png_chart` uses matplotlib's Agg backend (no display), imported on first use because it
costs ~0.5 s to import and only reports need it.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence

__all__ = ["png_chart", "terminal_chart"]

_BLOCKS = " ▁▂▃▄▅▆▇█"


def _columns(times: Sequence[float], values: Sequence[float], width: int) -> list[float]:
    """`values` resampled to `width` columns (the max of each column: a spike never disappears)."""
    if not values:
        return []
    t0, t1 = times[0], times[-1]
    span = (t1 - t0) or 1.0
    cols: list[float] = [math.nan] * width
    for t, v in zip(times, values):
        i = min(width - 1, int((t - t0) / span * width))
        if math.isfinite(v) and (math.isnan(cols[i]) or v > cols[i]):
            cols[i] = v
    last = math.nan
    for i, v in enumerate(cols):  # carry the last value over empty columns (sparse data, wide terminal)
        cols[i] = last if math.isnan(v) else v
        last = cols[i]
    return cols


def _rows(cols: list[float], height: int, low: float, high: float) -> list[str]:
    """A bar chart of `cols` between low and high, `height` text rows of eighth-blocks."""
    span = (high - low) or 1.0
    levels = [0 if math.isnan(v) else max(0, min(height * 8, round((v - low) / span * height * 8))) for v in cols]
    rows = []
    for r in range(height, 0, -1):
        floor = (r - 1) * 8
        rows.append("".join(_BLOCKS[max(0, min(8, lvl - floor))] for lvl in levels))
    return rows


def terminal_chart(times: Sequence[float], values: Sequence[float], scores: Sequence[float], *,
                   threshold: float, title: str, width: int = 72, height: int = 8) -> str:
    """The series (top) and its score 0..1 (bottom, `!` under columns at or above the threshold)."""
    if not times:
        return f"{title}\n  (no data)"
    vcols = _columns(times, values, width)
    scols = _columns(times, scores, width)
    finite = [v for v in vcols if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    lines = [title, f"{high:>12.4g} ┐"]
    lines += ["             │" + row for row in _rows(vcols, height, low, high)]
    lines.append(f"{low:>12.4g} ┘")
    lines.append("  score 1.0  ┐")
    lines += ["             │" + row for row in _rows(scols, max(3, height // 2), 0.0, 1.0)]
    lines.append("        0.0  ┘" + "".join("!" if v >= threshold else " " for v in scols))
    start = time.strftime("%H:%M:%S", time.gmtime(times[0]))
    end = time.strftime("%H:%M:%S", time.gmtime(times[-1]))
    lines.append(f"             {start} UTC{' ' * max(1, width - 2 * len(start) - 8)}{end} UTC")
    alarms = sum(1 for s in scores if s >= threshold)
    lines.append(f"             threshold {threshold:g}: {alarms} of {len(scores)} samples at or above it")
    return "\n".join(lines)


def png_chart(times: Sequence[float], values: Sequence[float], scores: Sequence[float], *,
              threshold: float, title: str, reason: str = "") -> bytes:
    """A two-panel PNG: the series with alarms marked, and the score with the threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    title, reason = title.replace("$", r"\$"), reason.replace("$", r"\$")  # text, never mathtext
    when = [datetime.fromtimestamp(t, UTC) for t in times]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4.8), sharex=True, height_ratios=(3, 2))
    try:
        top.plot(when, values, color="#2b6cb0", linewidth=1.2)
        hits = [i for i, s in enumerate(scores) if s >= threshold]
        if hits:
            top.scatter([when[i] for i in hits], [values[i] for i in hits], color="#c53030", s=18, zorder=3,
                        label=f"score ≥ {threshold:g}")
            top.legend(loc="upper left", fontsize=8)
        top.set_title(title, fontsize=10, loc="left")
        top.grid(alpha=0.3)
        bottom.plot(when, scores, color="#805ad5", linewidth=1.2)
        bottom.axhline(threshold, color="#c53030", linestyle="--", linewidth=1)
        bottom.set_ylim(-0.02, 1.02)
        bottom.set_ylabel("anomaly score", fontsize=8)
        bottom.grid(alpha=0.3)
        bottom.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
        if reason:
            fig.text(0.01, 0.01, reason[:160], fontsize=7, color="#4a5568")
        fig.tight_layout(rect=(0, 0.04 if reason else 0, 1, 1))
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=100)
        return out.getvalue()
    finally:
        plt.close(fig)
