"""The human decision before a risky recovery.

The flow run pauses waiting for a typed `ApprovalInput` (the Prefect UI renders it as a form; Slack
buttons, `medic approve` and `medic run`'s prompt send the same input through Prefect's resume API).
A runbook may require N distinct approvers; a rejection by anyone ends it; no decision within the
spec's timeout counts as "not approved". Nothing is changed unless the decision is "approved".
"""

from __future__ import annotations

import getpass
import time
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from medic.inventory import Host
from medic.progress import Timeline
from medic.report import ApprovalRecord, CheckResult, Diagnosis, utcnow

if TYPE_CHECKING:
    from medic.runbook import Approval
    from medic.stages import Plan

PAUSE_POLL_INTERVAL_S = 0.2  # click → flow continues in ~poll/2 + 0.1 s (see docs/prefect-runtime.md)


class ApprovalInput(BaseModel):
    """What a human answers to an approval request (the Prefect UI shows this as a form)."""

    decision: Literal["approve", "reject", "withdraw"] = Field(
        description="approve runs the recovery; reject changes nothing; withdraw = no longer needed")
    approver: str = Field(min_length=1, max_length=200, description="who decides: a Slack user id, or your name")
    comment: str = Field("", max_length=2000, description="why — kept in the report and the audit log")
    via: Literal["ui", "slack", "cli", "alert"] = Field("ui", description="where the decision was made")


def _attempt() -> int:
    """How many times this flow run has been started: a run re-executed after a medic restart pauses
    under fresh keys (Prefect refuses a pause key it has seen, and would drop the input)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run.run_count if ctx and ctx.flow_run else 1


def cli_identity() -> str:
    return f"cli:{getpass.getuser()}"


def may_decide(answer: ApprovalInput, approvers: list[str]) -> bool:
    """Slack identities are checked against the runbook's approvers; other paths are trusted operators."""
    if answer.via != "slack" or not approvers:
        return True
    return answer.approver in approvers


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
    flow_run_id: str


async def request_decision(
    request: ApprovalRequest,
    policy: "Approval",
    *,
    timeline: Timeline,
) -> ApprovalRecord:
    """Pause the flow run until N distinct approvers approve, someone rejects, or time runs out."""
    from medic.prefect_runtime import wait_for_approval

    needed = policy.required_approvals
    began = time.monotonic()
    deadline = began + policy.timeout
    timeline.note("approval", f"waiting for {needed} approval(s) within {policy.timeout:g} s — "
                              f"`medic approve {request.flow_run_id}`, Slack, or the Prefect UI")
    approved: list[str] = []
    comments: list[str] = []
    answer: ApprovalInput | None = None
    while len(approved) < needed:
        remaining = deadline - time.monotonic()
        answer = None
        if remaining > 0:
            answer = await wait_for_approval(ApprovalInput, timeout=remaining, poll_interval=PAUSE_POLL_INTERVAL_S,
                                             key=f"approval-{_attempt()}-{len(approved) + 1}")
        if answer is None:
            timeline.note("approval", f"no decision within {policy.timeout:g} s — not approved, nothing changed")
            return ApprovalRecord(required=True, decision="timed out", approvers=approved,
                                  waited_s=time.monotonic() - began)
        if not may_decide(answer, policy.approvers):
            timeline.note("approval", f"ignored a decision by {answer.approver} via {answer.via}: not an approver")
            continue
        if answer.comment:
            comments.append(f"{answer.approver}: {answer.comment}")
        if answer.decision == "withdraw":
            timeline.note("approval", f"withdrawn by {answer.approver}: {answer.comment or 'no longer needed'}")
            return ApprovalRecord(required=True, decision="withdrawn", approvers=[], comment=answer.comment or None,
                                  channel=answer.via, decided_at=utcnow(), waited_s=time.monotonic() - began)
        if answer.decision == "reject":
            timeline.note("approval", f"rejected by {answer.approver} via {answer.via}")
            return ApprovalRecord(required=True, decision="rejected", approvers=[answer.approver],
                                  comment="; ".join(comments) or None, channel=answer.via, decided_at=utcnow(),
                                  waited_s=time.monotonic() - began)
        if answer.approver in approved:
            timeline.note("approval", f"{answer.approver} already approved; waiting for another approver")
            continue
        approved.append(answer.approver)
        timeline.note("approval", f"approved by {answer.approver} via {answer.via} ({len(approved)}/{needed})")
    return ApprovalRecord(required=True, decision="approved", approvers=approved, comment="; ".join(comments) or None,
                          channel=answer.via if answer else None, decided_at=utcnow(),
                          waited_s=time.monotonic() - began)


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
) -> ApprovalRecord:
    """The remediation flow's approval point: decide whether a human must agree, and ask."""
    policy = plan.runbook.approval
    if dry_run:
        return ApprovalRecord(required=False, decision="not needed (dry run)")
    if policy.policy == "none" and not forced:
        return ApprovalRecord(required=False, decision="not needed")
    names = [h.name for h in targets]
    request = ApprovalRequest(
        title=f"{plan.runbook.name} on {', '.join(names)}",
        runbook=plan.runbook.name,
        targets=names,
        evidence=_evidence(detect, names),
        diagnosis=_diagnosis_summary(diagnosis),
        planned_action=f"{plan.runbook.recover.description} on {', '.join(names)}",
        flow_run_id=flow_run_id,
    )
    return await request_decision(request, policy, timeline=timeline)
