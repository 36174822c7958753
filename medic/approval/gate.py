"""The human decision before a risky recovery.

The flow run pauses waiting for a typed `ApprovalInput` (the Prefect UI renders it as a form; Slack
buttons, `medic approve` and `medic run`'s prompt send the same input through Prefect's resume API).
A runbook may require N distinct approvers; a rejection by anyone ends it; no decision within the
spec's timeout counts as "not approved". Nothing is changed unless the decision is "approved".

How a run ends after its approval point (the flow run's final state, type/name):

    approved by N        → recover + verify: Completed/Recovered (or Failed/NotRecovered, Failed/Failed)
    rejected by anyone   → Failed/Rejected, summary names who (and their comment); nothing changed
    nobody within timeout→ Failed/ApprovalTimedOut; escalated to escalate_to / the escalation channel
    alert resolved       → Completed/NotNeeded (withdrawn); nothing changed
    its process died     → the next click finds nobody takes the input: Crashed, and the card says so

While Slack is configured the card (`medic.approval.notify.ApprovalCards`) shows the wait and then the outcome;
every decision is appended to the audit log (`medic.core.audit`).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from medic.core import audit
from medic.approval.card import ApprovalCard, Decision, approval_markdown, waiting_line
from medic.errors import MedicError
from medic.core.inventory import Host
from medic.core.progress import Timeline
from medic.core.report import ApprovalDecision, ApprovalRecord, CheckResult, Diagnosis, utcnow
from medic.orchestration.run_log import tell
from medic.settings import Settings

if TYPE_CHECKING:
    from medic.approval.notify import ApprovalCards
    from medic.core.runbook import Approval, Runbook
    from medic.clients.ssh import SSHSession
    from medic.procedures.stages import Plan

log = logging.getLogger("medic.approval.gate")

PAUSE_POLL_INTERVAL_S = 0.2  # click → flow continues in ~poll/2 + 0.1 s (see docs/prefect-runtime.md)


class ApprovalInput(BaseModel):
    """What a human answers to an approval request (the Prefect UI shows this as a form, under the
    request's Markdown description: evidence, planned action, who may decide, deadline)."""

    decision: Literal["approve", "reject", "withdraw"] = Field(
        description="approve: run the planned action shown above; reject: change nothing; "
                    "withdraw: no longer needed (nothing is changed)")
    approver: str = Field(min_length=1, max_length=200,
                          description="who decides: your name (recorded in the report and the audit log)")
    comment: str = Field("", max_length=2000, description="why — kept in the report and the audit log")
    via: Literal["ui", "slack", "cli", "alert"] = Field(
        "ui", description="where the decision was made: keep 'ui' when deciding in the Prefect UI")


def _attempt() -> int:
    """How many times this flow run has been started: a run re-executed after a medic restart pauses
    under fresh keys (Prefect refuses a pause key it has seen, and would drop the input)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run.run_count if ctx and ctx.flow_run else 1


def cli_identity() -> str:
    return f"cli:{getpass.getuser()}"


def is_slack_approver(user_id: str, policy: "Approval",
                      group_members: Callable[[str], set[str] | None] | None = None) -> bool:
    """Whether a Slack user may decide for this runbook: listed in `approvers`, or a member of
    `approver_group` (asked of Slack). A runbook naming neither lets anyone in the channel decide."""
    if not policy.approvers and not policy.approver_group:
        return True
    if user_id in policy.approvers:
        return True
    if policy.approver_group and group_members is not None:
        members = group_members(policy.approver_group)
        return members is not None and user_id in members
    return False


def may_decide(answer: ApprovalInput, policy: "Approval",
               group_members: Callable[[str], set[str] | None] | None = None) -> bool:
    """Slack identities are checked against the runbook's approvers; other paths are trusted operators."""
    return answer.via != "slack" or is_slack_approver(answer.approver, policy, group_members)


class ApprovalRequest(BaseModel):
    """Everything a human needs to decide, whichever path they decide on (Slack card, UI, CLI)."""

    title: str
    runbook: str
    targets: list[str]
    evidence: str = Field(description="the detect evidence: query and values")
    diagnosis: str = Field("", description="a short diagnosis summary")
    planned_action: str = Field(description="the exact action: playbook + hosts, or the command")
    check_mode_result: str | None = None
    risk: str | None = Field(None, description="e.g. potential data loss for a failover")
    why: str = Field("", description="why a human is asked: the runbook's policy, the flap guard, an override")
    flow_run_id: str


async def request_decision(
    request: ApprovalRequest,
    policy: "Approval",
    *,
    timeline: Timeline,
    settings: Settings | None = None,
) -> ApprovalRecord:
    """Post the approval card, pause until N distinct approvers approve, someone rejects or time runs
    out, then show the outcome on the card, audit it, and escalate a timeout."""
    from medic.approval.notify import ApprovalCards

    cards = ApprovalCards(settings)
    card = _card(request, policy, cards.settings)
    await asyncio.to_thread(cards.show, card)
    tell(timeline, "approval", f"found {request.evidence}; planned action: {request.planned_action}"
                               + (f"; risk: {request.risk}" if request.risk else ""))
    tell(timeline, "approval", waiting_line(card))
    record = await _collect(request, policy, cards, timeline, card)
    timed_out = record.decision is ApprovalDecision.TIMED_OUT
    audit.record(audit.AuditRecord(
        kind="decision", flow_run_id=request.flow_run_id, runbook=request.runbook, target=", ".join(request.targets),
        who=", ".join(record.approvers) or "nobody", what=record.decision, where=record.channel or "",
        result="recovery runs" if record.decision is ApprovalDecision.APPROVED else "nothing changed",
        detail=record.comment or f"waited {record.waited_s:.1f} s"), settings=cards.settings)
    if timed_out:
        await asyncio.to_thread(cards.decide, request.flow_run_id, Decision.TIMED_OUT)
        posted = await asyncio.to_thread(cards.escalate, card, to=policy.escalate_to, waited_s=record.waited_s)
        audit.record(audit.AuditRecord(
            kind="escalation", flow_run_id=request.flow_run_id, runbook=request.runbook,
            target=", ".join(request.targets), who="medic", what="approval timed out: escalated",
            where=policy.escalate_to or cards.settings.slack_escalation_channel or "log",
            result="posted" if posted else "logged only"), settings=cards.settings)
    return record


_CARD_DECISION = {ApprovalDecision.APPROVED: Decision.APPROVED, ApprovalDecision.REJECTED: Decision.REJECTED,
                  ApprovalDecision.WITHDRAWN: Decision.WITHDRAWN}


def _card(request: ApprovalRequest, policy: "Approval", settings: Settings) -> ApprovalCard:
    from medic.approval.notify import flow_run_url

    query, _, value = request.evidence.partition(" → ")
    return ApprovalCard(
        title=request.title, runbook=request.runbook, targets=request.targets, detect_query=query,
        detect_value=value or "(see the flow run)", diagnosis_summary=request.diagnosis or "(no diagnosis)",
        planned_action=request.planned_action + (f"\nRisk: {request.risk}" if request.risk else ""),
        check_mode_result=request.check_mode_result, flow_run_id=request.flow_run_id,
        flow_run_url=flow_run_url(settings, request.flow_run_id),
        deadline=utcnow() + timedelta(seconds=policy.timeout), approvals_required=policy.required_approvals,
        why=request.why, approvers=list(policy.approvers), approver_group=policy.approver_group)


async def _collect(request: ApprovalRequest, policy: "Approval", cards: "ApprovalCards",
                   timeline: Timeline, card: ApprovalCard) -> ApprovalRecord:
    """The waiting itself: one pause per input, until the inputs amount to a decision. Each pause
    carries the card as the Resume dialog's Markdown description."""
    from medic.orchestration.pause import wait_for_approval

    needed = policy.required_approvals
    began = time.monotonic()
    deadline = began + policy.timeout
    approved: list[str] = []
    comments: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        answer = None
        if remaining > 0:
            shown = card.model_copy(update={"approved_by": list(approved)})
            answer = await wait_for_approval(ApprovalInput, timeout=remaining, poll_interval=PAUSE_POLL_INTERVAL_S,
                                             key=f"approval-{_attempt()}-{len(approved) + 1}",
                                             description=approval_markdown(shown))
        if answer is None:
            tell(timeline, "approval", f"no decision within {policy.timeout:g} s — not approved, nothing changed",
                 level=logging.WARNING)
            return ApprovalRecord(required=True, decision=ApprovalDecision.TIMED_OUT, approvers=approved,
                                  waited_s=time.monotonic() - began)
        record = _judge(answer, policy, cards, approved, comments, timeline)
        if record is not None:  # decided: mark the card before counting the input (a click waits on the count)
            record.waited_s = time.monotonic() - began
            await asyncio.to_thread(cards.decide, request.flow_run_id, _CARD_DECISION[record.decision],
                                    by=record.approvers, note=record.comment)
        await asyncio.to_thread(cards.consumed, request.flow_run_id, approved_by=approved)
        if record is not None:
            return record


def _judge(answer: ApprovalInput, policy: "Approval", cards: "ApprovalCards", approved: list[str],
           comments: list[str], timeline: Timeline) -> ApprovalRecord | None:
    """Apply one input: a final record (rejected, withdrawn, approved by N), or None to keep waiting."""
    if not may_decide(answer, policy, cards.notifier.usergroup_members):
        tell(timeline, "approval", f"ignored a decision by {answer.approver} via {answer.via}: not an approver",
             level=logging.WARNING)
        return None
    if answer.comment:
        comments.append(f"{answer.approver}: {answer.comment}")
    if answer.decision == "withdraw":
        tell(timeline, "approval", f"withdrawn by {answer.approver} via {answer.via}: "
                                   f"{answer.comment or 'no longer needed'} → nothing changed")
        return ApprovalRecord(required=True, decision=ApprovalDecision.WITHDRAWN, approvers=[answer.approver],
                              comment=answer.comment or None, channel=answer.via, decided_at=utcnow())
    if answer.decision == "reject":
        tell(timeline, "approval", f"rejected by {answer.approver} via {answer.via}"
                                   + (f" ({answer.comment})" if answer.comment else "") + " → nothing changed")
        return ApprovalRecord(required=True, decision=ApprovalDecision.REJECTED, approvers=[answer.approver],
                              comment="; ".join(comments) or None, channel=answer.via, decided_at=utcnow())
    if answer.approver in approved:
        tell(timeline, "approval", f"{answer.approver} already approved; waiting for another approver")
        return None
    approved.append(answer.approver)
    tell(timeline, "approval", f"approved by {answer.approver} via {answer.via} "
                               f"({len(approved)}/{policy.required_approvals})"
                               + (" → proceeding" if len(approved) >= policy.required_approvals else ""))
    if len(approved) < policy.required_approvals:
        return None
    return ApprovalRecord(required=True, decision=ApprovalDecision.APPROVED, approvers=list(approved),
                          comment="; ".join(comments) or None, channel=answer.via, decided_at=utcnow())


def why_approval(runbook: "Runbook", *, forced: bool, reason: str = "") -> str:
    """Why this run asks a human: the runbook's policy, or require_approval (set by the flap guard)."""
    if runbook.approval.policy == "required":
        return f"runbook {runbook.name} requires approval (approval policy: required)"
    if forced:
        return f"this run was started with require_approval although runbook {runbook.name} does not require it" + (
            f" — {reason}" if reason else "")
    return ""


def _evidence(detect: CheckResult, targets: list[str]) -> str:
    values = ", ".join(f"{v.host}={'no data' if v.value is None else f'{v.value:.4g}'}"
                       for v in detect.values if v.host in targets)
    return f"{detect.query} {detect.condition} → {values}"


def _diagnosis_summary(diagnosis: Diagnosis) -> str:
    lines = []
    for c in diagnosis.commands[:6]:
        first = (c.result.stdout or c.result.stderr or c.result.error or "").strip().splitlines()[:1]
        lines.append(f"{c.name} on {c.result.host}: {first[0][:120] if first else '(no output)'}")
    return "\n".join(lines)


def _planned_action(plan: "Plan", names: list[str]) -> str:
    """The exact action: the playbook with its variables and hosts, or the command line."""
    spec = plan.runbook.recover
    if spec.playbook:
        extra = " ".join(f"-e {k}={v!r}" for k, v in spec.vars.items())
        return f"ansible-playbook {spec.playbook} --limit {','.join(names)} {extra}".rstrip()
    return f"on {', '.join(names)}: {spec.command}"


async def _check_mode(plan: "Plan", targets: list[Host], ssh: "SSHSession") -> str:
    """Run the recovery in check mode (a dry run) so the card shows what it would do; the cost is one
    ansible-playbook run (a few seconds), small next to a human's decision time."""
    from medic.core.inventory import load_inventory
    from medic.settings import get_settings
    from medic.procedures.stages import recover

    try:
        result = await asyncio.to_thread(recover, plan, targets, dry_run=True, ssh=ssh,
                                         playbooks_dir=get_settings().playbooks_dir, inventory=load_inventory())
    except MedicError as exc:
        log.warning("check mode before approval failed: %s", exc)
        return f"check mode unavailable: {exc}"
    return "\n".join(f"{h.host}: {h.status} — {h.detail}" + (
        f" ({h.return_values['bytes_freed']} bytes)" if "bytes_freed" in h.return_values else "")
        for h in result.hosts)


async def approval_step(
    *,
    plan: "Plan",
    targets: list[Host],
    detect: CheckResult,
    diagnosis: Diagnosis,
    dry_run: bool,
    forced: bool,
    flow_run_id: str,
    timeline: Timeline,
    ssh: "SSHSession | None" = None,
    reason: str = "",
) -> ApprovalRecord:
    """The remediation flow's approval point: decide whether a human must agree, and ask.

    With `ssh` the recovery is first run in check mode, and its result is shown on the card.
    `reason` (why the run started) explains a forced approval — the flap guard writes it there."""
    policy = plan.runbook.approval
    if dry_run:
        return ApprovalRecord(required=False, decision=ApprovalDecision.NOT_NEEDED_DRY_RUN)
    if policy.policy == "none" and not forced:
        return ApprovalRecord(required=False, decision=ApprovalDecision.NOT_NEEDED)
    names = [h.name for h in targets]
    began = time.monotonic()
    preview = await _check_mode(plan, targets, ssh) if ssh is not None else None
    preview_s = time.monotonic() - began
    request = ApprovalRequest(
        title=f"{plan.runbook.name} on {', '.join(names)}",
        runbook=plan.runbook.name,
        targets=names,
        evidence=_evidence(detect, names),
        diagnosis=_diagnosis_summary(diagnosis),
        planned_action=_planned_action(plan, names),
        check_mode_result=preview,
        why=why_approval(plan.runbook, forced=forced, reason=reason),
        flow_run_id=flow_run_id,
    )
    record = await request_decision(request, policy, timeline=timeline)
    record.preview_s = preview_s
    return record
