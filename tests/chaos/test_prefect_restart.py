"""The Prefect server restarted (same port, same database) while a run waits for a human's approval.

Issue 10's missing test: "Restart the Prefect server while an approval waits → the approval still
works". A real `medic serve` on the session lab; the session's own Prefect is the one restarted.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from medic.orchestration.locks import remediation_lock_name
from medic.orchestration.pause import ResumeStatus
from medic_lab.state import LabState
from tests.support.approvals import answer_as
from tests.support.chaos import FINAL, Inject, final_run, fire
from tests.support.lab_health import broken  # noqa: F401 (fixture)
from tests.support.lab_health import Inject as BreakHost
from tests.support.prefect_api import prefect_json, prefect_request
from tests.support.server import MedicServer
from tests.support.waits import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def slots(lab: LabState, name: str) -> int:
    answer = prefect_request(lab.prefect_api_url, "GET", f"/v2/concurrency_limits/{name}")
    return int(answer.json()["active_slots"]) if answer.status_code == 200 else 0


def test_an_approval_waiting_across_a_prefect_restart_still_works(
        lab: LabState, server: MedicServer, broken: BreakHost, inject: Inject) -> None:
    """Nothing lost: the paused run is still Paused after the restart (not Crashed, not cancelled by a
    lost lease), the approval given afterwards is accepted and the run recovers the host, and its
    remediation slot is held once while it waits and given back at the end."""
    host = [h.name for h in lab.hosts if h.group == "web"][0]
    _, answer = fire(lab, server, broken, "disk-full", host, "DiskAlmostFull", tag="restart",
                     starts_at="2026-11-23T01:00:00Z")
    run_id = answer["flow_run_id"]
    run = lambda: prefect_json(lab.prefect_api_url, "GET", f"/flow_runs/{run_id}")  # noqa: E731
    paused = wait_for(run, what=f"run {run_id} to wait for approval", timeout=180, ignore=httpx.HTTPError,
                      done=lambda r: r["state"]["type"] in ("PAUSED", *FINAL))
    assert paused["state"]["type"] == "PAUSED", (paused["state"], server.logs()[-3000:])
    lock = remediation_lock_name("disk-full", host)
    assert slots(lab, lock) == 1

    said = inject("prefect-restart")
    after = run()
    assert after["state"]["type"] == "PAUSED" and after["state"]["id"] == paused["state"]["id"], (said, after["state"])
    assert slots(lab, lock) == 1, "the restart lost or doubled the held slot"

    outcome = asyncio.run(answer_as(run_id, {"decision": "approve", "approver": "alice"}))
    assert outcome.status is ResumeStatus.ACCEPTED, outcome
    ended = final_run(lab, run_id, timeout=180)
    assert ended["state"]["name"] == "Recovered", (ended["state"], server.logs()[-3000:])
    assert wait_for(lambda: slots(lab, lock), what=f"{lock}'s slot to be given back", timeout=30,
                    done=lambda held: held == 0) == 0
