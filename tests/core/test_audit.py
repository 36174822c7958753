"""The audit record itself: secrets scrubbed before it leaves the process, one readable line each.

Where the log is kept (Prefect, shared by every process and machine) is tested against a real
Prefect server in tests/orchestration/test_shared_state.py.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pydantic import SecretStr

from medic.core.audit import AuditRecord, format_record, scrubbed
from medic.settings import Settings

BOT_TOKEN = "xoxb-audit-test-0123456789"
SIGNING = "audit-signing-secret-abcdef"


def settings_for(state_dir: Path) -> Settings:
    return Settings(state_dir=state_dir, slack_bot_token=SecretStr(BOT_TOKEN), slack_signing_secret=SecretStr(SIGNING))


def decision(run: str, who: str = "U0ALICE", **fields: str) -> AuditRecord:
    return AuditRecord(kind="decision", flow_run_id=run, runbook="disk-full", target="web-1", who=who,
                       what="approved", where="slack", result="recovery runs", **fields)


def test_every_configured_secret_is_scrubbed_from_every_text_field(tmp_path: Path) -> None:
    entry = decision("run-1", who=f"cli:{BOT_TOKEN}", detail=f"token={BOT_TOKEN} secret={SIGNING}")
    clean = scrubbed(entry, settings_for(tmp_path))
    assert clean.detail == "token=[redacted] secret=[redacted]" and clean.who == "cli:[redacted]"
    assert BOT_TOKEN not in clean.model_dump_json() and SIGNING not in clean.model_dump_json()
    assert (clean.id, clean.at, clean.what) == (entry.id, entry.at, entry.what)  # the rest is untouched
    assert entry.detail.startswith("token=xoxb"), "the caller's record is not changed in place"


def test_each_record_has_its_own_id() -> None:
    assert len({decision("run-1").id for _ in range(100)}) == 100


def test_a_record_reads_as_one_line_with_its_scope() -> None:
    at = datetime(2026, 11, 30, 12, 0, 1, tzinfo=timezone.utc)
    line = format_record(AuditRecord(at=at, kind="action", flow_run_id="run-a", runbook="disk-full", target="web-1",
                                     who="U0ALICE", what="playbook cleanup-data-dir.yml on web-1", where="web-1",
                                     result="web-1: changed"))
    assert line == ("2026-11-30 12:00:01  action     U0ALICE          playbook cleanup-data-dir.yml on web-1 via web-1 "
                    "→ web-1: changed  [disk-full on web-1 run run-a]")
    with_detail = format_record(AuditRecord(at=at, kind="intent", who="medic", what="restart", detail="why"))
    assert with_detail.splitlines() == ["2026-11-30 12:00:01  intent     medic            restart", f"{'':<31}why"]
