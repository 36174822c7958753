"""The anomaly watcher as a Prefect flow: deployed on a schedule, it raises alerts no threshold would.

Every pass scores the series of each runbook that detects by anomaly (`detect: {anomaly: …}` and a
`trigger`), raises the runbook's trigger alert in Alertmanager for each host at or above its
threshold (the detector's reason as the summary), and leaves a table of every score and a PNG chart
per raised alert as artifacts. Alertmanager then routes the alert to medic's intake like any other,
and the runbook confirms, repairs and verifies (flows/remediate.py).
"""

from __future__ import annotations

from datetime import timedelta

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from pydantic import Field

from medic.approval.notify import flow_run_url
from medic.clients.alertmanager import AlertmanagerClient
from medic.clients.prometheus import PrometheusClient
from medic.core.inventory import load_inventory
from medic.core.report import artifact_key
from medic.core.runbook import load_runbooks
from medic.detect.chart import png_chart
from medic.errors import ConfigError
from medic.orchestration.charts import chart_markdown
from medic.procedures.watch import WatchReport, watch, watched
from medic.settings import get_settings


@flow(name="anomaly-watch", description="Score the series of runbooks that detect by anomaly; raise their alerts.")
def anomaly_watch(
    runbooks: list[str] | None = Field(None, description="runbooks to watch (default: every runbook with "
                                                          "detect.anomaly and a trigger)"),
    alert_ttl_s: float = Field(180.0, gt=0, le=86400, description="a raised alert resolves on its own after "
                                                                   "this unless raised again by the next pass"),
) -> WatchReport:
    settings = get_settings()
    if not settings.alertmanager_url:
        raise ConfigError("no Alertmanager configured: set MEDIC_ALERTMANAGER_URL (or start the lab)")
    all_runbooks = load_runbooks(settings.runbooks_dir)
    unknown = sorted(set(runbooks or []) - set(all_runbooks))
    if unknown:
        raise ConfigError(f"no runbook named {', '.join(unknown)}; known: {', '.join(sorted(all_runbooks))}")
    chosen = watched(all_runbooks, runbooks)
    ctx = get_run_context()
    link = flow_run_url(settings, str(ctx.flow_run.id)) if getattr(ctx, "flow_run", None) else ""
    with PrometheusClient(settings.prometheus_url) as prom, AlertmanagerClient(settings.alertmanager_url) as am:
        report, scores = watch(chosen, load_inventory(), prom, am, alert_ttl=timedelta(seconds=alert_ttl_s),
                               link=link)
    create_table_artifact(key="anomaly-watch", description="every watched series' anomaly score this pass",
                          table=[f.model_dump() for f in report.findings] or [{"runbook": "(none watched)"}])
    for finding in report.raised[:5]:
        found = scores[f"{finding.runbook}/{finding.host}"]
        threshold = all_runbooks[finding.runbook].detect.anomaly.threshold  # type: ignore[union-attr]
        png = png_chart(found.times, found.values, found.scores, threshold=threshold,
                        title=f"{finding.runbook} on {finding.host}", reason=found.reason)
        create_markdown_artifact(markdown=chart_markdown(f"{finding.runbook} on {finding.host}", png, found.reason),
                                 key=artifact_key("anomaly-watch", finding.runbook, finding.host))
    return report
