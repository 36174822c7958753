"""The generic remediation flow: detect → diagnose → [approve] → recover → verify → report.

One flow executes any runbook spec. Each stage is a Prefect task, so the UI shows the procedure
step by step; the diagnosis and the incident report are markdown artifacts; and the flow's final
state (Completed/Failed, named after the outcome) says the same thing as the report.
"""

from __future__ import annotations

import re

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.states import Completed, Failed, State

from pydantic import BaseModel, ConfigDict, Field

from medic.core import audit
from medic.core.inventory import Host, load_inventory
from medic.approval.notify import IncidentTimeline
from medic.orchestration.runtime import ensure_concurrency_limit, exclusive_slot, remediation_lock_name
from medic.clients.prometheus import PrometheusClient
from medic.core.report import (
    ApprovalRecord,
    CheckResult,
    Diagnosis,
    Outcome,
    RecoveryResult,
    RemediationReport,
    render_diagnosis,
    utcnow,
)
from medic.core.runbook import Runbook, find_runbook
from medic.settings import get_settings
from medic.clients.ssh import SSHSession
from medic.procedures import stages

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


@task(name="verify", retries=1, retry_delay_seconds=1, **STAGE)
def verify_task(plan: stages.Plan, hosts: list[Host], prom: PrometheusClient) -> CheckResult:
    return stages.verify(plan, hosts, prom)


def _artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def _values(check: CheckResult, hosts: list[str]) -> str:
    shown = [f"{v.host}={'no data' if v.value is None else f'{v.value:.3g}'}" for v in check.values if v.host in hosts]
    return ", ".join(shown[:8]) + (" …" if len(shown) > 8 else "")


