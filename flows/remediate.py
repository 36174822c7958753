"""The generic remediation flow: detect → diagnose → [approve → re-check] → recover → verify → report.

One flow executes any runbook spec. Each stage is a Prefect task, so the UI shows the procedure
step by step; each stage says what it found and decided in one line of the run's logs (the same
line as the report's timeline); the diagnosis and the incident report are markdown artifacts; and
the flow's final state (Completed/Failed, named after the outcome, message = the outcome line) says
the same thing as the report.
"""

from __future__ import annotations

import logging

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.states import State

from pydantic import BaseModel, ConfigDict, Field

from medic.core import audit
from medic.orchestration import audit_store
from medic.core.inventory import Host, load_inventory
from medic.approval.gate import approval_step
from medic.approval.notify import IncidentTimeline
from medic.orchestration.ending import final_state
from medic.orchestration.locks import ensure_concurrency_limit, exclusive_slot, remediation_lock_name
from medic.clients.prometheus import PrometheusClient
from medic.core.report import (
    ApprovalDecision,
    ApprovalRecord,
    CheckResult,
    Diagnosis,
    Outcome,
    RecoveryResult,
    RemediationReport,
    artifact_key,
    render_diagnosis,
    utcnow,
)
from medic.core.runbook import Runbook, find_runbook
from medic.core.timeline import StageClock
from medic.errors import PrometheusUnreachable
from medic.orchestration.incident_record import publish_times, times_for_run
from medic.settings import get_settings
from medic.clients.ssh import SSHSession
from medic.orchestration.run_log import tell
from medic.procedures import anomaly as anomaly_procedure
from medic.procedures import narration, stages
from medic.detect.chart import png_chart
from medic.orchestration.charts import apublish_chart

# No task-level timeout_seconds: Prefect cannot interrupt a sync task in a worker thread. Each stage
# bounds itself instead (SSH/Ansible timeouts, verify's timeout, detect's settle window).
STAGE = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="detect", retries=2, retry_delay_seconds=1, **STAGE)
def detect_task(plan: stages.Plan, prom: PrometheusClient) -> CheckResult:
    return stages.detect(plan, prom)


@task(name="diagnose", **STAGE)
def diagnose_task(plan: stages.Plan, hosts: list[Host], ssh: SSHSession, prom: PrometheusClient) -> Diagnosis:
    return stages.diagnose(plan, hosts, ssh, prom)


@task(name="recover", **STAGE)  # no retries: a failed repair is reported, not repeated
def recover_task(plan: stages.Plan, hosts: list[Host], dry_run: bool, ssh: SSHSession) -> RecoveryResult:
    settings = get_settings()
    return stages.recover(plan, hosts, dry_run=dry_run, ssh=ssh, playbooks_dir=settings.playbooks_dir,
                          inventory=load_inventory())


#: Re-check and verify come after a human's decision or after acting: a Prometheus restart there must
#: not throw the decision or the result away (the alert is not resent for repeat_interval), so these
#: read-only stages wait out ~1 min of Prometheus being unreachable. Any other failure is an answer.
BLINK_DELAYS_S = [1, 2, 4, 8, 15, 15, 15]


def prometheus_unreachable(task: object, task_run: object, state: State) -> bool:
    """Prefect's retry condition: retry only when the stage could not reach Prometheus."""
    return isinstance(state.data, PrometheusUnreachable)


@task(name="re-check", retries=len(BLINK_DELAYS_S), retry_delay_seconds=BLINK_DELAYS_S,
      retry_condition_fn=prometheus_unreachable, **STAGE)
def recheck_task(plan: stages.Plan, hosts: list[Host], prom: PrometheusClient) -> CheckResult:
    return stages.recheck(plan, hosts, prom)


@task(name="verify", retries=len(BLINK_DELAYS_S), retry_delay_seconds=BLINK_DELAYS_S,
      retry_condition_fn=prometheus_unreachable, **STAGE)
def verify_task(plan: stages.Plan, hosts: list[Host], prom: PrometheusClient) -> CheckResult:
    return stages.verify(plan, hosts, prom)


