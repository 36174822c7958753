"""The audit record: every decision and every action medic takes, as one model, scrubbed of secrets.

Only the model lives here (core imports nothing of Prefect). The log itself is kept in Prefect, where
every worker and every `medic audit` can reach it: `medic.orchestration.audit_store` (`record`,
`read_records`). Secrets never reach it: `scrubbed` replaces every configured secret value in every
text field before a record leaves the process.

Kinds: `intent` (about to change something — written, confirmed, *before* acting), `action` (what
the change did), `decision` (a human's approval or rejection, or a timeout), `click` (a Slack button
press and what came of it), `escalation` (nobody answered; who was told).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from medic.core.report import utcnow
from medic.settings import Settings

__all__ = ["AuditKind", "AuditRecord", "format_record", "scrubbed"]

_REDACTED = "[redacted]"
AuditKind = Literal["intent", "action", "decision", "click", "escalation"]


class AuditRecord(BaseModel):
    """One entry of the audit log: who did what, when, where, and what came of it."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex,
                    description="unique per record: a write retried after a lost answer is still one record")
    at: datetime = Field(default_factory=utcnow)
    kind: AuditKind
    flow_run_id: str | None = None
    runbook: str | None = None
    target: str | None = None
    who: str = Field(description="a Slack user id, cli:<user>, ui, alertmanager or medic")
    what: str = Field(description="e.g. approve, reject, timed out, playbook cleanup-data-dir.yml")
    where: str = Field("", description="slack, ui, cli, alert, or the hosts an action ran on")
    result: str = Field("", description="accepted, refused (why), changed, failed …")
    detail: str = ""


def _secrets(settings: Settings) -> list[str]:
    values = [getattr(settings, name) for name in type(settings).model_fields]
    return [v.get_secret_value() for v in values if isinstance(v, SecretStr) and len(v.get_secret_value()) >= 4]


def scrubbed(entry: AuditRecord, settings: Settings) -> AuditRecord:
    """`entry` with every configured secret value (any SecretStr setting) replaced by [redacted]."""
    secrets = _secrets(settings)
    fields = {}
    for name, value in entry.model_dump().items():
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, _REDACTED)
        fields[name] = value
    return AuditRecord.model_validate(fields)


def format_record(entry: AuditRecord) -> str:
    """One readable line: time, kind, who, what, where, result, run and runbook."""
    when = entry.at.strftime("%Y-%m-%d %H:%M:%S")
    scope = " ".join(part for part in (
        f"{entry.runbook} on {entry.target}" if entry.runbook else "",
        f"run {entry.flow_run_id}" if entry.flow_run_id else "") if part)
    text = f"{when}  {entry.kind:<10} {entry.who:<16} {entry.what}"
    if entry.where:
        text += f" via {entry.where}"
    if entry.result:
        text += f" → {entry.result}"
    if scope:
        text += f"  [{scope}]"
    if entry.detail:
        text += f"\n{'':<31}{entry.detail}"
    return text
