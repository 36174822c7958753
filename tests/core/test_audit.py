"""The audit log: durable JSON lines, safe under concurrent writers, secrets scrubbed, `medic audit`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from medic.core.audit import AuditRecord, audit_path, format_record, read_records, record
from medic.settings import Settings

BOT_TOKEN = "xoxb-audit-test-0123456789"
SIGNING = "audit-signing-secret-abcdef"


def settings_for(state_dir: Path) -> Settings:
    return Settings(state_dir=state_dir, slack_bot_token=SecretStr(BOT_TOKEN), slack_signing_secret=SecretStr(SIGNING))


def decision(run: str, who: str = "U0ALICE", **fields: str) -> AuditRecord:
    return AuditRecord(kind="decision", flow_run_id=run, runbook="disk-full", target="web-1", who=who,
                       what="approved", where="slack", result="recovery runs", **fields)


def test_records_come_back_in_order_filtered_and_limited(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    for i in range(5):
        record(decision(f"run-{i % 2}", who=f"U{i}"), settings=settings)
    assert [r.who for r in read_records(settings=settings)] == ["U0", "U1", "U2", "U3", "U4"]
    assert [r.who for r in read_records(settings=settings, flow_run_id="run-0")] == ["U0", "U2", "U4"]
    assert [r.who for r in read_records(settings=settings, limit=2)] == ["U3", "U4"]
    assert read_records(settings=settings_for(tmp_path / "empty")) == []


def test_secrets_are_scrubbed_before_writing(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    record(decision("run-1", detail=f"token={BOT_TOKEN} secret={SIGNING}"), settings=settings)
    text = audit_path(settings).read_text()
    assert BOT_TOKEN not in text and SIGNING not in text
    assert read_records(settings=settings)[0].detail == "token=[redacted] secret=[redacted]"


def test_appends_keep_existing_lines_and_skip_unreadable_ones(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    path = audit_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a record\n")
    record(decision("run-1"), settings=settings)
    assert path.read_text().splitlines()[0] == "not a record"
    assert [r.flow_run_id for r in read_records(settings=settings)] == ["run-1"]


WRITER = """
import sys
from pathlib import Path
from medic.core.audit import AuditRecord, record
from medic.settings import Settings
settings = Settings(state_dir=Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    record(AuditRecord(kind="action", flow_run_id=sys.argv[2], who="medic", what="x" * 3000, result=str(i)),
           settings=settings)
"""


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"w{n}", "40"]) for n in range(4)]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0, 0]
    lines = audit_path(settings_for(tmp_path)).read_text().splitlines()
    assert len(lines) == 160
    assert all(json.loads(line)["what"] == "x" * 3000 for line in lines)
    for n in range(4):
        mine = [r.result for r in read_records(settings=settings_for(tmp_path), flow_run_id=f"w{n}")]
        assert mine == [str(i) for i in range(40)]


def test_medic_audit_prints_readable_lines_after_a_restart(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    record(decision("run-a"), settings=settings)
    record(AuditRecord(kind="action", flow_run_id="run-a", runbook="disk-full", target="web-1", who="U0ALICE",
                       what="playbook cleanup-data-dir.yml on web-1", where="web-1", result="web-1: changed"),
           settings=settings)
    record(decision("run-b", who="U0BOB"), settings=settings)
    env = {**os.environ, "MEDIC_STATE_DIR": str(tmp_path)}
    shown = subprocess.run([sys.executable, "-m", "medic", "audit", "--run", "run-a"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 2 and "U0BOB" not in shown.stdout
    assert "decision" in lines[0] and "U0ALICE" in lines[0] and "approved via slack → recovery runs" in lines[0]
    assert "playbook cleanup-data-dir.yml on web-1 via web-1 → web-1: changed" in lines[1]
    assert "[disk-full on web-1 run run-a]" in lines[1]
    last = subprocess.run([sys.executable, "-m", "medic", "audit", "--limit", "1"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert last.stdout.splitlines() == [format_record(read_records(settings=settings)[-1])]
    none = subprocess.run([sys.executable, "-m", "medic", "audit", "--run", "nope"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert none.returncode == 0 and "no audit records for run nope" in none.stderr
