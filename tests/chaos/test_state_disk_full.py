"""The state disk full when an alert arrives: Alertmanager is told to retry, and the retry repairs.

The lab's state disk (`medic_lab.dependency_faults.state_disk`: a tmpfs under the lab dir) holds the
lab's Prefect home and SQLite database; the `medic serve` of this test keeps its state dir and its
Ansible run dirs (TMPDIR) there too. `inject("state-disk-full")` fills it; its `fix` frees it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import httpx
import pytest

from medic.orchestration.audit_store import read_records
from medic_lab import faults
from medic_lab.dependency_faults import state_disk
from medic_lab.state import LabState
from tests.support.chaos import FINAL, Inject, final_run
from tests.support.intake import intake_headers
from tests.support.lab_health import broken, seen  # noqa: F401 (fixtures)
from tests.support.lab_health import Inject as BreakHost
from tests.support.prefect_api import prefect_json
from tests.support.server import alert_payload, cancel_leftover_runs, medic_server
from tests.support.waits import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def runs_since(lab: LabState, since: datetime, host: str) -> list[dict]:
    """Flow runs created since `since` whose target is `host` (any state)."""
    runs = prefect_json(lab.prefect_api_url, "POST", "/flow_runs/filter", json={
        "limit": 100, "sort": "EXPECTED_START_TIME_DESC"})
    return [r for r in runs if r["created"] and datetime.fromisoformat(r["created"]) >= since
            and (r.get("parameters") or {}).get("target") == host]


def test_state_disk_full_alert_gets_a_5xx_and_the_resend_once_space_returns_repairs(
        lab: LabState, broken: BreakHost, inject: Inject, tmp_path) -> None:
    """Nothing lost: while the state disk is full the alert is refused up front with a 503 naming the
    full disk (Alertmanager sends it again) and no run of it is created, so none is left Pending;
    /healthz says degraded and why; once space returns the resend starts one run that recovers the
    service, its audit records are whole (each parses, the action's result is there), and medic serve
    kept serving throughout."""
    if not lab.with_prefect:
        pytest.skip("this session's lab runs without its own Prefect")
    host = [h.name for h in lab.hosts if h.group == "web"][-2]
    mount = state_disk(lab)
    cancel_leftover_runs(lab.prefect_api_url)
    env = {"MEDIC_FLAP_WINDOW_S": "1", "TMPDIR": str(mount / "tmp")}
    with medic_server(mount / "medic", env=env) as server:
        broken("service-down", host)
        seen(lab, "service-down", host)
        since = datetime.now(timezone.utc)
        said = inject("state-disk-full")
        assert "filled the state disk" in said, said
        payload = alert_payload("ServiceDown", host, fingerprint=f"chaos-disk-{uuid.uuid4().hex[:8]}",
                                starts_at="2026-11-24T00:00:00Z")
        first = httpx.post(f"{server.url}/alertmanager", json=payload, headers=intake_headers(), timeout=60)
        print(f"\nwith the state disk full: {first.status_code} {first.text[:300]}")
        assert first.status_code == 503 and first.json()["started"] == 0, (first.status_code, first.text)
        assert "disk is full" in first.text and str(mount) in first.text, first.text
        assert not runs_since(lab, since, host), "a run was created while the state disk was full"
        health = httpx.get(f"{server.url}/healthz", params={"verbose": 1}, headers=intake_headers(), timeout=30)
        assert (health.status_code, health.json()["status"]) == (503, "degraded"), health.text
        assert "disk is full" in health.json()["disk"], health.text

        assert "freed" in faults.fix_host(lab, "state-disk-full")
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
        stuck = wait_for(lambda: [(r["id"], r["state_type"]) for r in runs_since(lab, since, host)
                                  if r["state_type"] not in FINAL],
                         what=f"no run on {host} from the full-disk alert left non-final", timeout=60,
                         done=lambda left: not left, ignore=httpx.HTTPError)
        assert not stuck
        second = wait_for(lambda: httpx.post(f"{server.url}/alertmanager", json=payload, headers=intake_headers(),
                                             timeout=60),
                          what="the resend to be recorded once space returned", timeout=60,
                          done=lambda r: r.status_code == 200, interval=1.0)
        answer = second.json()["alerts"][0]
        assert answer["result"] == "started", answer
        recovered = final_run(lab, answer["flow_run_id"])
        assert recovered["state"]["name"] == "Recovered", (recovered["state"], server.logs()[-3000:])
        records = read_records(flow_run_id=answer["flow_run_id"])
        actions = [r for r in records if r.kind == "action"]
        assert actions and all(r.result for r in actions), records
        left = [(r["id"], r["state_type"]) for r in runs_since(lab, since, host) if r["state_type"] not in FINAL]
        assert not left, f"runs left non-final: {left}"
        assert server.proc.poll() is None, server.logs()[-3000:]
