"""PostgreSQL failover and rejoin: the flagship runbook `postgres-failover` as two Prefect flows.

failover: detect (Prometheus for the configured time *and* a direct query) → diagnose (SSH: is the
host there, is postgres there, every node's LSNs; the writes a promotion would lose) → decide
(refuse a standby beyond the lag limit or an unfenceable primary, unless a human overrides) →
approve (a human sees the potential data loss) → fence (endpoint → maint, stop/kill the old primary)
→ promote (Ansible) → route the endpoint → verify (a write through the endpoint; Prometheus).

rejoin: rebuild the old primary as a standby of the new one (pg_rewind, else a base backup).

One failover or rejoin per cluster at a time (a Prefect global concurrency limit); a second request
ends at once as "already running". The order approve → fence is deliberate: a rejection changes
nothing, and nothing is promoted before the old primary is fenced.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.states import State
from pydantic import Field

from medic.procedures import failover as fo
from medic.approval.gate import ApprovalRequest, request_decision
from medic.core.inventory import Inventory, load_inventory
from medic.clients.postgres import format_lsn
from medic.orchestration.ending import final_state
from medic.orchestration.locks import ensure_concurrency_limit, exclusive_slot, remediation_lock_name
from medic.orchestration.run_log import tell
from medic.core.progress import Timeline
from medic.core.report import ApprovalDecision, Outcome, artifact_key, utcnow
from medic.clients.prometheus import PrometheusClient
from medic.core.runbook import Runbook, find_runbook
from medic.settings import get_settings
from medic.clients.ssh import SSHSession

STAGE = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="detect", timeout_seconds=120, **STAGE)
def detect_task(spec: Runbook, cluster: fo.Cluster, primary: str, prom: PrometheusClient) -> fo.Detection:
    return fo.detect(spec, cluster, cluster.member(primary), prom)


@task(name="diagnose", timeout_seconds=120, **STAGE)
def diagnose_task(cluster: fo.Cluster, primary: str, ssh: SSHSession, prom: PrometheusClient) -> fo.FailoverDiagnosis:
    return fo.diagnose(cluster, cluster.member(primary), ssh, prom)


@task(name="fence", timeout_seconds=120, **STAGE)
def fence_task(cluster: fo.Cluster, primary: str, ssh: SSHSession) -> fo.FenceResult:
    return fo.fence(cluster, cluster.member(primary), ssh)


@task(name="promote", timeout_seconds=600, **STAGE)  # no retries: a failed promotion is reported, not repeated
def promote_task(spec: Runbook, cluster: fo.Cluster, standby: str, inventory: Inventory) -> fo.StepResult:
    return fo.promote(spec, cluster.member(standby), inventory, get_settings().playbooks_dir)


@task(name="route", timeout_seconds=60, **STAGE)
def route_task(cluster: fo.Cluster, new_primary: str) -> fo.RouteResult:
    return fo.reroute(cluster, cluster.member(new_primary))


@task(name="verify", timeout_seconds=300, **STAGE)
def verify_task(spec: Runbook, cluster: fo.Cluster, new_primary: str, prom: PrometheusClient) -> fo.Verification:
    return fo.verify(spec, cluster, cluster.member(new_primary), prom)


@task(name="rejoin", timeout_seconds=900, **STAGE)
def rejoin_task(spec: Runbook, cluster: fo.Cluster, old: str, source: str, inventory: Inventory,
                ssh: SSHSession) -> tuple[fo.StepResult, fo.NodeState]:
    return fo.rejoin(spec, cluster, cluster.member(old), cluster.member(source), inventory,
                     get_settings().playbooks_dir, ssh)


async def _finish(report: fo.FailoverReport, timeline: Timeline, outcome: Outcome, summary: str) -> State:
    """Record the outcome everywhere at once: timeline, artifact, log, and the flow's final state
    (whose message is the same outcome line)."""
    report.outcome, report.summary = outcome, summary
    loud = outcome in (Outcome.PROMOTED_NOT_ROUTED, Outcome.PROMOTE_FAILED, Outcome.PROMOTED_NOT_VERIFIED)
    tell(timeline, "report", f"{outcome.state_name}: {summary}",
         level=logging.ERROR if loud else logging.INFO if outcome.success else logging.WARNING)
    report.timeline, report.finished_at = timeline.entries, utcnow()
    await create_markdown_artifact(key=artifact_key(report.flow, report.cluster), markdown=report.to_markdown(),
                                   description=f"{report.flow} of {report.cluster}: {outcome.value}")
    return final_state(outcome, summary, report)


@contextlib.asynccontextmanager
async def _one_per_cluster(spec: Runbook, cluster: fo.Cluster) -> AsyncIterator[bool]:
    """Hold the cluster's one slot (failover and rejoin share it); yield False when it is taken."""
    lock = remediation_lock_name(spec.name, cluster.name)
    await ensure_concurrency_limit(lock, 1)
    async with exclusive_slot(lock) as got:
        yield got


