"""Detection beyond thresholds, end to end on the real lab: a slow memory leak and a latency drift
that no rule in lab/rules.yml fires on are scored by the runbooks' anomaly detectors, raised into the
real Alertmanager by the watcher flow, routed to a real `medic serve`, and remediated by the runbook.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from flows.watch import anomaly_watch
from medic.clients.alertmanager import AlertmanagerClient, RaisedAlert
from medic.clients.prometheus import PrometheusClient
from medic.core.inventory import load_inventory
from medic.core.runbook import find_runbook
from medic.procedures.anomaly import HostScore, score_hosts
from medic.procedures.watch import SOURCE
from medic.settings import get_settings
from medic_lab import control
from medic_lab.state import LabState
from tests.support.flows import metric
from tests.support.lab_health import Inject, broken  # noqa: F401 (fixture)
from tests.support.prefect_api import prefect_json
from tests.support.server import MedicServer, cancel_leftover_runs, medic_server
from tests.support.waits import wait_for

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def server(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedicServer]:
    cancel_leftover_runs(lab.prefect_api_url)
    with medic_server(tmp_path_factory.mktemp("watch-serve")) as srv:
        yield srv


@pytest.fixture
def raised_alerts_resolved(lab: LabState) -> Iterator[None]:
    """Whatever the watcher raised is resolved afterwards, so no later test's receiver gets it."""
    yield
    now = datetime.now(UTC)
    data = httpx.get(f"{lab.alertmanager_url}/api/v2/alerts", params={"filter": f'source="{SOURCE}"'}).json()
    with AlertmanagerClient(lab.alertmanager_url) as am:
        am.post_alerts([RaisedAlert(labels=a["labels"], starts_at=now, ends_at=now) for a in data])


def _score(runbook: str, host: str) -> HostScore:
    spec = find_runbook(runbook, get_settings().runbooks_dir).detect.anomaly
    assert spec is not None
    with PrometheusClient(get_settings().prometheus_url) as prom:
        return score_hosts(spec, load_inventory().resolve(host), prom)[0]


def _runs(lab: LabState, runbook: str, host: str) -> list[dict]:
    body = {"flow_runs": {"tags": {"all_": [f"runbook:{runbook}", f"target:{host}"]}}, "limit": 50}
    return prefect_json(lab.prefect_api_url, "POST", "/flow_runs/filter", json=body)


def test_the_watcher_raises_nothing_on_a_healthy_lab(lab: LabState, broken: Inject,
                                                     raised_alerts_resolved: None) -> None:
    # "Healthy" as the detectors look at it: an earlier test's slow or leaking host is repaired by now
    # (the `broken` fixture checked), but its last 40 s of samples must be quiet too.
    quiet = ('max(max_over_time((rate(demo_request_duration_seconds_sum{job="web"}[10s]) / '
             'rate(demo_request_duration_seconds_count{job="web"}[10s]))[40s:2s]))')
    wait_for(lambda: metric(lab, quiet), what="40 s of normal latency on every web host", timeout=120,
             done=lambda r: bool(r) and r[0][1] < 0.02, interval=2.0, ignore=httpx.HTTPError)
    growth = 'max(max_over_time(deriv(demo_process_resident_bytes{job="web"}[20s])[60s:2s]))'
    wait_for(lambda: metric(lab, growth), what="60 s without memory growth on every web host (a service "
             "restarted by an earlier test grows while it starts)", timeout=150,
             done=lambda r: bool(r) and r[0][1] < 20_000, interval=2.0, ignore=httpx.HTTPError)
    report = anomaly_watch(runbooks=["memory-leak", "latency-drift"])
    hosts = {h.name for h in lab.hosts if h.group == "web"}
    assert {(f.runbook, f.host) for f in report.findings} == {(r, h) for r in ("memory-leak", "latency-drift")
                                                              for h in hosts}
    assert report.raised == [], [f"{f.runbook}/{f.host}: {f.reason}" for f in report.raised]


@pytest.mark.parametrize(("fault", "runbook", "host", "words"), [
    ("leak", "memory-leak", "web-5", "resident memory rising"),
    ("drift", "latency-drift", "web-6", "above its moving average"),
])
def test_a_fault_no_threshold_catches_is_detected_raised_and_remediated(
        lab: LabState, server: MedicServer, broken: Inject, raised_alerts_resolved: None,
        fault: str, runbook: str, host: str, words: str) -> None:
    rules = Path(__file__).resolve().parents[2] / "lab" / "rules.yml"
    assert runbook not in rules.read_text()  # no fixed rule of the lab's Prometheus covers it
    started = {m.get("host"): v for m, v in metric(lab, 'demo_start_time_seconds{job="web"}')}[host]
    earlier = {r["id"] for r in _runs(lab, runbook, host)}
    # A detector learns what is usual from the history before the fault: a freshly started lab has
    # little of it, so wait until the lookback holds ~90 s of normal samples.
    wait_for(lambda: _score(runbook, host), what=f"90 s of normal history for {host}", timeout=120,
             done=lambda s: len(s.scores) >= 45 and s.score < 0.5, interval=2.0, ignore=httpx.HTTPError)
    control.set_webhook(lab, f"{server.url}/alertmanager")  # `broken` points it back afterwards
    broken(fault, host)
    found = wait_for(lambda: _score(runbook, host), what=f"{runbook}'s detector to score {host}", timeout=90,
                     done=lambda s: s.score >= 0.5, interval=1.0, ignore=httpx.HTTPError)
    assert words in found.reason, found.reason
    report = anomaly_watch(runbooks=[runbook])  # one pass of the scheduled deployment's flow
    raised = [f for f in report.raised]
    assert [(f.runbook, f.host) for f in raised] == [(runbook, host)], [f.model_dump() for f in report.findings]
    run = wait_for(lambda: [r for r in _runs(lab, runbook, host) if r["id"] not in earlier
                            and r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")],
                   what=f"a finished {runbook} run on {host} started by the raised alert", timeout=120,
                   done=bool, interval=1.0, ignore=httpx.HTTPError)[0]
    assert run["state"]["name"] == "Recovered", (run["state"], server.logs()[-2000:])
    restarted = {m.get("host"): v for m, v in metric(lab, 'demo_start_time_seconds{job="web"}')}[host]
    assert restarted > started  # the repair was a real restart of that instance
    artifacts = prefect_json(lab.prefect_api_url, "POST", "/artifacts/filter", json={
        "artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    charts = [a for a in artifacts if a["key"] and a["key"].startswith("anomaly-")]
    assert charts and "data:image/png;base64," in charts[0]["data"], [a["key"] for a in artifacts]
    assert wait_for(lambda: _score(runbook, host), what=f"{host} to score normal again", timeout=150,
                    done=lambda s: s.score < 0.5, interval=1.0, ignore=httpx.HTTPError).score < 0.5
