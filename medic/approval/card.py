"""The approval card: what a human sees before a risky step, as Slack Block Kit and as Markdown.

A card is what an on-call human sees before a risky recovery step, so it carries everything needed to
decide without leaving Slack: what was detected (query and value), what diagnosis found, what exactly
will run where, why a human is asked, who may decide and until when the run waits. The Prefect UI's
Resume dialog shows the same card as Markdown (`approval_markdown`), and the run's log says the same
(`waiting_line`), so the three can never disagree. Builders are pure functions so tests can check them
against Slack's documented block shapes and limits without a network.

Free text (queries, command lines, check-mode output) is escaped for Slack mrkdwn (``&``, ``<``, ``>``),
so a PromQL ``>`` cannot turn into a link or a mention, and clipped to Slack's limits with "…".
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, Field

from medic.errors import ApprovalError

__all__ = [
    "APPROVAL_BLOCK_ID",
    "APPROVE_ACTION_ID",
    "REJECT_ACTION_ID",
    "ApprovalCard",
    "Decision",
    "approval_card_blocks",
    "approval_markdown",
    "decided_card_blocks",
    "deadline_utc",
    "waiting_line",
    "who_may_decide",
]

APPROVAL_BLOCK_ID = "medic_approval"
APPROVE_ACTION_ID = "medic_approve"
REJECT_ACTION_ID = "medic_reject"

# Slack's documented limits (Block Kit reference).
SECTION_TEXT_MAX = 3000
HEADER_TEXT_MAX = 150
BUTTON_VALUE_MAX = 2000
CONFIRM_TITLE_MAX = 100
CONFIRM_TEXT_MAX = 300

_SLACK_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_PARTIAL_ENTITY = re.compile(r"&[a-z]*$")


class ApprovalCard(BaseModel):
    """Everything a human needs to approve or reject one risky step of one flow run."""

    title: str = Field(min_length=1, description="what is wrong, e.g. 'nginx down on web-2'")
    runbook: str = Field(min_length=1)
    targets: list[str] = Field(min_length=1, description="inventory hosts or groups the action touches")
    detect_query: str = Field(description="the PromQL that detected the problem")
    detect_value: str = Field(description="what the query returned, as shown to the human")
    diagnosis_summary: str
    planned_action: str = Field(description="e.g. 'playbook restart-service.yml on web-2' or the command")
    check_mode_result: str | None = Field(None, description="dry-run output of the planned action")
    flow_run_id: str = Field(min_length=1, max_length=BUTTON_VALUE_MAX, description="the button value")
    flow_run_url: str
    deadline: AwareDatetime = Field(description="when the run stops waiting (counts as not approved)")
    approvals_required: int = Field(1, ge=1)
    approved_by: list[str] = Field(default_factory=list, description="Slack user ids that approved so far")
    why: str = Field("", description="why a human is asked: the runbook's policy, or the flap guard")
    approvers: list[str] = Field(default_factory=list, description="Slack user ids allowed to decide")
    approver_group: str | None = Field(None, description="Slack user group whose members may decide")


class Decision(StrEnum):
    """How a wait for approval ended; the card is updated to say so."""

    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    WITHDRAWN = "withdrawn"  # the alert resolved while waiting: no longer needed
    GONE = "gone"  # the run finished or was cancelled elsewhere (e.g. decided in the Prefect UI)


def approval_card_blocks(card: ApprovalCard) -> list[dict]:
    """The card while the run waits: evidence, plan, deadline and the Approve / Reject buttons."""
    return [*_body_blocks(card), _actions_block(card)]


def decided_card_blocks(
    card: ApprovalCard,
    *,
    decision: Decision | str,
    at: datetime,
    by: str | list[str] | None = None,
    note: str | None = None,
) -> list[dict]:
    """The same card after the wait ended: buttons removed so nobody clicks a stale card."""
    decision = Decision(decision)
    when = slack_date(at)
    who = ", ".join(mention(b) for b in ([by] if isinstance(by, str) else by or [])) or "someone"
    line = {
        Decision.APPROVED: f"✅ Approved by {who} at {when}",
        Decision.REJECTED: f"❌ Rejected by {who} at {when}",
        Decision.TIMED_OUT: f"⌛ No longer waiting: the approval timed out at {when} (not approved)",
        Decision.WITHDRAWN: f"↩️ No longer needed: withdrawn by {who} at {when} (nothing was changed)",
        Decision.GONE: f"⌛ No longer waiting: the run finished or was cancelled (seen at {when})",
    }[decision]
    if note:
        line += f"\n>{escape(note)}"
    return [*_body_blocks(card), _section(line)]


# --- the same card in the Prefect UI and the run's log -----------------------------------------------


def deadline_utc(card: ApprovalCard) -> str:
    """The deadline as logs and the Prefect UI show it: ``2026-11-30 14:05:09 UTC``."""
    return card.deadline.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def who_may_decide(card: ApprovalCard) -> str:
    """Who counts: only approvers medic can verify (approvers.yaml), whichever way they decide."""
    named = [*card.approvers] + ([f"members of {card.approver_group}"] if card.approver_group else [])
    n = card.approvals_required
    return (f"{n} approval{'s' if n > 1 else ''}{' from distinct people' if n > 1 else ''} by "
            f"{', '.join(named) or 'anyone in the approver directory'} — verified: a Slack button, the "
            f"approver's 6-digit code in the Prefect UI, or `medic approve` with their credential")


def waiting_line(card: ApprovalCard) -> str:
    """The run's log line while it waits: until when, who, why, and the three ways to decide."""
    return (f"waiting until {deadline_utc(card)} for {who_may_decide(card)}"
            + (f"; why a human: {card.why}" if card.why else "")
            + f" — decide on the Slack card, with Resume on this run in the Prefect UI, or "
              f"`medic approve {card.flow_run_id}` (--reject to reject). No decision by then: nothing is changed")


