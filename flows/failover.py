"""PostgreSQL failover and rejoin: the flagship runbook `postgres-failover` as two Prefect flows.

failover: detect (Prometheus for the configured time *and* a direct query) → diagnose (SSH: is the
host there, is postgres there, every node's LSNs; the writes a promotion would lose) → decide
(refuse a standby beyond the lag limit or an unfenceable primary, unless a human overrides) →
approve (a human sees the potential data loss) → fence (endpoint → maint, stop/kill the old primary)
→ promote (Ansible) → route the endpoint → verify (a write through the endpoint; Prometheus).

After the approval wait it detects and diagnoses again: not down any more → stop, nothing changed;
other figures (data loss, lag, candidate, a node answering as primary) → a fresh approval showing them.
A fence that fails after approval asks again, showing the failure; every node is asked whether it is
a writable primary right before the promotion. The named `primary` must be the one the endpoint routes.

flows/rejoin.py rebuilds the old primary as a standby of the new one (pg_rewind, else a base backup).

One failover or rejoin per cluster at a time (a Prefect global concurrency limit); a second request
ends at once as "already running". The order approve → fence is deliberate: a rejection changes
nothing, and nothing is promoted before the old primary is fenced. From the fence on the run also
keeps a durable hold on the cluster naming its step (medic.orchestration.cluster_hold): a run that dies
half-way leaves it, and every failover and rejoin is refused until `medic failover-ack` (audited).
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
from medic.orchestration.ending import final_state
from medic.orchestration.incident_record import publish_times, times_for_run
from medic.orchestration.cluster_hold import Hold, holder_live, read_hold, release, set_step
from medic.orchestration.prefect_compat import latest_lease_id
from medic.orchestration.locks import ensure_concurrency_limit, exclusive_slot, remediation_lock_name
from medic.orchestration.run_log import tell
from medic.core.progress import Timeline
from medic.core.report import ApprovalDecision, ApprovalRecord, Outcome, artifact_key, utcnow
from medic.core.timeline import IncidentTimes, StageClock
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


@task(name="recheck", timeout_seconds=60, **STAGE)
def recheck_task(spec: Runbook, cluster: fo.Cluster, primary: str, prom: PrometheusClient) -> fo.Detection:
    return fo.recheck(spec, cluster, cluster.member(primary), prom)


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


async def finish(report: fo.FailoverReport, timeline: Timeline, outcome: Outcome, summary: str) -> State:
    """Record the outcome everywhere at once: timeline, artifact, log, and the flow's final state
    (whose message is the same outcome line)."""
    report.outcome, report.summary = outcome, summary
    loud = outcome in (Outcome.PROMOTED_NOT_ROUTED, Outcome.PROMOTE_FAILED, Outcome.PROMOTED_NOT_VERIFIED)
    tell(timeline, "report", f"{outcome.state_name}: {summary}",
         level=logging.ERROR if loud else logging.INFO if outcome.success else logging.WARNING)
    report.timeline, report.finished_at = timeline.entries, utcnow()
    if report.flow == "failover" and report.detection is not None:  # an incident was looked at
        report.incident = await failover_times(report)
        await publish_times(report.incident, report.runbook, report.cluster)
    await create_markdown_artifact(key=artifact_key(report.flow, report.cluster), markdown=report.to_markdown(),
                                   description=f"{report.flow} of {report.cluster}: {outcome.value}")
    if report.flow_run_id:  # the run ended on its own and says how: its hold (if any) is given back
        await release(remediation_lock_name(report.runbook, report.cluster), report.flow_run_id)
    return final_state(outcome, summary, report)


async def failover_times(report: fo.FailoverReport) -> IncidentTimes:
    """The incident's timeline: impact from the detect query on the old primary; recovered = the end of
    the verify step that wrote through the client endpoint (the old primary itself stays down)."""
    settings = get_settings()
    spec, inventory = find_runbook(report.runbook, settings.runbooks_dir), load_inventory()
    verified = next((s.ended for s in report.stages if s.stage == "verify"), None)
    approval = report.approval
    times = await times_for_run(
        spec, [inventory.hosts[report.old_primary]] if report.old_primary in inventory.hosts else [], inventory,
        prometheus_url=settings.prometheus_url, run_started=report.started_at, stages=report.stages,
        human_decision=approval.decided_at if approval and approval.required else None,
        resolved=report.finished_at or utcnow(), recovered=verified if report.outcome is Outcome.PROMOTED else None)
    times.recovered_by = "the verify step's write through the client endpoint succeeded"
    return times


@contextlib.asynccontextmanager
async def one_per_cluster(spec: Runbook, cluster: fo.Cluster) -> AsyncIterator[bool]:
    """Hold the cluster's one slot (failover and rejoin share it); yield False when it is taken."""
    lock = remediation_lock_name(spec.name, cluster.name)
    patience = get_settings().prefect_outage_wait_s  # a Prefect restart is waited out, not a Failed run
    await ensure_concurrency_limit(lock, 1, outage_wait_s=patience)
    async with exclusive_slot(lock, outage_wait_s=patience) as got:
        yield got


