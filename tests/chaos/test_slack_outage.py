"""Slack slow or down while runs ask for approval: no run is lost, and the decision reaches each one.

A real `medic serve` with Slack configured against the local fake Slack (tests/fakes), started with the
lab's Slack control file: the faults are the lab's own (`medic lab break slack-slow | slack-down`,
through the chaos suite's `inject`, recorded in `<lab>/faults.jsonl` and fixed at teardown). The
fixtures and helpers are the Slack approval tests' own (tests/approval/test_approval_slack.py).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from medic.orchestration.pause import ResumeStatus
from medic.service.clicks import ClickResult
from medic_lab import faults
from medic_lab.fault_record import read_record
from medic_lab.slack_faults import SLACK_DOWN_STATUS, slack_control
from medic_lab.state import LabState
from tests.approval.test_approval_slack import (  # noqa: F401 (fixtures)
    ALICE, BOB, GROUP, card_of, click, disk_full, final_state, runbooks_dir, serve_env, server, start_run,
    wait_audit, wait_input_schema, wait_state)
from tests.fakes.slack_api import FakeSlack
from tests.support.approvals import answer_as
from tests.support.chaos import Inject
from tests.support.server import MedicServer
from tests.support.waits import wait_for

pytestmark = pytest.mark.chaos

SLOW_S = 6.0  # slack-slow's delay here: longer than a click needs, shorter than slack_sdk's 10 s timeout


@pytest.fixture(scope="module")
def slack(lab: LabState) -> Iterator[FakeSlack]:
    """The fake Slack, listening to the lab's Slack faults (replaces the approval tests' own fixture)."""
    slack_control(lab).unlink(missing_ok=True)
    with FakeSlack(token=f"xoxb-test-{secrets.token_hex(8)}", control_file=slack_control(lab)) as fake:
        fake.set_usergroup(GROUP, [ALICE, BOB])
        yield fake


def test_the_slack_faults_reach_the_fake_and_fix_undoes_them(
        lab: LabState, slack: FakeSlack, inject: Inject, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing lost: under slack-slow every call is answered — late, and two calls wait side by side
    (the fake holds answers, not its lock); under slack-down every call gets 503; after `fix` calls are
    answered normally at once, and the lab's fault record has each break and fix."""
    def post(text: str) -> httpx.Response:
        return httpx.post(f"{slack.base_url}chat.postMessage", json={"channel": "C0FAULTS", "text": text},
                          headers={"Authorization": f"Bearer {slack.token}"}, timeout=30)

    monkeypatch.setenv("MEDIC_LAB_SLACK_DELAY_S", "0.5")
    assert "after 0.5 s" in inject("slack-slow")
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(post, ["slow-1", "slow-2"]))
    assert all(a.json()["ok"] for a in answers), [a.text for a in answers]
    slow = [c for c in slack.calls("chat.postMessage") if c.args.get("text") in ("slow-1", "slow-2")]
    assert len(slow) == 2 and all(c.ended - c.began >= 0.5 for c in slow), slow
    assert max(c.began for c in slow) < min(c.ended for c in slow), f"the slow calls did not overlap: {slow}"
    assert "answers normally again" in faults.fix_host(lab, "slack-slow")
    inject("slack-down")
    assert post("down").status_code == SLACK_DOWN_STATUS
    faults.fix_host(lab, "slack-down")
    back = post("back")
    assert back.json()["ok"], back.text
    assert not [c for c in slack.calls("chat.postMessage") if c.args.get("text") == "back" and c.ended - c.began >= 0.5]
    events = [(e.action, e.fault) for e in read_record(lab)][-4:]
    assert events == [("break", "slack-slow"), ("fix", "slack-slow"), ("break", "slack-down"),
                      ("fix", "slack-down")], events


