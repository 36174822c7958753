"""The weekly operations report as a Prefect flow (deployment `ops-report`, Mondays 07:00 UTC).

Reads medic's runs back from Prefect (any machine can), asks Prometheus for each SLO's availability
and budget, and leaves one markdown artifact with the tables and three charts (budget burn-down,
availability per day, stage durations per incident); the short version goes to Slack when configured.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from medic.clients.slack import SlackNotifier
from medic.core.runbook import parse_duration
from medic.orchestration.charts import chart_markdown
from medic.orchestration.run_history import read_runs
from medic.procedures.ops_report import OpsReport, render_markdown, slack_summary
from medic.procedures.report_assembly import assemble
from medic.settings import get_settings

log = logging.getLogger("medic.flows.report")


@flow(name="ops-report", description="Weekly operations report: incidents, stage percentiles, SLOs, charts.")
async def ops_report(since: str = Field("7d", description="the period, ending now: e.g. 7d, 24h")) -> OpsReport:
    period = parse_duration(since)
    until = datetime.now(UTC)
    start = until - timedelta(seconds=period)
    runs = await read_runs(start)
    report, charts = await asyncio.to_thread(assemble, runs, start, until, period)
    markdown = render_markdown(report) + "\n" + "\n".join(chart_markdown(t, png) for t, png in charts)
    await create_markdown_artifact(markdown=markdown, key="ops-report", description=f"operations report, last {since}")
    settings = get_settings()
    if settings.slack_bot_token is None or not settings.slack_channel:
        return report
    try:
        await asyncio.to_thread(SlackNotifier.from_settings(settings).post, settings.slack_channel,
                                slack_summary(report))
    except Exception as exc:  # noqa: BLE001 - the report stands without its Slack copy
        log.warning("could not post the report's summary to Slack: %s", exc)
    return report
