"""An alert Alertmanager holds but never delivers: the alert sweep takes it — once — and never a silenced one.

How it happens for real (the 30-minute soak, issue 12): an alert resolves while Alertmanager is down and
its labels fire again before Prometheus re-sends the resolution; Alertmanager's notification log still
says "notified" and stays quiet until repeat_interval (1 h in the lab, 4 h by default). Here the session
lab's Alertmanager posts to a dead URL (http://127.0.0.1:9/unused), so *no* webhook ever reaches medic:
the sweep is the only way in. A real `medic serve` subprocess with the sweep every second.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from medic.clients.alertmanager import AlertmanagerClient, Matcher
from medic_lab.state import LabState
from tests.support.chaos import final_run
from tests.support.lab_health import broken, seen  # noqa: F401 (fixtures)
from tests.support.lab_health import Inject as BreakHost
from tests.support.prefect_api import prefect_json
from tests.support.server import medic_server
from tests.support.waits import wait_for

pytestmark = pytest.mark.chaos


def _runs_of(lab: LabState, host: str) -> list[dict]:
    return prefect_json(lab.prefect_api_url, "POST", "/flow_runs/filter", json={
        "flow_runs": {"tags": {"all_": ["runbook:service-down", f"target:{host}"]}}, "limit": 20})


def _am_state(lab: LabState, host: str) -> str:
    alerts = httpx.get(f"{lab.alertmanager_url}/api/v2/alerts", timeout=10).json()
    return next((a["status"]["state"] for a in alerts
                 if a["labels"].get("alertname") == "ServiceDown" and a["labels"].get("host") == host), "none")


def test_a_firing_alert_no_webhook_delivered_is_swept_into_one_run_and_a_silenced_one_is_left_alone(
        lab: LabState, broken: BreakHost, tmp_path) -> None:
    """Nothing lost: the host whose alert never reached medic by webhook is repaired by exactly one run
    (later sweeps find that run by the alert's key); nothing acted on: the host under a silence (what
    maintenance sets) keeps its alert suppressed and gets no run, though the same sweeps saw it."""
    silenced, swept = [h.name for h in lab.hosts if h.group == "web"][:2]
    before = {h: {r["id"] for r in _runs_of(lab, h)} for h in (silenced, swept)}
    with AlertmanagerClient(lab.alertmanager_url) as am:
        silence = am.create_silence([Matcher(name="alertname", value="ServiceDown"), Matcher(name="host", value=silenced)],
                                    comment="test: maintenance on this host", duration=timedelta(minutes=10))
        try:
            broken("service-down", silenced)
            wait_for(lambda: _am_state(lab, silenced), what=f"Alertmanager to hold {silenced}'s alert, suppressed",
                     timeout=30, done=lambda state: state == "suppressed")
            with medic_server(tmp_path / "serve", env={"MEDIC_ALERT_SWEEP_S": "1", "MEDIC_FLAP_WINDOW_S": "1"}) as srv:
                broken("service-down", swept)
                seen(lab, "service-down", swept)
                new = wait_for(lambda: [r for r in _runs_of(lab, swept) if r["id"] not in before[swept]],
                               what=f"a run for {swept}'s alert, taken by the sweep", timeout=60)
                ended = final_run(lab, new[0]["id"])
                assert ended["state"]["name"] == "Recovered", (ended["state"], srv.logs()[-2000:])
                # Later sweeps (every second) still see the alert until it resolves: found by its key, not re-run.
                wait_for(lambda: _am_state(lab, swept), what=f"{swept}'s alert to resolve in Alertmanager",
                         timeout=60, done=lambda state: state == "none")
                logs = srv.logs()
            after = [r for r in _runs_of(lab, swept) if r["id"] not in before[swept]]
            assert [r["id"] for r in after] == [new[0]["id"]], f"expected one run for {swept}, got {after}"
            assert f"alert ServiceDown on {swept} (sweep" in logs and f"alert sweep: started 1 run(s) for firing alerts nothing was handling — service-down on {swept}" in logs, logs[-3000:]
            assert _am_state(lab, silenced) == "suppressed"
            assert [r for r in _runs_of(lab, silenced) if r["id"] not in before[silenced]] == [], \
                f"the sweep started a run for {silenced}, whose alert is silenced"
            assert f"on {silenced} (sweep" not in logs, logs[-3000:]
        finally:
            am.expire_silence(silence)
