"""Counting verified decisions into an outcome: N distinct people approve, anyone allowed rejects.

Only inputs whose proof `medic.approval.verify` accepted reach here, under the approver's directory
name — so alice deciding on Slack and again with `medic approve` is one approver, and a 2-of-2 keeps
waiting for a second person.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from medic.core.progress import Timeline
from medic.core.report import ApprovalDecision, ApprovalRecord, utcnow
from medic.orchestration.run_log import tell

if TYPE_CHECKING:
    from medic.approval.inputs import ApprovalInput
    from medic.approval.identity import Verdict

__all__ = ["Tally"]


class Tally:
    """The approvals and comments so far of one request; `add` says when they amount to a decision."""

    def __init__(self, required: int, timeline: Timeline) -> None:
        self.required = required
        self.timeline = timeline
        self.approved: list[str] = []
        self.comments: list[str] = []

    def add(self, answer: "ApprovalInput", verdict: "Verdict") -> ApprovalRecord | None:
        """Apply one verified input: a final record (rejected, withdrawn, approved by N), or None."""
        who, via = verdict.name, verdict.via
        if answer.comment:
            self.comments.append(f"{who}: {answer.comment}")
        if answer.decision == "withdraw":
            tell(self.timeline, "approval", f"withdrawn by {who} via {via}: "
                                            f"{answer.comment or 'no longer needed'} → nothing changed")
            return ApprovalRecord(required=True, decision=ApprovalDecision.WITHDRAWN, approvers=[who],
                                  comment=answer.comment or None, channel=via, decided_at=utcnow())
        if answer.decision == "reject":
            tell(self.timeline, "approval", f"rejected by {who} via {via}"
                                            + (f" ({answer.comment})" if answer.comment else "") + " → nothing changed")
            return ApprovalRecord(required=True, decision=ApprovalDecision.REJECTED, approvers=[who],
                                  comment="; ".join(self.comments) or None, channel=via, decided_at=utcnow())
        if who in self.approved:
            tell(self.timeline, "approval", f"{who} already approved (now via {via}); waiting for another approver")
            return None
        self.approved.append(who)
        tell(self.timeline, "approval", f"approved by {who} via {via} ({len(self.approved)}/{self.required})"
                                        + (" → proceeding" if len(self.approved) >= self.required else ""))
        if len(self.approved) < self.required:
            return None
        return ApprovalRecord(required=True, decision=ApprovalDecision.APPROVED, approvers=list(self.approved),
                              comment="; ".join(self.comments) or None, channel=via, decided_at=utcnow())

    def refused(self, answer: "ApprovalInput", verdict: "Verdict") -> None:
        tell(self.timeline, "approval", f"refused a decision ({answer.decision}) claiming {answer.approver[:80]!r}: "
                                        f"{verdict.reason} — still waiting", level=logging.WARNING)
