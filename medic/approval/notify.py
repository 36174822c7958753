"""What medic tells people in Slack: the incident thread of a run, its approval card, escalations.

Slack is a side channel: no Slack failure raises into a remediation, and without Slack configured
(MEDIC_SLACK_BOT_TOKEN and MEDIC_SLACK_CHANNEL) every message is logged instead. The card store is
Prefect: when Prefect cannot answer it raises PrefectError — the run cannot wait for a decision
without Prefect anyway, and it then ends not approved, having changed nothing.

The approval card's channel and ts, its content and its state live in Prefect (`CardStore`, a
Variable per flow run, changed under a Prefect mutex: `medic.approval.card_store`), because three
parties touch the card at different times, maybe on different machines: the flow (posts it, shows
progress, marks it decided) on any worker, the Slack endpoint of medic serve (updates it when a click
finds the run no longer waiting), and a re-executed flow after a restart (finds and reuses its card).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from medic.approval.card import escape, slack_date
from medic.approval.card_store import CardRecord, CardStore
from medic.core.progress import Timeline
from medic.core.report import TimelineEntry, utcnow
from medic.settings import Settings, get_settings
from medic.clients.slack import ApprovalCard, Decision, IncidentThread, SlackNotifier, approval_card_blocks, decided_card_blocks

__all__ = ["ApprovalCards", "CardRecord", "CardStore", "IncidentTimeline", "flow_run_url"]

log = logging.getLogger("medic.approval.notify")
_FLUSH_TIMEOUT_S = 15.0


def flow_run_url(settings: Settings, flow_run_id: str) -> str:
    return f"{(settings.prefect_ui_url or '').rstrip('/')}/runs/flow-run/{flow_run_id}"


def _slack(settings: Settings) -> tuple[SlackNotifier, str]:
    """The notifier and channel; a disabled notifier (log only) unless both token and channel are set."""
    channel = settings.slack_channel or ""
    if settings.slack_bot_token is None or not channel:
        return SlackNotifier(token=None), channel or "(no MEDIC_SLACK_CHANNEL)"
    return SlackNotifier.from_settings(settings), channel


# --- the incident thread ---------------------------------------------------------------------------


class IncidentTimeline(Timeline):
    """A run's timeline that also tells the run's Slack incident thread, once the incident is open.

    Posts go through one background worker, in order, so Slack's retries (a 429 waits Retry-After)
    never hold up a remediation. `close()` waits a bounded time for the last posts.
    """

    def __init__(self, *, title: str, flow_run_id: str, settings: Settings | None = None) -> None:
        super().__init__()
        self.settings = settings or get_settings()
        notifier, channel = _slack(self.settings)
        self.thread = IncidentThread(notifier, channel)
        self.title = title
        self.flow_run_id = flow_run_id
        self._worker: ThreadPoolExecutor | None = None
        self._pending: list[Future[object]] = []

    def open_incident(self, evidence: str) -> None:
        """Post the thread's parent message (what was detected); later notes become replies."""
        link = f"<{flow_run_url(self.settings, self.flow_run_id)}|flow run {self.flow_run_id[:8]}>"
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"slack-{self.flow_run_id[:8]}")
        self._submit(lambda: self.thread.open(self.title, evidence))
        self._submit(lambda: self.thread.notifier.post(self.thread.channel, link, thread_ts=self.thread.ts))

    def note(self, stage: str, message: str) -> TimelineEntry:
        entry = super().note(stage, message)
        if self._worker is not None:
            text = f"*{escape(stage)}* · {escape(message)}"
            self._submit(lambda: self.thread.say(text))
        return entry

    def _submit(self, post: Callable[[], object]) -> None:
        assert self._worker is not None
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._worker.submit(post))

    def close(self, timeout: float = _FLUSH_TIMEOUT_S) -> None:
        """Wait up to `timeout` s for queued posts (the run's outcome should reach the thread)."""
        if self._worker is None:
            return
        _, late = wait(self._pending, timeout=timeout)
        if late:
            log.warning("%d Slack message(s) of run %s still queued after %.0f s; not waiting longer",
                        len(late), self.flow_run_id, timeout)
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._worker = None