@pytest.mark.slow
def test_slack_slow_no_run_crashes_and_another_card_is_answered_before_the_slow_call_returns(
        lab: LabState, slack: FakeSlack, server: MedicServer, disk_full, inject: Inject,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing lost: with every Slack call taking 6 s, both paused runs take their decision and end
    Recovered (neither marked Crashed), each click's audit record says `accepted` (taken by the flow,
    not "not yet taken"), and the click on card B is answered — its handler's audit record written —
    before card A's slow `chat.update`, in flight when B was clicked, has returned."""
    disk_full("web-1")
    disk_full("web-2")
    run_a, run_b = start_run(server, "disk-full-slack", "web-1"), start_run(server, "disk-full-slack", "web-2")
    card_a, card_b = card_of(slack, run_a), card_of(slack, run_b)
    wait_input_schema(lab, run_a)
    wait_input_schema(lab, run_b)

    monkeypatch.setenv("MEDIC_LAB_SLACK_DELAY_S", str(SLOW_S))
    assert "after 6 s" in inject("slack-slow")
    assert click(server, card_a, ALICE).status_code == 200
    ts_a = card_a.response["ts"]
    slow_a = wait_for(lambda: [f for f in slack.in_flight() if f[0] == "chat.update" and f[1].get("ts") == ts_a],
                      what=f"the card update of run {run_a} held by the slow Slack", timeout=60)
    clicked_b = time.time()
    assert click(server, card_b, BOB).status_code == 200
    answer_b = wait_audit({}, run_b, "click", timeout=60)[0]
    answer_a = wait_audit({}, run_a, "click", timeout=60)[0]
    update_a = wait_for(lambda: [c for c in slack.calls("chat.update") if c.args.get("ts") == ts_a
                                 and c.began == slow_a[0][2]],
                        what=f"the slow card update of run {run_a} to return", timeout=3 * SLOW_S)[0]
    print(f"\nclick on card B answered {answer_b.at.timestamp() - clicked_b:.2f} s after it was sent; "
          f"card A's update in flight returned {update_a.ended - update_a.began:.2f} s after it began, "
          f"{update_a.ended - answer_b.at.timestamp():.2f} s after B's answer")
    assert answer_b.at.timestamp() < update_a.ended, (answer_b, update_a.began, update_a.ended)
    assert (answer_a.result, answer_a.detail) == (ClickResult.ACCEPTED.value, ""), answer_a
    assert (answer_b.result, answer_b.detail) == (ClickResult.ACCEPTED.value, ""), answer_b
    for run_id in (run_a, run_b):
        ended = final_state(lab, run_id)
        assert (ended["type"], ended["name"]) == ("COMPLETED", "Recovered"), (ended, server.logs()[-3000:])


@pytest.mark.slow
def test_slack_down_the_run_still_waits_and_the_cli_decision_reaches_it(
        lab: LabState, slack: FakeSlack, server: MedicServer, disk_full, inject: Inject,  # noqa: F811
        serve_env: dict[str, str]) -> None:  # noqa: F811
    """Nothing lost: with every Slack call answered 503, the run is Paused (not Failed, not Crashed),
    the approval sent the other way (`medic approve`'s proven decision) is accepted and recorded in the
    audit log, and the run recovers; when Slack comes back it takes calls again (the fault is recorded
    and undone in the lab's fault record)."""
    disk_full("web-2")
    said = inject("slack-down")
    assert str(SLACK_DOWN_STATUS) in said, said
    run_id = start_run(server, "disk-full-slack", "web-2")
    wait_state(lab, run_id, {"PAUSED", "COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
    wait_input_schema(lab, run_id)
    refused = [c for c in slack.calls() if c.status == SLACK_DOWN_STATUS and run_id in str(c.args)]
    assert refused, f"the fake Slack was never asked about run {run_id}: nothing was tested ({slack.calls()[-3:]})"
    assert not [c for c in slack.calls("chat.postMessage") if c.ok and run_id in str(c.args)], \
        "a card was posted although Slack was down"

    outcome = asyncio.run(answer_as(run_id, {"decision": "approve", "approver": "alice"}))
    assert outcome.status is ResumeStatus.ACCEPTED, outcome
    ended = final_state(lab, run_id)
    assert ended["name"] == "Recovered", (ended, server.logs()[-3000:])
    decision = wait_audit(serve_env, run_id, "decision")[0]
    assert (decision.what, decision.who) == ("approved", "alice"), decision

    assert "answers normally again" in faults.fix_host(lab, "slack-down")  # Slack comes back
    events = [(e.action, e.fault) for e in read_record(lab)][-2:]
    assert events == [("break", "slack-down"), ("fix", "slack-down")], events
    disk_full("web-2")  # full again: the next run asks again, and its card reaches Slack
    start = len(slack.calls())
    later = start_run(server, "disk-full-slack", "web-2")
    posted = card_of(slack, later)
    wait_input_schema(lab, later)
    assert posted.ok and all(c.ok for c in slack.calls()[start:] if later in str(c.args)), slack.calls()[start:]
    assert asyncio.run(answer_as(later, {"decision": "reject", "approver": "alice"})).status is ResumeStatus.ACCEPTED
    assert final_state(lab, later)["name"] == "Rejected"
