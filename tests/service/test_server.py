"""medic serve against the lab: alerts in, remediations out, with nobody touching a key.

A real `medic serve` subprocess (Prefect from the lab, deployments served, HTTP on a free port) and
the lab's real Alertmanager pointed at it. Tests that break a host or re-point Alertmanager take the
`broken`/`restored` fixtures: afterwards, pass or fail, the lab is restored and checked healthy.
Alert fingerprints are unique per run, so nothing an earlier test (or session) sent is "already handled".
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medic.core.polling import retry
from medic_lab import control
from medic_lab.state import LabState
from tests.support.flows import metric, wait_metric
from tests.support.intake import intake_headers, send_alert
from tests.support.lab_health import Inject, broken, restored, seen  # noqa: F401 (fixtures)
from tests.support.prefect_api import prefect_json
from tests.support.server import (
    FLAP_TEST_WINDOW_S,
    MedicServer,
    alert_payload,
    cancel_leftover_runs,
    flap_free_host,
    medic_server,
)
from tests.support.waits import wait_for


@pytest.fixture(scope="module")
def server(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedicServer]:
    cancel_leftover_runs(lab.prefect_api_url)
    # The flap guard counts remediations site-wide (audit records in Prefect), so earlier test modules'
    # repairs would count here: off for this server (a 1 s window); the flap test has its own server.
    with medic_server(tmp_path_factory.mktemp("serve"), env={"MEDIC_FLAP_WINDOW_S": "1"}) as srv:
        yield srv


@pytest.fixture
def flap_server(server: MedicServer, tmp_path: Path) -> Iterator[MedicServer]:
    """A second medic serve (its own instance name) whose flap guard trips after one remediation."""
    with medic_server(tmp_path / "flap-serve", env={"MEDIC_FLAP_MAX_RUNS": "1", "MEDIC_INSTANCE": "flap-test",
                                                              "MEDIC_FLAP_WINDOW_S": str(FLAP_TEST_WINDOW_S)}) as srv:
        yield srv


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _metric(server: MedicServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _runs(lab: LabState, *tags: str) -> list[dict]:
    body = {"flow_runs": {"tags": {"all_": list(tags)}}, "limit": 200}
    return prefect_json(lab.prefect_api_url, "POST", "/flow_runs/filter", json=body)


def _run(lab: LabState, run_id: str) -> dict:
    return prefect_json(lab.prefect_api_url, "GET", f"/flow_runs/{run_id}")


def _wait_state(lab: LabState, run_id: str, types: tuple[str, ...], timeout: float = 120) -> dict:
    return wait_for(lambda: _run(lab, run_id), what=f"run {run_id} to be {'/'.join(types)}", timeout=timeout,
                    done=lambda run: run["state"]["type"] in types, ignore=httpx.HTTPError)


def _wait_final(lab: LabState, run_id: str, timeout: float = 120) -> dict:
    return _wait_state(lab, run_id, ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"), timeout)


def _wait_server_idle(server: MedicServer, target: str, timeout: float = 30) -> None:
    """Prefect shows a run final a moment before the server releases its (runbook, target) slot."""
    wait_for(lambda: [r for r in _health(server)["active_runs"] if r["target"] == target],
             what=f"medic serve to release its run for {target}", timeout=timeout, done=lambda held: not held)


def _health(server: MedicServer) -> dict:
    """/healthz's details: they need the intake credential (the plain answer is only ok/degraded)."""
    return httpx.get(f"{server.url}/healthz?verbose=1", headers=intake_headers()).json()


def _post(server: MedicServer, payload: dict | bytes, **headers: str) -> httpx.Response:
    if isinstance(payload, bytes):
        return httpx.post(f"{server.url}/alertmanager", content=payload,
                          headers={"content-type": "application/json", **intake_headers(), **headers})
    return send_alert(server.url, payload)


