"""Approval over Slack end to end: a real `medic serve` (subprocess), the real lab, the local fake Slack.

Runs start from Alertmanager webhooks sent to medic serve, pause for approval, post their card to the
fake Slack; clicks are Slack-signed requests sent over HTTP to the real `/slack/actions`. Each test
breaks its own host: web-1 approve, web-2 reject, web-3 timeout, web-4 refusals (then a killed `medic run`),
web-5 two approvers, web-6 restart of medic serve.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from slack_sdk.socket_mode.request import SocketModeRequest

from medic.core.audit import AuditRecord
from medic.orchestration.audit_store import read_records
from medic_lab.state import LabState
from medic.core.paths import RUNBOOKS_DIR
from medic.settings import Settings
from medic.service.clicks import ClickHandler, ClickResult
from medic.service.socket_mode import route
from tests.fakes.slack_api import Call, FakeSlack
from tests.fakes.slack_signing import SIGNING_SECRET, block_action_payload, post_block_action, sign
from tests.support.intake import send_alert
from tests.support.lab_health import lab_restored, seen
from tests.support.prefect_api import prefect_json, prefect_request
from tests.support.server import MedicServer, alert_payload, cancel_leftover_runs, medic_server
from tests.support.waits import wait_for

ALICE, BOB, CAROL, MALLORY = "U0ALICE", "U0BOB", "U0CAROL", "U0MALLORY"
CHANNEL, ESCALATION = "C0OPS0001", "C0ESCALATE"
GROUP = "S0ONCALL"
VARIANTS = {  # runbook name → (alert name, approval policy)
    "disk-full-slack": ("DiskFullSlack", {"approvers": [ALICE, BOB], "timeout": "90s"}),
    "disk-full-pair": ("DiskFullPair", {"approver_group": GROUP, "required_approvals": 2, "timeout": "90s"}),
    "disk-full-quick": ("DiskFullQuick", {"approvers": [ALICE], "timeout": "3s", "escalate_to": ESCALATION}),
}


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(token=f"xoxb-test-{secrets.token_hex(8)}") as fake:
        fake.set_usergroup(GROUP, [ALICE, BOB, CAROL])
        yield fake


@pytest.fixture(scope="module")
def runbooks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped runbooks plus disk-full variants with short timeouts and approver lists."""
    directory = tmp_path_factory.mktemp("runbooks")
    for path in RUNBOOKS_DIR.glob("*.yaml"):
        shutil.copy(path, directory / path.name)
    base = yaml.safe_load((RUNBOOKS_DIR / "disk-full.yaml").read_text())
    for name, (alertname, approval) in VARIANTS.items():
        spec = {**base, "name": name, "trigger": {"alertname": alertname},
                "approval": {"policy": "required", **approval}}
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def serve_env(lab: LabState, slack: FakeSlack, runbooks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {"MEDIC_RUNBOOKS_DIR": str(runbooks_dir), "MEDIC_SLACK_API_URL": slack.base_url,
            "MEDIC_SLACK_BOT_TOKEN": slack.token, "MEDIC_SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "MEDIC_SLACK_CHANNEL": CHANNEL, "MEDIC_STATE_DIR": str(tmp_path_factory.mktemp("medic-state"))}


@pytest.fixture(scope="module")
def server(lab: LabState, serve_env: dict[str, str]) -> Iterator[MedicServer]:
    cancel_leftover_runs(lab.prefect_api_url)  # a new medic serve adopts them: start from a clean site
    with medic_server(Path(serve_env["MEDIC_STATE_DIR"]), env=serve_env) as running:
        yield running


@pytest.fixture
def disk_full(lab: LabState) -> Iterator[Callable[[str], list[str]]]:
    """`disk_full(host)` fills a host's data dir (seen by Prometheus) and returns its cache listing;
    after the test, pass or fail, the lab is restored and checked healthy."""
    with lab_restored(lab) as inject:
        def fill(host: str) -> list[str]:
            inject("disk-full", host)
            seen(lab, "disk-full", host)
            return _cache(lab, host)

        yield fill


# --- helpers ----------------------------------------------------------------------------------------


def _cache(lab: LabState, host: str) -> list[str]:
    return sorted(p.name for p in (lab.host(host).data_dir / "cache").iterdir())


def start_run(server: MedicServer, runbook: str, host: str) -> str:
    alertname = VARIANTS[runbook][0]
    payload = alert_payload(alertname, host, fingerprint=f"fp-{secrets.token_hex(6)}")
    answer = send_alert(server.url, payload).json()
    assert answer["started"] == 1, answer
    return answer["alerts"][0]["flow_run_id"]


def card_of(slack: FakeSlack, run_id: str, timeout: float = 90) -> Call:
    return slack.wait_for("chat.postMessage", lambda c: run_id in json.dumps(c.args.get("blocks") or []),
                          timeout=timeout)


def click(server: MedicServer, card: Call, user: str, *, action: str = "medic_approve", **options: Any) -> httpx.Response:
    run_id = next(e["value"] for b in card.args["blocks"] if b["type"] == "actions" for e in b["elements"])
    return post_block_action(f"{server.url}/slack/actions", value=run_id, user_id=user, action_id=action,
                             channel_id=card.args["channel"], message_ts=card.response["ts"],
                             message_blocks=card.args["blocks"], **options)


def run_state(lab: LabState, run_id: str) -> dict[str, Any]:
    return prefect_json(lab.prefect_api_url, "GET", f"/flow_runs/{run_id}")["state"]


def wait_state(lab: LabState, run_id: str, types: set[str], timeout: float = 120) -> dict[str, Any]:
    return wait_for(lambda: run_state(lab, run_id), what=f"run {run_id} to be {'/'.join(sorted(types))}",
                    timeout=timeout, done=lambda state: state["type"] in types, ignore=httpx.HTTPError)


def wait_input_schema(lab: LabState, run_id: str, timeout: float = 60) -> None:
    """Until the paused run's input schema is stored (the flow does that just after setting Paused)."""
    def schema_stored() -> str:
        state = run_state(lab, run_id)
        key = ((state.get("state_details") or {}).get("run_input_keyset") or {}).get("schema")
        if state["type"] != "PAUSED" or not key:
            return f"{state['type']}, input keyset {key!r}"
        status = prefect_request(lab.prefect_api_url, "GET", f"/flow_runs/{run_id}/input/{key}").status_code
        return "stored" if status == 200 else f"PAUSED, schema {key!r} answers {status}"

    wait_for(schema_stored, what=f"run {run_id} to be Paused with its input schema stored", timeout=timeout,
             done=lambda said: said == "stored", interval=0.1, ignore=httpx.HTTPError)


def final_state(lab: LabState, run_id: str) -> dict[str, Any]:
    return wait_state(lab, run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


def message_now(slack: FakeSlack, card: Call) -> dict[str, Any]:
    return slack.message(card.args["channel"], card.response["ts"])


def has_buttons(message: dict[str, Any]) -> bool:
    return any(b["type"] == "actions" for b in message.get("blocks") or [])


def card_text(message: dict[str, Any]) -> str:
    return json.dumps(message.get("blocks") or [], ensure_ascii=False)


def audit_of(serve_env: dict[str, str], run_id: str) -> list[AuditRecord]:
    """The run's audit records, from Prefect (this process and medic serve share the lab's)."""
    return read_records(flow_run_id=run_id)


def wait_audit(serve_env: dict[str, str], run_id: str, kind: str, count: int = 1, timeout: float = 30) -> list[AuditRecord]:
    found = wait_for(lambda: audit_of(serve_env, run_id), what=f"{count} {kind} audit record(s) of {run_id}",
                     timeout=timeout, done=lambda records: len([r for r in records if r.kind == kind]) >= count,
                     interval=0.1)
    return [r for r in found if r.kind == kind]


def ephemeral_to(slack: FakeSlack, user: str, contains: str, timeout: float = 20) -> Call:
    return slack.wait_for("chat.postEphemeral", lambda c: c.args["user"] == user and contains in c.args["text"],
                          timeout=timeout)


# --- the tests --------------------------------------------------------------------------------------


def test_approve_runs_the_recovery_and_a_double_click_resumes_once(
        lab: LabState, slack: FakeSlack, server: MedicServer, serve_env: dict[str, str], disk_full) -> None:
    disk_full("web-1")
    run_id = start_run(server, "disk-full-slack", "web-1")
    card = card_of(slack, run_id)
    text = card_text(card.args)
    for expected in ("disk-full-slack on web-1", "`web-1`", "demo_data_dir_used_bytes", "ansible-playbook cleanup-data-dir.yml",
                     "Check mode (dry run)", "would change", f"/runs/flow-run/{run_id}", "decide by"):
        assert expected in text, expected
    approve, reject = next(b for b in card.args["blocks"] if b["type"] == "actions")["elements"]
    assert (approve["style"], approve["value"], "confirm" in approve) == ("primary", run_id, True)
    assert (reject["style"], reject["value"]) == ("danger", run_id)
    wait_state(lab, run_id, {"PAUSED"})

    first, second = click(server, card, ALICE), click(server, card, ALICE)  # a double click
    assert (first.status_code, second.status_code) == (200, 200)
    state = final_state(lab, run_id)
    assert (state["type"], state["name"]) == ("COMPLETED", "Recovered"), state
    clicks = wait_audit(serve_env, run_id, "click", 2)
    assert sorted(c.result for c in clicks) == [ClickResult.ACCEPTED.value, ClickResult.ALREADY_DECIDED.value]
    message = message_now(slack, card)
    assert not has_buttons(message) and f"Approved by <@{ALICE}>" in card_text(message)
    assert lab.host("web-1").data_dir.joinpath("cache").exists()
    kinds = {r.kind: r for r in audit_of(serve_env, run_id)}
    # the identity is the approver directory's name (tests/support/approvals.py), proven by medic serve's Slack proof
    assert kinds["decision"].what == "approved" and kinds["decision"].who == "alice" and kinds["decision"].where == "slack"
    assert kinds["action"].what.startswith("playbook cleanup-data-dir.yml") and "changed" in kinds["action"].result
    # the incident thread: opened with the evidence, then one reply per stage, ending verified
    parent = slack.wait_for("chat.postMessage", lambda c: "disk-full-slack on web-1" in c.args["text"]
                            and not c.args.get("thread_ts") and not c.args.get("blocks"))
    replies = [c.args["text"] for c in slack.calls("chat.postMessage") if c.args.get("thread_ts") == parent.response["ts"]]
    for stage in ("diagnose", "approval", "recover", "verify", "report"):
        assert any(r.startswith(f"*{stage}*") for r in replies), (stage, replies)


def test_reject_changes_nothing_and_says_who(lab: LabState, slack: FakeSlack, server: MedicServer, disk_full) -> None:
    before = disk_full("web-2")
    run_id = start_run(server, "disk-full-slack", "web-2")
    card = card_of(slack, run_id)
    wait_state(lab, run_id, {"PAUSED"})
    assert click(server, card, BOB, action="medic_reject").status_code == 200
    state = final_state(lab, run_id)
    assert (state["type"], state["name"]) == ("FAILED", "Rejected")
    assert "by bob" in state["message"] and "Nothing was changed" in state["message"]  # the verified name
    assert _cache(lab, "web-2") == before
    message = message_now(slack, card)
    assert not has_buttons(message) and f"Rejected by <@{BOB}>" in card_text(message)


def test_timeout_escalates_and_changes_nothing(lab: LabState, slack: FakeSlack, server: MedicServer,
                                               serve_env: dict[str, str], disk_full) -> None:
    before = disk_full("web-3")
    run_id = start_run(server, "disk-full-quick", "web-3")
    card = card_of(slack, run_id)
    state = final_state(lab, run_id)
    assert (state["type"], state["name"]) == ("FAILED", "ApprovalTimedOut")
    assert "nobody approved" in state["message"]
    escalation = slack.wait_for("chat.postMessage", lambda c: c.args["channel"] == ESCALATION)
    assert "Nobody approved" in escalation.args["text"] and run_id in escalation.args["text"]
    assert _cache(lab, "web-3") == before
    message = message_now(slack, card)
    assert not has_buttons(message) and "timed out" in card_text(message)
    # a late click changes nothing and is answered
    assert click(server, card, ALICE).status_code == 200
    ephemeral_to(slack, ALICE, "Already decided")
    assert {"decision", "escalation", "click"} <= {r.kind for r in wait_audit(serve_env, run_id, "click")} | {
        r.kind for r in audit_of(serve_env, run_id)}


def test_refused_requests_change_nothing(lab: LabState, slack: FakeSlack, server: MedicServer,
                                         serve_env: dict[str, str], disk_full) -> None:
    before = disk_full("web-4")
    run_id = start_run(server, "disk-full-slack", "web-4")
    card = card_of(slack, run_id)
    wait_state(lab, run_id, {"PAUSED"})
    url = f"{server.url}/slack/actions"
    refused = {
        "forged": click(server, card, ALICE, secret="not-the-signing-secret"),
        "replayed": click(server, card, ALICE, timestamp=int(time.time()) - 600),
        "unsigned": click(server, card, ALICE, omit_headers=True),
    }
    body = b"payload=%7Bnot+json"
    refused["malformed"] = httpx.post(url, content=body, headers=sign(body), trust_env=False)
    payload = block_action_payload(value=run_id, user_id=ALICE, action_id="medic_delete_everything")
    body = f"payload={json.dumps(payload)}".encode()
    refused["unknown action"] = httpx.post(url, content=body, headers=sign(body), trust_env=False)
    assert {k: r.status_code for k, r in refused.items()} == {
        "forged": 401, "replayed": 401, "unsigned": 401, "malformed": 400, "unknown action": 400}
    assert "5-minute" in refused["replayed"].json()["error"]
    assert click(server, card, MALLORY).status_code == 200  # in no approver directory
    ephemeral_to(slack, MALLORY, "not in medic's approver directory")
    assert click(server, card, CAROL).status_code == 200  # in the directory, not named by this runbook
    ephemeral_to(slack, CAROL, "not named by its policy")
    assert [c.result for c in wait_audit(serve_env, run_id, "click", 2)] == [ClickResult.UNAUTHORIZED.value] * 2
    assert run_state(lab, run_id)["type"] == "PAUSED", "a refused click must not resume the run"
    assert has_buttons(message_now(slack, card))
    # The proof that no refused request resumed it: the run still takes this decision, and it is the
    # one it ends with (an approval slipped through would have ended it Recovered, junk deleted).
    click(server, card, ALICE, action="medic_reject")
    assert final_state(lab, run_id)["name"] == "Rejected"
    assert _cache(lab, "web-4") == before


def test_two_approvers_must_be_distinct(lab: LabState, slack: FakeSlack, server: MedicServer,
                                        serve_env: dict[str, str], disk_full) -> None:
    disk_full("web-5")
    run_id = start_run(server, "disk-full-pair", "web-5")
    card = card_of(slack, run_id)
    assert "Approvals: 0 of 2" in card_text(card.args)
    wait_state(lab, run_id, {"PAUSED"})
    click(server, card, ALICE)
    slack.wait_for("chat.update", lambda c: c.args["ts"] == card.response["ts"]
                   and f"1 of 2 (<@{ALICE}>)" in card_text(c.args), timeout=20)
    click(server, card, ALICE)  # the same approver again does not count
    ephemeral_to(slack, ALICE, "already approved")
    click(server, card, MALLORY)  # not in the user group
    ephemeral_to(slack, MALLORY, "not an approver")
    wait_state(lab, run_id, {"PAUSED"})
    click(server, card, CAROL)
    state = final_state(lab, run_id)
    assert (state["type"], state["name"]) == ("COMPLETED", "Recovered"), state
    message = message_now(slack, card)
    assert not has_buttons(message) and f"Approved by <@{ALICE}>, <@{CAROL}>" in card_text(message)
    results = [c.result for c in wait_audit(serve_env, run_id, "click", 4)]
    assert results == [ClickResult.ACCEPTED, ClickResult.ALREADY_APPROVED, ClickResult.UNAUTHORIZED,
                       ClickResult.ACCEPTED]


def test_click_for_a_run_whose_process_died_ends_it_and_says_so(lab: LabState, slack: FakeSlack, server: MedicServer,
                                                                serve_env: dict[str, str], disk_full) -> None:
    """A `medic run` killed while it waits: the click must not leave the run "Running" with nobody on it.
    (web-4 again: the lab has six hosts, and test_refused_requests_change_nothing has restored it.)"""
    before = disk_full("web-4")
    earlier = {c.response.get("ts") for c in slack.calls("chat.postMessage")}  # the refusals test's card too
    env = {**os.environ, **serve_env}
    with open(Path(serve_env["MEDIC_STATE_DIR"]) / "medic-run.log", "ab") as out:
        cli = subprocess.Popen([sys.executable, "-m", "medic", "run", "disk-full-slack", "--target", "web-4"],
                               env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        card = slack.wait_for("chat.postMessage", lambda c: "disk-full-slack on web-4" in card_text(c.args)
                              and has_buttons(c.args) and c.response["ts"] not in earlier, timeout=90)
        run_id = next(e["value"] for b in card.args["blocks"] if b["type"] == "actions" for e in b["elements"])
        wait_input_schema(lab, run_id)  # fully waiting: Paused *and* its input schema stored
    finally:
        cli.kill()
        cli.wait()
    assert click(server, card, ALICE).status_code == 200
    state = final_state(lab, run_id)
    assert state["type"] == "CRASHED" and "no process was executing" in state["message"]
    ephemeral_to(slack, ALICE, "nobody executing it")
    message = message_now(slack, card)
    assert not has_buttons(message) and "nobody was executing the run" in card_text(message)
    assert _cache(lab, "web-4") == before
    assert wait_audit(serve_env, run_id, "click")[0].result == ClickResult.ORPHANED.value


def test_click_for_a_half_paused_run_ends_it_and_says_so(lab: LabState, slack: FakeSlack, server: MedicServer,
                                                         serve_env: dict[str, str]) -> None:
    """Paused, but its process died before storing the pause's input schema (the window right after
    `Paused` is set): the run can never take a decision. The click ends it, instead of answering
    "try again in a moment" for ever. The half-made pause is built through Prefect's API."""
    api = lab.prefect_api_url

    def post(path: str, body: dict[str, Any]) -> httpx.Response:
        return prefect_request(api, "POST", path, json=body, retry_for=60)

    flow_id = post("/flows/", {"name": "remediate"}).json()["id"]
    keyset = {"response": "half-paused-response", "schema": "half-paused-schema",
              "description": "half-paused-description"}
    created = post("/flow_runs/", {
        "flow_id": flow_id, "parameters": {"runbook": "disk-full-slack", "target": "web-5"},
        "state": {"type": "PAUSED", "name": "Paused",
                  "state_details": {"pause_key": "approval-1", "run_input_keyset": keyset}}})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    assert run_state(lab, run_id)["type"] == "PAUSED"
    response = post_block_action(f"{server.url}/slack/actions", value=run_id, user_id=ALICE,
                                 action_id="medic_approve", channel_id=serve_env["MEDIC_SLACK_CHANNEL"],
                                 message_ts="1700000000.000100", message_blocks=[])
    assert response.status_code == 200
    state = final_state(lab, run_id)
    assert state["type"] == "CRASHED" and "no process was executing" in state["message"]
    ephemeral_to(slack, ALICE, "nobody executing it", timeout=60)
    assert wait_audit(serve_env, run_id, "click", timeout=60)[0].result == ClickResult.ORPHANED.value


def test_approval_still_works_after_medic_serve_restarts(lab: LabState, slack: FakeSlack, server: MedicServer,
                                                         serve_env: dict[str, str], disk_full) -> None:
    server.stop()  # the module's server holds no run now; this test restarts its own
    state_dir = Path(serve_env["MEDIC_STATE_DIR"])
    disk_full("web-6")
    with medic_server(state_dir, env=serve_env) as first:
        run_id = start_run(first, "disk-full-slack", "web-6")
        card = card_of(slack, run_id)
        wait_state(lab, run_id, {"PAUSED"})
    assert run_state(lab, run_id)["type"] == "PAUSED"  # nobody executes it now
    with medic_server(state_dir, env=serve_env) as second:
        # adopted: executed again from the top; it finds its card and updates it in place
        slack.wait_for("chat.update", lambda c: c.args["ts"] == card.response["ts"] and has_buttons(c.args), timeout=90)
        assert click(second, card, BOB).status_code == 200
        state = final_state(lab, run_id)
        assert (state["type"], state["name"]) == ("COMPLETED", "Recovered"), (state, second.logs()[-2000:])
    posted = [c for c in slack.calls("chat.postMessage") if run_id in json.dumps(c.args.get("blocks") or [])]
    assert len(posted) == 1, "the re-executed run must reuse its card, not post another"
    assert f"Approved by <@{BOB}>" in card_text(message_now(slack, card))


def test_secrets_never_reach_logs_audit_or_state(lab: LabState, slack: FakeSlack, serve_env: dict[str, str]) -> None:
    state_dir = Path(serve_env["MEDIC_STATE_DIR"])
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in files)
    assert not [p for p in files if p.name == "audit.jsonl" or p.parent.name == "approval-cards"], \
        "the audit log and the cards live in Prefect, not in local files"
    for path in files:
        text = path.read_text(errors="replace")
        assert slack.token not in text and SIGNING_SECRET not in text, path
        assert os.environ["MEDIC_APPROVAL_KEY"] not in text, path
    # what Prefect holds: every audit artifact and card variable, raw
    audit = json.dumps(prefect_json(lab.prefect_api_url, "POST", "/artifacts/filter",
                                    json={"artifacts": {"key": {"like_": "medic-audit-"}}}))
    cards = json.dumps(prefect_json(lab.prefect_api_url, "POST", "/variables/filter",
                                    json={"variables": {"name": {"like_": "medic-card-"}}}))
    assert "medic-audit-" in audit and "medic-card-" in cards
    inputs = json.dumps(prefect_json(lab.prefect_api_url, "POST", "/variables/filter",
                                     json={"variables": {"name": {"like_": "medic-"}}}))
    for text in (audit, cards, inputs):
        assert slack.token not in text and SIGNING_SECRET not in text
        assert os.environ["MEDIC_APPROVAL_KEY"] not in text  # proofs are HMACs of it, never it


# --- Socket Mode: the routing function only (no websocket to Slack from here) ----------------------


class _Acks:
    def __init__(self) -> None:
        self.envelopes: list[str] = []

    def send_socket_mode_response(self, response: Any) -> None:
        self.envelopes.append(response.envelope_id)


def test_socket_mode_routes_clicks_to_the_same_handler(tmp_path: Path) -> None:
    """Constructed SocketModeRequests; a real Socket Mode connection cannot be tested here."""
    handled: list[Any] = []

    class Recording(ClickHandler):
        async def handle(self, action: Any) -> ClickResult:
            handled.append(action)
            return ClickResult.ACCEPTED

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        handler = Recording(settings=Settings(state_dir=tmp_path))
        acks = _Acks()
        run_id = "3f0c6a1e-9d2b-4c5e-8f7a-1b2c3d4e5f60"
        click_ = SocketModeRequest(type="interactive", envelope_id="env-1",
                                   payload=block_action_payload(value=run_id, user_id=ALICE))
        future = await loop.run_in_executor(None, lambda: route(acks, click_, handler=handler, loop=loop))
        assert await asyncio.wrap_future(future) is ClickResult.ACCEPTED
        other = SocketModeRequest(type="events_api", envelope_id="env-2", payload={"event": {}})
        bad = SocketModeRequest(type="interactive", envelope_id="env-3",
                                payload=block_action_payload(value="not-a-run", user_id=ALICE))
        for request in (other, bad):
            assert await loop.run_in_executor(None, lambda r=request: route(acks, r, handler=handler, loop=loop)) is None
        assert acks.envelopes == ["env-1", "env-2", "env-3"]  # every envelope acknowledged
        assert [(a.user_id, a.value, a.action_id) for a in handled] == [(ALICE, run_id, "medic_approve")]

    asyncio.run(scenario())


def test_click_locks_are_kept_only_while_a_click_holds_them(tmp_path: Path) -> None:
    """One lock per run orders its clicks; a long-lived medic serve keeps none for runs nobody is clicking."""
    import gc

    handler = ClickHandler(settings=Settings(state_dir=tmp_path))

    async def scenario() -> None:
        first = handler.lock_for("run-a")
        async with first:
            assert handler.lock_for("run-a") is first  # a second click of run-a waits on the same lock
            assert handler.lock_for("run-b") is not first
        for i in range(50):
            async with handler.lock_for(f"run-{i}"):
                pass

    asyncio.run(scenario())
    gc.collect()
    assert len(handler._locks) == 0, f"{len(handler._locks)} locks kept for runs nobody is clicking"
