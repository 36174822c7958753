"""The failover tests' PostgreSQL cluster: who is primary, is it healthy, run the flows, put it back.

Every failover test leaves the cluster healthy — one primary routed by the endpoint, the other node
streaming from it, both scraped — through `restore_cluster` in a fixture, which runs whether the
test passed or not: it undoes every fault, restarts a routed primary that is down, and rejoins a
node that is not streaming with the product's own rejoin flow. Which node is primary is always read
from the endpoint, never assumed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from flows.failover import failover as failover_flow, rejoin as rejoin_flow
from medic.clients.postgres import direct_check
from medic.core.inventory import load_inventory
from medic.core.runbook import find_runbook
from medic.orchestration.runs import FlowRunOutcome, run_flow_now
from medic.core.report import Outcome
from medic.procedures.failover import Cluster, FailoverReport, load_cluster, read_route
from medic.settings import get_settings
from medic_lab import faults
from medic_lab.postgres import PgPorts, psql
from medic_lab.state import LabState
from tests.support.flows import metric, run_and_answer
from tests.support.waits import wait_for

NODES = ("pg-1", "pg-2")
#: Faults of a db host that `restore_cluster` undoes first (each repair is idempotent).
REPAIRS = ("host-down", "pg-primary-hang", "pg-exporter-down")
#: Replication and scrapes catch up within seconds; generous for a loaded 2-core machine.
HEALTHY_WITHIN_S = 60


def cluster() -> Cluster:
    return load_cluster(find_runbook("postgres-failover", get_settings().runbooks_dir), load_inventory())


def other(node: str) -> str:
    return NODES[1] if node == NODES[0] else NODES[0]


def roles() -> tuple[str, str]:
    """(primary, standby) as the endpoint routes them now."""
    route = read_route(cluster())
    assert route.primary in NODES, f"the endpoint routes to no single primary: {route}"
    return route.primary, other(route.primary)


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
    if primary not in NODES:
        return [f"the endpoint routes to no single primary: {route}"]
    standby = other(primary)
    problems = [] if route.servers == {primary: "ready", standby: "maint"} else [f"route {route.servers}"]
    if not answers(lab, primary):
        return [*problems, f"primary {primary} does not answer"]
    if not streaming(lab, primary, standby):
        problems.append(f"{standby} is not streaming from {primary} (streaming: {streaming_standbys(lab, primary)})")
    up = {m.get("host"): v for m, v in metric(lab, 'min by (host) ({__name__=~"up|pg_up",job="postgres"})')}
    problems += [f"{n}: Prometheus up={up.get(n, 'missing')}" for n in NODES if up.get(n) != 1]
    return problems


def wait_cluster_healthy(lab: LabState, *, timeout: float = HEALTHY_WITHIN_S) -> tuple[str, str]:
    """Until one primary is routed, the other node streams from it and Prometheus sees both up."""
    wait_for(lambda: cluster_problems(lab), what="the PostgreSQL cluster to be healthy", timeout=timeout,
             done=lambda found: not found, interval=0.3)
    return roles()


def restore_cluster(lab: LabState) -> tuple[str, str]:
    """Whatever a test did: faults undone, the routed primary up, the other node streaming from it."""
    for node in NODES:
        for fault in REPAIRS:
            faults.fix_host(lab, fault, node)
    primary, standby = roles()
    if not answers(lab, primary):
        assert not fenced(lab, primary), (f"the routed primary {primary} is fenced and down: the test stopped "
                                          f"between fence and reroute; restart the db lab")
        faults.fix_host(lab, "pg-primary-down", primary)
        wait_for(lambda: answers(lab, primary), what=f"{primary} to answer after its restart", timeout=30)
    if answers(lab, standby) and psql(lab.host(standby), "SELECT pg_is_in_recovery()") == "t":
        faults.fix_host(lab, "pg-replica-lag", standby)
    psql(lab.host(primary), "DROP TABLE IF EXISTS lag_fill")
    if not streaming(lab, primary, standby):
        _, report = rejoin(standby)
        assert report.outcome is Outcome.REJOINED, f"restoring the cluster: {report.summary}"
    return wait_cluster_healthy(lab)


def failover(decisions: list[dict[str, Any]] | None = None, **params: Any) -> tuple[FlowRunOutcome, FailoverReport]:
    """The failover flow in-process; each approval pause is answered with the next decision."""
    outcome, _ = asyncio.run(run_and_answer(failover_flow, params, decisions or []))
    assert isinstance(outcome.result, FailoverReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result


def rejoin(host: str) -> tuple[FlowRunOutcome, FailoverReport]:
    outcome = asyncio.run(run_flow_now(rejoin_flow, {"host": host}))
    assert isinstance(outcome.result, FailoverReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result
