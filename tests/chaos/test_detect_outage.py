"""Prometheus down when a run detects: the run fails saying so, and the alert's next resend fixes it.
Prometheus down after a human approved: the run waits for it (the approval is not thrown away).

A real `medic serve` subprocess on the session lab and its Prefect; the alert is posted the way
Alertmanager posts it (same fingerprint and startsAt on every resend: one alert instance).
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from medic.orchestration.pause import ResumeStatus
from medic_lab import faults
from medic_lab.state import LabState
from tests.support.approvals import answer_as
from tests.support.chaos import FINAL, Inject, final_run, fire, post_alert, resend_repairs_once
from tests.support.lab_health import broken, seen  # noqa: F401 (fixtures)
from tests.support.lab_health import Inject as BreakHost
from tests.support.prefect_api import prefect_json
from tests.support.server import MedicServer, alert_payload
from tests.support.waits import wait_for

pytestmark = pytest.mark.chaos


def test_prometheus_down_at_detect_fails_clearly_and_the_resend_starts_a_run_that_fixes_it(
        lab: LabState, server: MedicServer, broken: BreakHost, inject: Inject) -> None:
    """Nothing lost: the alert that arrived while Prometheus was down is not dropped as "not needed"
    nor as "already handled" — its run fails naming Prometheus, and the same alert sent again once
    Prometheus is back starts one new run that recovers the service; a further resend starts nothing."""
    host = [h.name for h in lab.hosts if h.group == "web"][-1]
    # Prometheus first: stopped while an alert is pending, it leaves that ALERTS sample behind (no
    # staleness marker) for its 5-minute lookback, and the lab would look unhealthy that long.
    inject("prometheus-down")
    broken("service-down", host)
    payload = alert_payload("ServiceDown", host, fingerprint=f"chaos-prom-{uuid.uuid4().hex[:8]}",
                            starts_at="2026-11-23T00:00:00Z")
    first = post_alert(server, payload)
    assert first["result"] == "started", first
    failed = final_run(lab, first["flow_run_id"])
    assert failed["state"]["type"] == "FAILED" and failed["state"]["name"] != "NotNeeded", failed["state"]
    assert "prometheus" in (failed["state"]["message"] or "").lower(), failed["state"]

    faults.fix_host(lab, "prometheus-down")
    seen(lab, "service-down", host)  # scraped again: detect will see it down
    resend_repairs_once(lab, server, payload, first)


def _recheck_waiting(lab: LabState, run_id: str) -> list[dict]:
    """The run's re-check task runs (their state says whether one is waiting to retry)."""
    rows = prefect_json(lab.prefect_api_url, "POST", "/task_runs/filter", json={
        "flow_runs": {"id": {"any_": [run_id]}}, "limit": 50})
    return [t for t in rows if t["name"].startswith("re-check")]


def test_prometheus_down_after_the_approval_the_run_waits_for_it_and_recovers(
        lab: LabState, server: MedicServer, broken: BreakHost, inject: Inject) -> None:
    """Nothing lost: a human approved, then Prometheus went away before the re-check. The approval is
    not thrown away (Alertmanager would not resend the still-firing alert for its repeat_interval): the
    re-check waits for Prometheus — its task run retrying — and once Prometheus is back the run
    re-checks, repairs and verifies, ending Recovered."""
    host = [h.name for h in lab.hosts if h.group == "web"][-2]
    _, answer = fire(lab, server, broken, "disk-full", host, "DiskAlmostFull", tag="prom-approved",
                     starts_at="2026-11-23T02:00:00Z")
    run_id = answer["flow_run_id"]
    paused = wait_for(lambda: prefect_json(lab.prefect_api_url, "GET", f"/flow_runs/{run_id}"),
                      what=f"run {run_id} to wait for approval", timeout=180, ignore=httpx.HTTPError,
                      done=lambda r: r["state"]["type"] in ("PAUSED", *FINAL))
    assert paused["state"]["type"] == "PAUSED", (paused["state"], server.logs()[-3000:])

    inject("prometheus-down")
    outcome = asyncio.run(answer_as(run_id, {"decision": "approve", "approver": "alice"}))
    assert outcome.status is ResumeStatus.ACCEPTED, outcome
    # Three attempts failed and it still waits: more than a quick retry (1 + 2 attempts) would give.
    retrying = wait_for(lambda: _recheck_waiting(lab, run_id), what="the re-check to keep waiting for Prometheus",
                        timeout=60, interval=0.5, ignore=httpx.HTTPError,
                        done=lambda ts: any(t["run_count"] >= 3 and t["state"]["name"] == "AwaitingRetry" for t in ts))
    assert retrying, retrying

    faults.fix_host(lab, "prometheus-down")
    ended = final_run(lab, run_id, timeout=180)
    assert ended["state"]["name"] == "Recovered", (ended["state"], server.logs()[-3000:])
