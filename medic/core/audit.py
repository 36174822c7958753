"""The audit log: every decision and every action, one JSON line each, kept across restarts.

Why a plain append-only file: it must outlive medic serve, Prefect's database and Slack, and be
readable with `medic audit` or `jq` when everything else is down. Each record is written with one
`write()` on a file opened with O_APPEND and then fsynced, so lines from concurrent processes (the
flow, medic serve's Slack endpoint, `medic approve`) never interleave and survive a crash.

Secrets never reach the file: every text field is scrubbed of the configured secret values.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError

from medic.core.report import utcnow
from medic.settings import Settings, get_settings

__all__ = ["AuditRecord", "audit_path", "format_record", "read_records", "record"]

log = logging.getLogger("medic.core.audit")
AUDIT_FILE = "audit.jsonl"
_REDACTED = "[redacted]"


class AuditRecord(BaseModel):
    """One line of the audit log: who did what, when, where, and what came of it."""

    at: datetime = Field(default_factory=utcnow)
    kind: Literal["decision", "action", "click", "escalation"]
    flow_run_id: str | None = None
    runbook: str | None = None
    target: str | None = None
    who: str = Field(description="a Slack user id, cli:<user>, ui, alertmanager or medic")
    what: str = Field(description="e.g. approve, reject, timed out, playbook cleanup-data-dir.yml")
    where: str = Field("", description="slack, ui, cli, alert, or the hosts an action ran on")
    result: str = Field("", description="accepted, refused (why), changed, failed …")
    detail: str = ""


def audit_path(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    assert settings.state_dir is not None  # filled by Settings' validator
    return settings.state_dir / AUDIT_FILE


def _secrets(settings: Settings) -> list[str]:
    values = [getattr(settings, name) for name in type(settings).model_fields]
    return [v.get_secret_value() for v in values if isinstance(v, SecretStr) and len(v.get_secret_value()) >= 4]


def _scrub(entry: AuditRecord, secrets: list[str]) -> AuditRecord:
    fields = {}
    for name, value in entry.model_dump().items():
        if isinstance(value, str):
            for secret in secrets:
                value = value.replace(secret, _REDACTED)
        fields[name] = value
    return AuditRecord.model_validate(fields)


def record(entry: AuditRecord, *, settings: Settings | None = None) -> None:
    """Append one record durably. Never raises: an unwritable audit log is logged loudly instead,
    because failing a remediation half-way would be worse than a missing line."""
    settings = settings or get_settings()
    path = audit_path(settings)
    line = (_scrub(entry, _secrets(settings)).model_dump_json() + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error("could not write the audit log %s (%s); record was: %s", path, exc, line.decode().strip())


def read_records(*, settings: Settings | None = None, flow_run_id: str | None = None,
                 limit: int | None = None) -> list[AuditRecord]:
    """The newest `limit` records (of one run, if given), oldest first; unreadable lines are skipped."""
    path = audit_path(settings)
    if not path.is_file():
        return []
    kept: deque[AuditRecord] = deque(maxlen=limit if limit and limit > 0 else None)
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            try:
                entry = AuditRecord.model_validate_json(line)
            except ValidationError:
                log.warning("%s:%d is not an audit record; skipped", path, number)
                continue
            if flow_run_id is None or entry.flow_run_id == flow_run_id:
                kept.append(entry)
    return list(kept)


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