def _summary(outcome: Outcome, hosts: list[str], recovery: RecoveryResult | None, verify: CheckResult | None,
             approval: ApprovalRecord | None, detail: str) -> str:
    names = ", ".join(hosts) or "no host"
    if outcome is Outcome.NOT_NEEDED and approval and approval.required:  # withdrawn, or gone by the re-check
        return f"Nothing was changed: {detail}."
    if outcome is Outcome.NOT_NEEDED:
        return f"Nothing to do: the condition does not hold on any target ({detail})."
    if outcome is Outcome.DRY_RUN:
        planned = ", ".join(f"{h.host}: {h.status}" for h in recovery.hosts) if recovery else "—"
        return f"Dry run on {names}: {recovery.action if recovery else ''} — {planned}. Nothing was changed."
    if outcome is Outcome.RECOVERED:
        return f"Recovered {names}: {detail}."
    if outcome is Outcome.NOT_RECOVERED:
        return f"Not recovered: the action ran on {names} but verify did not pass within {verify.waited_s:.0f} s ({detail})." if verify else detail
    if outcome is Outcome.ALREADY_RUNNING:
        return f"Nothing done: {detail}."
    if outcome is Outcome.APPROVAL_TIMED_OUT:
        return f"Nothing was changed: nobody approved within {approval.waited_s:.0f} s (approval timed out)." if approval else detail
    if outcome is Outcome.REJECTED:
        who = f" by {', '.join(approval.approvers)}" if approval and approval.approvers else ""
        return f"Nothing was changed: approval {outcome.value}{who}" + (f" ({approval.comment})" if approval and approval.comment else "") + "."
    return f"Failed: {detail}"


async def _anomaly_charts(spec: Runbook, hosts: list[Host], prom: PrometheusClient, limit: int = 3) -> None:
    """The series and its anomaly score per affected host, as PNG charts beside the report (a chart
    that cannot be drawn is logged, never a reason to stop the remediation)."""
    anomaly = spec.detect.anomaly
    assert anomaly is not None
    try:
        for found in anomaly_procedure.score_hosts(anomaly, hosts[:limit], prom):
            png = png_chart(found.times, found.values, found.scores, threshold=anomaly.threshold,
                            title=f"{spec.name} on {found.host}: {anomaly.query}", reason=found.reason)
            await apublish_chart(("anomaly", spec.name, found.host), f"{spec.name}: anomaly score on {found.host}",
                                 png, found.reason)
    except Exception as exc:  # noqa: BLE001 - a picture is not worth a failed remediation
        logging.getLogger("medic.flows.remediate").warning("could not draw the anomaly chart: %s", exc)


