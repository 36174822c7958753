"""What a human answers to an approval request: the typed input of every approval pause.

Its own module because the gate, the verifier and the tally all read it. The Prefect UI renders this
model as the Resume form (each Field's description under its input), and Prefect refuses any input
with fields it does not declare — so there is no `via` or other claim a client could add.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["ApprovalInput"]


class ApprovalInput(BaseModel):
    """What a human answers to an approval request (the Prefect UI shows this as a form, under the
    request's Markdown description: evidence, planned action, who may decide, deadline). A decision
    counts only with a proof: the approver's 6-digit code here, or the proof `medic approve` and
    Slack fill in. There is no "via" to claim: the kind of proof says where it came from."""

    decision: Literal["approve", "reject", "withdraw"] = Field(
        description="approve: run the planned action shown above; reject: change nothing; "
                    "withdraw: no longer needed (nothing is changed)")
    approver: str = Field("", max_length=64,
                          description="your approver name, as in approvers.yaml (not a Slack id)")
    code: str = Field("", pattern=r"^(\d{6})?$",
                      description="the 6-digit code your authenticator app shows for medic "
                                  "(set up with `medic approvers issue NAME`); each code counts once")
    comment: str = Field("", max_length=2000, description="why — kept in the report and the audit log")
    proof: str = Field("", max_length=400,
                       description="leave empty in the UI: filled in by `medic approve` and by Slack buttons")