def _already(cluster: fo.Cluster) -> str:
    return f"a failover or rejoin of {cluster.name} is already running; nothing was done"


def _setup(runbook: str) -> tuple[Runbook, Inventory, fo.Cluster, str, Timeline]:
    settings = get_settings()
    spec = find_runbook(runbook, settings.runbooks_dir)
    inventory = load_inventory()
    return spec, inventory, fo.load_cluster(spec, inventory), str(get_run_context().flow_run.id), Timeline()


@flow(name="failover", flow_run_name="failover via {runbook}", persist_result=False, log_prints=False)
async def failover(
    runbook: Annotated[str, Field(description="a kind: failover runbook in runbooks/")] = "postgres-failover",
    primary: Annotated[str | None, Field(description="the node believed down; empty: the endpoint's current primary")] = None,
    allow_lag: Annotated[bool, Field(description="OVERRIDE: promote even if the standby is beyond the lag limit")] = False,
    allow_unfenced: Annotated[bool, Field(description="OVERRIDE: promote even if the old primary cannot be fenced "
                                                    "(risk: two primaries)")] = False,
    reason: Annotated[str, Field(description="why this run started — shown in the report")] = "manual run",
) -> State:
    """Fail the cluster over from a dead or hung primary to its best standby, with a human's approval."""
    spec, inventory, cluster, run_id, timeline = _setup(runbook)
    report = fo.FailoverReport(runbook=spec.name, cluster=cluster.name, outcome=Outcome.REFUSED, summary="",
                               reason=reason, flow_run_id=run_id)
    async with _one_per_cluster(spec, cluster) as got:
        if not got:
            return await _finish(report, timeline, Outcome.ALREADY_RUNNING, _already(cluster))
        return await _failover(spec, inventory, cluster, report, timeline, primary=primary, allow_lag=allow_lag,
                               allow_unfenced=allow_unfenced)