def _summary(outcome: Outcome, hosts: list[str], recovery: RecoveryResult | None, verify: CheckResult | None,
             approval: ApprovalRecord | None, detail: str) -> str:
    names = ", ".join(hosts) or "no host"
    if outcome is Outcome.NOT_NEEDED and approval and approval.decision == "withdrawn":
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
                  timeline: IncidentTimeline) -> Findings:
    """detect → diagnose → [approval] → recover → verify; each stage a task, each result recorded."""
    settings = get_settings()
    hosts_by_name = {h.name: h for h in plan.hosts}
    detect = diagnosis = recovery = verify = approval = None
    affected: list[str] = []
    outcome, detail = Outcome.FAILED, ""
    with PrometheusClient(settings.prometheus_url) as prom, SSHSession() as ssh:
        timeline.announce("detect", f"checking {spec.detect.query} {spec.detect.condition}")
        detect = detect_task(plan, prom)
        affected = detect.matching
        if not affected:
            outcome, detail = Outcome.NOT_NEEDED, f"detect {spec.detect.condition} does not hold — {_values(detect, list(hosts_by_name))}"
            timeline.note("detect", f"healthy — {detail}")
        else:
            timeline.open_incident(f"detected on {', '.join(affected)}: `{spec.detect.query}` "
                                   f"{spec.detect.condition} → {_values(detect, affected)}")
            timeline.note("detect", f"confirmed on {', '.join(affected)}: {_values(detect, affected)} "
                                    f"(condition {spec.detect.condition} held ≥ {spec.detect.hold:g} s)")
            targets = [hosts_by_name[n] for n in affected]
            timeline.announce("diagnose", f"gathering evidence from {', '.join(affected)}")
            diagnosis = diagnose_task(plan, targets, ssh, prom)
            failed_cmds = sum(1 for c in diagnosis.commands if not c.result.ok)
            timeline.note("diagnose", f"{len(diagnosis.commands)} command result(s), {len(diagnosis.queries)} query(ies)"
                                      + (f", {failed_cmds} command(s) failed" if failed_cmds else ""))
            await create_markdown_artifact(key=_artifact_key("diagnosis", spec.name, plan.target),
                                           markdown=render_diagnosis(diagnosis), description=f"{spec.name} diagnosis")
            unreachable = diagnosis.unreachable()
            if unreachable and len(unreachable) == len(targets):
                outcome, detail = Outcome.FAILED, f"unreachable over SSH: {', '.join(unreachable)} — nothing was changed"
                timeline.note("diagnose", detail)
            else:
                # ---- APPROVAL POINT: the human decision plugs in here (policy `required`) ----
                from medic.approval.gate import approval_step

                approval = await approval_step(plan=plan, targets=targets, detect=detect, diagnosis=diagnosis,
                                               dry_run=dry_run, forced=require_approval, flow_run_id=run_id,
                                               timeline=timeline, ssh=ssh)
                if approval.decision == "withdrawn":
                    outcome, detail = Outcome.NOT_NEEDED, f"the alert resolved while waiting for approval ({approval.comment})"
                elif approval.decision in ("rejected", "timed out"):
                    outcome = Outcome.REJECTED if approval.decision == "rejected" else Outcome.APPROVAL_TIMED_OUT
                else:
                    timeline.announce("recover", f"{spec.recover.description} on {', '.join(affected)}"
                                                 + (" in check mode" if dry_run else ""))
                    recovery = recover_task(plan, targets, dry_run, ssh)
                    results = ", ".join(f"{h.host}: {h.status}" for h in recovery.hosts)
                    timeline.note("recover", f"{recovery.action}{' (check mode)' if dry_run else ''} — {results}")
                    audit.record(audit.AuditRecord(
                        kind="action", flow_run_id=run_id, runbook=spec.name, target=plan.target,
                        who=", ".join(approval.approvers) or "medic", what=recovery.action, where=", ".join(affected),
                        result=results, detail="check mode" if dry_run else f"took {recovery.duration_s:.1f} s"))
                    if dry_run:
                        outcome = Outcome.DRY_RUN
                    elif recovery.errors:
                        bad = [h for h in recovery.hosts if h.failed]
                        outcome, detail = Outcome.FAILED, "; ".join(f"{h.host} {h.status}: {h.detail}" for h in bad)
                    else:
                        timeline.announce("verify", f"waiting up to {spec.verify.timeout:g} s for "
                                                    f"{spec.verify.query} {spec.verify.condition}")
                        verify = verify_task(plan, targets, prom)
                        if verify.timed_out:
                            outcome, detail = Outcome.NOT_RECOVERED, _values(verify, affected)
                        else:
                            outcome, detail = Outcome.RECOVERED, f"verify {spec.verify.condition} holds — {_values(verify, affected)}"
                        timeline.note("verify", f"{'healthy' if not verify.timed_out else 'still unhealthy'} after "
                                                f"{verify.waited_s:.1f} s — {_values(verify, affected)}")
    return Findings(outcome=outcome, detail=detail, affected=affected, detect=detect, diagnosis=diagnosis,
                    approval=approval, recovery=recovery, verify=verify)


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
        require_approval: Ask a human even if the runbook's policy is 'none' (the flap guard sets this).
    """
    logger = get_run_logger()
    settings = get_settings()
    started = utcnow()
    run_id = str(get_run_context().flow_run.id)
    spec = find_runbook(runbook, settings.runbooks_dir)
    plan = stages.plan(spec, target, load_inventory())
    timeline = IncidentTimeline(title=f"{spec.name} on {plan.target}", flow_run_id=run_id)  # + Slack thread
    timeline.note("start", f"{spec.name} on {plan.target} ({len(plan.hosts)} host(s)){' — dry run' if dry_run else ''}; {reason}")

    lock = remediation_lock_name(spec.name, plan.target)
    await ensure_concurrency_limit(lock, 1)
    async with exclusive_slot(lock) as got_slot:
        if got_slot:
            found = await _stages(spec, plan, dry_run=dry_run, require_approval=require_approval, run_id=run_id,
                                  timeline=timeline)
        else:
            found = Findings(outcome=Outcome.ALREADY_RUNNING,
                             detail=f"another remediation of {spec.name} on {plan.target} is running")
            timeline.note("start", found.detail + " — nothing done")
    detect, diagnosis, approval, recovery, verify = (found.detect, found.diagnosis, found.approval,
                                                     found.recovery, found.verify)
    affected, outcome, detail = found.affected, found.outcome, found.detail

    report = RemediationReport(
        runbook=spec.name, target=plan.target, hosts=affected, reason=reason, dry_run=dry_run, outcome=outcome,
        summary=_summary(outcome, affected, recovery, verify, approval, detail), started_at=started,
        finished_at=utcnow(), flow_run_id=run_id, detect=detect, diagnosis=diagnosis, approval=approval,
        recovery=recovery, verify=verify, timeline=timeline.entries,
    )
    timeline.note("report", f"{outcome.value}: {report.summary}")
    report.timeline = timeline.entries
    timeline.close()
    await create_markdown_artifact(key=_artifact_key("incident", spec.name, plan.target), markdown=report.to_markdown(),
                                   description=f"{spec.name} on {plan.target}: {outcome.value}")
    logger.info("%s", report.summary)
    # Completed: recovered / not needed / dry run, and "already running" (another run is on it);
    # Failed: anything that leaves the problem in place (failed, not recovered, rejected, no decision).
    state_cls = Completed if outcome.success or outcome is Outcome.ALREADY_RUNNING else Failed
    return state_cls(message=report.summary, name=outcome.state_name, data=report)
