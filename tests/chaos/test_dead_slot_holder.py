"""A run that died holding the remediation slot: its lease keeps the slot (Prefect: ≤ 300 s), the alert's
run ends AlreadyRunning, and once the slot is free the alert's resend starts the run that repairs.

The dead holder is a lease this test takes on the slot through Prefect's REST API and never renews (what
a killed `medic run` or harness leaves); giving it back stands for its lapse. A real `medic serve`
subprocess (the chaos package's: `MEDIC_ALREADY_RUNNING_RETRY_S` = 2 s) on the session lab.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from medic.orchestration.locks import ensure_concurrency_limit, remediation_lock_name
from medic.orchestration.prefect_rest import call
from medic_lab.state import LabState
from tests.support.chaos import final_run, fire, resend_repairs_once
from tests.support.lab_health import broken  # noqa: F401 (fixture)
from tests.support.lab_health import Inject as BreakHost
from tests.support.server import MedicServer

pytestmark = pytest.mark.chaos


@pytest.fixture
def dead_holder(lab: LabState) -> Iterator[Callable[[str], Callable[[], None]]]:
    """`hold(slot)` takes the slot with a lease nobody renews; returns its lapse (release now). Every
    lease taken is released at teardown, pass or fail: a held slot would refuse later tests' runs.
    Through medic's Prefect REST helper: a loaded Prefect on SQLite answers 503 now and then (CI)."""
    leases: list[str] = []
    held: set[str] = set()

    def release(lease_id: str) -> None:
        if lease_id in leases:
            call("POST", "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease_id},
                 what="give back the dead holder's lease", retry_for=30)
            leases.remove(lease_id)

    def hold(slot: str) -> Callable[[], None]:
        asyncio.run(ensure_concurrency_limit(slot, 1))
        held.add(slot)
        granted = call("POST", "/v2/concurrency_limits/increment-with-lease", retry_for=30, what=f"hold {slot}",
                       json={"names": [slot], "slots": 1, "mode": "concurrency", "lease_duration": 300})
        lease_id = str(granted["lease_id"])
        leases.append(lease_id)
        return lambda: release(lease_id)

    yield hold
    for lease_id in list(leases):
        release(lease_id)
    for slot in held:  # and a lease granted to an attempt whose answer was lost: gone with its limit
        call("DELETE", f"/v2/concurrency_limits/{slot}", what=f"delete {slot}", retry_for=30)


def test_a_dead_holders_lease_ends_the_run_already_running_and_the_resend_repairs_once_it_lapses(
        lab: LabState, server: MedicServer, broken: BreakHost, dead_holder: Callable[[str], Callable[[], None]]) -> None:
    """Nothing lost: the alert that met a slot held by a dead run is not "already handled" for good —
    while the slot is held its run ends AlreadyRunning having done nothing; after the lease lapses the
    same alert sent again starts one new run that repairs the host; a further resend starts nothing."""
    host = [h.name for h in lab.hosts if h.group == "web"][-3]
    lapse = dead_holder(remediation_lock_name("service-down", host))
    payload, first = fire(lab, server, broken, "service-down", host, "ServiceDown", tag="busy",
                          starts_at="2026-11-23T04:00:00Z")
    refused = final_run(lab, first["flow_run_id"])
    assert refused["state"]["name"] == "AlreadyRunning", (refused["state"], server.logs()[-2000:])
    assert "another remediation" in (refused["state"]["message"] or ""), refused["state"]

    lapse()
    resend_repairs_once(lab, server, payload, first, passing=("duplicate", "already handled"))  # the 2 s wait
