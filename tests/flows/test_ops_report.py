"""`medic report` and the weekly report flow: real runs read back from the lab's Prefect, SLO figures
from its Prometheus, charts as real PNGs; and the arithmetic (percentiles, flapping, chains) by hand."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.report import ops_report
from medic.core.report import Outcome
from medic.orchestration.run_history import RunRecord, StageTime, read_runs
from medic.procedures.ops_report import Distribution, SLOStats, build_report, render_markdown, slack_summary
from medic_lab.state import LabState
from tests.support.flows import remediate, remediate_and_decide
from tests.support.lab_health import Inject, broken, seen  # noqa: F401 (fixture)
from tests.support.prefect_api import prefect_json

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _run(i: int, target: str, outcome: Outcome, stages: dict[str, float], wait: float = 0.0) -> RunRecord:
    start = NOW + timedelta(minutes=i)
    return RunRecord(id=f"r{i}", flow="remediate", runbook="service-down", target=target, outcome=outcome,
                     state_name=outcome.state_name, started=start, ended=start + timedelta(seconds=sum(stages.values())),
                     seconds=sum(stages.values()), asked_human=wait > 0, human_wait_s=wait,
                     stages=[StageTime(stage=k, started=start, seconds=v) for k, v in stages.items()])


def test_percentiles_incidents_approvals_and_flapping_by_hand() -> None:
    runs = [_run(i, "web-1" if i < 3 else f"web-{i}", Outcome.RECOVERED, {"detect": 1.0 + i, "recover": 2.0})
            for i in range(5)]
    runs.append(_run(9, "web-9", Outcome.NOT_NEEDED, {"detect": 5.0}))
    runs.append(_run(10, "web-2", Outcome.NOT_RECOVERED, {"detect": 1.0, "recover": 9.0}, wait=40.0))
    report = build_report(runs, since=NOW, until=NOW + timedelta(hours=1))
    (stats,) = report.runbooks
    assert (stats.runs, stats.incidents, stats.recovered, stats.not_needed, stats.failed) == (7, 6, 5, 1, 1)
    assert stats.stages["detect"] == Distribution(n=6, p50=2.5, p90=4.5, max=5.0)  # 1,1,2,3,4,5
    assert stats.approvals == 1 and stats.human_wait is not None and stats.human_wait.max == 40.0
    assert stats.flapping == ["web-1"]  # three incidents on one target in the period
    assert [r.id for r in report.incidents] == ["r0", "r1", "r2", "r3", "r4", "r10"]
    assert "| service-down | 7 | 6 | 5 | 1 | 1 | 1 (40.0 / 40.0 / 40.0 s (n=1))" in render_markdown(report)
    assert "6 incident(s), 5 recovered" in slack_summary(report)


def test_a_chain_is_the_product_of_its_components_and_says_why_it_differs() -> None:
    web = SLOStats(slo="web", service="web", objective=99.9, availability=0.999, depends_on=["db"], chain=0.999 * 0.99)
    db = SLOStats(slo="db", service="db", objective=99.0, availability=0.99)
    text = render_markdown(build_report([], since=NOW, until=NOW, slos=[web, db]))
    assert "| web | web | 99.9 % | 99.900 % |" in text and "98.901 % (db × web)" in text
    assert "differs from the measured end-to-end availability when failures correlate" in text


@pytest.mark.lab
def test_runs_read_back_from_prefect_and_the_report_with_its_charts(lab: LabState, broken: Inject,
                                                                    tmp_path: Path) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    broken("service-down", "web-3")
    seen(lab, "service-down", "web-3")
    run, report = remediate("service-down", "web-3")
    assert report.outcome is Outcome.RECOVERED
    records = {r.id: r for r in asyncio.run(read_runs(since))}
    mine = records[str(run.flow_run_id)]
    assert (mine.runbook, mine.target, mine.outcome) == ("service-down", "web-3", Outcome.RECOVERED)
    assert [s.stage for s in mine.stages] == ["detect", "diagnose", "recover", "verify"]
    assert all(s.seconds >= 0 for s in mine.stages) and mine.seconds >= sum(s.seconds for s in mine.stages) * 0.5
    assert mine.incident is not None and mine.incident.time_to_recover_s  # its timeline artifact, read back

    cli = subprocess.run([sys.executable, "-m", "medic", "report", "--since", "1h", "--charts", str(tmp_path)],
                         capture_output=True, text=True, timeout=180)
    assert cli.returncode == 0, cli.stderr
    assert "| web-latency | web | 99.9 % |" in cli.stdout and "| service-down |" in cli.stdout
    assert "## Time to detect, acknowledge, recover" in cli.stdout
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["availability-per-day.png", "error-budget-left.png", "incident-timelines.png",
                    "stage-durations-per-incident.png"]
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    flow_report = asyncio.run(ops_report(since="1h"))
    assert any(r.runbook == "service-down" and r.incidents >= 1 for r in flow_report.runbooks)
    artifact = prefect_json(lab.prefect_api_url, "POST", "/artifacts/filter",
                            json={"artifacts": {"key": {"any_": ["ops-report"]}}, "sort": "CREATED_DESC", "limit": 1})
    assert artifact and artifact[0]["data"].count("data:image/png;base64,") == 4


@pytest.mark.lab
def test_a_run_that_waited_for_a_human_is_read_back_with_its_wait_and_decision(lab: LabState, broken: Inject) -> None:
    """Only runs with a pause key recorded by Prefect have their state history read: a paused run must
    still be found (asked a human, how long), and its timeline carry the decision."""
    since = datetime.now(UTC) - timedelta(seconds=5)
    broken("disk-full", "web-2")
    seen(lab, "disk-full", "web-2")
    run, report, statuses = asyncio.run(remediate_and_decide(
        "disk-full", "web-2", [{"decision": "approve", "approver": "alice"}]))
    assert statuses == ["accepted"] and report.outcome is Outcome.RECOVERED, report.summary
    mine = {r.id: r for r in asyncio.run(read_runs(since))}[str(run.flow_run_id)]
    assert mine.asked_human and mine.human_wait_s > 0
    assert mine.incident is not None and mine.incident.human_decision == report.approval.decided_at
    assert mine.incident.impact is not None and mine.incident.recovered is not None