def test_alert_from_alertmanager_is_remediated_with_no_other_input(lab: LabState, server: MedicServer,
                                                                   broken: Inject) -> None:
    tags = ("medic-serve", "target:web-2", "runbook:service-down")
    earlier = {r["id"] for r in _runs(lab, *tags)}  # other modules' runs in the session's Prefect
    before = _metric(server, "medic_runs_total", runbook="service-down", outcome="recovered")
    control.set_webhook(lab, f"{server.url}/alertmanager")  # `broken` points it back afterwards
    broken("service-down", "web-2")
    try:
        wait_for(lambda: _metric(server, "medic_runs_total", runbook="service-down", outcome="recovered"),
                 what="medic serve to count a recovered service-down run", timeout=90,
                 done=lambda recovered: recovered > before, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nmedic serve's log:\n{server.logs()[-2000:]}") from None
    assert wait_metric(lab, 'up{job="web",host="web-2"}', lambda r: bool(r) and r[0][1] == 1)[0][1] == 1
    runs = [r for r in _runs(lab, *tags) if r["id"] not in earlier]
    assert any(r["state"]["name"] == "Recovered" for r in runs), [r["state"]["name"] for r in runs]
    assert all(r["deployment_id"] for r in runs), "alert runs must show under their deployment"


def test_fifty_duplicate_notifications_start_exactly_one_run(lab: LabState, server: MedicServer,
                                                             restored: LabState) -> None:
    fingerprint = _unique("storm-web-5")
    payload = alert_payload("ServiceDown", "web-5", fingerprint=fingerprint, starts_at="2026-11-22T01:00:00Z")

    async def storm() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, headers=intake_headers()) as client:
            return await asyncio.gather(*[client.post(f"{server.url}/alertmanager", json=payload) for _ in range(50)])

    responses = asyncio.run(storm())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    results = [r.json()["alerts"][0]["result"] for r in responses]
    assert results.count("started") == 1, results
    assert set(results) <= {"started", "duplicate", "already handled"}
    run_ids = {r.json()["alerts"][0].get("flow_run_id") for r in responses} - {None}
    assert len(run_ids) == 1
    run = _wait_final(lab, run_ids.pop())
    assert run["state"]["name"] == "NotNeeded"  # web-5 is healthy: detect finds nothing to do
    # a repeat of the same alert instance after the run ended is not acted on twice
    again = _post(server, payload).json()["alerts"][0]
    assert again["result"] in ("already handled", "duplicate")  # either way: not started again
    storm_runs = [r for r in _runs(lab, "medic-serve", "target:web-5") if fingerprint in r["parameters"].get("reason", "")]
    assert len(storm_runs) == 1


def test_flap_guard_asks_a_human_and_a_resolved_alert_ends_the_wait(lab: LabState, flap_server: MedicServer,
                                                                    broken: Inject) -> None:
    """MEDIC_FLAP_MAX_RUNS=1: after one remediation that acted, the next alert waits for a human, and the
    alert's resolution ends that wait. (That runs which found nothing to do do not count: test_ui_story.)"""
    host = flap_free_host(lab)  # the flap history is site-wide

    def alert(name: str, status: str = "firing") -> dict:
        return alert_payload("ServiceDown", host, fingerprint=name, starts_at="2026-11-22T02:00:00Z",
                             status=status)

    broken("service-down", host)
    seen(lab, "service-down", host)
    acted = _post(flap_server, alert(_unique("flap-acted"))).json()["alerts"][0]
    assert acted["result"] == "started" and "flap guard" not in acted.get("detail", ""), acted
    assert _wait_final(lab, acted["flow_run_id"])["state"]["name"] == "Recovered"
    _wait_server_idle(flap_server, host)

    broken("service-down", host)
    seen(lab, "service-down", host)
    third = alert(_unique("flap-third"))
    answer = _post(flap_server, third).json()["alerts"][0]
    assert answer["result"] == "started" and "flap guard" in answer["detail"], answer
    run_id = answer["flow_run_id"]
    _wait_state(lab, run_id, ("PAUSED",), timeout=90)
    assert metric(lab, f'up{{job="web",host="{host}"}}')[0][1] == 0, "nothing may be done before a decision"
    third["status"] = third["alerts"][0]["status"] = "resolved"
    resolved = _post(flap_server, third).json()["alerts"][0]
    assert resolved["result"] == "resolved" and run_id in resolved["detail"]
    run = _wait_final(lab, run_id)
    assert run["state"]["name"] == "NotNeeded" and "resolved" in run["state"]["message"]


