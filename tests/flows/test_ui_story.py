"""The Prefect UI tells a run's story without the CLI: read back through Prefect's own API.

What a person sees in the UI comes from three API answers, and these tests read exactly those: the
run's logs (`/logs/filter` — the UI's Logs tab), the pause's input keys (the Resume dialog shows the
`-description` key as Markdown above the form built from the `-schema` key), and the final state.
Runs here send their logs to the API (tests/conftest.py turns that off for every other run).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

from medic.approval.card import ApprovalCard, approval_card_blocks, approval_markdown, waiting_line
from medic.core.progress import add_listener
from medic.core.report import Outcome, RemediationReport
from medic.orchestration.launcher import FlapGuard
from medic.orchestration.pause import resume_with_input
from medic.orchestration.runs import FlowRunOutcome, run_flow_now
from medic.orchestration.telemetry import flush_prefect_telemetry
from medic_lab.state import LabState
from tests.support.approvals import code_of
from tests.support.intake import intake_headers, send_alert
from tests.support.lab_health import Inject, broken, seen  # noqa: F401 (a fixture)
from tests.support.prefect_api import prefect_json
from tests.support.server import (
    FLAP_TEST_WINDOW_S,
    MedicServer,
    alert_payload,
    cancel_leftover_runs,
    flap_free_host,
    medic_server,
)
from tests.support.waits import wait_for

DEADLINE = re.compile(r"\*\*Deadline:\*\* (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


@pytest.fixture
def logs_to_api() -> Iterator[None]:
    """Runs of this test send their logs to Prefect's API, as they do outside the test suite."""
    with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: True}):
        yield
    flush_prefect_telemetry()  # deliver the last batch while the session's Prefect server still answers


def run_logs(api: str, run_id: str, until: str, timeout: float = 30) -> list[str]:
    """The run's log messages (the UI's Logs tab), once one contains `until` (logs arrive in batches)."""
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    return wait_for(lambda: [entry["message"] for entry in prefect_json(api, "POST", "/logs/filter", json=body)],
                    what=f"a log line of run {run_id} with {until!r}", timeout=timeout,
                    done=lambda messages: any(until in m for m in messages), interval=0.3, ignore=httpx.HTTPError)


def pause_inputs(api: str, run_id: str) -> dict[str, Any]:
    """The inputs Prefect stored for the run's pauses, by key suffix (description, schema)."""
    stored = prefect_json(api, "POST", f"/flow_runs/{run_id}/input/filter", json={"prefix": "paused-", "limit": 50})
    return {row["key"].rsplit("-", 1)[1]: json.loads(row["value"]) for row in stored}


def wait_state(api: str, run_id: str, types: set[str], timeout: float = 90) -> dict:
    return wait_for(lambda: prefect_json(api, "GET", f"/flow_runs/{run_id}")["state"],
                    what=f"run {run_id} to be {'/'.join(sorted(types))}", timeout=timeout,
                    done=lambda state: state["type"] in types, interval=0.3, ignore=httpx.HTTPError)


