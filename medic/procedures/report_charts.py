"""The operations report's pictures (PNG, matplotlib's Agg backend, imported on first use: ~0.5 s).

- budget burn-down: the error budget left over time, per SLO, from Prometheus;
- availability per day, per SLO;
- stage durations per incident: one stacked bar per incident, a colour per stage;
- incident timelines: impact → alert → run → recovered → resolved, one bar per incident.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from medic.clients.prometheus import PrometheusClient
from medic.core.slo import SLOSpec
from medic.orchestration.run_history import RunRecord
from medic.procedures.slo_rules import error_ratio, prom_duration

__all__ = ["availability_per_day", "budget_burndown", "incident_timelines", "prepare", "stage_durations"]


def prepare() -> None:
    """Import what drawing needs (a third of a second), e.g. in a thread while the data is read."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


def _figure(height: float = 3.6) -> tuple[Any, Any]:
    """A figure on Agg's canvas without pyplot: no global figure registry to close, and `medic report
    --charts` skips pyplot's import (a third of a second)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _png(fig: Any) -> bytes:
    out = io.BytesIO()
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
    return out.getvalue()


def budget_burndown(slos: list[SLOSpec], prom: PrometheusClient, *, since: datetime, until: datetime) -> bytes:
    """Budget left (1 = untouched, 0 = spent, below 0 = overspent) over the period, per SLO."""
    fig, ax = _figure()
    step = max(60.0, (until - since).total_seconds() / 200)
    for slo in slos:
        expr = f"1 - (({error_ratio(slo, prom_duration(slo.window))}) / {slo.budget:.6g})"
        for series in prom.query_range(expr, start=since, end=until, step=step):
            ax.plot([datetime.fromtimestamp(t, UTC) for t, _ in series.points], [v for _, v in series.points],
                    label=f"{slo.name} ({slo.objective:g} % / {prom_duration(slo.window)})")
    ax.axhline(0, color="#c53030", linewidth=1, linestyle="--")
    ax.set_title("error budget left", loc="left", fontsize=10)
    ax.set_ylabel("share of budget")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)


def availability_per_day(slos: list[SLOSpec], prom: PrometheusClient, *, since: datetime, until: datetime) -> bytes:
    """Share of good events in each UTC day of the period (the last bar is the day so far)."""
    fig, ax = _figure()
    width = 0.8 / max(1, len(slos))
    for i, slo in enumerate(slos):
        days, values = [], []
        for series in prom.query_range(f"1 - ({error_ratio(slo, '1d')})", start=since, end=until, step=86400):
            for t, v in series.points:
                days.append(datetime.fromtimestamp(t, UTC).strftime("%m-%d"))
                values.append(v * 100)
        positions = [k + i * width for k in range(len(days))]
        ax.bar(positions, values, width=width, label=slo.name)
        ax.axhline(slo.objective, color="#c53030", linewidth=1, linestyle="--")
        ax.set_xticks(positions, days)
    ax.set_title("availability per day (dashed: objective)", loc="left", fontsize=10)
    ax.set_ylabel("% good events")
    ax.grid(alpha=0.3, axis="y")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)


def stage_durations(incidents: list[RunRecord], limit: int = 30) -> bytes:
    """One horizontal stacked bar per incident (most recent `limit`), a colour per stage."""
    shown = incidents[-limit:]
    fig, ax = _figure(max(2.5, 0.3 * len(shown) + 1.2))
    colours: dict[str, str] = {}
    palette = ["#2b6cb0", "#805ad5", "#dd6b20", "#38a169", "#d53f8c", "#718096", "#b7791f"]
    for row, run in enumerate(shown):
        left = 0.0
        for stage in run.stages:
            colour = colours.setdefault(stage.stage, palette[len(colours) % len(palette)])
            ax.barh(row, stage.seconds, left=left, color=colour)
            left += stage.seconds
        if run.human_wait_s:
            ax.barh(row, run.human_wait_s, left=left, color="#e2e8f0", hatch="//", edgecolor="#a0aec0")
    ax.set_yticks(range(len(shown)), [f"{r.runbook} on {r.target}" for r in shown], fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_title("stage durations per incident (hatched: waiting for a human)", loc="left", fontsize=10)
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=s) for s, c in colours.items()]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


#: An incident's phases, from its timeline (medic.core.timeline): where the time between impact and
#: resolution went.
PHASES = (("detect (impact → alert fired)", "impact", "alert_fired", "#c53030"),
          ("deliver + start (→ run started)", "alert_fired", "run_started", "#dd6b20"),
          ("run start → human decision", "run_started", "human_decision", "#cbd5e0"),
          ("repair (→ SLI good again)", "human_decision", "recovered", "#2b6cb0"),
          ("verify + report (→ resolved)", "recovered", "resolved", "#38a169"))


def incident_timelines(incidents: list[RunRecord], limit: int = 30) -> bytes:
    """One bar per incident with a timeline (most recent `limit`), from impact: the phases in colour."""
    shown = [r for r in incidents if r.incident is not None and r.incident.impact is not None][-limit:]
    fig, ax = _figure(max(3.0, 0.3 * len(shown) + 2.0))
    for row, run in enumerate(shown):
        times = run.incident
        assert times is not None and times.impact is not None
        for _, start, end, colour in PHASES:
            a, b = getattr(times, start), getattr(times, end)
            if start == "human_decision" and a is None:  # no human asked: repair from the run's start
                a = times.run_started
            if a is not None and b is not None and b >= a:
                ax.barh(row, (b - a).total_seconds(), left=(a - times.impact).total_seconds(), color=colour)
    ax.set_yticks(range(len(shown)), [f"{r.runbook} on {r.target}" for r in shown], fontsize=7)
    ax.invert_yaxis()  # oldest on top, as the report's tables list them
    ax.set_xlabel("seconds since impact (first bad sample)")
    ax.set_title("incident timelines: where the time from impact to resolution went", loc="left", fontsize=10)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=label) for label, _, _, c in PHASES], fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)
