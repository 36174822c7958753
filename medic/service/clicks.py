"""Approve / Reject clicks on an approval card become decisions: the rules, whichever way a click comes in.

The HTTP endpoint (`medic.service.slack_endpoint`) and Socket Mode (`medic.service.socket_mode`) only
verify and parse; both hand the click to the one `ClickHandler` of the medic serve process, so both
obey the same rules:

* only the runbook's approvers may decide: the clicking Slack user must be in the approver directory
  (`approvers.yaml`, by `slack_id`) and admitted by the runbook's policy (named, or in its user
  group); anyone else changes nothing and is told so in an ephemeral message. An allowed click is
  sent with medic serve's proof (`medic.approval.identity.slack_proof`), which the flow verifies —
  a click typed by hand into Prefect's API proves nothing;
* clicks for one run are handled one at a time, and a click that can no longer count (already
  decided, same approver again) is answered without resuming: a double click resumes once;
* a resume is checked: after "accepted" the handler waits until the flow has taken the input; a
  run that nobody executes any more is marked Crashed instead of being left "Running";
* a click for a run that no longer waits (finished, timed out, gone) updates the card to say so.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from collections.abc import Callable
from enum import StrEnum
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from medic.approval.card import APPROVE_ACTION_ID, REJECT_ACTION_ID, Decision, escape, slack_date
from medic.approval.answers import resume_proven
from medic.approval.directory import Approver, allowed_names, load_directory
from medic.approval.identity import slack_proof
from medic.approval.notify import ApprovalCards, CardRecord
from medic.clients.slack_interactivity import BlockAction, SlackRequestRefused
from medic.core import audit
from medic.orchestration import audit_store
from medic.core.polling import retry_async
from medic.core.report import utcnow
from medic.core.runbook import Approval, Runbook, find_runbook
from medic.errors import MedicError, PrefectError
from medic.orchestration.pause import ResumeOutcome, ResumeStatus
from medic.orchestration.prefect_compat import force_flow_run_state
from medic.settings import Settings

__all__ = ["ClickHandler", "ClickResult", "check_click"]

log = logging.getLogger("medic.service.clicks")

ACK_TIMEOUT_S = 10.0  # an accepted resume must be taken by the flow within this, else nobody runs it
REPAUSE_WAIT_S = 20.0  # a run between two pauses (N-of-M, or re-executed after a restart) pauses again soon
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
_DECISIONS = {APPROVE_ACTION_ID: "approve", REJECT_ACTION_ID: "reject"}


class ClickResult(StrEnum):
    """What became of one click (also the `result` of its audit record)."""

    ACCEPTED = "accepted"
    UNAUTHORIZED = "refused: not an approver"
    UNVERIFIABLE = "refused: medic serve has no approval key"
    ALREADY_DECIDED = "ignored: already decided"
    ALREADY_APPROVED = "ignored: this approver already approved"
    NOT_WAITING = "not waiting any more"
    TIMED_OUT = "timed out"
    RUN_GONE = "run gone"
    ORPHANED = "run had nobody executing it: marked crashed"
    REJECTED_INPUT = "input rejected"
    BUSY = "run not paused yet: try again"
    ERROR = "error"


def check_click(action: BlockAction) -> None:
    """Refuse (400) a click that is not one of medic's approval buttons carrying a flow run id."""
    if action.action_id not in _DECISIONS:
        raise SlackRequestRefused(status=400, reason=f"unknown action_id {action.action_id[:40]!r}")
    try:
        UUID(action.value)
    except ValueError:
        raise SlackRequestRefused(status=400, reason="button value is not a flow run id") from None