def already_running(cluster: fo.Cluster) -> str:
    return f"a failover or rejoin of {cluster.name} is already running; nothing was done"


async def left_held(spec: Runbook, cluster: fo.Cluster, run_id: str) -> Hold | None:
    """The hold an interrupted failover left on the cluster (medic.orchestration.cluster_hold), if any:
    with the slot in hand, a hold of another run means that run died half-way and no human has said
    the cluster was checked since."""
    held = await read_hold(remediation_lock_name(spec.name, cluster.name))
    if held is None or held.flow_run_id == run_id or await holder_live(held):
        return None  # none, ours, or a run still going (the slot says "already running")
    return held


async def step(spec: Runbook, cluster: fo.Cluster, hold: Hold, name: str) -> None:
    """Record the step about to change the cluster in the run's durable hold (before it acts)."""
    await set_step(remediation_lock_name(spec.name, cluster.name), hold, name)


def setup(runbook: str) -> tuple[Runbook, Inventory, fo.Cluster, str, Timeline]:
    settings = get_settings()
    spec = find_runbook(runbook, settings.runbooks_dir)
    inventory = load_inventory()
    return spec, inventory, fo.load_cluster(spec, inventory), str(get_run_context().flow_run.id), Timeline()


@flow(name="failover", flow_run_name="failover via {runbook}", persist_result=False, log_prints=False)
async def failover(
    runbook: Annotated[str, Field(description="a kind: failover runbook in runbooks/")] = "postgres-failover",
    primary: Annotated[str | None, Field(description="the node believed down — it must be the one the endpoint routes "
                                                     "writes to; empty: the endpoint's current primary")] = None,
    allow_lag: Annotated[bool, Field(description="OVERRIDE: promote even if the standby is beyond the lag limit")] = False,
    allow_unfenced: Annotated[bool, Field(description="OVERRIDE: promote even if the old primary cannot be fenced "
                                                    "(risk: two primaries)")] = False,
    reason: Annotated[str, Field(description="why this run started — shown in the report")] = "manual run",
) -> State:
    """Fail the cluster over from a dead or hung primary to its best standby, with a human's approval."""
    spec, inventory, cluster, run_id, timeline = setup(runbook)
    report = fo.FailoverReport(runbook=spec.name, cluster=cluster.name, outcome=Outcome.REFUSED, summary="",
                               reason=reason, flow_run_id=run_id)
    async with one_per_cluster(spec, cluster) as got:
        if held := await left_held(spec, cluster, run_id):  # before "already running": its lease may live on
            return await finish(report, timeline, Outcome.REFUSED, held.refusal())
        if not got:
            return await finish(report, timeline, Outcome.ALREADY_RUNNING, already_running(cluster))
        lease = latest_lease_id()
        return await _failover(spec, inventory, cluster, report, timeline, primary=primary, allow_lag=allow_lag,
                               allow_unfenced=allow_unfenced, lease=str(lease) if lease else None)


