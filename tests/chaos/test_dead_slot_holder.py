"""A run that died holding the remediation slot: its lease keeps the slot (Prefect: ≤ 300 s), the alert's
run ends AlreadyRunning, and once the slot is free the alert's resend starts the run that repairs.

The dead holder is a lease this test takes on the slot through Prefect's REST API and never renews (what
a killed `medic run` or harness leaves); giving it back stands for its lapse. A real `medic serve`
subprocess (the chaos package's: `MEDIC_ALREADY_RUNNING_RETRY_S` = 2 s) on the session lab.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from medic.orchestration.locks import ensure_concurrency_limit, remediation_lock_name
from medic_lab.state import LabState
from tests.support.chaos import final_run, post_alert
from tests.support.lab_health import broken, seen  # noqa: F401 (fixtures)
from tests.support.lab_health import Inject as BreakHost
from tests.support.server import MedicServer, alert_payload
from tests.support.waits import wait_for

pytestmark = pytest.mark.chaos


@pytest.fixture
def dead_holder(lab: LabState) -> Iterator[Callable[[str], Callable[[], None]]]:
    """`hold(slot)` takes the slot with a lease nobody renews; returns its lapse (release now). Every
    lease taken is released at teardown, pass or fail: a held slot would refuse later tests' runs."""
    leases: list[str] = []

    def release(lease_id: str) -> None:
        if lease_id in leases:
            httpx.post(f"{lab.prefect_api_url}/v2/concurrency_limits/decrement-with-lease", timeout=10,
                       json={"lease_id": lease_id}).raise_for_status()
            leases.remove(lease_id)

    def hold(slot: str) -> Callable[[], None]:
        asyncio.run(ensure_concurrency_limit(slot, 1))
        answer = httpx.post(f"{lab.prefect_api_url}/v2/concurrency_limits/increment-with-lease", timeout=10,
                            json={"names": [slot], "slots": 1, "mode": "concurrency", "lease_duration": 600})
        answer.raise_for_status()
        lease_id = answer.json()["lease_id"]
        leases.append(lease_id)
        return lambda: release(lease_id)

    yield hold
    for lease_id in list(leases):
        release(lease_id)


def test_a_dead_holders_lease_ends_the_run_already_running_and_the_resend_repairs_once_it_lapses(
        lab: LabState, server: MedicServer, broken: BreakHost, dead_holder: Callable[[str], Callable[[], None]]) -> None:
    """Nothing lost: the alert that met a slot held by a dead run is not "already handled" for good —
    while the slot is held its run ends AlreadyRunning having done nothing; after the lease lapses the
    same alert sent again starts one new run that repairs the host; a further resend starts nothing."""
    host = [h.name for h in lab.hosts if h.group == "web"][-3]
    lapse = dead_holder(remediation_lock_name("service-down", host))
    broken("service-down", host)
    seen(lab, "service-down", host)
    payload = alert_payload("ServiceDown", host, fingerprint=f"chaos-busy-{uuid.uuid4().hex[:8]}",
                            starts_at="2026-11-23T04:00:00Z")
    first = post_alert(server, payload)
    assert first["result"] == "started", first
    refused = final_run(lab, first["flow_run_id"])
    assert refused["state"]["name"] == "AlreadyRunning", (refused["state"], server.logs()[-2000:])
    assert "another remediation" in (refused["state"]["message"] or ""), refused["state"]

    lapse()
    second = wait_for(lambda: post_alert(server, payload), what="the resend to start a new run (the retry wait: 2 s)",
                      timeout=30, done=lambda answer: answer["result"] not in ("duplicate", "already handled"),
                      interval=0.5)
    assert second["result"] == "started" and second["flow_run_id"] != first["flow_run_id"], second
    recovered = final_run(lab, second["flow_run_id"])
    assert recovered["state"]["name"] == "Recovered", (recovered["state"], server.logs()[-2000:])
    third = wait_for(lambda: post_alert(server, payload), what="the second resend to be answered (not a duplicate)",
                     timeout=30, done=lambda answer: answer["result"] != "duplicate", interval=0.5)
    assert third["result"] == "already handled" and third["flow_run_id"] == second["flow_run_id"], third