async def _run_until_paused(params: dict[str, Any]) -> tuple[asyncio.Task[FlowRunOutcome], str]:
    """Start the remediation flow in this process; return it and its id once it asks for approval."""
    from flows.remediate import remediate

    loop = asyncio.get_running_loop()
    run_id: asyncio.Future[str] = loop.create_future()

    def on_entry(entry: Any, recorded: bool) -> None:
        if recorded and entry.stage == "approval" and entry.message.startswith("waiting") and not run_id.done():
            found = entry.message.split("medic approve ", 1)[1].split("`", 1)[0]
            loop.call_soon_threadsafe(lambda: run_id.done() or run_id.set_result(found))

    remove = add_listener(on_entry)
    run = asyncio.create_task(run_flow_now(remediate, params))
    try:
        done, _ = await asyncio.wait({run, run_id}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        assert run_id in done, f"the run never asked for approval: {run.result() if run in done else 'still running'}"
        return run, run_id.result()
    finally:
        remove()


def test_paused_disk_full_run_explains_itself_and_its_outcome(lab: LabState, broken: Inject, logs_to_api) -> None:
    api = lab.prefect_api_url
    broken("disk-full", "web-1")
    began = datetime.now(timezone.utc).replace(microsecond=0)

    async def scenario() -> tuple[FlowRunOutcome, str, dict[str, Any], list[str], datetime]:
        run, run_id = await _run_until_paused({"runbook": "disk-full", "target": "web-1"})
        await asyncio.to_thread(wait_state, api, run_id, {"PAUSED"})
        paused_at = datetime.now(timezone.utc)
        inputs = await asyncio.to_thread(pause_inputs, api, run_id)
        while_paused = await asyncio.to_thread(run_logs, api, run_id, "waiting until")
        answer = await resume_with_input(run_id, {"decision": "approve", "approver": "alice", "code": code_of("alice")})
        assert answer.accepted, answer
        return await asyncio.wait_for(run, 120), run_id, inputs, while_paused, paused_at

    outcome, run_id, inputs, while_paused, paused_at = asyncio.run(scenario())

    # While it waits, the UI shows what was found, the exact plan, who may decide, until when and how.
    found = [m for m in while_paused if m.startswith("detect: ")]
    assert found and "→ problem confirmed on web-1" in found[0], while_paused
    assert any(m.startswith("diagnose: ") and "largest files in the data dir on web-1" in m for m in while_paused)
    plan = "ansible-playbook cleanup-data-dir.yml --limit web-1"
    assert any(m.startswith("approval: found ") and plan in m for m in while_paused), while_paused
    waiting = next(m for m in while_paused if m.startswith("approval: waiting until "))
    assert f"`medic approve {run_id}`" in waiting and "Prefect UI" in waiting and "Slack" in waiting
    assert "1 approval" in waiting and "runbook disk-full requires approval" in waiting

    # The Resume dialog: the card as Markdown above a form whose fields explain themselves.
    description = inputs["description"]
    assert plan in description and "web-1=" in description and "Check mode" in description
    deadline = datetime.strptime(DEADLINE.search(description).group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    assert began + timedelta(seconds=600) <= deadline <= paused_at + timedelta(seconds=600), (began, deadline, paused_at)
    assert deadline.strftime("%Y-%m-%d %H:%M:%S UTC") in waiting, "log and dialog must show the same deadline"
    fields = inputs["schema"]["properties"]
    assert {"decision", "approver", "code", "comment"} <= set(fields) and "via" not in fields  # proofs, never claims
    assert all(fields[f].get("description") for f in ("decision", "approver", "code", "comment", "proof")), fields
    assert "planned action" in fields["decision"]["description"]

    # Then: the decision, the re-check, the action, the verification and the outcome, one line each.
    report = outcome.result
    assert isinstance(report, RemediationReport) and report.outcome is Outcome.RECOVERED, outcome
    after = run_logs(api, run_id, "report: ")
    assert any(m.startswith("approval: approved by alice via ui") for m in after), after
    assert any(m.startswith("re-check: ") and "still holds on web-1" in m for m in after), after
    recover = next(m for m in after if m.startswith("recover: "))
    assert recover.startswith("recover: playbook cleanup-data-dir.yml on web-1: web-1 changed (") and \
        f"bytes_freed={report.recovery.hosts[0].return_values['bytes_freed']}" in recover, recover
    assert any(m.startswith("verify: ") and m.endswith("→ recovered") for m in after), after
    # The final state's message is the outcome line — the same one the run's last medic line states.
    assert (outcome.state_name, outcome.message) == ("Recovered", report.summary)
    assert report.summary.startswith("Recovered web-1: verify < 0.8 holds — web-1=")
    assert f"report: Recovered: {report.summary}" in after


def test_healthy_target_says_nothing_to_do_and_why(lab: LabState, logs_to_api) -> None:
    from flows.remediate import remediate

    outcome = asyncio.run(run_flow_now(remediate, {"runbook": "service-down", "target": "web-5"}))
    report = outcome.result
    assert isinstance(report, RemediationReport) and report.outcome is Outcome.NOT_NEEDED, outcome
    logs = run_logs(lab.prefect_api_url, str(outcome.flow_run_id), "report: ")
    detect = next(m for m in logs if m.startswith("detect: "))
    assert 'holds on no target (web-5=1;' in detect and detect.endswith("→ nothing to do"), detect
    assert (outcome.state_name, outcome.message) == ("NotNeeded", report.summary)
    assert f"report: NotNeeded: {report.summary}" in logs


def test_maintenance_run_logs_its_plan_and_ends_with_the_outcome_line(lab: LabState, logs_to_api) -> None:
    from flows.maintenance import cleanup

    outcome = asyncio.run(run_flow_now(cleanup, {"group": "web-5", "dry_run": True, "ignore_window": True}))
    report = outcome.result
    assert outcome.state_name == "DryRun" and outcome.message == report.summary, outcome
    logs = run_logs(lab.prefect_api_url, str(outcome.flow_run_id), "report: ")
    assert any(m.startswith("plan: 1 host(s) of web-5 in 1 batch(es)") and "dry run" in m for m in logs), logs
    assert any(m.startswith("batch: 1 of 1: web-5 nothing to do") for m in logs), logs
    assert f"report: DryRun: {report.summary}" in logs


# --- the card: one set of facts for Slack, the Resume dialog and the log ------------------------------


def test_the_resume_dialog_and_the_slack_card_show_the_same_facts() -> None:
    card = ApprovalCard(
        title="service-down on web-2", runbook="service-down", targets=["web-2"],
        detect_query='up{job="web", host=$host} == 0', detect_value="web-2=0", diagnosis_summary="stopped",
        planned_action="ansible-playbook restart-service.yml --limit web-2", flow_run_id="1234abcd-run",
        flow_run_url="http://ui/runs/flow-run/1234abcd-run", approvals_required=2, approvers=["U111", "U222"],
        deadline=datetime(2026, 11, 30, 14, 5, 9, tzinfo=timezone.utc),
        why="flap guard: service-down on web-2 was remediated 3 time(s) within the last 3600 s (limit 3)")
    markdown = approval_markdown(card)
    slack = json.dumps(approval_card_blocks(card))
    for fact in ("ansible-playbook restart-service.yml --limit web-2", "web-2=0", "flap guard: service-down on web-2"):
        assert fact in markdown and fact in slack, fact
    for text in (markdown, waiting_line(card)):
        assert "2026-11-30 14:05:09 UTC" in text and "2 approvals from distinct people" in text
        assert "U111, U222" in text and "medic approve 1234abcd-run" in text


# --- the flap guard: only runs that acted count, and when it asks a human it says so -----------------


@pytest.fixture
def flap_server(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedicServer]:
    """medic serve asking a human after one remediation of the same thing; its runs log to the API."""
    cancel_leftover_runs(lab.prefect_api_url)
    env = {"MEDIC_FLAP_MAX_RUNS": "1", "MEDIC_FLAP_WINDOW_S": str(FLAP_TEST_WINDOW_S),
           "PREFECT_LOGGING_TO_API_ENABLED": "true"}
    with medic_server(tmp_path_factory.mktemp("flap-serve"), env=env) as server:
        yield server


def _alert(server: MedicServer, host: str, n: int) -> dict:
    fingerprint = f"ui-story-flap-{n}-{uuid.uuid4().hex[:8]}"  # never "already handled" from an earlier run
    payload = alert_payload("ServiceDown", host, fingerprint=fingerprint, starts_at=f"2026-11-23T03:0{n}:00Z")
    return send_alert(server.url, payload).json()["alerts"][0]


def _idle(server: MedicServer, host: str, timeout: float = 30) -> None:
    """Prefect shows a run final a moment before medic serve has counted it and freed its slot."""
    wait_for(lambda: [r for r in httpx.get(f"{server.url}/healthz?verbose=1", headers=intake_headers()).json()[
                 "active_runs"] if r["target"] == host],
             what=f"medic serve to release its run for {host}", timeout=timeout, done=lambda held: not held)


def test_flap_guard_counts_only_runs_that_acted_and_says_when_it_asks(lab: LabState, flap_server: MedicServer,
                                                                      broken: Inject) -> None:
    api = lab.prefect_api_url
    host = flap_free_host(lab)  # the flap history is site-wide
    for n in (1, 2):  # a storm of false alerts: the host is healthy, nothing is done, nothing counts
        answer = _alert(flap_server, host, n)
        assert answer["result"] == "started" and not answer["detail"], answer
        assert wait_state(api, answer["flow_run_id"], {"COMPLETED", "FAILED"})["name"] == "NotNeeded"
        _idle(flap_server, host)

    broken("service-down", host)  # the first real incident: acted on at once, no human needed
    seen(lab, "service-down", host)
    answer = _alert(flap_server, host, 3)
    assert answer["result"] == "started" and "flap guard" not in answer["detail"], answer
    state = wait_state(api, answer["flow_run_id"], {"COMPLETED", "FAILED"})
    assert state["name"] == "Recovered", state
    assert not any("approval: waiting" in m for m in run_logs(api, answer["flow_run_id"], "report: "))
    _idle(flap_server, host)

    broken("service-down", host)  # the same again within the window: now the flap guard asks, and says so
    seen(lab, "service-down", host)
    answer = _alert(flap_server, host, 4)
    assert answer["result"] == "started" and f"flap guard: service-down on {host} was remediated 1 time(s)" in \
        answer["detail"], answer
    run_id = answer["flow_run_id"]
    wait_state(api, run_id, {"PAUSED"})
    waiting = next(m for m in run_logs(api, run_id, "approval: waiting") if m.startswith("approval: waiting"))
    assert "why a human: this run was started with require_approval" in waiting and "flap guard:" in waiting
    assert f"flap guard: service-down on {host}" in pause_inputs(api, run_id)["description"]
    answer = asyncio.run(resume_with_input(run_id, {"decision": "reject", "approver": "bob", "code": code_of("bob")}))
    assert answer.accepted, answer
    state = wait_state(api, run_id, {"COMPLETED", "FAILED"})
    assert state["name"] == "Rejected" and "bob" in state["message"], state
    artifact = prefect_json(api, "POST", "/artifacts/filter", json={"artifacts": {"key": {"any_": [
        f"incident-service-down-{host}"]}}, "sort": "CREATED_DESC", "limit": 1})[0]
    assert f"flap guard: service-down on {host}" in artifact["data"], "the report must say the flap guard asked"
    _idle(flap_server, host)


def test_flap_guard_acted_means_a_real_recovery() -> None:
    from medic.core.report import RecoveryResult

    def report(recovery: RecoveryResult | None) -> RemediationReport:
        now = datetime.now(timezone.utc)
        return RemediationReport(runbook="r", target="t", hosts=[], reason="", dry_run=False, outcome=Outcome.FAILED,
                                 summary="", started_at=now, finished_at=now, recovery=recovery)

    assert FlapGuard.acted(report(RecoveryResult(action="playbook x on t", check_mode=False, hosts=[], batches=1)))
    assert not FlapGuard.acted(report(RecoveryResult(action="playbook x on t", check_mode=True, hosts=[], batches=1)))
    assert not FlapGuard.acted(report(None))  # not needed, rejected, timed out, unreachable
    assert not FlapGuard.acted(None)  # a crashed run has no report
