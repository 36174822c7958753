"""PostgreSQL failover and rejoin end to end against a lab of their own (`--with db`).

Every lab test takes the `cluster` fixture: before and after it — pass or fail — the cluster is put
back to healthy (one primary routed, one standby streaming, see tests/support/pg_cluster.py), so no
test depends on another's leftovers or on the order they run in. Which node is primary is read from
the endpoint, never assumed: a test that fails over leaves the roles swapped, and the next failover
runs the other way (pg-2 → pg-1).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.failover import failover as failover_flow
from medic.clients.postgres import direct_check, write_through
from medic.core.runbook import find_runbook, load_runbook
from medic.errors import LabError, RunbookError
from flows.rejoin import rejoin as rejoin_flow
from medic.orchestration.runs import FlowRunOutcome, run_flow_now
from medic.core.report import Outcome
from medic.procedures.failover import FailoverReport, read_route
from medic.settings import get_settings
from medic_lab import faults
from medic_lab.fault_record import read_record
from medic_lab.postgres import PgPorts, pg_data, psql
from medic_lab.processes import process_gone
from medic_lab.state import LabState
from tests.support.flows import metric
from tests.support.pg_approvals import APPROVE, REJECT, approver, run_and_decide
from tests.support.pg_invariant import failover_invariant
from tests.support.pg_cluster import (cluster as _cluster, db_lab as pg_db_lab, failover, rejoin, restore_cluster,
                                      roles, seen_down, streaming, wait_cluster_healthy)
from tests.support.waits import wait_for

BASE_PORT = int(os.environ.get("MEDIC_TEST_DB_LAB_BASE_PORT", "27000"))
SCRAPE_S = 1.0  # medic_lab/monitoring.py: scrape_interval


@pytest.fixture(scope="module")
def db_lab() -> Iterator[LabState]:
    """A small lab of its own with the 2-node PostgreSQL cluster, always stopped at the end."""
    with pg_db_lab(BASE_PORT, {"db": True}) as state:
        yield state


@pytest.fixture
def cluster(db_lab: LabState) -> Iterator[LabState]:
    """The db lab with a healthy cluster, put back to healthy afterwards whatever the test did."""
    restore_cluster(db_lab)
    yield db_lab
    restore_cluster(db_lab)


@pytest.fixture
def failed_over(cluster: LabState) -> tuple[str, str, FlowRunOutcome, FailoverReport]:
    """The primary was killed and the standby promoted (approved): (new primary, fenced old one, run, report)."""
    primary, standby = roles()
    faults.break_host(cluster, "pg-primary-down", primary)
    seen_down(cluster, primary)
    run, report = failover([APPROVE])
    assert report.outcome is Outcome.PROMOTED, report.summary
    return standby, primary, run, report


def restart(lab: LabState, host: str) -> None:
    faults.fix_host(lab, "pg-primary-down", host)
    wait_for(lambda: direct_check(f"127.0.0.1:{PgPorts.of(lab).nodes[host]}"), what=f"{host} to answer",
             timeout=30, done=lambda check: check.answered)


# --- the runbook spec ---------------------------------------------------------------------------


def test_failover_kind_needs_its_section(tmp_path: Path) -> None:
    source = Path(get_settings().runbooks_dir / "postgres-failover.yaml").read_text()
    bad = tmp_path / "postgres-failover.yaml"
    bad.write_text(source.split("\nfailover:\n")[0] + "\n")
    with pytest.raises(RunbookError, match="a 'failover' section exactly when kind is failover"):
        load_runbook(bad)


# --- against the lab ----------------------------------------------------------------------------


def test_healthy_primary_is_not_needed(cluster: LabState) -> None:
    primary, _ = roles()
    run, report = failover()
    assert report.outcome is Outcome.NOT_NEEDED, report.summary
    assert run.state_type == "COMPLETED" and run.state_name == "NotNeeded"
    assert report.detection.direct.answered and report.approval is None and report.fence is None
    assert roles()[0] == primary


def test_a_scrape_failure_alone_does_not_start_a_failover(cluster: LabState) -> None:
    primary, _ = roles()
    faults.break_host(cluster, "pg-exporter-down", primary)
    wait_for(lambda: metric(cluster, f'up{{job="postgres",host="{primary}"}}'), what="the scrape failure",
             timeout=30, done=lambda samples: any(v == 0 for _, v in samples))
    run, report = failover()
    assert report.outcome is Outcome.NOT_NEEDED, report.summary
    assert primary in report.detection.prometheus.matching  # Prometheus alone would have said "down"
    assert report.detection.direct.answered and "scrape problem" in report.summary
    assert report.diagnosis is None and roles()[0] == primary


def test_reject_changes_nothing(cluster: LabState) -> None:
    primary, standby = roles()
    faults.break_host(cluster, "pg-primary-down", primary)
    seen_down(cluster, primary)
    run, report = failover([REJECT])
    assert report.outcome is Outcome.REJECTED, report.summary
    assert run.state_name == "Rejected" and report.approval.approvers == [approver()]
    assert report.fence is None and report.promote is None
    assert read_route(_cluster()).servers == {primary: "ready", standby: "maint"}
    assert psql(cluster.host(standby), "SELECT pg_is_in_recovery()") == "t"
    assert not (cluster.host(primary).root / "run" / "pg.fenced").exists()
    restart(cluster, primary)  # the old primary, untouched by the run, simply starts again
    assert wait_cluster_healthy(cluster) == (primary, standby)


def test_replica_lag_over_the_limit_is_refused_without_override(cluster: LabState) -> None:
    primary, standby = roles()
    limit = find_runbook("postgres-failover", get_settings().runbooks_dir).failover.max_lag_bytes
    faults.break_host(cluster, "pg-replica-lag", standby)
    # ~30 MB of WAL the standby receives but does not replay (the fixture drops the table)
    psql(cluster.host(primary), "CREATE TABLE lag_fill AS SELECT g, repeat('x', 600) AS pad "
                                "FROM generate_series(1, 45000) g", timeout=60)
    faults.break_host(cluster, "pg-primary-down", primary)
    seen_down(cluster, primary)
    run, report = failover([APPROVE])
    assert report.outcome is Outcome.REFUSED, report.summary
    assert run.state_type == "FAILED" and run.state_name == "Refused"
    assert report.diagnosis.behind_bytes > limit and report.diagnosis.chosen.replay_paused
    assert "allow_lag" in report.summary and report.approval is None  # nobody was even asked
    assert read_route(_cluster()).primary == primary
    assert psql(cluster.host(standby), "SELECT pg_is_in_recovery()") == "t"


def test_two_concurrent_failovers_one_runs(cluster: LabState) -> None:
    primary, _ = roles()
    faults.break_host(cluster, "pg-primary-down", primary)

    async def both() -> tuple[FlowRunOutcome, FlowRunOutcome]:
        asking, second_done = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(run_and_decide(failover_flow, {"reason": "first"}, [REJECT],
                                                   asking=asking, gate=second_done))
        # The first run asks its human while holding the cluster's slot; only then the second starts.
        await asyncio.wait_for(asking.wait(), timeout=120)
        second = await run_flow_now(failover_flow, {"reason": "second"})
        second_done.set()
        return (await first)[0], second

    seen_down(cluster, primary)
    first, second = asyncio.run(both())
    assert second.result.outcome is Outcome.ALREADY_RUNNING, second.result.summary
    assert second.state_name == "AlreadyRunning" and "already running" in second.result.summary
    assert first.result.outcome is Outcome.REJECTED
    assert roles()[0] == primary


def test_killed_primary_is_replaced_and_clients_rerouted(cluster: LabState) -> None:
    primary, standby = roles()
    before = write_through(_cluster().endpoint)
    assert before.ok and before.server_port == PgPorts.of(cluster).nodes[primary]
    since = datetime.now(UTC)
    with failover_invariant(cluster) as watch:  # clients write throughout; never two primaries
        watch.flowing()
        faults.break_host(cluster, "pg-primary-down", primary)
        seen_down(cluster, primary)
        run, report = failover([APPROVE])
        watch.report = report
        watch.flowing(node=standby)
    assert report.outcome is Outcome.PROMOTED, report.summary
    assert run.state_type == "COMPLETED" and run.state_name == "Promoted"
    assert report.old_primary == primary and report.new_primary == standby
    assert report.fence.confirmed and report.approval.decision == "approved"
    assert report.diagnosis.at_risk_bytes is not None  # a figure for the human (the invariant holds it to it)
    assert read_route(_cluster()).servers == {primary: "maint", standby: "ready"}
    after = write_through(_cluster().endpoint)
    assert after.ok and after.server_port == PgPorts.of(cluster).nodes[standby]
    wait_for(lambda: metric(cluster, f'medic_pg_in_recovery{{host="{standby}"}}'),
             what=f"Prometheus to show {standby} as primary", timeout=30,
             done=lambda samples: samples == [] or samples[0][1] == 0)
    stages = [e.stage for e in report.timeline]
    assert stages.index("approval") < stages.index("fence") < stages.index("promote") < stages.index("route")
    # its incident timeline, against the fault injector's own record of the kill
    (kill,) = [e for e in read_record(cluster, since=since) if e.action == "break" and e.host == primary]
    times, steps = report.incident, {s.stage: s for s in report.stages}
    assert times is not None and list(steps) == ["detect", "diagnose", "recheck", "fence", "promote", "route",
                                                 "verify"], report.stages
    assert times.impact is not None, times  # the exporter's next scrape after the kill said pg_up 0 (or up 0)
    assert kill.began - timedelta(seconds=0.2) <= times.impact <= kill.at + timedelta(seconds=2 * SCRAPE_S + 0.2), \
        (kill, times)
    assert times.recovered == steps["verify"].ended and times.human_decision == report.approval.decided_at
    assert times.impact < times.run_started < steps["fence"].started < times.recovered <= times.resolved
    assert f"| recovered | {times.recovered.strftime('%H:%M:%S.%f')[:-3]} |" in report.to_markdown()
    # the fenced old primary refuses to come back as a primary
    with pytest.raises(LabError, match="fenced"):
        faults.fix_host(cluster, "pg-primary-down", primary)


def test_rejoin_of_the_current_primary_is_refused(cluster: LabState) -> None:
    primary, _ = roles()
    run, report = rejoin(primary)
    assert report.outcome is Outcome.REFUSED and f"cannot rejoin {primary}" in report.summary


def test_rejoin_makes_the_old_primary_stream_from_the_new_one(
        cluster: LabState, failed_over: tuple[str, str, FlowRunOutcome, FailoverReport]) -> None:
    primary, old, _, _ = failed_over
    run, report = rejoin(old, [APPROVE])
    assert report.outcome is Outcome.REJOINED, report.summary
    assert [a.decision for a in report.asks] == ["approved"], report.asks  # a rejoin asks a human
    assert run.state_name == "Rejoined" and report.rejoin.reported["method"] in ("pg_rewind", "pg_basebackup")
    assert streaming(cluster, primary, old)
    assert psql(cluster.host(old), "SELECT pg_is_in_recovery()") == "t"
    assert not (cluster.host(old).root / "run" / "pg.fenced").exists()
    assert wait_cluster_healthy(cluster) == (primary, old)
    _, again = rejoin(old)  # idempotent: already streaming — nothing to do, nobody asked
    assert again.outcome is Outcome.REJOINED and again.rejoin is None and again.asks == [], again.summary
    assert "already streams" in again.summary


def test_hung_primary_is_fenced_before_promotion_then_fails_back(cluster: LabState) -> None:
    """A failover from a SIGSTOPped primary, then the old primary rejoins as the standby."""
    primary, standby = roles()
    hung_pid = int((pg_data(cluster.host(primary)) / "postmaster.pid").read_text().split()[0])
    with failover_invariant(cluster) as watch:  # clients write throughout; never two primaries
        watch.flowing()
        faults.break_host(cluster, "pg-primary-hang", primary)
        seen_down(cluster, primary)
        run, report = failover([APPROVE])
        watch.report = report
        watch.flowing(node=standby)
    assert report.outcome is Outcome.PROMOTED, report.summary
    assert report.diagnosis.primary.process == "hung"
    assert report.fence.confirmed and "killed the hung postmaster" in report.fence.stop_detail
    stages = [e.stage for e in report.timeline]
    assert stages.index("fence") < stages.index("promote")
    # Killed: gone, or a zombie until the lab's reaper waits for it (PID 1 here reaps nothing).
    wait_for(lambda: process_gone(hung_pid), what=f"the fenced postmaster {hung_pid} to be gone", timeout=10)
    faults.fix_host(cluster, "pg-primary-hang", primary)  # SIGCONT: there is nothing left to wake up
    assert not direct_check(f"127.0.0.1:{PgPorts.of(cluster).nodes[primary]}").answered
    assert write_through(_cluster().endpoint).server_port == PgPorts.of(cluster).nodes[standby]
    _, back = rejoin(primary, [APPROVE])
    assert back.outcome is Outcome.REJOINED, back.summary
    assert wait_cluster_healthy(cluster) == (standby, primary)


def test_unreachable_primary_is_not_promoted_over_without_an_override(cluster: LabState) -> None:
    """The old primary's machine is gone (no SSH): fencing cannot be confirmed, so the standby is not
    promoted — nobody is even asked — unless the run says allow_unfenced, and then the report says so."""
    primary, standby = roles()
    faults.break_host(cluster, "pg-primary-down", primary)
    faults.break_host(cluster, "host-down", primary)
    seen_down(cluster, primary)
    run, report = failover([APPROVE])
    assert report.outcome is Outcome.REFUSED, report.summary
    assert run.state_name == "Refused" and "allow_unfenced" in report.summary
    assert not report.diagnosis.primary.ssh_reachable
    assert report.approval is None and report.fence is None and report.promote is None
    assert read_route(_cluster()).servers == {primary: "ready", standby: "maint"}
    assert psql(cluster.host(standby), "SELECT pg_is_in_recovery()") == "t"

    # With the override asked: shown on the request; then the fence fails (no SSH) and promoting
    # without it is asked again, showing the failure — the first approval never covers it.
    run, report = failover([APPROVE, APPROVE], allow_unfenced=True)
    assert report.outcome is Outcome.PROMOTED, report.summary
    assert run.state_name == "Promoted" and report.approval.decision == "approved"
    assert [a.key for a in report.asks] == ["failover-1", "fence-failed"], report.asks
    assert "override asked: promote without fencing" in report.asks[0].risk
    assert f"fencing {primary} FAILED" in report.asks[1].title + report.asks[1].risk
    assert any(o.startswith("OVERRIDE allow_unfenced") for o in report.overrides), report.overrides
    assert any(o.startswith("OVERRIDE promote without fencing") for o in report.overrides), report.overrides
    assert not report.fence.stopped and report.fence.endpoint_removed  # clients can't reach it either way
    assert read_route(_cluster()).servers == {primary: "maint", standby: "ready"}
    assert write_through(_cluster().endpoint).server_port == PgPorts.of(cluster).nodes[standby]
    faults.fix_host(cluster, "host-down", primary)  # sshd back; its postgres stays down
    _, back = rejoin(primary, [APPROVE])
    assert back.outcome is Outcome.REJOINED, back.summary
    assert wait_cluster_healthy(cluster) == (standby, primary)


def test_rejoin_takes_only_a_node_of_the_cluster(cluster: LabState) -> None:
    """The rejoin deployment's `host` must be a db node: anything else is bad input, before any change."""
    run = asyncio.run(run_flow_now(rejoin_flow, {"host": "web-1"}))
    assert run.state_type == "FAILED" and "'web-1' is not a node of cluster" in (run.message or ""), run.message


