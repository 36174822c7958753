"""The operations report over a period, from runs read back and the SLOs' figures, with its charts.

Kept free of Prefect imports: `medic report` runs it in a new process and answers in well under 2 s
over a week, of which importing Prefect alone would be a third. The scheduled `ops-report` flow and
the demo call the same function.
"""

from __future__ import annotations

from datetime import datetime

from medic.clients.prometheus import PrometheusClient
from medic.core.paths import SLOS_DIR
from medic.core.slo import load_slos
from medic.orchestration.run_history import RunRecord
from medic.procedures import report_charts
from medic.procedures.ops_report import OpsReport, build_report, slo_stats
from medic.settings import get_settings

__all__ = ["assemble"]


def assemble(runs: list[RunRecord], start: datetime, until: datetime, period: float, *, charts: bool = True,
             ) -> tuple[OpsReport, list[tuple[str, bytes]]]:
    """The report over [start, until] from `runs`, and (unless `charts` is False) its charts (title, PNG)."""
    slos = list(load_slos(SLOS_DIR).values())
    pictures: list[tuple[str, bytes]] = []
    with PrometheusClient(get_settings().prometheus_url) as prom:
        report = build_report(runs, since=start, until=until, slos=slo_stats(slos, prom, period_s=period))
        if slos and charts:
            pictures.append(("Error budget left", report_charts.budget_burndown(slos, prom, since=start, until=until)))
            pictures.append(("Availability per day", report_charts.availability_per_day(slos, prom, since=start,
                                                                                         until=until)))
    if report.incidents and charts:
        pictures.append(("Stage durations per incident", report_charts.stage_durations(report.incidents)))
    if charts and any(r.incident and r.incident.impact for r in report.incidents):
        pictures.append(("Incident timelines", report_charts.incident_timelines(report.incidents)))
    return report, pictures