async def _failover(spec: Runbook, inventory: Inventory, cluster: fo.Cluster, report: fo.FailoverReport,
                    timeline: Timeline, *, primary: str | None, allow_lag: bool, allow_unfenced: bool) -> State:
    settings = get_settings()
    route = fo.read_route(cluster)
    old = primary or route.primary
    if old is None:
        return await _finish(report, timeline, Outcome.REFUSED,
                             f"the endpoint routes to no single primary ({route.servers or route.error}); "
                             f"name the failed primary with the `primary` parameter")
    cluster.member(old)
    report.old_primary = old
    tell(timeline, "start", f"{cluster.name}: primary {old}, endpoint {cluster.endpoint}; why: {report.reason}")
    with PrometheusClient(settings.prometheus_url) as prom, SSHSession() as ssh:
        timeline.announce("detect", f"is {old} down for {spec.detect.hold:g} s in Prometheus, and silent to a query?")
        report.detection = d = detect_task(spec, cluster, old, prom)
        prom_down = old in d.prometheus.matching
        tell(timeline, "detect", f"{old}: Prometheus says {'down' if prom_down else 'up'} "
                                 f"(`{d.prometheus.query}` {d.prometheus.condition}); direct query: {d.direct.detail}"
                                 f" → {'primary confirmed down' if d.confirmed else 'not down, nothing to do'}")
        if not d.confirmed:
            why = ("it answered a direct query — a scrape problem, not a dead primary" if prom_down else
                   "Prometheus does not see it down for long enough")
            return await _finish(report, timeline, Outcome.NOT_NEEDED, f"{old} is not down: {why}; nothing changed")

        timeline.announce("diagnose", "node states, LSNs, writes at risk")
        report.diagnosis = diag = diagnose_task(cluster, old, ssh, prom)
        tell(timeline, "diagnose", f"{old}: ssh {'ok' if diag.primary.ssh_reachable else 'UNREACHABLE'}, "
                                   f"{diag.primary.process}; candidate {diag.candidate or 'none'}; {diag.risk()}")
        decision = fo.decide(diag, max_lag_bytes=spec.failover.max_lag_bytes, allow_lag=allow_lag,
                             allow_unfenced=allow_unfenced)
        report.overrides = decision.overrides
        tell(timeline, "decide", f"refusing: {decision.refusal}" if decision.refusal else
             f"promote {diag.candidate}, fence {old}" + (f" ({'; '.join(decision.overrides)})" if decision.overrides
                                                         else "") + " → asking a human",
             level=logging.WARNING if decision.refusal or decision.overrides else logging.INFO)
        if decision.refusal:
            return await _finish(report, timeline, Outcome.REFUSED, f"not promoting: {decision.refusal}; nothing changed")
        new = diag.candidate
        assert new is not None
        report.new_primary = new

        report.approval = approval = await request_decision(ApprovalRequest(
            title=f"PostgreSQL failover of {cluster.name}: promote {new}, fence {old}"
                  + (" [OVERRIDE]" if decision.overrides else ""),
            runbook=spec.name, targets=[old, new],
            evidence=f"{d.prometheus.query} {d.prometheus.condition} held on {old}; direct query to "
                     f"{cluster.address(cluster.member(old))}: {d.direct.detail}",
            diagnosis="\n".join(f"{s.host}: ssh {'ok' if s.ssh_reachable else 'unreachable'}, {s.process}, "
                                f"received {format_lsn(s.received_lsn)}, replayed {format_lsn(s.replayed_lsn)}"
                                for s in [diag.primary, *diag.standbys]),
            planned_action=f"fence {old} (endpoint server → maint, stop it over SSH; a hung one is killed), "
                           f"run {spec.recover.playbook} on {new}, route {cluster.endpoint} → {new}",
            risk="; ".join([diag.risk(), *decision.overrides]),
            why=f"runbook {spec.name}: a failover always asks a human — promoting a standby may lose writes"
                + (" and an OVERRIDE was requested" if decision.overrides else ""),
            flow_run_id=report.flow_run_id or "",
        ), spec.approval, timeline=timeline)
        if decision.overrides and approval.decision is ApprovalDecision.APPROVED:
            report.approval = approval = approval.model_copy(update={"comment": "; ".join(
                [c for c in [approval.comment] if c] + [f"approved with {o}" for o in decision.overrides])})
        if approval.decision is not ApprovalDecision.APPROVED:
            outcome = (Outcome.REJECTED if approval.decision is ApprovalDecision.REJECTED
                       else Outcome.APPROVAL_TIMED_OUT)
            who = f" by {', '.join(approval.approvers)}" if approval.approvers else ""
            why = f" ({approval.comment})" if approval.comment else ""
            return await _finish(report, timeline, outcome, f"failover {approval.decision}{who}{why}; nothing changed")

        timeline.announce("fence", f"fencing {old}")
        report.fence = f = fence_task(cluster, old, ssh)
        tell(timeline, "fence", f"{old}: {f.stop_detail}; {f.endpoint_detail} → "
                                + ("fenced" if f.confirmed else "NOT confirmed"),
             level=logging.INFO if f.confirmed else logging.ERROR)
        if not f.confirmed:
            if not allow_unfenced:
                return await _finish(report, timeline, Outcome.REFUSED,
                                     f"fencing {old} could not be confirmed ({f.stop_detail}; {f.endpoint_detail}); "
                                     f"{new} was NOT promoted — clients may have no primary: check {old} by hand")
            report.overrides.append(f"OVERRIDE allow_unfenced: promoted although fencing failed ({f.stop_detail})")

        timeline.announce("promote", f"promoting {new}")
        report.promote = p = promote_task(spec, cluster, new, inventory)
        tell(timeline, "promote", f"{spec.recover.playbook} on {new}: {p.detail} ({p.duration_s:.1f} s) {p.reported}"
                                  f" → {'promoted' if p.ok else 'FAILED'}",
             level=logging.INFO if p.ok else logging.ERROR)
        if not p.ok:
            return await _finish(report, timeline, Outcome.PROMOTE_FAILED,
                                 f"promoting {new} failed ({p.detail}); {old} is fenced: the cluster has NO primary")

        report.route = r = route_task(cluster, new)
        tell(timeline, "route", f"{cluster.endpoint}: {r.detail} → {'routed to ' + new if r.routed else 'NOT routed'}",
             level=logging.INFO if r.routed else logging.ERROR)
        if not r.routed:
            return await _finish(report, timeline, Outcome.PROMOTED_NOT_ROUTED,
                                 f"{new} is the new primary but the endpoint does NOT route to it ({r.detail}): "
                                 f"clients cannot write — set {cluster.backend}/{new} ready on {cluster.admin}")

        report.verification = v = verify_task(spec, cluster, new, prom)
        tell(timeline, "verify", f"write through {cluster.endpoint}: {v.write.detail}; Prometheus sees {new} as "
                                 f"primary: {'yes' if not v.prometheus.timed_out else 'no'} → "
                                 f"{'verified' if v.ok else 'NOT verified'}",
             level=logging.INFO if v.ok else logging.ERROR)
        if not v.ok:
            return await _finish(report, timeline, Outcome.PROMOTED_NOT_VERIFIED,
                                 f"{new} promoted and routed, but verify failed: {v.write.detail}")
        loss = diag.at_risk_bytes
        return await _finish(report, timeline, Outcome.PROMOTED,
                             f"{new} is the primary of {cluster.name}; clients write through {cluster.endpoint}; "
                             f"{old} fenced; WAL not received from {old}: "
                             f"{'unknown' if loss is None else f'{loss} bytes'}; rejoin {old} when it is back")