def test_a_rejected_rejoin_changes_nothing(cluster: LabState) -> None:
    """A rejoin deletes data in its fallback, so it asks first; a rejection leaves the node as it was."""
    _, standby = roles()
    faults.break_host(cluster, "pg-primary-down", standby)  # a standby that does not stream any more
    run, report = rejoin(standby, [REJECT])
    assert report.outcome is Outcome.REJECTED and run.state_name == "Rejected", report.summary
    assert report.rejoin is None and [a.key for a in report.asks] == ["rejoin"], report.asks
    assert "data dir may be deleted" in report.asks[0].risk
    assert not (cluster.host(standby).root / "run" / "pg.fenced").exists()  # not even fenced
    assert (pg_data(cluster.host(standby)) / "PG_VERSION").exists()  # its data dir is still there


def test_what_counts_as_changed_evidence_after_an_approval() -> None:
    """Figures the human did not see ask again; a standby that merely caught up in replay does not."""
    from medic.clients.postgres import NodeState
    from medic.procedures.failover import Decision, Evidence, FailoverDiagnosis

    def diag(received: int, replayed: int, candidate: str = "pg-2", writable: list[str] | None = None) -> Evidence:
        d = FailoverDiagnosis(primary=NodeState(host="pg-1", ssh_reachable=True, process="stopped"),
                              standbys=[NodeState(host=candidate, ssh_reachable=True, answered=True, in_recovery=True,
                                                  received_lsn=received, replayed_lsn=replayed)],
                              candidate=candidate, wal_end=1000, writable=writable or [])
        return Evidence.of(d, Decision())

    approved = diag(900, 800)
    assert approved.changes(diag(900, 850)) == []  # replay caught up: less risk, same decision
    assert approved.changes(diag(900, 700)) == ["the standby is now 300 bytes behind in replay (approved: 200 bytes)"]
    assert approved.changes(diag(950, 800)) == ["potential data loss is now 50 bytes (approved: 100 bytes)"]
    assert "the standby to promote is now pg-3 (approved: pg-2)" in approved.changes(diag(900, 800, "pg-3"))
    assert approved.changes(diag(900, 800, writable=["pg-3"])) == [
        "nodes answering as writable primary: pg-3 (approved: none)"]
