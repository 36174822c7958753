"""Rejoin: rebuild an old primary (or a standby left following it) as a standby of the endpoint's primary.

Part of the `postgres-failover` runbook (deployment `postgres-rejoin`). It changes a database node and
its fallback DELETES the node's data dir (a fresh base backup when pg_rewind cannot), so it asks a
human first, whoever started it (UI, API, schedule, CLI) — unless the node already streams from the
primary, where there is nothing to do. `host` must be a node of the runbook's cluster (group `db`).
It shares the cluster's one slot with failover.
"""

from __future__ import annotations

import logging
from typing import Annotated

from prefect import flow, task
from prefect.states import State
from pydantic import Field

from flows.failover import STAGE, already_running, ask_human, finish, left_held, not_approved, one_per_cluster, setup
from medic.clients.postgres import NodeState, format_lsn, node_state
from medic.clients.ssh import SSHSession
from medic.core.inventory import Inventory
from medic.core.report import ApprovalDecision, Outcome
from medic.core.runbook import Runbook
from medic.orchestration.run_log import tell
from medic.procedures import failover as fo
from medic.settings import get_settings


@task(name="rejoin", timeout_seconds=900, **STAGE)
def rejoin_task(spec: Runbook, cluster: fo.Cluster, old: str, source: str, inventory: Inventory,
                ssh: SSHSession) -> tuple[fo.StepResult, NodeState]:
    return fo.rejoin(spec, cluster, cluster.member(old), cluster.member(source), inventory,
                     get_settings().playbooks_dir, ssh)


def _streams_from(state: NodeState, source: fo.Cluster, name: str) -> bool:
    return bool(state.in_recovery and state.receiver_status == "streaming"
                and state.sender_port == int(source.member(name).vars["medic_pg_port"]))


@flow(name="rejoin", flow_run_name="rejoin {host}", persist_result=False, log_prints=False)
async def rejoin(
    host: Annotated[str, Field(description="a node of the cluster (inventory group db) to rebuild as a standby "
                                           "of the endpoint's primary", min_length=1, max_length=64)],
    runbook: Annotated[str, Field(description="a kind: failover runbook in runbooks/")] = "postgres-failover",
    reason: Annotated[str, Field(description="why this run started — shown in the report", max_length=500)] = "manual run",
) -> State:
    """Rebuild a node as a standby of the endpoint's primary (with a human's approval) and check it streams."""
    spec, inventory, cluster, run_id, timeline = setup(runbook)
    cluster.member(host)  # a node of this cluster, or FailoverError (bad input) before anything happens
    report = fo.FailoverReport(flow="rejoin", runbook=spec.name, cluster=cluster.name, outcome=Outcome.REJOIN_FAILED,
                               summary="", reason=reason, flow_run_id=run_id, old_primary=host)
    async with one_per_cluster(spec, cluster) as got:
        if held := await left_held(spec, cluster, run_id):  # before "already running": its lease may live on
            return await finish(report, timeline, Outcome.REFUSED, held.refusal())
        if not got:
            return await finish(report, timeline, Outcome.ALREADY_RUNNING, already_running(cluster))
        route = fo.read_route(cluster)
        source = route.primary
        if source is None or source == host:
            return await finish(report, timeline, Outcome.REFUSED,
                                 f"cannot rejoin {host}: the endpoint's primary is {source or 'nobody'} "
                                 f"({route.servers or route.error}); nothing changed")
        report.new_primary = source
        tell(timeline, "start", f"rebuilding {host} as a standby of {source}; why: {reason}")
        with SSHSession() as ssh:
            before = node_state(ssh, cluster.member(host))
            if _streams_from(before, cluster, source):
                report.rejoined_state = before
                return await finish(report, timeline, Outcome.REJOINED,
                                     f"{host} already streams from {source}; nothing to do, nothing changed")
            approval = await ask_human(report, spec, fo.rejoin_request(spec, cluster, before, source, flow_run_id=run_id),
                                  timeline, "rejoin")
            if approval.decision is not ApprovalDecision.APPROVED:
                outcome, said = not_approved(approval, f"rejoin of {host}")
                return await finish(report, timeline, outcome, f"{said}; nothing changed")
            if fo.read_route(cluster).primary != source:
                return await finish(report, timeline, Outcome.REFUSED, f"the endpoint no longer routes to {source} "
                                     f"({fo.read_route(cluster).servers}); {host} was not touched")
            report.rejoin, report.rejoined_state = step, state = rejoin_task(spec, cluster, host, source, inventory, ssh)
        tell(timeline, "rejoin", f"{host}: {step.detail}; {step.reported}",
             level=logging.INFO if step.ok else logging.WARNING)
        if step.ok and _streams_from(state, cluster, source):
            return await finish(report, timeline, Outcome.REJOINED,
                                 f"{host} streams from {source} (method {step.reported.get('method', '?')}, "
                                 f"received {format_lsn(state.received_lsn)})")
        return await finish(report, timeline, Outcome.REJOIN_FAILED,
                             f"{host} does not stream from {source}: {step.detail}; state {state.status_line} "
                             f"receiver {state.receiver_status}")