@flow(name="rejoin", flow_run_name="rejoin {host}", persist_result=False, log_prints=False)
async def rejoin(
    host: Annotated[str, Field(description="the old primary to rebuild as a standby of the current primary")],
    runbook: Annotated[str, Field(description="a kind: failover runbook in runbooks/")] = "postgres-failover",
    reason: Annotated[str, Field(description="why this run started — shown in the report")] = "manual run",
) -> State:
    """Rebuild an old primary as a standby of the endpoint's primary and check that it streams."""
    spec, inventory, cluster, run_id, timeline = _setup(runbook)
    report = fo.FailoverReport(flow="rejoin", runbook=spec.name, cluster=cluster.name, outcome=Outcome.REJOIN_FAILED,
                               summary="", reason=reason, flow_run_id=run_id, old_primary=host)
    cluster.member(host)
    async with _one_per_cluster(spec, cluster) as got:
        if not got:
            return await _finish(report, timeline, Outcome.ALREADY_RUNNING, _already(cluster))
        route = fo.read_route(cluster)
        source = route.primary
        if source is None or source == host:
            return await _finish(report, timeline, Outcome.REFUSED,
                                 f"cannot rejoin {host}: the endpoint's primary is {source or 'nobody'} "
                                 f"({route.servers or route.error}); nothing changed")
        report.new_primary = source
        tell(timeline, "start", f"rebuilding {host} as a standby of {source}; why: {reason}")
        with SSHSession() as ssh:
            report.rejoin, report.rejoined_state = step, state = rejoin_task(spec, cluster, host, source, inventory, ssh)
        tell(timeline, "rejoin", f"{host}: {step.detail}; {step.reported}",
             level=logging.INFO if step.ok else logging.WARNING)
        src_port = int(cluster.member(source).vars["medic_pg_port"])
        streams = state.in_recovery and state.receiver_status == "streaming" and state.sender_port == src_port
        if step.ok and streams:
            return await _finish(report, timeline, Outcome.REJOINED,
                                 f"{host} streams from {source} (method {step.reported.get('method', '?')}, "
                                 f"received {format_lsn(state.received_lsn)})")
        return await _finish(report, timeline, Outcome.REJOIN_FAILED,
                             f"{host} does not stream from {source}: {step.detail}; state {state.status_line} "
                             f"receiver {state.receiver_status}")
