"""Every run's incident timeline against ground truth: the lab's fault injector records when it broke a
host (`<lab dir>/faults.jsonl`); the real Prometheus → Alertmanager → medic serve → remediation path
handles it; the run's timeline (its table artifact in Prefect) must agree with the record.

Tolerances, from the lab's configuration (medic_lab/monitoring.py, lab/rules.yml):
- impact (first bad sample of `up`): within one scrape interval (1 s) after the kill, plus the
  look-up's range-query step (0.1 s);
- alert fired (ServiceDown, `for: 2s`): 2 s after impact, plus one evaluation interval (1 s) for the
  rule to see the first bad sample and one more for the `for` to be checked, plus the step;
- delivered: Alertmanager (group_wait 0 s) passes it on within an evaluation interval of firing;
- recovered: during the runbook's own fix (its recover stage), at most a scrape interval (+ step)
  after the stage ended — the restart is the fix, and the next scrape sees it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from medic.core.report import Outcome
from medic.orchestration.api import PrefectReader
from medic.orchestration.run_history import read_timelines
from medic.procedures.incident_times import STEP_S
from medic_lab import control
from medic_lab.fault_record import read_record
from medic_lab.state import LabState
from tests.support.flows import remediate
from tests.support.lab_health import Inject, broken, seen  # noqa: F401 (fixture)
from tests.support.prefect_api import prefect_json
from tests.support.server import MedicServer, cancel_leftover_runs, medic_server
from tests.support.waits import wait_for

pytestmark = pytest.mark.lab

SCRAPE_S = 1.0  # medic_lab/monitoring.py: scrape_interval
EVAL_S = 1.0  # evaluation_interval, and the medic-lab rule group's interval
FOR_S = 2.0  # ServiceDown's `for`
HOST = "web-4"


@pytest.fixture(scope="module")
def server(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedicServer]:
    cancel_leftover_runs(lab.prefect_api_url)
    with medic_server(tmp_path_factory.mktemp("timeline-serve")) as srv:
        yield srv


def _finished_run(lab: LabState, host: str, after: set[str]) -> dict:
    body = {"flow_runs": {"tags": {"all_": ["runbook:service-down", f"target:{host}"]}}, "limit": 50}
    runs = prefect_json(lab.prefect_api_url, "POST", "/flow_runs/filter", json=body)
    return next((r for r in runs if r["id"] not in after and r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")),
                {})


def test_a_runs_timeline_agrees_with_the_fault_injectors_record(lab: LabState, server: MedicServer,
                                                                broken: Inject) -> None:
    earlier = {r["id"] for r in prefect_json(lab.prefect_api_url, "POST", "/flow_runs/filter", json={
        "flow_runs": {"tags": {"all_": ["runbook:service-down", f"target:{HOST}"]}}, "limit": 200})}
    since = datetime.now(UTC)
    control.set_webhook(lab, f"{server.url}/alertmanager")  # `broken` points it back afterwards
    broken("service-down", HOST)
    (kill,) = [e for e in read_record(lab, since=since) if e.action == "break" and e.host == HOST]
    run = wait_for(lambda: _finished_run(lab, HOST, earlier), what=f"a finished service-down run on {HOST} "
                   "started by the ServiceDown alert", timeout=120, interval=1.0, ignore=httpx.HTTPError)
    assert run["state"]["name"] == "Recovered", (run["state"], server.logs()[-2000:])
    async def timeline() -> object:
        async with PrefectReader() as reader:
            return (await read_timelines(reader, [run["id"]])).get(run["id"])

    times = wait_for(lambda: asyncio.run(timeline()), timeout=30,
                     what=f"the timeline artifact of run {run['id']}")

    slack = timedelta(seconds=STEP_S + 0.05)
    assert times.impact and times.alert_fired and times.delivered and times.recovered, times
    stages = {s.stage: s for s in times.stages}
    assert list(stages) == ["detect", "diagnose", "recover", "verify"]
    # the injector's record: impact follows the kill within a scrape
    assert kill.began - slack <= times.impact <= kill.at + timedelta(seconds=SCRAPE_S) + slack, (kill, times)
    # the alert: `for` after impact, within the rule's evaluation
    fired_after = (times.alert_fired - times.impact).total_seconds()
    assert FOR_S - STEP_S <= fired_after <= FOR_S + 2 * EVAL_S + STEP_S, times
    assert (times.delivered - times.alert_fired).total_seconds() <= EVAL_S, times
    # the fix the runbook did: its recover stage
    recover = stages["recover"]
    assert recover.started <= times.recovered <= recover.ended + timedelta(seconds=SCRAPE_S) + slack, times
    assert times.recovered <= stages["verify"].ended + slack
    # and in the order they happened
    order = [times.impact, times.alert_fired, times.delivered, times.run_started, times.recovered, times.resolved]
    assert order == sorted(order), times.ordered()
    assert times.time_to_detect_s == pytest.approx(fired_after)
    assert times.time_to_acknowledge_s == pytest.approx((times.run_started - times.alert_fired).total_seconds())
    assert [b.slo for b in times.budget] == ["web-latency"] and times.budget[0].if_all_failed

    artifacts = prefect_json(lab.prefect_api_url, "POST", "/artifacts/filter", json={
        "artifacts": {"flow_run_id": {"any_": [run["id"]]}, "key": {"like_": "incident-"}}})
    assert artifacts and "## Incident timeline" in artifacts[0]["data"] and "time to recover" in artifacts[0]["data"]


def test_a_run_without_an_alert_has_its_timeline_in_the_report(lab: LabState, broken: Inject) -> None:
    """Started by a human (no alert, no delivery): impact is looked up from detect's confirmation instead."""
    since = datetime.now(UTC)
    broken("service-down", "web-5")
    seen(lab, "service-down", "web-5")
    _, report = remediate("service-down", "web-5")
    assert report.outcome is Outcome.RECOVERED and report.incident is not None
    times = report.incident
    (kill,) = [e for e in read_record(lab, since=since) if e.action == "break" and e.host == "web-5"]
    assert times.alert_fired is None and times.delivered is None and times.impact is not None
    assert kill.began - timedelta(seconds=STEP_S + 0.05) <= times.impact <= kill.at + timedelta(seconds=SCRAPE_S + STEP_S)
    assert times.time_to_acknowledge_s is None and times.time_to_recover_s is not None
    assert "| impact |" in report.to_markdown() and "| recovered |" in report.to_markdown()

    cli = subprocess.run([sys.executable, "-m", "medic", "lab", "faults", "--last", "20"], capture_output=True,
                         text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert any(" break  service-down " in line and "web-5" in line and kill.said in line
               for line in cli.stdout.splitlines()), cli.stdout
