"""The human decision before a risky recovery.

The flow run pauses waiting for a typed `ApprovalInput` (the Prefect UI renders it as a form; Slack
buttons, `medic approve` and `medic run`'s prompt send the same input through Prefect's resume API).
A runbook may require N distinct approvers; a rejection by anyone ends it; no decision within the
spec's timeout counts as "not approved". Nothing is changed unless the decision is "approved".
"""

from __future__ import annotations

import getpass
import time
from typing import Literal

from pydantic import BaseModel, Field

from medic.inventory import Host
from medic.progress import Timeline
from medic.report import ApprovalRecord, CheckResult, Diagnosis, utcnow

PAUSE_POLL_INTERVAL_S = 0.2  # click → flow continues in ~poll/2 + 0.1 s (see docs/prefect-runtime.md)


class ApprovalInput(BaseModel):
    """What a human answers to an approval request (the Prefect UI shows this as a form)."""

    decision: Literal["approve", "reject"] = Field(description="approve runs the recovery; reject changes nothing")
    approver: str = Field(min_length=1, max_length=200, description="who decides: a Slack user id, or your name")
    comment: str = Field("", max_length=2000, description="why — kept in the report and the audit log")
    via: Literal["ui", "slack", "cli"] = Field("ui", description="where the decision was made")


def cli_identity() -> str:
    return f"cli:{getpass.getuser()}"


def may_decide(answer: ApprovalInput, approvers: list[str]) -> bool:
    """Slack identities are checked against the runbook's approvers; other paths are trusted operators."""
    if answer.via != "slack" or not approvers:
        return True
    return answer.approver in approvers


async def approval_step(
    *,
    plan: "object",
    targets: list[Host],
    detect: CheckResult,
    diagnosis: Diagnosis,
    dry_run: bool,
    forced: bool,
    flow_run_id: str,
    timeline: Timeline,
) -> ApprovalRecord:
    """Ask for (and wait for) the decision the runbook's policy requires; returns the record."""
    from medic.prefect_runtime import wait_for_approval

    policy = plan.runbook.approval  # type: ignore[attr-defined]
    if dry_run:
        return ApprovalRecord(required=False, decision="not needed (dry run)")
    if policy.policy == "none" and not forced:
        return ApprovalRecord(required=False, decision="not needed")
    needed = policy.required_approvals
    began = time.monotonic()
    deadline = began + policy.timeout
    timeline.note("approval", f"waiting for {needed} approval(s) within {policy.timeout:g} s — "
                              f"`medic approve {flow_run_id}`, Slack, or the Prefect UI")
    approved: list[str] = []
    comments: list[str] = []
    while len(approved) < needed:
        remaining = deadline - time.monotonic()
        answer = None
        if remaining > 0:
            answer = await wait_for_approval(ApprovalInput, timeout=remaining, poll_interval=PAUSE_POLL_INTERVAL_S,
                                             key=f"approval-{len(approved) + 1}")
        if answer is None:
            timeline.note("approval", f"no decision within {policy.timeout:g} s — not approved, nothing changed")
            return ApprovalRecord(required=True, decision="timed out", approvers=approved,
                                  waited_s=time.monotonic() - began)
        if not may_decide(answer, policy.approvers):
            timeline.note("approval", f"ignored a decision by {answer.approver} via {answer.via}: not an approver")
            continue
        if answer.comment:
            comments.append(f"{answer.approver}: {answer.comment}")
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
                          channel=answer.via, decided_at=utcnow(), waited_s=time.monotonic() - began)
