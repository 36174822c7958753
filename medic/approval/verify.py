"""Judging one approval input at the gate: is it proven, by whom, and may that person decide here?

The pure proof checks live in `medic.approval.identity`; this module adds what needs the outside
world: the approver directory as it is now (revocation is immediate), the runbook's policy (and its
Slack user group), the once-per-step rule for UI codes (claimed in Prefect, so it holds across every
machine that runs flows), and the verdict `medic approve` waits for.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from medic.approval.directory import ApproverDirectory, allowed_names, load_directory
from medic.approval.identity import Verdict, check, used_step_variable
from medic.errors import MedicError
from medic.settings import Settings

if TYPE_CHECKING:
    from medic.approval.inputs import ApprovalInput
    from medic.core.runbook import Approval

__all__ = ["cannot_verify", "read_verdict", "verdict_variable", "verify_answer"]

log = logging.getLogger("medic.approval.verify")


def cannot_verify(policy: "Approval", settings: Settings,
                  group_members: Callable[[str], set[str] | None] | None = None) -> str | None:
    """Why no approval of this policy could ever be verified (fail closed), or None when one can."""
    if settings.approval_key is None or not settings.approval_key.get_secret_value():
        return ("no approval can be verified: MEDIC_APPROVAL_KEY is not configured — set the same key on "
                "medic serve and every worker, and issue credentials with `medic approvers issue NAME`")
    try:
        directory = load_directory(settings.approvers_file)
    except MedicError as exc:
        return f"no approval can be verified: {exc}"
    if not allowed_names(policy.approvers, policy.approver_group, directory, group_members):
        named = ", ".join(policy.approvers) or (f"group {policy.approver_group}" if policy.approver_group else "nobody")
        return (f"no approval can be verified: none of the policy's approvers ({named}) is in the approver "
                f"directory {settings.approvers_file} — add them there")
    return None


def verdict_variable(proof: str) -> str:
    """The Prefect variable where the gate leaves its verdict on one CLI proof, for `medic approve`."""
    return f"medic-verdict-{hashlib.sha256(proof.encode()).hexdigest()[:24]}"


async def verify_answer(answer: "ApprovalInput", *, run_id: str, pause_key: str, policy: "Approval",
                        settings: Settings, group_members: Callable[[str], set[str] | None] | None = None,
                        approved: list[str] | None = None) -> Verdict:
    """The verdict on one input: proven (by the directory name), allowed by the policy, code unused,
    and — for an approval — not from someone in `approved` already (N-of-M counts distinct people)."""
    verdict = await _verdict(answer, run_id=run_id, pause_key=pause_key, policy=policy, settings=settings,
                             group_members=group_members)
    if verdict.ok and answer.decision == "approve" and verdict.name in (approved or []):
        verdict = Verdict.refused(f"{verdict.name} already approved (via any channel); waiting for another "
                                  f"approver", verdict.via)
    if answer.proof.startswith("cli:"):
        await _leave_verdict(answer.proof, "counted" if verdict.ok else f"refused: {verdict.reason}")
    return verdict


async def _verdict(answer: "ApprovalInput", *, run_id: str, pause_key: str, policy: "Approval", settings: Settings,
                   group_members: Callable[[str], set[str] | None] | None) -> Verdict:
    key = settings.approval_key.get_secret_value() if settings.approval_key else ""
    if not key:
        return Verdict.refused("MEDIC_APPROVAL_KEY is not configured here: nothing can be verified")
    try:
        directory = load_directory(settings.approvers_file)
    except MedicError as exc:
        return Verdict.refused(f"approver directory unusable: {exc}")
    verdict = check(decision=answer.decision, approver=answer.approver, code=answer.code, proof=answer.proof,
                    run_id=run_id, pause_key=pause_key, approval_key=key, known={a.name for a in directory.approvers},
                    slack_ids={a.slack_id: a.name for a in directory.approvers if a.slack_id})
    if not verdict.ok or verdict.via == "alert":
        return verdict
    allowed = await asyncio.to_thread(_allowed, policy, directory, group_members)
    if verdict.name not in allowed:
        return Verdict.refused(f"{verdict.name} is not an approver of this runbook (approvers: "
                               f"{', '.join(sorted(allowed)) or 'none in the directory'})", verdict.via)
    if verdict.step is not None and not await _claim_step(verdict.name, verdict.step, run_id):
        return Verdict.refused(f"code already used by {verdict.name} (each code counts once)", verdict.via)
    return verdict


def _allowed(policy: "Approval", directory: ApproverDirectory,
             group_members: Callable[[str], set[str] | None] | None) -> set[str]:
    return allowed_names(policy.approvers, policy.approver_group, directory, group_members)


async def _claim_step(name: str, step: int, run_id: str) -> bool:
    """Create the step's variable: only the first creation succeeds (Prefect's names are unique), so a
    code is accepted once even when two workers see it at the same moment."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate
    from prefect.exceptions import ObjectAlreadyExists

    try:
        async with get_client() as client:
            await client.create_variable(VariableCreate(name=used_step_variable(name, step), value=run_id,
                                                        tags=["medic", "approval-code"]))
    except ObjectAlreadyExists:
        return False
    return True


async def _leave_verdict(proof: str, verdict: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate

    try:
        async with get_client() as client:
            await client.create_variable(VariableCreate(name=verdict_variable(proof), value=verdict[:500],
                                                        tags=["medic", "approval-verdict"]))
    except Exception as exc:  # noqa: BLE001 - the CLI then says "sent, not confirmed"; the decision stands
        log.warning("could not leave the verdict for medic approve: %s", exc)


async def read_verdict(proof: str) -> str | None:
    """The gate's verdict on a CLI proof ("counted" or "refused: why"), consumed on reading; None if not yet."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        variable = await client.read_variable_by_name(verdict_variable(proof))
        if variable is None:
            return None
        await client.delete_variable_by_name(variable.name)
    return str(variable.value)