class Findings(BaseModel):
    """What the stages found and did, handed from the stages to the report."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    outcome: Outcome = Outcome.FAILED
    detail: str = ""
    affected: list[str] = Field(default_factory=list)
    detect: CheckResult | None = None
    diagnosis: Diagnosis | None = None
    approval: ApprovalRecord | None = None
    recovery: RecoveryResult | None = None
    verify: CheckResult | None = None


async def _stages(spec: Runbook, plan: stages.Plan, *, dry_run: bool, require_approval: bool, run_id: str,
                  reason: str, timeline: IncidentTimeline, clock: StageClock) -> Findings:
    """detect → diagnose → [approval → re-check] → recover → verify; each stage a task that says what
    it found and decided in the run's logs and timeline."""
    settings = get_settings()
    hosts_by_name = {h.name: h for h in plan.hosts}
    with PrometheusClient(settings.prometheus_url) as prom, SSHSession() as ssh:
        timeline.announce("detect", f"checking {spec.detect.query} {spec.detect.condition}")
        with clock.stage("detect"):
            detect = detect_task(plan, prom)
        affected = detect.matching
        tell(timeline, "detect", narration.detect_line(spec.detect, detect))
        if not affected:
            return Findings(outcome=Outcome.NOT_NEEDED, detect=detect,
                            detail=f"detect {spec.detect.condition} does not hold — {narration.values(detect)}")
        if spec.detect.anomaly is not None:
            await _anomaly_charts(spec, [hosts_by_name[n] for n in affected], prom)
        timeline.open_incident(f"detected on {', '.join(affected)}: `{spec.detect.query}` "
                               f"{spec.detect.condition} → {narration.values(detect, affected)}")
        targets = [hosts_by_name[n] for n in affected]
        timeline.announce("diagnose", f"gathering evidence from {', '.join(affected)}")
        with clock.stage("diagnose"):
            diagnosis = diagnose_task(plan, targets, ssh, prom)
        tell(timeline, "diagnose", narration.diagnosis_line(diagnosis))
        await create_markdown_artifact(key=artifact_key("diagnosis", spec.name, plan.target),
                                       markdown=render_diagnosis(diagnosis), description=f"{spec.name} diagnosis")
        unreachable = diagnosis.unreachable()
        if unreachable and len(unreachable) == len(targets):
            detail = f"unreachable over SSH: {', '.join(unreachable)} — nothing was changed"
            tell(timeline, "diagnose", detail + " → giving up", level=logging.WARNING)
            return Findings(outcome=Outcome.FAILED, detail=detail, affected=affected, detect=detect, diagnosis=diagnosis)
        # ---- APPROVAL POINT: the human decision plugs in here (policy `required`) ----
        approval = await approval_step(plan=plan, targets=targets, detect=detect, diagnosis=diagnosis,
                                       dry_run=dry_run, forced=require_approval, flow_run_id=run_id,
                                       timeline=timeline, ssh=ssh, reason=reason)
        found = Findings(affected=affected, detect=detect, diagnosis=diagnosis, approval=approval)
        if not approval.required:
            tell(timeline, "approval", "not needed: dry run, the recovery runs in check mode" if dry_run else
                 f"not needed: runbook {spec.name} has approval policy '{spec.approval.policy}' → recovering")
        elif approval.decision is ApprovalDecision.WITHDRAWN:
            found.outcome, found.detail = Outcome.NOT_NEEDED, f"the alert resolved while waiting for approval ({approval.comment})"
            return found
        elif approval.decision in (ApprovalDecision.REJECTED, ApprovalDecision.TIMED_OUT):
            found.outcome = (Outcome.REJECTED if approval.decision is ApprovalDecision.REJECTED
                             else Outcome.APPROVAL_TIMED_OUT)
            return found
        else:
            with clock.stage("re-check"):
                recheck = recheck_task(plan, targets, prom)
            tell(timeline, "re-check", narration.recheck_line(spec.detect, recheck, affected))
            targets = [h for h in targets if h.name in recheck.matching]
            found.affected = [h.name for h in targets] or affected
            if not targets:
                found.outcome = Outcome.NOT_NEEDED
                found.detail = (f"approved by {', '.join(approval.approvers)}, but by then the problem was gone "
                                f"({narration.values(recheck, affected)})")
                return found
        return await _act(spec, plan, targets, found, dry_run=dry_run, run_id=run_id, timeline=timeline,
                          ssh=ssh, prom=prom, clock=clock)


async def _act(spec: Runbook, plan: stages.Plan, targets: list[Host], found: Findings, *, dry_run: bool,
               run_id: str, timeline: IncidentTimeline, ssh: SSHSession, prom: PrometheusClient,
               clock: StageClock) -> Findings:
    """recover → verify, after the decision to act; the action is audited whatever its result."""
    names = [h.name for h in targets]
    approvers = found.approval.approvers if found.approval else []
    timeline.announce("recover", f"{spec.recover.description} on {', '.join(names)}" + (" in check mode" if dry_run else ""))
    if not dry_run:  # fail closed: nothing changes unless Prefect holds the intent (it raises otherwise)
        audit_store.record(audit.AuditRecord(
            kind="intent", flow_run_id=run_id, runbook=spec.name, target=plan.target,
            who=", ".join(approvers) or "medic", what=spec.recover.description, where=", ".join(names),
            result="about to act"))
    with clock.stage("recover"):
        found.recovery = recovery = recover_task(plan, targets, dry_run, ssh)
    tell(timeline, "recover", narration.recovery_line(recovery),
         level=logging.WARNING if recovery.errors else logging.INFO)
    audit_store.record(audit.AuditRecord(
        kind="action", flow_run_id=run_id, runbook=spec.name, target=plan.target,
        who=", ".join(approvers) or "medic", what=recovery.action, where=", ".join(names),
        result=", ".join(f"{h.host}: {h.status}" for h in recovery.hosts),
        detail="check mode" if dry_run else f"took {recovery.duration_s:.1f} s"), fail_closed=False)
    if dry_run:
        found.outcome = Outcome.DRY_RUN
        return found
    if recovery.errors:
        bad = [h for h in recovery.hosts if h.failed]
        found.outcome, found.detail = Outcome.FAILED, "; ".join(f"{h.host} {h.status}: {h.detail}" for h in bad)
        return found
    timeline.announce("verify", f"waiting up to {spec.verify.timeout:g} s for {spec.verify.query} {spec.verify.condition}")
    with clock.stage("verify"):
        found.verify = verify = verify_task(plan, targets, prom)
    tell(timeline, "verify", narration.verify_line(spec.verify, verify, names),
         level=logging.WARNING if verify.timed_out else logging.INFO)
    if verify.timed_out:
        found.outcome, found.detail = Outcome.NOT_RECOVERED, narration.values(verify, names)
    else:
        found.outcome = Outcome.RECOVERED
        found.detail = f"verify {spec.verify.condition} holds — {narration.values(verify, names)}"
    return found