#: Approvals of fence + promote in one run before it refuses: evidence that keeps changing is a finding.
MAX_ASKS = 3


async def ask_human(report: fo.FailoverReport, spec: Runbook, request: ApprovalRequest, timeline: Timeline,
               key: str) -> ApprovalRecord:
    """One approval request (its own pause key: a reused one would hand back the earlier answer)."""
    ask = fo.Ask(key=key, title=request.title, risk=request.risk or "", why=request.why)
    report.asks.append(ask)
    approval = await request_decision(request, spec.approval, timeline=timeline, pause_key=key)
    ask.decision, ask.approvers = str(approval.decision), list(approval.approvers)
    report.approval = approval
    return approval


def not_approved(approval: ApprovalRecord, what: str) -> tuple[Outcome, str]:
    outcome = Outcome.REJECTED if approval.decision is ApprovalDecision.REJECTED else Outcome.APPROVAL_TIMED_OUT
    who = f" by {', '.join(approval.approvers)}" if approval.approvers else ""
    why = f" ({approval.comment})" if approval.comment else ""
    return outcome, f"{what} {approval.decision}{who}{why}"


def _assess(spec: Runbook, cluster: fo.Cluster, old: str, ssh: SSHSession, prom: PrometheusClient, timeline: Timeline,
            clock: StageClock, *, allow_lag: bool, allow_unfenced: bool) -> tuple[fo.FailoverDiagnosis, fo.Decision]:
    timeline.announce("diagnose", "every node's state and role, LSNs, writes at risk")
    with clock.stage("diagnose"):
        diag = diagnose_task(cluster, old, ssh, prom)
    tell(timeline, "diagnose", f"{old}: ssh {'ok' if diag.primary.ssh_reachable else 'UNREACHABLE'}, "
                               f"{diag.primary.process}; writable primaries besides it: "
                               f"{', '.join(diag.writable) or 'none'}; candidate {diag.candidate or 'none'}; {diag.risk()}")
    decision = fo.decide(diag, max_lag_bytes=spec.failover.max_lag_bytes, allow_lag=allow_lag,
                         allow_unfenced=allow_unfenced)
    return diag, decision


