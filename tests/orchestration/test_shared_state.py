"""State every worker reaches, kept in Prefect: the audit log, the approval cards, the flap guard.

Against the session lab's real Prefect server. "Another machine" is a separate process with its own
MEDIC_STATE_DIR and only the Prefect API in common; each test uses fresh run ids / runbook names,
because the server also holds what other tests wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

from medic.approval.card_store import CardRecord, CardStore
from medic.clients.slack import ApprovalCard
from medic.core.audit import AuditRecord
from medic.core.report import Outcome
from medic.errors import DependencyError, ExitCode, PrefectError
from medic.orchestration import audit_store
from medic.orchestration.audit_spool import SPOOL_NAME, pending
from medic.orchestration.audit_store import read_records, record
from medic.orchestration.flap_guard import FlapGuard
from medic.settings import Settings, get_settings
from medic_lab.state import LabState
from tests.support.flows import remediate
from tests.support.lab_health import Inject, broken, seen  # noqa: F401 (fixtures)
from tests.support.prefect_api import prefect_json
from tests.support.closed_port import closed_port  # noqa: F401  (a fixture: a port held closed)

LOCAL_STATE_NAMES = ("audit.jsonl", "approval-cards", "flap-guard.json")

WRITER = """
import json, sys
from medic.approval.card_store import CardStore
from medic.core.audit import AuditRecord
from medic.core.polling import wait_until
from medic.orchestration.audit_spool import SPOOL_NAME, pending
from medic.orchestration.audit_store import read_records, record

name, run, count, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = CardStore()
for i in range(count):
    record(AuditRecord(kind="decision", flow_run_id=run, runbook="shared-state", target="web-1", who=name,
                       what="approve", result=str(i)))
    store.change(run, lambda r: r.model_copy(update={"consumed": r.consumed + 1,
                                                      "decided_by": [*r.decided_by, f"{name}-{i}"]}))
seen = wait_until(lambda: read_records(flow_run_id=run), what=f"all {total} records of run {run}", timeout=60,
                  done=lambda found: len(found) >= total)
print(json.dumps(sorted(f"{r.who}-{r.result}" for r in seen)))
"""

INTENTS = """
import sys
from datetime import datetime, timedelta, timezone
from medic.core.audit import AuditRecord
from medic.orchestration.audit_store import record

runbook = sys.argv[1]
now = datetime.now(timezone.utc)
for target, ago in (("web-1", 5), ("web-1", 60), ("web-2", 5), ("web-1", 700)):
    record(AuditRecord(kind="intent", at=now - timedelta(seconds=ago), runbook=runbook, target=target, who="medic",
                       what="restart the service", result="about to act"))