@flow(name="remediate", flow_run_name="{runbook} on {target}", persist_result=False, log_prints=False)
async def remediate(
    runbook: str,
    target: str | None = None,
    dry_run: bool = False,
    reason: str = "manual run",
    require_approval: bool = False,
) -> State:
    """Run one runbook against one inventory target: detect, diagnose, approve if needed, recover, verify.

    Args:
        runbook: Name of the runbook (a file in runbooks/, e.g. service-down).
        target: Inventory host or group to act on; empty uses the runbook's default target.
        dry_run: Detect and diagnose for real, run the recovery in check mode, change nothing.
        reason: Why this run started (manual run, alert fingerprint, schedule) — shown in the report.
        require_approval: Ask a human even if the runbook's policy is 'none' (the flap guard sets this,
            and says why in `reason`).
    """
    settings = get_settings()
    started = utcnow()
    run_id = str(get_run_context().flow_run.id)
    spec = find_runbook(runbook, settings.runbooks_dir)
    plan = stages.plan(spec, target, load_inventory())
    timeline = IncidentTimeline(title=f"{spec.name} on {plan.target}", flow_run_id=run_id)  # + Slack thread
    tell(timeline, "start", f"{spec.name} on {plan.target} ({', '.join(h.name for h in plan.hosts)})"
                            f"{' — dry run' if dry_run else ''}; why: {reason}")

    clock = StageClock()  # each stage's start and end, for the incident timeline
    lock = remediation_lock_name(spec.name, plan.target)
    await ensure_concurrency_limit(lock, 1, outage_wait_s=settings.prefect_outage_wait_s)
    async with exclusive_slot(lock, outage_wait_s=settings.prefect_outage_wait_s) as got_slot:
        if got_slot:
            found = await _stages(spec, plan, dry_run=dry_run, require_approval=require_approval, run_id=run_id,
                                  reason=reason, timeline=timeline, clock=clock)
        else:
            found = Findings(outcome=Outcome.ALREADY_RUNNING,
                             detail=f"another remediation of {spec.name} on {plan.target} is running")
            tell(timeline, "start", found.detail + " → nothing done", level=logging.WARNING)
    detect, diagnosis, approval, recovery, verify = (found.detect, found.diagnosis, found.approval,
                                                     found.recovery, found.verify)
    affected, outcome, detail = found.affected, found.outcome, found.detail

    report = RemediationReport(
        runbook=spec.name, target=plan.target, hosts=affected, reason=reason, dry_run=dry_run, outcome=outcome,
        summary=_summary(outcome, affected, recovery, verify, approval, detail), started_at=started,
        finished_at=utcnow(), flow_run_id=run_id, detect=detect, diagnosis=diagnosis, approval=approval,
        recovery=recovery, verify=verify, timeline=timeline.entries,
    )
    # The outcome line: the report's last timeline entry, the run's last log line, the final state's message.
    tell(timeline, "report", f"{outcome.state_name}: {report.summary}",
         level=logging.INFO if outcome.success else logging.WARNING)
    report.timeline = timeline.entries
    timeline.close()
    if not dry_run:  # impact and recovered from Prometheus: a couple of queries after verify
        by_name = {h.name: h for h in plan.hosts}
        report.incident = await times_for_run(
            spec, [by_name[n] for n in affected if n in by_name], load_inventory(),
            prometheus_url=settings.prometheus_url, run_started=started, stages=clock.spans,
            human_decision=approval.decided_at if approval and approval.required else None,
            resolved=report.finished_at)
        await publish_times(report.incident, spec.name, plan.target)
    await create_markdown_artifact(key=artifact_key("incident", spec.name, plan.target), markdown=report.to_markdown(),
                                   description=f"{spec.name} on {plan.target}: {outcome.value}")
    # Completed: recovered / not needed / dry run, and "already running" (another run is on it);
    # Failed: anything that leaves the problem in place (failed, not recovered, rejected, no decision).
    return final_state(outcome, report.summary, report)
