"""Sending a proven decision to a paused run: `medic approve`, Slack clicks and alert withdrawals.

A proof is bound to the pause it answers (`medic.approval.identity`), so the payload is built for the
pause the run is in *now*: read its key from the run's state, sign, resume. A run between two pauses
(N-of-M, a restart) has a new key by the time it is asked again, and gets a fresh proof.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from medic.errors import PrefectError
from medic.orchestration.pause import ResumeOutcome, ResumeStatus, resume_with_input

__all__ = ["paused_under", "resume_proven"]


async def paused_under(run_id: str) -> tuple[str | None, str | None]:
    """(key of the pause the run is in or None, its state type or None when the run is gone)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        async with get_client() as client:
            run = await client.read_flow_run(UUID(run_id))
    except (ObjectNotFound, ValueError):
        return None, None
    except Exception as exc:  # noqa: BLE001 - any client failure is "Prefect cannot answer"
        raise PrefectError(f"cannot read flow run {run_id} from the Prefect API: {exc}") from exc
    if run.state is None:
        return None, "PENDING"
    details = run.state.state_details
    key = details.pause_key if run.state.is_paused() and details is not None else None
    return key, run.state.type.value


async def resume_proven(run_id: str, payload_for: Callable[[str], dict[str, Any]]) -> ResumeOutcome:
    """Resume with `payload_for(pause key)`. A run not paused right now is answered NOT_PAUSED with its
    state (NOT_FOUND when gone), so callers keep their retry rules; nothing unsigned is ever sent."""
    key, state_type = await paused_under(run_id)
    if state_type is None:
        return ResumeOutcome(status=ResumeStatus.NOT_FOUND, reason=f"no flow run {run_id}")
    if key is None:
        return ResumeOutcome(status=ResumeStatus.NOT_PAUSED, state_type=state_type,
                             reason=f"the run is {state_type}, not waiting for a decision")
    return await resume_with_input(run_id, payload_for(key))