def _md_block(text: str) -> str:
    return "```\n" + (text.strip() or "(none)").replace("```", "'''") + "\n```"


def _md_code(text: str) -> str:
    return "`" + text.replace("`", "ˋ") + "`"


def approval_markdown(card: ApprovalCard) -> str:
    """The card as the Markdown description of the Prefect UI's Resume dialog (same facts as Slack)."""
    lines = [
        f"### Approval needed: {card.title}",
        "",
        f"**Runbook** {_md_code(card.runbook)} · **targets** {', '.join(_md_code(t) for t in card.targets)}",
        "",
    ]
    if card.why:
        lines += [f"**Why a human:** {card.why}", ""]
    lines += [
        f"**Detected** {_md_code(card.detect_query)} → **{card.detect_value}**",
        "",
        "**Diagnosis**",
        _md_block(card.diagnosis_summary),
        "",
        "**Planned action** (runs only once approved)",
        _md_block(card.planned_action),
        "",
    ]
    if card.check_mode_result is not None:
        lines += ["**Check mode (dry run)**", _md_block(card.check_mode_result), ""]
    so_far = (f" · approved so far: {', '.join(card.approved_by)}" if card.approved_by else "")
    lines += [
        f"**Who may decide:** {who_may_decide(card)}{so_far}",
        "",
        f"**Deadline:** {deadline_utc(card)} — no decision by then counts as *not approved*; nothing is changed.",
        "",
        "**How:** choose *approve* or *reject*, put your name in *approver*, add a comment, and submit — or "
        f"use the Slack card, or run {_md_code(f'medic approve {card.flow_run_id}')} (add `--reject` to reject).",
        "",
        f"[Flow run {card.flow_run_id[:8]}]({card.flow_run_url})",
    ]
    return "\n".join(lines)


# --- building blocks -------------------------------------------------------------------------------


def _body_blocks(card: ApprovalCard) -> list[dict]:
    targets = ", ".join(f"`{escape(t)}`" for t in card.targets)
    plan = f"*Planned action*\n```{escape(card.planned_action)}```"
    blocks: list[dict] = [
        {"type": "header", "text": _plain(card.title, HEADER_TEXT_MAX)},
        _section(f"*Runbook:* `{escape(card.runbook)}`\n*Targets:* {targets}"
                 + (f"\n*Why a human:* {escape(card.why)}" if card.why else "")),
        _section(f"*Detected*\n`{_code_span(card.detect_query)}` → *{escape(card.detect_value)}*"),
        _section(f"*Diagnosis*\n{escape(card.diagnosis_summary)}"),
        _section(plan),
    ]
    if card.check_mode_result is not None:
        blocks.append(_section(f"*Check mode (dry run)*\n```{escape(card.check_mode_result)}```"))
    link = f"<{escape(card.flow_run_url)}|Flow run {escape(card.flow_run_id[:8])}>"
    context = f"{link} · decide by {slack_date(card.deadline)}"
    if card.approvals_required > 1:
        who = ", ".join(mention(u) for u in card.approved_by) or "none yet"
        context += f" · Approvals: {len(card.approved_by)} of {card.approvals_required} ({who})"
    blocks.append({"type": "context", "elements": [_mrkdwn(context)]})
    return blocks


def _actions_block(card: ApprovalCard) -> dict:
    confirm = {
        "title": _plain(f"Approve: {card.title}", CONFIRM_TITLE_MAX),
        "text": _plain(f"{card.planned_action} on {', '.join(card.targets)}", CONFIRM_TEXT_MAX),
        "confirm": _plain("Approve and run"),
        "deny": _plain("Cancel"),
    }
    return {
        "type": "actions",
        "block_id": APPROVAL_BLOCK_ID,
        "elements": [
            _button("Approve", APPROVE_ACTION_ID, card.flow_run_id, style="primary", confirm=confirm),
            _button("Reject", REJECT_ACTION_ID, card.flow_run_id, style="danger"),
        ],
    }


def _button(text: str, action_id: str, value: str, *, style: str, confirm: dict | None = None) -> dict:
    button = {"type": "button", "text": _plain(text), "action_id": action_id, "value": value, "style": style}
    if confirm is not None:
        button["confirm"] = confirm
    return button


def _section(text: str) -> dict:
    return {"type": "section", "text": _mrkdwn(text)}


def _mrkdwn(text: str) -> dict:
    return {"type": "mrkdwn", "text": clip(text, SECTION_TEXT_MAX)}


def _plain(text: str, limit: int = 75) -> dict:
    return {"type": "plain_text", "text": clip(text, limit), "emoji": True}


# --- text helpers ----------------------------------------------------------------------------------


def clip(text: str, limit: int) -> str:
    """Cut to ``limit`` characters with "…", never leaving half an ``&amp;`` entity behind."""
    if len(text) <= limit:
        return text
    return _PARTIAL_ENTITY.sub("", text[: limit - 1]) + "…"


def escape(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code_span(text: str) -> str:
    # A backtick would end the code span early; Slack has no escape for it, so use a look-alike.
    return escape(text).replace("`", "ˋ")


def mention(user: str) -> str:
    """``<@U123>`` for a Slack user id (Slack renders the name), the escaped text otherwise."""
    return f"<@{user}>" if _SLACK_USER_ID.match(user) else escape(user)


def slack_date(at: datetime) -> str:
    """Slack shows ``<!date^…>`` in each reader's own time zone; the UTC fallback is for old clients."""
    if at.tzinfo is None:
        raise ApprovalError(
            f"time {at.isoformat()} has no time zone; pass an aware datetime (e.g. datetime.now(UTC))"
        )
    fallback = at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"