class ClickHandler:
    """Turns a verified click into a resume of the paused flow run; one per medic serve process."""

    def __init__(self, *, settings: Settings, runbooks: dict[str, Runbook] | None = None,
                 is_executing: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        self.cards = ApprovalCards(settings)
        self.runbooks = runbooks or {}
        self.is_executing = is_executing or (lambda run_id: False)
        # one lock per run while its clicks are handled; dropped with the last click (a weak map: a
        # long-lived medic serve must not keep one per run it ever saw clicked)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def handle(self, action: BlockAction) -> ClickResult:
        """Handle one click, after any earlier click for the same run; audit what came of it."""
        run_id = action.value
        lock = self.lock_for(run_id)
        async with lock:
            try:
                result, runbook, detail = await self._handle(action)
            except MedicError as exc:  # Prefect unreachable …: tell the clicker, keep serving
                log.warning("click by %s on run %s failed: %s", action.user_id, run_id, exc)
                await self._tell(action, f"medic could not act on your click: {exc}")
                result, runbook, detail = ClickResult.ERROR, None, str(exc)
        await asyncio.to_thread(  # the click was already forwarded: never fail it for the log (it says so loudly)
            audit_store.record, audit.AuditRecord(kind="click", flow_run_id=run_id, runbook=runbook,
                                                  who=action.user_id, what=_DECISIONS[action.action_id], where="slack",
                                                  result=result.value, detail=detail),
            settings=self.settings, fail_closed=False)
        return result

    def lock_for(self, run_id: str) -> asyncio.Lock:
        """The lock that orders the clicks of one run: the same one while any click of it holds it."""
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = asyncio.Lock()
        return lock

    async def _handle(self, action: BlockAction) -> tuple[ClickResult, str | None, str]:
        run_id, user, decision = action.value, action.user_id, _DECISIONS[action.action_id]
        found = await _runbook_of(run_id)
        if found is None:
            await self._end_card(action, Decision.GONE, "the flow run no longer exists")
            await self._tell(action, "That run no longer exists; nothing was changed.")
            return ClickResult.RUN_GONE, None, "no such flow run"
        name, state = found
        policy = self._policy(name)
        key = self.settings.approval_key
        if key is None or not key.get_secret_value():
            await self._tell(action, "medic cannot verify approvals: MEDIC_APPROVAL_KEY is not configured on "
                                     "medic serve. Nothing was changed.")
            return ClickResult.UNVERIFIABLE, name, "MEDIC_APPROVAL_KEY not set"
        directory = await asyncio.to_thread(load_directory, self.settings.approvers_file)
        entry = directory.by_slack_id(user)
        allowed = await asyncio.to_thread(allowed_names, policy.approvers, policy.approver_group, directory,
                                          self.cards.notifier.usergroup_members)
        if entry is None or entry.name not in allowed:
            who = ", ".join(escape(n) for n in sorted(allowed)) or "nobody in the approver directory"
            why = "you are not in medic's approver directory" if entry is None else "you are not named by its policy"
            await self._tell(action, f"You are not an approver of runbook `{escape(name)}` ({why}; approvers: "
                                     f"{who}). Nothing was changed.")
            return ClickResult.UNAUTHORIZED, name, (f"{why}; approvers {policy.approvers}, "
                                                    f"group {policy.approver_group}")
        record = await asyncio.to_thread(self.cards.store.get, run_id)
        if record is not None and not record.waiting:
            await asyncio.to_thread(self.cards.refresh, record)
            await self._tell(action, f"Already decided: {record.decision.value if record.decision else ''}.")
            return ClickResult.ALREADY_DECIDED, name, record.decision.value if record.decision else ""
        if record is not None and decision == "approve" and user in record.card.approved_by:
            await self._tell(action, "You have already approved; waiting for another approver.")
            return ClickResult.ALREADY_APPROVED, name, ""
        if state in _TERMINAL:
            await self._end_card(action, Decision.GONE, f"the run had already ended ({state})")
            await self._tell(action, f"That run has already ended ({state}); nothing was changed.")
            return ClickResult.NOT_WAITING, name, state
        return await self._resume(action, name, record, entry)

    async def _resume(self, action: BlockAction, name: str, record: CardRecord | None,
                      approver: Approver) -> tuple[ClickResult, str, str]:
        run_id, decision = action.value, _DECISIONS[action.action_id]
        assert self.settings.approval_key is not None  # checked in _handle
        key = self.settings.approval_key.get_secret_value()

        def payload_for(pause_key: str) -> dict[str, str]:  # signed for the pause the run is in now
            return {"decision": decision, "approver": approver.name, "comment": "", "proof": slack_proof(
                key, run_id=run_id, pause_key=pause_key, decision=decision, user=action.user_id)}

        consumed = record.consumed if record else 0
        outcome = await _resume_when_paused(run_id, payload_for)
        # Paused for REPAUSE_WAIT_S without the input schema a live flow stores right after pausing:
        # the process that paused it died in between, and the run can never take a decision.
        half_paused = outcome.status is ResumeStatus.NOT_PAUSED and outcome.state_type == "PAUSED"
        if outcome.accepted or (half_paused and not self.is_executing(run_id)):
            if outcome.accepted and await self._taken(run_id, consumed):
                return ClickResult.ACCEPTED, name, ""
            if outcome.accepted and self.is_executing(run_id):
                log.warning("run %s accepted a decision but has not taken it within %.0f s", run_id, ACK_TIMEOUT_S)
                return ClickResult.ACCEPTED, name, "accepted, not yet taken by the flow"
            await _mark_crashed(run_id)
            await self._end_card(action, Decision.GONE, "nobody was executing the run any more (its process is "
                                                        "gone); marked Crashed — nothing was changed")
            await self._tell(action, "That run had nobody executing it any more; it is marked Crashed and nothing "
                                     "was changed. Start it again if it is still needed.")
            return ClickResult.ORPHANED, name, "no flow took the input"
        if outcome.status is ResumeStatus.TIMED_OUT:
            await self._end_card(action, Decision.TIMED_OUT, None)
            await self._tell(action, "Too late: the approval had timed out; nothing was changed.")
            return ClickResult.TIMED_OUT, name, outcome.reason
        if outcome.status is ResumeStatus.NOT_FOUND:
            await self._end_card(action, Decision.GONE, "the flow run no longer exists")
            return ClickResult.RUN_GONE, name, outcome.reason
        if outcome.status is ResumeStatus.REJECTED_INPUT:
            await self._tell(action, f"Prefect refused the decision: {escape(outcome.reason)}")
            return ClickResult.REJECTED_INPUT, name, outcome.reason
        if (outcome.state_type or "") in _TERMINAL:
            await self._end_card(action, Decision.GONE, f"the run had already ended ({outcome.state_type})")
            await self._tell(action, f"That run is no longer waiting ({outcome.state_type}); nothing was changed.")
            return ClickResult.NOT_WAITING, name, outcome.reason
        await self._tell(action, f"That run is not waiting for a decision right now ({outcome.state_type}); "
                                 "try again in a moment.")
        return ClickResult.BUSY, name, outcome.reason

    def _policy(self, runbook: str) -> Approval:
        spec = self.runbooks.get(runbook) or find_runbook(runbook, self.settings.runbooks_dir)
        return spec.approval

    async def _taken(self, run_id: str, consumed: int) -> bool:
        """Wait until the flow has counted one more input (it writes the count to the card store)."""
        async def look() -> bool:
            record = await asyncio.to_thread(self.cards.store.get, run_id)
            return record is None or record.consumed > consumed  # no record: Slack off there; trust the resume

        return await retry_async(look, delays=itertools.repeat(0.02), retry_if=lambda taken: not taken,
                                 timeout=ACK_TIMEOUT_S)

    async def _end_card(self, action: BlockAction, decision: Decision, note: str | None) -> None:
        """Show on the card that the run no longer waits (the stored card, else the clicked message)."""
        record = await asyncio.to_thread(self.cards.decide, action.value, decision, note=note)
        if record is None or not record.ts:
            blocks = [b for b in action.message_blocks if b.get("type") != "actions"]
            line = f"⌛ No longer waiting ({slack_date(utcnow())}): {escape(note or decision.value)}"
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": line}})
            await asyncio.to_thread(self.cards.notifier.update, action.channel_id, action.message_ts,
                                    f"No longer waiting: {note or decision.value}", blocks)

    async def _tell(self, action: BlockAction, text: str) -> None:
        await asyncio.to_thread(self.cards.notifier.post_ephemeral, action.channel_id, action.user_id, text)


async def _runbook_of(run_id: str) -> tuple[str, str] | None:
    """(runbook name, state type) of a flow run, from its parameters in Prefect; None if it is gone."""
    try:
        async with get_client() as client:
            run = await client.read_flow_run(UUID(run_id))
    except ObjectNotFound:
        return None
    except Exception as exc:  # noqa: BLE001 - any client failure is "Prefect cannot answer"
        raise PrefectError(f"cannot read flow run {run_id} from the Prefect API: {exc}") from exc
    state = run.state.type.value if run.state else "UNKNOWN"
    return str((run.parameters or {}).get("runbook", "")), state


async def _resume_when_paused(run_id: str, payload_for: Callable[[str], dict[str, str]]) -> ResumeOutcome:
    """Resume; a run that is between pauses (or re-executing after a restart) gets a few seconds to
    pause again before the answer counts as "not waiting"."""
    def between_pauses(outcome: ResumeOutcome) -> bool:
        return (outcome.status in (ResumeStatus.ALREADY_RESUMED, ResumeStatus.NOT_PAUSED)
                and (outcome.state_type or "") not in _TERMINAL)

    return await retry_async(lambda: resume_proven(run_id, payload_for), delays=itertools.repeat(0.2),
                             retry_if=between_pauses, timeout=REPAUSE_WAIT_S)


async def _mark_crashed(run_id: str) -> None:
    async with get_client() as client:
        await force_flow_run_state(client, UUID(run_id), Crashed(
            message="a decision arrived but no process was executing this run any more; nothing was changed"))
