"""Prometheus down when a run detects: the run fails saying so, and the alert's next resend fixes it.

A real `medic serve` subprocess on the session lab and its Prefect; the alert is posted the way
Alertmanager posts it (same fingerprint and startsAt on every resend: one alert instance).
"""

from __future__ import annotations

import uuid

import pytest

from medic_lab import faults
from medic_lab.state import LabState
from tests.support.chaos import Inject, final_run, post_alert
from tests.support.lab_health import broken, seen  # noqa: F401 (fixtures)
from tests.support.lab_health import Inject as BreakHost
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
    second = wait_for(lambda: post_alert(server, payload), what="the resend to be taken (not a duplicate)",
                      timeout=30, done=lambda answer: answer["result"] != "duplicate", interval=0.5)
    assert second["result"] == "started" and second["flow_run_id"] != first["flow_run_id"], second
    recovered = final_run(lab, second["flow_run_id"])
    assert recovered["state"]["name"] == "Recovered", (recovered["state"], server.logs()[-2000:])
    third = wait_for(lambda: post_alert(server, payload), what="the second resend to be answered (not a duplicate)",
                     timeout=30, done=lambda answer: answer["result"] != "duplicate", interval=0.5)
    assert third["result"] == "already handled" and third["flow_run_id"] == second["flow_run_id"], third
