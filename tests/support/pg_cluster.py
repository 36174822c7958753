"""The failover tests' PostgreSQL cluster: who is primary, is it healthy, run the flows, put it back.

Every failover test leaves the cluster healthy — one primary routed by the endpoint, every other node
streaming from it, all scraped — through `restore_cluster` in a fixture, which runs whether the
test passed or not: it undoes every fault, restarts a routed primary that is down, and rejoins a
node that is not streaming with the product's own rejoin flow. Which node is primary is always read
from the endpoint, never assumed. Works for the 2-node (`--with db`) and 3-node (`--with db3`) lab.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flows.failover import failover as failover_flow
from flows.rejoin import rejoin as rejoin_flow
from medic.clients.postgres import direct_check
from medic.core.inventory import load_inventory
from medic.core.runbook import find_runbook
from medic.orchestration.runs import FlowRunOutcome
from medic.orchestration.telemetry import point_prefect_at
from medic.core.report import Outcome
from medic.procedures.failover import Cluster, FailoverReport, load_cluster, read_route
from medic.settings import get_settings
from medic_lab import control, faults
from medic_lab.postgres import PgPorts, psql
from medic_lab.state import LabState
from tests.support.flows import metric
from tests.support.pg_approvals import APPROVE, Answer, run_and_decide
from tests.support.waits import wait_for

#: Faults of a db host that `restore_cluster` undoes first (each repair is idempotent).
REPAIRS = ("host-down", "pg-primary-hang", "pg-exporter-down", "pg-fence-fails")
_ENV = ("MEDIC_LAB_DIR", "MEDIC_LAB_BASE_PORT", "PREFECT_API_URL", "MEDIC_APPROVAL_KEY", "MEDIC_APPROVERS_FILE")


@contextmanager
def db_lab(base_port: int, options: dict[str, bool]) -> Iterator[LabState]:
    """A small lab of its own with the PostgreSQL cluster, always stopped at the end. Approvals are
    verifiable in it: the session's approval key and directory, else a test key and a directory of one."""
    saved = {k: os.environ.get(k) for k in _ENV}
    lab_dir = Path(tempfile.mkdtemp(prefix="medic-test-db-", dir="/tmp"))
    os.environ.update(MEDIC_LAB_DIR=str(lab_dir), MEDIC_LAB_BASE_PORT=str(base_port))
    get_settings.cache_clear()
    if get_settings().approval_key is None:
        names = find_runbook("postgres-failover", get_settings().runbooks_dir).approval.approvers or ["test-sre"]
        (lab_dir / "approvers.yaml").write_text("approvers:\n" + "".join(f"  - name: {n}\n" for n in names))
        os.environ.update(MEDIC_APPROVAL_KEY="failover-tests-approval-key",
                          MEDIC_APPROVERS_FILE=str(lab_dir / "approvers.yaml"))
        get_settings.cache_clear()
    try:
        state = control.up(lab_dir, hosts=1, base_port=base_port, options=options, with_prefect=True,
                           webhook_url="http://127.0.0.1:9/unused")
        get_settings.cache_clear()  # the lab's settings.json (inventory, …) exists only now
        # A fresh Prefect (new database) may answer on a URL an earlier db lab of this session used:
        # the limits this process remembers creating there are not in it.
        from medic.orchestration import locks
        locks._KNOWN_LIMITS.clear()
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
#: Replication and scrapes catch up within seconds; generous for a loaded 2-core machine.
HEALTHY_WITHIN_S = 60


def cluster() -> Cluster:
    return load_cluster(find_runbook("postgres-failover", get_settings().runbooks_dir), load_inventory())


def nodes() -> list[str]:
    return [h.name for h in cluster().members]


def others(node: str) -> list[str]:
    return [n for n in nodes() if n != node]


def roles() -> tuple[str, str]:
    """(primary, first standby) as the endpoint routes them now."""
    route = read_route(cluster())
    assert route.primary in nodes(), f"the endpoint routes to no single primary: {route}"
    return route.primary, others(route.primary)[0]


def answers(lab: LabState, node: str) -> bool:
    return direct_check(f"127.0.0.1:{PgPorts.of(lab).nodes[node]}").answered