def test_deployments_explain_their_parameters_and_an_api_run_completes(lab: LabState, server: MedicServer) -> None:
    deployments = prefect_json(lab.prefect_api_url, "POST", "/deployments/filter", json={"limit": 200})
    by_name = {d["name"]: d for d in deployments}
    assert {"service-down", "disk-full", "high-latency"} <= set(by_name)
    schema = by_name["service-down"]["parameter_openapi_schema"]["properties"]
    assert {"runbook", "target", "dry_run", "reason", "require_approval"} <= set(schema)
    assert "Inventory host or group" in schema["target"]["description"]
    assert schema["dry_run"]["type"] == "boolean"
    assert by_name["service-down"]["parameters"]["runbook"] == "service-down"
    url = f"{lab.prefect_api_url}/deployments/{by_name['service-down']['id']}/create_flow_run"
    # As Prefect's own client does: SQLite answers 503 "database is locked" under load, so retry those.
    created = retry(lambda: httpx.post(url, json={"parameters": {"runbook": "service-down", "target": "web-5"}},
                                       timeout=30),
                    retry_if=lambda r: r.status_code in (429, 503), delays=itertools.repeat(0.5), timeout=30)
    assert created.status_code == 201, f"{created.status_code} {created.text[:500]}"
    run = _wait_final(lab, created.json()["id"], timeout=120)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["state"]["name"] == "NotNeeded"


@pytest.mark.parametrize(("body", "headers", "status", "reason"), [
    (b"this is not json", {}, 400, "not JSON"),
    (b'["a", "list"]', {}, 400, "not an Alertmanager webhook payload"),
    (b'{"version": "4", "status": "firing"}', {}, 400, "alerts"),
    (b'{"version": "3", "status": "firing", "alerts": []}', {}, 422, "unsupported webhook version '3'"),
    (b"{" + b" " * (1024 * 1024 + 10) + b"}", {}, 413, "over the"),
    (b"{}", {"content-type": "text/plain"}, 415, "expected application/json"),
])
def test_bad_webhook_payloads_are_refused_with_a_reason(server: MedicServer, body: bytes, headers: dict,
                                                        status: int, reason: str) -> None:
    before = _metric(server, "medic_alerts_received_total", action="started")
    response = _post(server, body, **headers)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert _metric(server, "medic_alerts_received_total", action="started") == before


@pytest.mark.parametrize(("alertname", "host", "result"), [
    ("SomethingElse", "web-1", "no runbook"),
    ("ServiceDown", "db-9", "unknown host"),
    ("ServiceDown", "web-1; rm -rf /", "unknown host"),
])
def test_alerts_medic_cannot_act_on_are_acknowledged_not_started(lab: LabState, server: MedicServer, alertname: str,
                                                                 host: str, result: str) -> None:
    response = _post(server, alert_payload(alertname, host, fingerprint=f"odd-{alertname}"))
    assert response.status_code == 200
    entry = response.json()["alerts"][0]
    assert entry["action"] == result and "flow_run_id" not in entry
    assert response.json()["started"] == 0


def test_healthz_and_metrics(server: MedicServer) -> None:
    health = _health(server)
    assert health["status"] == "ok" and health["prefect_reachable"] is True
    assert set(health["runbooks"]) >= {"service-down", "disk-full", "high-latency"}
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("medic_runs_total", "medic_time_to_recover_seconds", "medic_approvals_pending",
                 "medic_alerts_received_total"):
        assert name in text


def test_sigterm_stops_medic_serve_cleanly(lab: LabState, tmp_path: Path) -> None:
    with medic_server(tmp_path / "state") as srv:
        assert srv.stop() == 0
        assert "stopping" in srv.logs()


def _medic_run(server: MedicServer, *args: str) -> "subprocess.CompletedProcess[str]":
    import os
    import subprocess
    import sys

    port = server.url.rsplit(":", 1)[1]
    return subprocess.run([sys.executable, "-m", "medic", "run", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MEDIC_SERVER_PORT": port})


def test_medic_run_goes_through_a_running_medic_serve(lab: LabState, server: MedicServer) -> None:
    earlier = {r["id"] for r in _runs(lab, "medic-serve", "manual", "target:web-5")}
    result = _medic_run(server, "service-down", "--target", "web-5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CLI via medic serve" in result.stdout and "NOT NEEDED" in result.stdout
    runs = [r for r in _runs(lab, "medic-serve", "manual", "target:web-5") if r["id"] not in earlier]
    assert [r["state"]["name"] for r in runs] == ["NotNeeded"]


@pytest.mark.parametrize(("target", "message"), [("web-1; rm -rf /", "is refused"), ("db-9", "unknown target")])
def test_medic_run_through_the_server_refuses_bad_targets(server: MedicServer, target: str, message: str) -> None:
    result = _medic_run(server, "service-down", "--target", target)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