"""


def _env(lab: LabState, state_dir: Path) -> dict[str, str]:
    """A process of its own: its own state dir, only the Prefect API in common."""
    return {**os.environ, "PREFECT_API_URL": lab.prefect_api_url, "MEDIC_STATE_DIR": str(state_dir)}


def _local_state(*dirs: Path) -> list[Path]:
    return [p for d in dirs if d.exists() for p in d.rglob("*") if p.name in LOCAL_STATE_NAMES or p.is_file()]


def _card(run_id: str, **texts: str) -> ApprovalCard:
    return ApprovalCard(title="nginx down on web-1", runbook="shared-state", targets=["web-1"], detect_query="up == 0",
                        detect_value="0", diagnosis_summary=texts.get("diagnosis", "nginx: stopped"),
                        planned_action="ansible-playbook restart-service.yml --limit web-1",
                        check_mode_result=texts.get("check"), flow_run_id=run_id, flow_run_url="http://127.0.0.1/x",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=5))


def test_two_processes_share_audit_and_cards_and_medic_audit_reads_them(lab: LabState, tmp_path: Path) -> None:
    run_id, count = str(uuid.uuid4()), 12
    CardStore().change(run_id, lambda _: CardRecord(flow_run_id=run_id, card=_card(run_id)))
    dirs = [tmp_path / "machine-a", tmp_path / "machine-b", tmp_path / "laptop"]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, f"w{n}", run_id, str(count), str(2 * count)],
                                env=_env(lab, dirs[n]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in range(2)]
    try:
        answers = [w.communicate(timeout=120) for w in writers]
    finally:
        for w in writers:
            w.kill()
    everything = sorted(f"w{n}-{i}" for n in range(2) for i in range(count))
    for writer, (out, err) in zip(writers, answers):
        assert writer.returncode == 0, err[-2000:]
        assert json.loads(out) == everything, "each process sees the records of both"

    card = CardStore().get(run_id)
    assert card is not None and card.consumed == 2 * count, "concurrent card changes lost an update"
    assert sorted(card.decided_by) == everything

    shown = subprocess.run([sys.executable, "-m", "medic", "audit", "--run", run_id, "--limit", "0"],
                           env={**os.environ, "MEDIC_STATE_DIR": str(dirs[2])}, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 2 * count and all(f"[shared-state on web-1 run {run_id}]" in line for line in lines)
    for n in range(2):  # oldest first: each writer's records in the order it wrote them
        mine = [line.split("→ ")[1].split()[0] for line in lines if f" w{n} " in line]
        assert mine == [str(i) for i in range(count)]
    assert _local_state(*dirs) == [], "shared state must not be kept in local files"


def test_records_come_back_in_order_across_pages_filtered_and_limited(lab: LabState) -> None:
    run_a, run_b = str(uuid.uuid4()), str(uuid.uuid4())
    for i in range(230):  # more than one page of the API (200)
        record(AuditRecord(kind="click" if i % 3 else "decision", flow_run_id=run_a, who=f"U{i}", what="approve"))
    record(AuditRecord(kind="decision", flow_run_id=run_b, who="U0BOB", what="reject"))
    assert [r.who for r in read_records(flow_run_id=run_a)] == [f"U{i}" for i in range(230)]
    assert [r.who for r in read_records(flow_run_id=run_a, limit=3)] == ["U227", "U228", "U229"]
    assert [r.who for r in read_records(flow_run_id=run_a, kinds=["decision"])] == [f"U{i}" for i in range(0, 230, 3)]
    assert [r.who for r in read_records(flow_run_id=run_b)] == ["U0BOB"]
    assert read_records(flow_run_id=str(uuid.uuid4())) == []


def test_secrets_never_reach_prefect_and_records_are_linked_to_their_run(lab: LabState, tmp_path: Path) -> None:
    token, signing = f"xoxb-{uuid.uuid4().hex}", f"signing-{uuid.uuid4().hex}"
    settings = Settings(state_dir=tmp_path, slack_bot_token=SecretStr(token), slack_signing_secret=SecretStr(signing))
    run_id = str(uuid.uuid4())
    record(AuditRecord(kind="click", flow_run_id=run_id, who="U0ALICE", what="approve",
                       detail=f"token={token} secret={signing}"), settings=settings)
    raw = prefect_json(lab.prefect_api_url, "POST", "/artifacts/filter",
                       json={"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    assert len(raw) == 1 and raw[0]["key"] == "medic-audit-click" and raw[0]["type"] == "table"
    assert token not in json.dumps(raw) and signing not in json.dumps(raw)
    assert "U0ALICE" in raw[0]["description"] and "approve" in raw[0]["description"]
    assert read_records(flow_run_id=run_id)[0].detail == "token=[redacted] secret=[redacted]"


def test_flap_guard_trips_from_history_another_process_wrote(lab: LabState, tmp_path: Path) -> None:
    runbook = f"flap-{uuid.uuid4().hex[:8]}"
    wrote = subprocess.run([sys.executable, "-c", INTENTS, runbook], env=_env(lab, tmp_path / "other"),
                           capture_output=True, text=True, timeout=120)
    assert wrote.returncode == 0, wrote.stderr
    guard = FlapGuard(max_runs=2, window_s=600)

    async def ask() -> tuple[int, bool, bool, str]:
        key = (runbook, "web-1")
        return (await guard.recent(key), await guard.tripped(key), await guard.tripped((runbook, "web-2")),
                await guard.explain(key))

    recent, tripped, other_target, why = asyncio.run(ask())
    assert recent == 2, "two intents within the window; the one 700 s ago is outside it"
    assert tripped and not other_target
    assert f"flap guard: {runbook} on web-1 was remediated 2 time(s) within the last 600 s (limit 2)" in why
    guard.record((runbook, "web-1"))  # the flow's intent is the history: this counts nothing more
    assert guard.count((runbook, "web-1")) == 2
    assert not asyncio.run(FlapGuard(max_runs=3, window_s=600).tripped((runbook, "web-1")))
    assert FlapGuard.from_settings(get_settings()).max_runs == get_settings().flap_max_runs


def test_a_storm_of_questions_shares_one_read_of_the_flap_history(lab: LabState, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  closed_port: int) -> None:
    runbook = f"flap-storm-{uuid.uuid4().hex[:8]}"
    wrote = subprocess.run([sys.executable, "-c", INTENTS, runbook], env=_env(lab, tmp_path / "other"),
                           capture_output=True, text=True, timeout=120)
    assert wrote.returncode == 0, wrote.stderr
    reads: list[datetime | None] = []
    real_read = read_records

    def counted(**kwargs):  # the real read against Prefect, counted
        reads.append(kwargs.get("since"))
        return real_read(**kwargs)

    monkeypatch.setattr("medic.orchestration.flap_guard.read_records", counted)
    guard = FlapGuard(max_runs=2, window_s=600, fresh_s=3600)
    keys = [(runbook, "web-1"), (runbook, "web-2")] * 25

    async def storm() -> list[bool]:
        return list(await asyncio.gather(*(guard.tripped(k) for k in keys)))

    answers = asyncio.run(storm())
    assert answers == [True, False] * 25, "web-1 has two intents within the window, web-2 none"
    assert len(reads) == 1, f"50 concurrent questions read the history {len(reads)} times"
    assert asyncio.run(guard.recent((runbook, "web-1"))) == 2 and len(reads) == 1, "a fresh read was not reused"
    guard.record((runbook, "web-1"))  # a run this process saw act: its intent must count at once
    assert asyncio.run(guard.tripped((runbook, "web-1"))) and len(reads) == 2

    async def the_first_asker_gives_up() -> list[object]:
        """The asker whose question started the read is cancelled (its webhook's deadline): the read goes
        on for the others, who get answers — not a CancelledError they never asked for."""
        fresh = FlapGuard(max_runs=2, window_s=600, fresh_s=3600)
        first = asyncio.ensure_future(fresh.tripped(keys[0]))
        await asyncio.sleep(0)  # one step of the loop: `first` starts the read and waits on it
        others = [asyncio.ensure_future(fresh.tripped(k)) for k in keys[1:5]]
        first.cancel()
        return list(await asyncio.gather(*others, return_exceptions=True))

    assert asyncio.run(the_first_asker_gives_up()) == [False, True, False, True] and len(reads) == 3

    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{closed_port}/api"}):
        failing = FlapGuard(max_runs=2, window_s=600, fresh_s=3600)

        async def unanswered() -> list[object]:
            return list(await asyncio.gather(*(failing.tripped(k) for k in keys[:5]), return_exceptions=True))

        outcomes = asyncio.run(unanswered())
    assert all(isinstance(o, PrefectError) for o in outcomes), outcomes
    assert failing._intents is None, "a failed read must not be kept as an empty history"


def test_prefect_unreachable_fails_closed_with_a_clear_error(lab: LabState, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture, closed_port: int) -> None:
    dead = f"http://127.0.0.1:{closed_port}/api"
    monkeypatch.setattr(audit_store, "BEFORE_ACTING_RETRY_S", 1.0)  # shorter bounds; the behaviour is the same
    monkeypatch.setattr(audit_store, "AFTER_ACTING_RETRY_S", 0.5)
    entry = AuditRecord(kind="intent", runbook="service-down", target="web-1", who="medic", what="restart")
    with temporary_settings(updates={PREFECT_API_URL: dead}):
        with pytest.raises(DependencyError) as refused:
            record(entry)
        assert isinstance(refused.value, PrefectError)
        message = str(refused.value)
        assert f"the Prefect API at {dead} is unreachable" in message and "nothing was changed" in message
        kept = entry.model_copy(update={"kind": "action"})
        with caplog.at_level(logging.ERROR, logger="medic.orchestration.audit_store"):
            assert record(kept, settings=get_settings().model_copy(update={"state_dir": tmp_path}),
                          fail_closed=False) is False
        assert f"audit record kept in {tmp_path / SPOOL_NAME} until Prefect answers" in caplog.text
        assert [r.id for r in pending(tmp_path)] == [entry.id]  # the intent refused above was not kept
        assert stat.S_IMODE((tmp_path / SPOOL_NAME).stat().st_mode) == 0o600
    shown = subprocess.run([sys.executable, "-m", "medic", "audit"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "MEDIC_PREFECT_API_URL": dead, "MEDIC_STATE_DIR": str(tmp_path)})
    assert shown.returncode == ExitCode.DEPENDENCY, (shown.returncode, shown.stderr)
    assert "cannot read the audit log" in shown.stderr and "unreachable" in shown.stderr
    assert "1 audit record(s) still wait on this machine" in shown.stderr


def test_a_record_kept_while_prefect_was_down_is_sent_first_once_it_answers(lab: LabState, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch,
                                                                             closed_port: int) -> None:
    """Nothing lost: an action's record that Prefect could not take (down longer than the retries) waits
    in the state dir, whole; the next record written there sends it first (the log keeps its order), and
    `medic audit` sends what still waits. An unreadable line in the spool is skipped, not fatal."""
    dead = f"http://127.0.0.1:{closed_port}/api"
    monkeypatch.setattr(audit_store, "AFTER_ACTING_RETRY_S", 0.5)
    settings = get_settings().model_copy(update={"state_dir": tmp_path})
    run = str(uuid.uuid4())
    made = [AuditRecord(kind=kind, flow_run_id=run, runbook="spool-test", target="web-1", who="medic", what=what)
            for kind, what in (("action", "restart"), ("decision", "approve"), ("action", "cleanup"))]
    with temporary_settings(updates={PREFECT_API_URL: dead}):
        assert record(made[0], settings=settings, fail_closed=False) is False
    assert record(made[1], settings=settings) is True
    assert [r.id for r in read_records(flow_run_id=run)] == [made[0].id, made[1].id]
    assert not (tmp_path / SPOOL_NAME).exists()

    with temporary_settings(updates={PREFECT_API_URL: dead}):
        assert record(made[2], settings=settings, fail_closed=False) is False
    with open(tmp_path / SPOOL_NAME, "a") as spool:
        spool.write("{not a record\n")
    shown = subprocess.run([sys.executable, "-m", "medic", "audit", "--run", run], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "MEDIC_PREFECT_API_URL": lab.prefect_api_url,
                                             "MEDIC_STATE_DIR": str(tmp_path)})
    assert shown.returncode == 0, shown.stderr
    assert [r.id for r in read_records(flow_run_id=run)] == [m.id for m in made]
    assert "cleanup" in shown.stdout and not (tmp_path / SPOOL_NAME).exists()


def test_a_real_remediation_audits_intent_before_action_and_leaves_no_local_state(lab: LabState,
                                                                                   broken: Inject) -> None:
    broken("service-down", "web-2")
    seen(lab, "service-down", "web-2")
    dry, _ = remediate("service-down", "web-2", dry_run=True)
    assert [r.kind for r in read_records(flow_run_id=str(dry.flow_run_id))] == ["action"], \
        "a dry run changes nothing: no intent, and the flap guard does not count it"
    run, report = remediate("service-down", "web-2")
    assert report.outcome is Outcome.RECOVERED, report.summary
    intent, action = read_records(flow_run_id=str(run.flow_run_id))
    assert (intent.kind, intent.target, intent.where, intent.result) == ("intent", "web-2", "web-2", "about to act")
    assert (action.kind, action.result) == ("action", "web-2: changed") and intent.at <= action.at
    assert asyncio.run(FlapGuard(max_runs=1, window_s=600).tripped(("service-down", "web-2")))
    state_dir = get_settings().state_dir  # the flow's (this process's) state dir, and the whole lab's
    assert state_dir is not None
    assert [p for d in (state_dir, Path(lab.lab_dir)) if d.exists() for p in d.rglob("*")
            if p.name in LOCAL_STATE_NAMES] == []