def fenced(lab: LabState, node: str) -> bool:
    return (lab.host(node).root / "run" / "pg.fenced").exists()


def streaming_standbys(lab: LabState, primary: str) -> list[str]:
    said = psql(lab.host(primary), "SELECT string_agg(application_name, ',') FROM pg_stat_replication "
                                   "WHERE state = 'streaming'")
    return [name for name in said.split(",") if name]


def streaming(lab: LabState, primary: str, standby: str) -> bool:
    return standby in streaming_standbys(lab, primary)


def seen_down(lab: LabState, host: str) -> None:
    query = f'min by (host) ({{__name__=~"up|pg_up",job="postgres",host="{host}"}})'
    wait_for(lambda: metric(lab, query), what=f"Prometheus to see {host} down", timeout=30,
             done=lambda samples: any(v == 0 for _, v in samples))


def cluster_problems(lab: LabState) -> list[str]:
    """What keeps the cluster from being healthy right now ([] when it is)."""
    route = read_route(cluster())
    primary = route.primary
    if primary not in nodes():
        return [f"the endpoint routes to no single primary: {route}"]
    standbys = others(primary)
    want = {primary: "ready", **{s: "maint" for s in standbys}}
    problems = [] if route.servers == want else [f"route {route.servers}"]
    if not answers(lab, primary):
        return [*problems, f"primary {primary} does not answer"]
    found = streaming_standbys(lab, primary)
    problems += [f"{s} is not streaming from {primary} (streaming: {found})" for s in standbys if s not in found]
    up = {m.get("host"): v for m, v in metric(lab, 'min by (host) ({__name__=~"up|pg_up",job="postgres"})')}
    problems += [f"{n}: Prometheus up={up.get(n, 'missing')}" for n in nodes() if up.get(n) != 1]
    return problems


def wait_cluster_healthy(lab: LabState, *, timeout: float = HEALTHY_WITHIN_S) -> tuple[str, str]:
    """Until one primary is routed, the other node streams from it and Prometheus sees both up."""
    wait_for(lambda: cluster_problems(lab), what="the PostgreSQL cluster to be healthy", timeout=timeout,
             done=lambda found: not found, interval=0.3)
    return roles()


def restore_cluster(lab: LabState) -> tuple[str, str]:
    """Whatever a test did: faults undone, the routed primary up, the other node streaming from it."""
    for node in nodes():
        for fault in REPAIRS:
            faults.fix_host(lab, fault, node)
    primary, _ = roles()
    if not answers(lab, primary):
        assert not fenced(lab, primary), (f"the routed primary {primary} is fenced and down: the test stopped "
                                          f"between fence and reroute; restart the db lab")
        faults.fix_host(lab, "pg-primary-down", primary)
        wait_for(lambda: answers(lab, primary), what=f"{primary} to answer after its restart", timeout=30)
    for standby in others(primary):
        if answers(lab, standby) and psql(lab.host(standby), "SELECT pg_is_in_recovery()") == "t":
            faults.fix_host(lab, "pg-replica-lag", standby)
    psql(lab.host(primary), "DROP TABLE IF EXISTS lag_fill")
    for standby in others(primary):
        if not streaming(lab, primary, standby):
            _, report = rejoin(standby, [APPROVE])
            assert report.outcome is Outcome.REJOINED, f"restoring the cluster: {report.summary}"
    return wait_cluster_healthy(lab)


def failover(decisions: list[Answer] | None = None, **params: Any) -> tuple[FlowRunOutcome, FailoverReport]:
    """The failover flow in-process; each approval pause is answered with the next decision."""
    outcome, _ = asyncio.run(run_and_decide(failover_flow, params, decisions or []))
    assert isinstance(outcome.result, FailoverReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result


def rejoin(host: str, decisions: list[Answer] | None = None) -> tuple[FlowRunOutcome, FailoverReport]:
    """The rejoin flow in-process (it asks a human unless the node already streams)."""
    outcome, _ = asyncio.run(run_and_decide(rejoin_flow, {"host": host}, decisions or []))
    assert isinstance(outcome.result, FailoverReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result