async def _failover(spec: Runbook, inventory: Inventory, cluster: fo.Cluster, report: fo.FailoverReport,
                    timeline: Timeline, *, primary: str | None, allow_lag: bool, allow_unfenced: bool,
                    lease: str | None = None) -> State:
    settings = get_settings()
    if not primary or (primary == "primary" and "primary" not in [h.name for h in cluster.members]):
        primary = None  # the UI's empty field, or `POST /runs` without a target: the routed primary
    if primary is not None:
        cluster.member(primary)
    route = fo.read_route(cluster)
    refusal = route.refusal_for(primary)
    if refusal or route.primary is None:
        report.old_primary = primary
        return await finish(report, timeline, Outcome.REFUSED, f"not failing over: {refusal}")
    old = route.primary
    report.old_primary = old
    report.overrides_asked = asked = fo.asked_overrides(allow_lag=allow_lag, allow_unfenced=allow_unfenced)
    tell(timeline, "start", f"{cluster.name}: primary {old} (routed by {cluster.endpoint}); why: {report.reason}"
                            + (f"; {'; '.join(asked)}" if asked else ""))
    clock = StageClock(report.stages)  # each step's start and end, for the incident timeline
    with PrometheusClient(settings.prometheus_url) as prom, SSHSession() as ssh:
        timeline.announce("detect", f"is {old} down for {spec.detect.hold:g} s in Prometheus, and silent to a query?")
        with clock.stage("detect"):
            report.detection = d = detect_task(spec, cluster, old, prom)
        prom_down = old in d.prometheus.matching
        tell(timeline, "detect", f"{old}: Prometheus says {'down' if prom_down else 'up'} "
                                 f"(`{d.prometheus.query}` {d.prometheus.condition}); direct query: {d.direct.detail}"
                                 f" → {'primary confirmed down' if d.confirmed else 'not down, nothing to do'}")
        if not d.confirmed:
            why = ("it answered a direct query — a scrape problem, not a dead primary" if prom_down else
                   "Prometheus does not see it down for long enough")
            return await finish(report, timeline, Outcome.NOT_NEEDED, f"{old} is not down: {why}; nothing changed")

        approved: fo.Evidence | None = None
        changed: list[str] = []
        for n in range(1, MAX_ASKS + 2):
            diag, decision = _assess(spec, cluster, old, ssh, prom, timeline, clock, allow_lag=allow_lag,
                                     allow_unfenced=allow_unfenced)
            report.diagnosis, report.new_primary = diag, diag.candidate
            report.overrides = list(decision.overrides)
            if diag.primary_back:
                return await finish(report, timeline, Outcome.NOT_NEEDED,
                                     f"{old} answers as the primary again; nothing changed")
            if decision.refusal:
                return await finish(report, timeline, Outcome.REFUSED,
                                     f"not promoting: {decision.refusal}; nothing changed")
            if approved is not None:
                changed = approved.changes(fo.Evidence.of(diag, decision))
                tell(timeline, "recheck", "the evidence changed while the human decided: " + "; ".join(changed)
                     + " → asking again" if changed else "same figures as approved → fencing",
                     level=logging.WARNING if changed else logging.INFO)
                if not changed:
                    break
                if n > MAX_ASKS:
                    return await finish(report, timeline, Outcome.REFUSED,
                                         f"the evidence changed after each of {MAX_ASKS} approvals "
                                         f"({'; '.join(changed)}); not promoting, nothing changed")
            tell(timeline, "decide", f"promote {diag.candidate}, fence {old}"
                 + (f" ({'; '.join(decision.overrides + asked)})" if decision.overrides or asked else "")
                 + " → asking a human", level=logging.WARNING if decision.overrides or asked else logging.INFO)
            approval = await ask_human(report, spec, fo.failover_request(
                spec, cluster, old, d, diag, decision, asked, changed=changed, flow_run_id=report.flow_run_id or ""),
                timeline, f"failover-{n}")
            if approval.decision is not ApprovalDecision.APPROVED:
                outcome, said = not_approved(approval, "failover")
                return await finish(report, timeline, outcome, f"{said}; nothing changed")
            approved = fo.Evidence.of(diag, decision)
            # Minutes may have passed: is the primary still down, still the routed one?
            with clock.stage("recheck"):
                report.detection = d = recheck_task(spec, cluster, old, prom)
            tell(timeline, "recheck", f"{old} after the decision: Prometheus "
                                      f"{'down' if old in d.prometheus.matching else 'up'}, direct query: "
                                      f"{d.direct.detail}")
            if not d.confirmed:
                return await finish(report, timeline, Outcome.NOT_NEEDED,
                                     f"{old} is not down any more (direct query: {d.direct.detail}): it came back "
                                     f"while the human decided; not fenced, nothing changed")
            if refusal := fo.read_route(cluster).refusal_for(old):
                return await finish(report, timeline, Outcome.REFUSED,
                                     f"the endpoint changed while the human decided: {refusal}")
        new = diag.candidate
        assert new is not None
        report.new_primary = new
        if allow_unfenced or allow_lag:
            report.overrides.append(f"approved with {', '.join(asked)}")

        hold = Hold(flow_run_id=report.flow_run_id or "", runbook=spec.name, cluster=cluster.name, step="fence",
                    lease_id=lease)
        await step(spec, cluster, hold, "fence")  # from here on, a run that dies leaves the cluster held
        timeline.announce("fence", f"fencing {old}")
        with clock.stage("fence"):
            report.fence = f = fence_task(cluster, old, ssh)
        tell(timeline, "fence", f"{old}: {f.stop_detail}; {f.endpoint_detail} → "
                                + ("fenced" if f.confirmed else "NOT confirmed"),
             level=logging.INFO if f.confirmed else logging.ERROR)
        if not f.confirmed:
            approval = await ask_human(report, spec, fo.fence_failed_request(
                spec, cluster, old, new, f, diag, asked, flow_run_id=report.flow_run_id or ""), timeline, "fence-failed")
            if approval.decision is not ApprovalDecision.APPROVED:
                outcome, said = not_approved(approval, f"promoting {new} after fencing {old} failed:")
                return await finish(report, timeline, outcome,
                                     f"{said}; {new} was NOT promoted — {old} is not confirmed stopped "
                                     f"({f.stop_detail}); clients may have no primary: check {old} by hand")
            report.overrides.append(f"OVERRIDE promote without fencing: approved by {', '.join(approval.approvers)} "
                                    f"after fencing failed ({f.stop_detail})")

        found = fo.writable_nodes(fo.writable_check(cluster, exclude={new}))
        if found:
            return await finish(report, timeline, Outcome.REFUSED,
                                 f"{', '.join(found)} answers as a writable primary just before promoting {new}: "
                                 f"NOT promoted (it would be a second primary); check {', '.join(found)} by hand")
        return await _promote_route_verify(spec, inventory, cluster, report, timeline, prom, clock, old=old,
                                           new=new, diag=diag, hold=hold)