# --- the approval card ----------------------------------------------------------------------------


class ApprovalCards:
    """Posts and updates approval cards, and remembers them in the `CardStore`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.notifier, self.channel = _slack(self.settings)
        self.store = CardStore()

    def show(self, card: ApprovalCard) -> CardRecord:
        """Post the card, or — when this run already has an undecided one (the run was re-executed
        after a medic serve restart) — update that card in place, so its buttons keep working."""
        existing = self.store.get(card.flow_run_id)
        if existing is not None and existing.waiting and existing.ts:
            card = card.model_copy(update={"approved_by": []})
            self.notifier.update(existing.channel or self.channel, existing.ts, _fallback(card),
                                 approval_card_blocks(card))
            return self._save(existing.model_copy(update={"card": card}))
        ts = self.notifier.post(self.channel, _fallback(card), blocks=approval_card_blocks(card))
        return self._save(CardRecord(flow_run_id=card.flow_run_id, channel=self.channel if ts else None,
                                     ts=ts, card=card, consumed=existing.consumed if existing else 0))

    def _save(self, record: CardRecord) -> CardRecord:
        self.store.change(record.flow_run_id, lambda _: record)
        return record

    def consumed(self, flow_run_id: str, *, approved_by: list[str]) -> None:
        """The flow took one input: count it (the endpoint waits for this) and show the approvals so far.

        Slack is called after the change, outside the card lock all cards share: a slow Slack must
        delay neither this count nor any other card's change (a click waits at most 10 s for it)."""
        shown_before: list[list[str]] = []

        def edit(record: CardRecord | None) -> CardRecord | None:
            if record is None:
                return None
            shown_before.append(record.card.approved_by)
            return record.model_copy(update={
                "consumed": record.consumed + 1,
                "card": record.card.model_copy(update={"approved_by": list(approved_by)})})

        saved = self.store.change(flow_run_id, edit)
        if (saved is not None and saved.ts and saved.waiting
                and shown_before and shown_before[-1] != saved.card.approved_by):
            self.notifier.update(saved.channel or self.channel, saved.ts, _fallback(saved.card),
                                 approval_card_blocks(saved.card))

    def decide(self, flow_run_id: str, decision: Decision, *, by: list[str] | None = None,
               note: str | None = None, show: bool = True) -> CardRecord | None:
        """Mark the card decided, and (`show`) replace it in Slack: the outcome instead of the buttons.
        Slack is called after the change, outside the card lock (see `consumed`)."""
        def edit(record: CardRecord | None) -> CardRecord | None:
            if record is None:
                return None
            return record.model_copy(update={"decision": decision, "decided_by": list(by or []),
                                             "decided_at": utcnow(), "note": note})

        saved = self.store.change(flow_run_id, edit)
        if saved is not None and show:
            self.refresh(saved)
        return saved

    def refresh(self, record: CardRecord) -> None:
        """Show a decided record's card as decided (buttons removed)."""
        if record.ts and record.decision is not None:
            blocks = decided_card_blocks(record.card, decision=record.decision, at=record.decided_at or utcnow(),
                                         by=record.decided_by, note=record.note)
            self.notifier.update(record.channel or self.channel, record.ts,
                                 f"{record.card.title}: {record.decision.value}", blocks)

    def escalate(self, card: ApprovalCard, *, to: str | None, waited_s: float) -> str | None:
        """Nobody answered: tell `to` (the runbook's escalate_to, else the escalation channel)."""
        target = to or self.settings.slack_escalation_channel
        text = (f"⚠️ Nobody approved *{escape(card.title)}* within {waited_s:.0f} s — not approved, nothing was "
                f"changed. Deadline was {slack_date(card.deadline)}. <{escape(card.flow_run_url)}|Flow run>")
        if not target:
            log.warning("approval of %s timed out and no escalation target is set "
                        "(runbook approval.escalate_to or MEDIC_SLACK_ESCALATION_CHANNEL): %s", card.flow_run_id, text)
            return None
        return self.notifier.post(target, text)


def _fallback(card: ApprovalCard) -> str:
    return f"Approval needed: {card.title} — {card.planned_action}"
