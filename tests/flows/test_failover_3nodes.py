"""Failover in a 3-node cluster (`--with db3`: a primary and two standbys): no second primary, ever.

With three nodes a failover can go wrong in ways two nodes hide: a stale alert (or `/runs` request)
naming the old primary after a failover, a node someone promoted by hand, a primary that comes back
while the human decides, a fence that fails after the approval. Each test starts from a healthy
cluster and leaves it healthy (tests/support/pg_cluster.py), whatever it did.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flows.failover import failover as failover_flow
from medic.clients.postgres import direct_check, write_through
from medic.core.report import Outcome
from medic.core.runbook import find_runbook
from medic.orchestration.flow_kinds import choose
from medic.procedures.failover import read_route
from medic.settings import get_settings
from medic_lab import faults
from medic_lab.postgres import PgPorts, psql
from medic_lab.postgres_nodes import route_only
from medic_lab.state import LabState
from tests.support.pg_approvals import APPROVE, REJECT, payload, run_and_decide
from tests.support.pg_cluster import (cluster as _cluster, db_lab as pg_db_lab, failover, nodes, others,
                                      restore_cluster, roles, seen_down)
from tests.support.intake import intake_headers
from tests.support.prefect_api import prefect_json
from tests.support.server import medic_server
from tests.support.waits import wait_for

BASE_PORT = int(os.environ.get("MEDIC_TEST_DB3_LAB_BASE_PORT",
                               int(os.environ.get("MEDIC_TEST_DB_LAB_BASE_PORT", "27000")) - 1000))


@pytest.fixture(scope="module")
def db3_lab() -> Iterator[LabState]:
    with pg_db_lab(BASE_PORT, {"db3": True}) as state:
        yield state


@pytest.fixture
def cluster(db3_lab: LabState) -> Iterator[LabState]:
    restore_cluster(db3_lab)
    yield db3_lab
    restore_cluster(db3_lab)


def in_recovery(lab: LabState, node: str) -> bool:
    return psql(lab.host(node), "SELECT pg_is_in_recovery()") == "t"


def test_the_lab_runs_three_nodes(cluster: LabState) -> None:
    primary, _ = roles()
    assert sorted(nodes()) == ["pg-1", "pg-2", "pg-3"]
    assert read_route(_cluster()).servers == {primary: "ready", **{n: "maint" for n in others(primary)}}
    assert all(in_recovery(cluster, n) for n in others(primary))


def test_a_stale_alert_naming_the_old_primary_after_a_failover_makes_no_second_primary(cluster: LabState) -> None:
    primary, _ = roles()
    faults.break_host(cluster, "pg-primary-down", primary)
    seen_down(cluster, primary)
    _, report = failover([APPROVE])
    assert report.outcome is Outcome.PROMOTED, report.summary
    new = report.new_primary
    assert new in others(primary) and report.diagnosis.writable == []
    # The alert about the old primary arrives late (or `medic run`/`/runs` names it): the same
    # parameters an alert gets, and the old primary is down (fenced) — exactly what detect looks for.
    params = choose(find_runbook("postgres-failover", get_settings().runbooks_dir), primary, reason="alert").parameters
    assert params["primary"] == primary
    run, stale = failover([APPROVE], **{k: v for k, v in params.items() if k != "runbook"})
    assert stale.outcome is Outcome.REFUSED and run.state_name == "Refused", stale.summary
    assert f"{primary} is not the primary: the endpoint routes writes to {new}" in stale.summary
    assert stale.asks == [] and stale.fence is None and stale.promote is None  # nobody asked, nothing touched
    writable = [n for n in nodes() if direct_check(f"127.0.0.1:{PgPorts.of(cluster).nodes[n]}").in_recovery is False]
    assert writable == [new], writable
    assert write_through(_cluster().endpoint).server_port == PgPorts.of(cluster).nodes[new]


def test_a_node_promoted_by_hand_stops_the_failover(cluster: LabState) -> None:
    """The routed primary is dead, but another node already answers as a writable primary: medic
    refuses (a promotion would make a second one) and shows that node in the diagnosis."""
    primary, _ = roles()
    rogue, bystander = others(primary)
    faults.break_host(cluster, "pg-primary-down", primary)
    psql(cluster.host(rogue), "SELECT pg_promote()")
    wait_for(lambda: in_recovery(cluster, rogue), what=f"{rogue} to be promoted by hand", timeout=30,
             done=lambda still: not still)
    seen_down(cluster, primary)
    run, report = failover([APPROVE], primary=primary)
    assert report.outcome is Outcome.REFUSED and run.state_name == "Refused", report.summary
    assert report.diagnosis.writable == [rogue] and f"{rogue} answers as a writable primary" in report.summary
    assert "Answering as a writable primary" in report.to_markdown()
    assert report.asks == [] and report.fence is None and report.promote is None
    assert in_recovery(cluster, bystander) and read_route(_cluster()).primary == primary


def test_a_primary_back_during_the_approval_wait_is_not_fenced(cluster: LabState) -> None:
    primary, _ = roles()
    faults.break_host(cluster, "pg-primary-down", primary)
    seen_down(cluster, primary)

    async def scenario():  # type: ignore[no-untyped-def]
        asking, back = asyncio.Event(), asyncio.Event()
        run = asyncio.create_task(run_and_decide(failover_flow, {"reason": "primary back"}, [APPROVE],
                                                 asking=asking, gate=back))
        await asyncio.wait_for(asking.wait(), timeout=120)
        # while the human reads the card, the primary comes back and takes writes
        await asyncio.to_thread(faults.fix_host, cluster, "pg-primary-down", primary)
        await asyncio.to_thread(wait_for, lambda: write_through(_cluster().endpoint), what="a write on the primary",
                                timeout=30, done=lambda w: w.ok)
        back.set()
        return (await run)[0]

    run = asyncio.run(scenario())
    report = run.result
    assert report.outcome is Outcome.NOT_NEEDED and run.state_name == "NotNeeded", report.summary
    assert "came back while the human decided" in report.summary
    assert [a.decision for a in report.asks] == ["approved"] and report.fence is None and report.promote is None
    assert not (cluster.host(primary).root / "run" / "pg.fenced").exists()
    assert read_route(_cluster()).primary == primary and all(in_recovery(cluster, n) for n in others(primary))


def _asked_to_promote(api: str) -> str:
    """The standby the paused run asks to promote, as its approval request (the Resume form) says."""
    runs = prefect_json(api, "POST", "/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
                                                                "limit": 5})
    stored = prefect_json(api, "POST", f"/flow_runs/{runs[0]['id']}/input/filter", json={"prefix": "paused-", "limit": 50})
    found = re.search(r"promote (pg-\d)", " ".join(row["value"] for row in stored))
    assert found, stored
    return found.group(1)


def test_evidence_changed_during_the_approval_wait_is_asked_again(cluster: LabState) -> None:
    """The standby the human approved dies while they decide: medic does not promote the other one on
    that approval — it asks again, showing what changed."""
    primary, _ = roles()
    faults.break_host(cluster, "pg-primary-down", primary)
    seen_down(cluster, primary)

    async def scenario():  # type: ignore[no-untyped-def]
        asking, changed = asyncio.Event(), asyncio.Event()
        run = asyncio.create_task(run_and_decide(failover_flow, {"reason": "candidate dies"}, [APPROVE, APPROVE],
                                                 asking=asking, gate=changed))
        await asyncio.wait_for(asking.wait(), timeout=120)
        approved = await asyncio.to_thread(_asked_to_promote, cluster.prefect_api_url)
        await asyncio.to_thread(faults.break_host, cluster, "pg-primary-down", approved)
        changed.set()
        return approved, (await run)[0]

    approved, run = asyncio.run(scenario())
    report = run.result
    other = next(n for n in others(primary) if n != approved)
    assert report.outcome is Outcome.PROMOTED and report.new_primary == other, report.summary
    assert [a.key for a in report.asks] == ["failover-1", "failover-2"], report.asks
    assert "ASKED AGAIN" in report.asks[1].title and f"promote {other}" in report.asks[1].title
    assert f"the standby to promote is now {other} (approved: {approved})" in report.asks[1].risk
    assert write_through(_cluster().endpoint).server_port == PgPorts.of(cluster).nodes[other]


def test_a_fence_failing_after_approval_asks_again_showing_the_failure(cluster: LabState) -> None:
    primary, _ = roles()
    faults.break_host(cluster, "pg-primary-down", primary)
    faults.break_host(cluster, "pg-fence-fails", primary)
    seen_down(cluster, primary)
    try:
        run, report = failover([APPROVE, REJECT])
        assert report.outcome is Outcome.REJECTED and run.state_name == "Rejected", report.summary
        assert [a.key for a in report.asks] == ["failover-1", "fence-failed"], report.asks
        assert f"fencing {primary} FAILED" in report.asks[1].title and "lab fault pg-fence-fails" in report.asks[1].risk
        assert "override asked: promote without fencing" in report.asks[1].risk
        assert not report.fence.confirmed and report.promote is None and "NOT promoted" in report.summary
        assert all(in_recovery(cluster, n) for n in others(primary))
    finally:  # the failed fence left the endpoint with nobody ready: route the old primary again
        route_only(PgPorts.of(cluster), primary)


def test_overrides_and_runs_from_outside_pass_the_same_gate(
        cluster: LabState, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Someone starts the failover deployment through Prefect's API with allow_unfenced: the run still
    asks a human, the request says which override was asked, and a rejection changes nothing. Then
    `POST /runs` names a node the endpoint does not route writes to: refused."""
    primary, _ = roles()
    faults.break_host(cluster, "pg-primary-down", primary)
    seen_down(cluster, primary)
    api = cluster.prefect_api_url
    with medic_server(tmp_path_factory.mktemp("failover-serve")) as server:
        deployment = wait_for(lambda: prefect_json(api, "POST", "/deployments/filter", json={"deployments": {
            "name": {"any_": ["postgres-failover"]}}}), what="the postgres-failover deployment", timeout=60,
            done=bool, interval=0.5)[0]
        run = prefect_json(api, "POST", f"/deployments/{deployment['id']}/create_flow_run", json={
            "parameters": {"allow_unfenced": True, "reason": "someone with API access"}})
        paused = wait_for(lambda: prefect_json(api, "GET", f"/flow_runs/{run['id']}")["state"],
                          what=f"run {run['id']} to ask a human", timeout=120,
                          done=lambda s: s["type"] in ("PAUSED", "COMPLETED", "FAILED", "CRASHED"), interval=0.5)
        assert paused["type"] == "PAUSED", paused
        key = paused["state_details"]["pause_key"]
        stored = prefect_json(api, "POST", f"/flow_runs/{run['id']}/input/filter", json={"prefix": "paused-", "limit": 50})
        shown = " ".join(json.dumps(json.loads(row["value"])) for row in stored)
        assert "override asked: promote without fencing the old primary" in shown, shown[:2000]
        answer = prefect_json(api, "POST", f"/flow_runs/{run['id']}/resume",
                              json={"run_input": payload(REJECT, run["id"], key)})
        assert answer["status"] == "ACCEPT", answer
        final = wait_for(lambda: prefect_json(api, "GET", f"/flow_runs/{run['id']}")["state"],
                         what=f"run {run['id']} to end", timeout=60,
                         done=lambda s: s["type"] in ("COMPLETED", "FAILED", "CRASHED"), interval=0.5)
        # `POST /runs` (what `medic run postgres-failover --target NODE` sends) naming a node that is not
        # the routed primary: refused before anything is looked at or changed.
        standby = others(primary)[0]
        with httpx.stream("POST", f"{server.url}/runs", json={"runbook": "postgres-failover", "target": standby},
                          headers={"content-type": "application/json", **intake_headers()}, timeout=120) as r:
            assert r.status_code == 200, r.read()
            lines = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert final["name"] == "Rejected", final
    done = lines[-1]
    assert done["type"] == "done" and done["state_name"] == "Refused", done
    assert f"{standby} is not the primary: the endpoint routes writes to {primary}" in done["message"], done
    assert read_route(_cluster()).primary == primary and all(in_recovery(cluster, n) for n in others(primary))
    assert Path(cluster.host(primary).root / "run" / "pg.fenced").exists() is False