async def _promote_route_verify(spec: Runbook, inventory: Inventory, cluster: fo.Cluster, report: fo.FailoverReport,
                                timeline: Timeline, prom: PrometheusClient, clock: StageClock, *, old: str, new: str,
                                diag: fo.FailoverDiagnosis, hold: Hold) -> State:
    await step(spec, cluster, hold, "promote")
    timeline.announce("promote", f"promoting {new}")
    with clock.stage("promote"):
        report.promote = p = promote_task(spec, cluster, new, inventory)
    tell(timeline, "promote", f"{spec.recover.playbook} on {new}: {p.detail} ({p.duration_s:.1f} s) {p.reported}"
                              f" → {'promoted' if p.ok else 'FAILED'}",
         level=logging.INFO if p.ok else logging.ERROR)
    if not p.ok:
        return await finish(report, timeline, Outcome.PROMOTE_FAILED,
                             f"promoting {new} failed ({p.detail}); {old} is "
                             f"{'fenced' if report.fence and report.fence.confirmed else 'out of the endpoint'}: "
                             f"the cluster has NO primary")

    await step(spec, cluster, hold, "route")
    with clock.stage("route"):
        report.route = r = route_task(cluster, new)
    tell(timeline, "route", f"{cluster.endpoint}: {r.detail} → {'routed to ' + new if r.routed else 'NOT routed'}",
         level=logging.INFO if r.routed else logging.ERROR)
    if not r.routed:
        return await finish(report, timeline, Outcome.PROMOTED_NOT_ROUTED,
                             f"{new} is the new primary but the endpoint does NOT route to it ({r.detail}): "
                             f"clients cannot write — set {cluster.backend}/{new} ready on {cluster.admin}")

    await step(spec, cluster, hold, "verify")
    with clock.stage("verify"):
        report.verification = v = verify_task(spec, cluster, new, prom)
    tell(timeline, "verify", f"write through {cluster.endpoint}: {v.write.detail}; Prometheus sees {new} as "
                             f"primary: {'yes' if not v.prometheus.timed_out else 'no'} → "
                             f"{'verified' if v.ok else 'NOT verified'}",
         level=logging.INFO if v.ok else logging.ERROR)
    if not v.ok:
        return await finish(report, timeline, Outcome.PROMOTED_NOT_VERIFIED,
                             f"{new} promoted and routed, but verify failed: {v.write.detail}")
    loss = diag.at_risk_bytes
    return await finish(report, timeline, Outcome.PROMOTED,
                         f"{new} is the primary of {cluster.name}; clients write through {cluster.endpoint}; "
                         f"{old} {'fenced' if report.fence and report.fence.confirmed else 'NOT confirmed fenced (approved)'}; "
                         f"WAL not received from {old}: "
                         f"{'unknown' if loss is None else f'{loss} bytes'}; rejoin {old} when it is back")
