"""The failover tests' human: answers each approval pause of a run with a *proven* decision.

All the failover tests' approval calls go through here (one place to change when the way approvals
are proven changes). A decision is proven as `medic approve` proves it: a CLI proof made with the
approver's credential, bound to the run and to the pause it answers (`medic.approval.identity`).
The approver is one the runbook's policy admits, read from the approver directory in use.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort

from medic.approval.answers import resume_proven
from medic.approval.directory import allowed_names, load_directory
from medic.approval.identity import approver_secret, cli_proof
from medic.core.polling import wait_until_async
from medic.core.runbook import find_runbook
from medic.orchestration.runs import FlowRunOutcome, run_flow_now
from medic.settings import get_settings


@dataclass(frozen=True)
class Answer:
    """What the human decides at one pause (who: an approver the failover runbook admits)."""

    decision: str  # approve | reject
    comment: str = ""


APPROVE = Answer("approve")
REJECT = Answer("reject", "not now")


def approver() -> str:
    settings = get_settings()
    policy = find_runbook("postgres-failover", settings.runbooks_dir).approval
    names = sorted(allowed_names(policy.approvers, policy.approver_group, load_directory(settings.approvers_file)))
    assert names, f"no approver of postgres-failover is in {settings.approvers_file}"
    return names[0]


def payload(answer: Answer, run_id: str, pause_key: str) -> dict[str, Any]:
    settings = get_settings()
    assert settings.approval_key is not None, "MEDIC_APPROVAL_KEY is not set for the tests"
    name = approver()
    secret = approver_secret(settings.approval_key.get_secret_value(), name)
    return {"decision": answer.decision, "approver": name, "comment": answer.comment,
            "proof": cli_proof(secret, run_id=run_id, pause_key=pause_key, decision=answer.decision)}


async def _paused() -> list[tuple[str, str]]:
    """(run id, pause key) of every run paused right now."""
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
            sort=FlowRunSort.ID_DESC, limit=50)
    return [(str(r.id), r.state.state_details.pause_key) for r in runs
            if r.state and r.state.state_details and r.state.state_details.pause_key]


async def run_and_decide(flow: Any, params: dict[str, Any], answers: list[Answer], *,
                         asking: asyncio.Event | None = None, gate: asyncio.Event | None = None,
                         ) -> tuple[FlowRunOutcome, list[str]]:
    """Run a flow in-process; answer each pause it makes (a new pause key each) with the next answer.

    `asking` is set when the run first pauses; the answers wait for `gate` when one is given.
    Returns the outcome and the pause keys answered, in order."""
    answered: list[str] = []

    async def answer() -> None:
        for i, a in enumerate(answers):
            found = await wait_until_async(
                _paused, what=f"a run to pause for answer {i + 1} ({a.decision})", timeout=120,
                done=lambda found: any(k not in answered for _, k in found), interval=0.2)
            run_id, key = next((r, k) for r, k in found if k not in answered)
            if asking is not None:
                asking.set()
            if gate is not None:
                await gate.wait()
            result = await resume_proven(run_id, lambda k, a=a, r=run_id: payload(a, r, k))
            assert result.status.value == "accepted", f"answer {a} at {key}: {result}"
            answered.append(key)

    answering = asyncio.create_task(answer())
    try:
        outcome = await run_flow_now(flow, params)
    finally:
        if not answering.done():
            answering.cancel()
    if answering.done() and not answering.cancelled() and answering.exception():
        raise answering.exception()  # type: ignore[misc]
    return outcome, answered
