"""PostgreSQL failover and rejoin end to end against a lab of their own (`--with db`).

The tests run in file order against one cluster and each leaves it healthy (one primary routed, one
standby streaming), so whichever node is primary is read from the endpoint, never assumed. Later
tests fail over *back* (pg-2 → pg-1), so the whole procedure runs twice in a row.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from medic.errors import LabError, RunbookError
from medic.procedures.failover import FailoverOutcome as Outcome, FailoverReport, load_cluster, read_route
from medic.core.inventory import load_inventory
from medic_lab import control, faults
from medic_lab.postgres import PgPorts, pg_data, psql
from medic_lab.state import LabState
from medic.clients.postgres import direct_check, write_through
from medic.orchestration.runtime import FlowRunOutcome, resume_with_input, run_flow_now
from medic.core.runbook import find_runbook, load_runbook
from medic.orchestration.runtime import point_prefect_at
from medic.settings import get_settings

BASE_PORT = int(os.environ.get("MEDIC_TEST_DB_LAB_BASE_PORT", "27000"))
APPROVE = {"decision": "approve", "approver": "test-sre", "via": "cli"}
REJECT = {"decision": "reject", "approver": "test-sre", "comment": "not now", "via": "cli"}
_ENV = ("MEDIC_LAB_DIR", "MEDIC_LAB_BASE_PORT", "PREFECT_API_URL")


@pytest.fixture(scope="module")
def db_lab() -> Iterator[LabState]:
    """A small lab of its own with the PostgreSQL cluster, always stopped at the end."""
    saved = {k: os.environ.get(k) for k in _ENV}
    lab_dir = Path(tempfile.mkdtemp(prefix="medic-test-db-", dir="/tmp"))
    lab_dir.chmod(0o755)
    os.environ.update(MEDIC_LAB_DIR=str(lab_dir), MEDIC_LAB_BASE_PORT=str(BASE_PORT))
    get_settings.cache_clear()
    try:
        state = control.up(lab_dir, hosts=1, base_port=BASE_PORT, options={"db": True}, with_prefect=True,
                           webhook_url="http://127.0.0.1:9/unused")
        # The environment only: a prefect `temporary_settings` entered across this yield is not
        # undone at teardown, and every later test module would talk to this (stopped) lab.
        point_prefect_at(state.prefect_api_url)
        yield state
    finally:
        # Back to the session lab's Prefect first: switching flushes what this lab's Prefect is owed.
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        get_settings.cache_clear()
        if saved["PREFECT_API_URL"]:
            point_prefect_at(saved["PREFECT_API_URL"])
        control.down(lab_dir)
        shutil.rmtree(lab_dir, ignore_errors=True)


# --- helpers ------------------------------------------------------------------------------------


def _cluster():
    return load_cluster(find_runbook("postgres-failover", get_settings().runbooks_dir), load_inventory())


def roles() -> tuple[str, str]:
    """(primary, standby) as the endpoint routes them now."""
    primary = read_route(_cluster()).primary
    assert primary in ("pg-1", "pg-2"), read_route(_cluster())
    return primary, ("pg-2" if primary == "pg-1" else "pg-1")


def prom(lab: LabState, query: str) -> list[tuple[dict[str, str], float]]:
    data = httpx.get(f"{lab.prometheus_url}/api/v1/query", params={"query": query}).json()["data"]["result"]
    return [(r["metric"], float(r["value"][1])) for r in data]


def wait_for(what: str, predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def seen_down(lab: LabState, host: str) -> None:
    wait_for(f"Prometheus to see {host} down", lambda: any(
        v == 0 for _, v in prom(lab, f'min by (host) ({{__name__=~"up|pg_up",job="postgres",host="{host}"}})')))


def streaming(lab: LabState, primary: str, standby: str) -> bool:
    said = psql(lab.host(primary), "SELECT string_agg(application_name, ',') FROM pg_stat_replication "
                                   "WHERE state = 'streaming'")
    return standby in said.split(",")


def assert_healthy(lab: LabState) -> None:
    primary, standby = roles()
    wait_for(f"{standby} to stream from {primary}", lambda: streaming(lab, primary, standby))
    wait_for("Prometheus to see both nodes up", lambda: len([v for _, v in prom(
        lab, 'min by (host) ({__name__=~"up|pg_up",job="postgres"})') if v == 1]) == 2)


async def _run(flow: Any, params: dict[str, Any], decisions: list[dict[str, Any]],
               asking: asyncio.Event | None = None, gate: asyncio.Event | None = None) -> FlowRunOutcome:
    """Run a flow in-process; answer each approval pause with the next decision (the 'click').

    `asking` is set once the run asks its human (it holds the cluster's slot by then); the answers
    wait for `gate` when one is given."""
    from medic.core.progress import add_listener

    run_ids: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def on_entry(entry: Any, recorded: bool) -> None:
        if recorded and entry.stage == "approval" and "medic approve " in entry.message:
            loop.call_soon_threadsafe(run_ids.put_nowait, entry.message.split("medic approve ", 1)[1].split("`")[0])

    async def answer() -> None:
        run_id = await run_ids.get()
        if asking is not None:
            asking.set()
        if gate is not None:
            await gate.wait()
        for decision in decisions:
            for _ in range(100):
                result = await resume_with_input(run_id, decision)
                if result.status.value != "not_paused":
                    break
                await asyncio.sleep(0.1)

    remove = add_listener(on_entry)
    answering = asyncio.create_task(answer())
    try:
        return await run_flow_now(flow, params)
    finally:
        remove()
        answering.cancel()


def failover(decisions: list[dict[str, Any]] | None = None, **params: Any) -> tuple[FlowRunOutcome, FailoverReport]:
    from flows.failover import failover as flow

    outcome = asyncio.run(_run(flow, params, decisions or []))
    assert isinstance(outcome.result, FailoverReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result


def rejoin(host: str) -> tuple[FlowRunOutcome, FailoverReport]:
    from flows.failover import rejoin as flow

    outcome = asyncio.run(run_flow_now(flow, {"host": host}))
    assert isinstance(outcome.result, FailoverReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result


def restart(lab: LabState, host: str) -> None:
    faults.fix_host(lab, "pg-primary-down", host)
    wait_for(f"{host} to answer", lambda: direct_check(f"127.0.0.1:{PgPorts.of(lab).nodes[host]}").answered)


# --- the runbook spec ---------------------------------------------------------------------------


def test_failover_kind_needs_its_section(tmp_path: Path) -> None:
    source = Path(get_settings().runbooks_dir / "postgres-failover.yaml").read_text()
    bad = tmp_path / "postgres-failover.yaml"
    bad.write_text(source.split("\nfailover:\n")[0] + "\n")
    with pytest.raises(RunbookError, match="a 'failover' section exactly when kind is failover"):
        load_runbook(bad)


# --- against the lab ----------------------------------------------------------------------------


def test_healthy_primary_is_not_needed(db_lab: LabState) -> None:
    primary, _ = roles()
    run, report = failover()
    assert report.outcome is Outcome.NOT_NEEDED, report.summary
    assert run.state_type == "COMPLETED" and run.state_name == "NotNeeded"
    assert report.detection.direct.answered and report.approval is None and report.fence is None
    assert roles()[0] == primary


def test_a_scrape_failure_alone_does_not_start_a_failover(db_lab: LabState) -> None:
    primary, _ = roles()
    faults.break_host(db_lab, "pg-exporter-down", primary)
    try:
        wait_for("the scrape failure", lambda: any(v == 0 for _, v in prom(
            db_lab, f'up{{job="postgres",host="{primary}"}}')))
        run, report = failover()
    finally:
        faults.fix_host(db_lab, "pg-exporter-down", primary)
    assert report.outcome is Outcome.NOT_NEEDED, report.summary
    assert primary in report.detection.prometheus.matching  # Prometheus alone would have said "down"
    assert report.detection.direct.answered and "scrape problem" in report.summary
    assert report.diagnosis is None and roles()[0] == primary
    assert_healthy(db_lab)


def test_reject_changes_nothing(db_lab: LabState) -> None:
    primary, standby = roles()
    faults.break_host(db_lab, "pg-primary-down", primary)
    try:
        seen_down(db_lab, primary)
        run, report = failover([REJECT])
        assert report.outcome is Outcome.REJECTED, report.summary
        assert run.state_name == "Rejected" and report.approval.approvers == ["test-sre"]
        assert report.fence is None and report.promote is None
        assert read_route(_cluster()).servers == {primary: "ready", standby: "maint"}
        assert psql(db_lab.host(standby), "SELECT pg_is_in_recovery()") == "t"
        assert not (db_lab.host(primary).root / "run" / "pg.fenced").exists()
    finally:
        restart(db_lab, primary)
    assert_healthy(db_lab)


def test_replica_lag_over_the_limit_is_refused_without_override(db_lab: LabState) -> None:
    primary, standby = roles()
    limit = find_runbook("postgres-failover", get_settings().runbooks_dir).failover.max_lag_bytes
    faults.break_host(db_lab, "pg-replica-lag", standby)
    try:
        # ~30 MB of WAL the standby receives but does not replay
        psql(db_lab.host(primary), "CREATE TABLE lag_fill AS SELECT g, repeat('x', 600) AS pad "
                                   "FROM generate_series(1, 45000) g", timeout=60)
        faults.break_host(db_lab, "pg-primary-down", primary)
        seen_down(db_lab, primary)
        run, report = failover([APPROVE])
        assert report.outcome is Outcome.REFUSED, report.summary
        assert run.state_type == "FAILED" and run.state_name == "Refused"
        assert report.diagnosis.behind_bytes > limit and report.diagnosis.chosen.replay_paused
        assert "allow_lag" in report.summary and report.approval is None  # nobody was even asked
        assert read_route(_cluster()).primary == primary
        assert psql(db_lab.host(standby), "SELECT pg_is_in_recovery()") == "t"
    finally:
        faults.fix_host(db_lab, "pg-replica-lag", standby)
        restart(db_lab, primary)
        psql(db_lab.host(primary), "DROP TABLE IF EXISTS lag_fill")
    assert_healthy(db_lab)


def test_two_concurrent_failovers_one_runs(db_lab: LabState) -> None:
    from flows.failover import failover as flow

    primary, _ = roles()
    faults.break_host(db_lab, "pg-primary-down", primary)

    async def both() -> tuple[FlowRunOutcome, FlowRunOutcome]:
        asking, second_done = asyncio.Event(), asyncio.Event()

        first = asyncio.create_task(_run(flow, {"reason": "first"}, [REJECT], asking, second_done))
        await asyncio.wait_for(asking.wait(), timeout=120)
        second = await run_flow_now(flow, {"reason": "second"})
        second_done.set()
        return await first, second

    try:
        seen_down(db_lab, primary)
        first, second = asyncio.run(both())
    finally:
        restart(db_lab, primary)
    assert second.result.outcome is Outcome.ALREADY_RUNNING, second.result.summary
    assert second.state_name == "AlreadyRunning" and "already running" in second.result.summary
    assert first.result.outcome is Outcome.REJECTED
    assert roles()[0] == primary
    assert_healthy(db_lab)


def test_killed_primary_is_replaced_and_clients_rerouted(db_lab: LabState) -> None:
    primary, standby = roles()
    before = write_through(_cluster().endpoint)
    assert before.ok and before.server_port == PgPorts.of(db_lab).nodes[primary]
    faults.break_host(db_lab, "pg-primary-down", primary)
    seen_down(db_lab, primary)
    run, report = failover([APPROVE])
    assert report.outcome is Outcome.PROMOTED, report.summary
    assert run.state_type == "COMPLETED" and run.state_name == "Promoted"
    assert report.old_primary == primary and report.new_primary == standby
    assert report.fence.confirmed and report.approval.decision == "approved"
    assert report.diagnosis.at_risk_bytes == 0  # asynchronous, but nothing was being written
    assert read_route(_cluster()).servers == {primary: "maint", standby: "ready"}
    after = write_through(_cluster().endpoint)
    assert after.ok and after.server_port == PgPorts.of(db_lab).nodes[standby]
    wait_for("Prometheus to show the new primary", lambda: prom(
        db_lab, f'medic_pg_in_recovery{{host="{standby}"}}') == [] or prom(
        db_lab, f'medic_pg_in_recovery{{host="{standby}"}}')[0][1] == 0)
    stages = [e.stage for e in report.timeline]
    assert stages.index("approval") < stages.index("fence") < stages.index("promote") < stages.index("route")
    # the fenced old primary refuses to come back as a primary
    with pytest.raises(LabError, match="fenced"):
        faults.fix_host(db_lab, "pg-primary-down", primary)


def test_rejoin_of_the_current_primary_is_refused(db_lab: LabState) -> None:
    primary, _ = roles()
    run, report = rejoin(primary)
    assert report.outcome is Outcome.REFUSED and f"cannot rejoin {primary}" in report.summary


def test_rejoin_makes_the_old_primary_stream_from_the_new_one(db_lab: LabState) -> None:
    primary, old = roles()
    run, report = rejoin(old)
    assert report.outcome is Outcome.REJOINED, report.summary
    assert run.state_name == "Rejoined" and report.rejoin.reported["method"] in ("pg_rewind", "pg_basebackup")
    assert streaming(db_lab, primary, old)
    assert psql(db_lab.host(old), "SELECT pg_is_in_recovery()") == "t"
    assert not (db_lab.host(old).root / "run" / "pg.fenced").exists()
    assert_healthy(db_lab)
    _, again = rejoin(old)  # idempotent: already streaming
    assert again.outcome is Outcome.REJOINED and again.rejoin.reported["action"] == "none"


def test_hung_primary_is_fenced_before_promotion_then_fails_back(db_lab: LabState) -> None:
    """Second failover in a row (back to the first primary), from a SIGSTOPped primary, then rejoin."""
    primary, standby = roles()
    hung_pid = int((pg_data(db_lab.host(primary)) / "postmaster.pid").read_text().split()[0])
    faults.break_host(db_lab, "pg-primary-hang", primary)
    seen_down(db_lab, primary)
    run, report = failover([APPROVE])
    assert report.outcome is Outcome.PROMOTED, report.summary
    assert report.diagnosis.primary.process == "hung"
    assert report.fence.confirmed and "killed the hung postmaster" in report.fence.stop_detail
    stages = [e.stage for e in report.timeline]
    assert stages.index("fence") < stages.index("promote")
    assert not Path(f"/proc/{hung_pid}").exists()
    faults.fix_host(db_lab, "pg-primary-hang", primary)  # SIGCONT: there is nothing left to wake up
    assert not direct_check(f"127.0.0.1:{PgPorts.of(db_lab).nodes[primary]}").answered
    assert write_through(_cluster().endpoint).server_port == PgPorts.of(db_lab).nodes[standby]
    _, back = rejoin(primary)
    assert back.outcome is Outcome.REJOINED, back.summary
    assert_healthy(db_lab)
    assert roles() == (standby, primary)


def test_unreachable_primary_is_not_promoted_over_without_an_override(db_lab: LabState) -> None:
    """The old primary's machine is gone (no SSH): fencing cannot be confirmed, so the standby is not
    promoted — nobody is even asked — unless the run says allow_unfenced, and then the report says so."""
    primary, standby = roles()
    faults.break_host(db_lab, "pg-primary-down", primary)
    faults.break_host(db_lab, "host-down", primary)
    try:
        seen_down(db_lab, primary)
        run, report = failover([APPROVE])
        assert report.outcome is Outcome.REFUSED, report.summary
        assert run.state_name == "Refused" and "allow_unfenced" in report.summary
        assert not report.diagnosis.primary.ssh_reachable
        assert report.approval is None and report.fence is None and report.promote is None
        assert read_route(_cluster()).servers == {primary: "ready", standby: "maint"}
        assert psql(db_lab.host(standby), "SELECT pg_is_in_recovery()") == "t"

        run, report = failover([APPROVE], allow_unfenced=True)
        assert report.outcome is Outcome.PROMOTED, report.summary
        assert run.state_name == "Promoted" and report.approval.decision == "approved"
        assert any(o.startswith("OVERRIDE allow_unfenced") for o in report.overrides), report.overrides
        assert not report.fence.stopped and report.fence.endpoint_removed  # clients can't reach it either way
        assert read_route(_cluster()).servers == {primary: "maint", standby: "ready"}
        assert write_through(_cluster().endpoint).server_port == PgPorts.of(db_lab).nodes[standby]
    finally:
        faults.fix_host(db_lab, "host-down", primary)  # sshd back; its postgres stays down
    _, back = rejoin(primary)
    assert back.outcome is Outcome.REJOINED, back.summary
    assert_healthy(db_lab)
    assert roles() == (standby, primary)
