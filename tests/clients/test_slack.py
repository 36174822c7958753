"""medic.clients.slack against a real local fake of Slack's Web API and real Slack-signed requests."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
import httpx

from medic.errors import ApprovalError, ConfigError, InputError
from medic.clients.slack import (
    ApprovalCard,
    Decision,
    IncidentThread,
    SlackNotifier,
    approval_card_blocks,
    decided_card_blocks,
)
from medic.clients.slack_interactivity import BlockAction, SlackRequestRefused, verify_and_parse
from medic.settings import Settings
from tests.fakes.slack_api import FakeSlack, block_kit_errors, fake_slack  # noqa: F401 (fixture)
from tests.fakes.slack_signing import (
    SIGNING_SECRET,
    block_action_payload,
    form_body,
    sign,
    signed_block_action,
)

RUN_ID = "3f0c6a1e-9d2b-4c5e-8f7a-1b2c3d4e5f60"
DEADLINE = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def notifier_for(slack: FakeSlack, **options: object) -> SlackNotifier:
    return SlackNotifier(token=slack.token, base_url=slack.base_url, backoff_factor=0.01, **options)


def make_card(**changes: object) -> ApprovalCard:
    fields: dict[str, object] = dict(
        title="nginx down on web-2",
        runbook="service-down",
        targets=["web-2"],
        detect_query='up{job="nginx",instance=~"web-2.*"} < 1',
        detect_value="0",
        diagnosis_summary="nginx.service is inactive (exit code 1); port 80 closed; disk and memory fine.",
        planned_action="playbook restart-service.yml on web-2",
        flow_run_id=RUN_ID,
        flow_run_url=f"http://127.0.0.1:4200/runs/flow-run/{RUN_ID}",
        deadline=DEADLINE,
    )
    return ApprovalCard.model_validate(fields | changes)


def texts(blocks: list[dict]) -> str:
    """All the text a reader sees in the blocks, joined."""
    return json.dumps(blocks, ensure_ascii=False)


def assert_valid_block_kit(blocks: list[dict]) -> None:
    assert block_kit_errors(blocks) is None


# --- the notifier against the fake -----------------------------------------------------------------


def test_post_is_recorded_with_decoded_blocks(fake_slack: FakeSlack) -> None:
    blocks = approval_card_blocks(make_card())

    ts = notifier_for(fake_slack).post("C0OPS0001", "Approval needed: nginx down on web-2", blocks=blocks)

    call = fake_slack.wait_for("chat.postMessage")
    assert ts == call.response["ts"] == "1700000000.000100"
    assert call.args["channel"] == "C0OPS0001"
    assert call.args["blocks"] == blocks
    assert call.response["message"]["blocks"] == blocks


def test_update_and_ephemeral_return_slack_ts(fake_slack: FakeSlack) -> None:
    notifier = notifier_for(fake_slack)
    card = make_card()
    ts = notifier.post("C0OPS0001", "approval", blocks=approval_card_blocks(card))
    assert ts is not None

    decided = decided_card_blocks(card, decision=Decision.APPROVED, by="U0ONCALL1", at=DEADLINE)
    assert notifier.update("C0OPS0001", ts, "approved", decided) == ts
    ephemeral_ts = notifier.post_ephemeral("C0OPS0001", "U0INTERN", "you may not approve this runbook")

    assert fake_slack.message("C0OPS0001", ts)["blocks"] == decided
    assert ephemeral_ts == fake_slack.wait_for("chat.postEphemeral").response["message_ts"]
    assert ephemeral_ts != ts


def test_rate_limited_twice_then_delivered_once(fake_slack: FakeSlack) -> None:
    fake_slack.fail_next(2, status=429)

    started = time.monotonic()
    ts = notifier_for(fake_slack).post("C0OPS0001", "disk 95% on db-1")
    waited = time.monotonic() - started

    attempts = fake_slack.calls("chat.postMessage")
    assert [c.status for c in attempts] == [429, 429, 200]
    assert [c.args["text"] for c in attempts] == ["disk 95% on db-1"] * 3
    assert ts == attempts[-1].response["ts"]
    assert waited >= 2.0  # Retry-After: 1 honoured twice


def test_persistent_server_error_returns_none_and_warns(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    fake_slack.fail_next(10, status=500)

    with caplog.at_level(logging.WARNING, logger="medic.clients.slack"):
        ts = notifier_for(fake_slack, retries=2).post("C0OPS0001", "restarting nginx on web-2")

    assert ts is None
    assert [c.status for c in fake_slack.calls()] == [500, 500, 500]
    warning = [r for r in caplog.records if r.name == "medic.clients.slack" and r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "HTTP 500" in warning[0].getMessage()
    assert "restarting nginx on web-2" in warning[0].getMessage()


def test_unreachable_slack_returns_none() -> None:
    with FakeSlack() as slack:
        url, token = slack.base_url, slack.token  # the port is closed once the fake stops
    notifier = SlackNotifier(token=token, base_url=url, retries=1, backoff_factor=0.01)

    assert notifier.post("C0OPS0001", "anyone there?") is None


def test_wrong_token_is_refused_and_never_logged(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SlackNotifier(token="xoxb-not-the-right-one", base_url=fake_slack.base_url)

    with caplog.at_level(logging.DEBUG):
        assert notifier.update("C0OPS0001", "1700000000.000100", "x", None) is None

    assert fake_slack.calls()[0].response == {"ok": False, "error": "invalid_auth"}
    assert "invalid_auth" in caplog.text
    assert "xoxb-not-the-right-one" not in caplog.text


def test_no_token_means_disabled_logs_and_no_http(
    fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(slack_bot_token=None, slack_api_url=fake_slack.base_url)
    notifier = SlackNotifier.from_settings(settings)

    with caplog.at_level(logging.INFO, logger="medic.clients.slack"):
        results = [
            notifier.post("C0OPS0001", "nginx down on web-2"),
            notifier.update("C0OPS0001", "1.2", "approved", None),
            notifier.post_ephemeral("C0OPS0001", "U1", "not allowed"),
        ]

    assert not notifier.enabled
    assert results == [None, None, None]
    assert fake_slack.calls() == []
    assert "nginx down on web-2" in caplog.text and "not allowed" in caplog.text


def test_blocks_over_slack_limits_are_refused_by_the_fake(fake_slack: FakeSlack) -> None:
    too_long = [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}]

    assert notifier_for(fake_slack).post("C0OPS0001", "x", blocks=too_long) is None
    assert fake_slack.calls()[0].response["error"] == "invalid_blocks"


def test_fake_speaks_form_encoding_and_checks_the_bearer_token(fake_slack: FakeSlack) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    form = {"channel": "C0OPS0001", "text": "hi", "blocks": json.dumps(blocks)}
    auth = {"Authorization": f"Bearer {fake_slack.token}"}

    posted = httpx.post(fake_slack.base_url + "chat.postMessage", data=form, headers=auth, trust_env=False)
    who = httpx.post(fake_slack.base_url + "auth.test", data={}, headers=auth, trust_env=False)
    anonymous = httpx.post(fake_slack.base_url + "auth.test", data={}, trust_env=False)

    assert posted.json()["message"]["blocks"] == blocks
    assert fake_slack.calls("chat.postMessage")[0].args["blocks"] == blocks
    assert who.json()["ok"] is True and who.json()["user_id"]
    assert anonymous.json() == {"ok": False, "error": "invalid_auth"}


def test_incident_thread_replies_under_the_parent(fake_slack: FakeSlack) -> None:
    thread = IncidentThread(notifier_for(fake_slack), "C0OPS0001")

    parent = thread.open("nginx down on web-2", "up == 0 for 2m <!channel>")
    stages = ["Diagnosis: nginx inactive", "Waiting for approval", "Playbook ok: changed=1", "Verified: up 1"]
    replies = [thread.say(text) for text in stages]

    posts = fake_slack.calls("chat.postMessage")
    assert parent is not None and None not in replies
    assert posts[0].args["text"] == "*nginx down on web-2*\nup == 0 for 2m &lt;!channel&gt;"
    assert "thread_ts" not in posts[0].args
    assert [c.args["text"] for c in posts[1:]] == stages
    assert {c.args["thread_ts"] for c in posts[1:]} == {parent}


def test_incident_thread_disabled_only_logs(caplog: pytest.LogCaptureFixture) -> None:
    thread = IncidentThread(SlackNotifier(token=None), "C0OPS0001")

    with caplog.at_level(logging.INFO, logger="medic.clients.slack"):
        assert thread.open("disk full on db-1", "95%") is None
        assert thread.say("Not recovered: disk still 95%") is None

    assert "disk full on db-1" in caplog.text and "Not recovered" in caplog.text


# --- card builders ---------------------------------------------------------------------------------


def test_approval_card_has_both_buttons_with_run_id_and_confirm() -> None:
    blocks = approval_card_blocks(make_card())

    assert_valid_block_kit(blocks)
    header = {"type": "plain_text", "text": "nginx down on web-2", "emoji": True}
    assert blocks[0] == {"type": "header", "text": header}
    actions = [b for b in blocks if b["type"] == "actions"]
    assert len(actions) == 1 and actions[0]["block_id"] == "medic_approval"
    approve, reject = actions[0]["elements"]
    assert (approve["action_id"], approve["style"], approve["value"]) == ("medic_approve", "primary", RUN_ID)
    assert (reject["action_id"], reject["style"], reject["value"]) == ("medic_reject", "danger", RUN_ID)
    assert "confirm" not in reject
    confirm = approve["confirm"]
    assert {k: confirm[k]["type"] for k in ("title", "text", "confirm", "deny")} == dict.fromkeys(
        ("title", "text", "confirm", "deny"), "plain_text"
    )
    assert "restart-service.yml" in confirm["text"]["text"]


def test_approval_card_shows_evidence_plan_link_and_deadline() -> None:
    blocks = approval_card_blocks(make_card(check_mode_result="web-2: changed=1 failed=0"))
    shown = texts(blocks)

    assert "`web-2`" in shown
    # PromQL is escaped for mrkdwn, so `<` cannot start a link or a mention
    assert '`up{job=\\"nginx\\",instance=~\\"web-2.*\\"} &lt; 1`' in shown
    assert "nginx.service is inactive" in shown
    assert "restart-service.yml on web-2" in shown and "changed=1 failed=0" in shown
    context = next(b for b in blocks if b["type"] == "context")["elements"][0]["text"]
    assert f"<http://127.0.0.1:4200/runs/flow-run/{RUN_ID}|" in context
    assert f"<!date^{int(DEADLINE.timestamp())}^" in context and "|2026-03-01 12:30 UTC>" in context
    assert "Approvals:" not in shown


def test_long_text_is_truncated_within_slack_limits() -> None:
    card = make_card(title="T" * 400, diagnosis_summary="d&" * 5000, check_mode_result="x" * 10_000)
    blocks = approval_card_blocks(card)

    assert_valid_block_kit(blocks)
    assert len(blocks[0]["text"]["text"]) == 150 and blocks[0]["text"]["text"].endswith("…")
    sections = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert max(len(s) for s in sections) == 3000
    clipped = [s for s in sections if s.endswith("…")]
    assert len(clipped) == 2
    assert not any(s.rstrip("…").endswith(("&", "&a", "&am", "&amp")) for s in clipped)


def test_run_id_longer_than_a_button_value_is_refused() -> None:
    with pytest.raises(ValueError, match="flow_run_id"):
        make_card(flow_run_id="r" * 2001)


def test_n_of_m_approvals_line() -> None:
    blocks = approval_card_blocks(make_card(approvals_required=2, approved_by=["U123"]))

    assert_valid_block_kit(blocks)
    assert "Approvals: 1 of 2 (<@U123>)" in texts(blocks)


@pytest.mark.parametrize(
    ("decision", "by", "expected"),
    [
        (Decision.APPROVED, "U0ONCALL1", "✅ Approved by <@U0ONCALL1> at <!date^"),
        ("rejected", "U0ONCALL2", "❌ Rejected by <@U0ONCALL2> at <!date^"),
        (Decision.TIMED_OUT, None, "⌛ No longer waiting: the approval timed out"),
        (Decision.GONE, None, "⌛ No longer waiting: the run finished or was cancelled"),
    ],
)
def test_decided_card_has_no_buttons_and_says_what_happened(
    decision: Decision | str, by: str | None, expected: str
) -> None:
    card = make_card(approvals_required=2, approved_by=["U0ONCALL1"])
    blocks = decided_card_blocks(card, decision=decision, by=by, at=DEADLINE, note="rollback <not> needed")

    assert_valid_block_kit(blocks)
    assert all(b["type"] != "actions" for b in blocks)
    last = blocks[-1]["text"]["text"]
    assert last.startswith(expected)
    assert last.endswith("\n>rollback &lt;not&gt; needed")
    assert blocks[:-1] == approval_card_blocks(card)[:-1]  # same evidence as the card that was clicked


def test_decided_card_refuses_naive_time_and_unknown_decision() -> None:
    with pytest.raises(ApprovalError, match="no time zone"):
        decided_card_blocks(make_card(), decision="approved", by="U1", at=datetime(2026, 3, 1))
    with pytest.raises(ValueError, match="maybe"):
        decided_card_blocks(make_card(), decision="maybe", by="U1", at=DEADLINE)


# --- verify_and_parse ------------------------------------------------------------------------------


def test_valid_click_is_parsed() -> None:
    card_blocks = approval_card_blocks(make_card())
    body, headers = signed_block_action(value=RUN_ID, message_blocks=card_blocks)

    action = verify_and_parse(body, headers, SIGNING_SECRET)

    assert isinstance(action, BlockAction)
    assert (action.user_id, action.user_name, action.team_id) == ("U0ONCALL1", "oncall.alice", "T0MEDIC")
    assert (action.action_id, action.block_id, action.value) == ("medic_approve", "medic_approval", RUN_ID)
    assert (action.channel_id, action.message_ts) == ("C0OPS0001", "1700000000.000100")
    assert action.response_url.startswith("https://hooks.slack.com/actions/T0MEDIC/")
    assert action.trigger_id and float(action.action_ts) > 0
    assert action.message_blocks == card_blocks


def test_headers_are_case_insensitive_and_now_is_injectable() -> None:
    body, headers = signed_block_action(timestamp=1_700_000_000)
    lowered = {k.lower(): v for k, v in headers.items()}

    assert verify_and_parse(body, lowered, SIGNING_SECRET, now=1_700_000_299).value
    with pytest.raises(SlackRequestRefused, match="5-minute window"):
        verify_and_parse(body, lowered, SIGNING_SECRET, now=1_700_000_301)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"secret": "not-the-signing-secret"}, "signature mismatch"),
        ({"timestamp_offset": -600}, "timestamp outside the 5-minute window (possible replay)"),
        ({"timestamp_offset": 600}, "timestamp outside the 5-minute window (possible replay)"),
        ({"omit_headers": True}, "missing signature headers"),
    ],
)
def test_unauthentic_requests_are_refused_with_401(options: dict[str, object], reason: str) -> None:
    options = dict(options)
    if "timestamp_offset" in options:  # relative to when the test runs, not when it was collected
        options["timestamp"] = int(time.time()) + int(options.pop("timestamp_offset"))
    body, headers = signed_block_action(**options)

    with pytest.raises(SlackRequestRefused) as refused:
        verify_and_parse(body, headers, SIGNING_SECRET)

    assert refused.value.status == 401
    assert reason in refused.value.reason
    assert isinstance(refused.value, InputError)  # a refused request is bad input, not Slack failing


def test_tampered_body_is_a_signature_mismatch() -> None:
    body, headers = signed_block_action(value=RUN_ID)

    with pytest.raises(SlackRequestRefused, match="signature mismatch") as refused:
        verify_and_parse(body.replace(b"medic_approve", b"medic_reject"), headers, SIGNING_SECRET)
    assert refused.value.status == 401


def test_malformed_timestamp_is_refused_with_401() -> None:
    body, headers = signed_block_action()

    with pytest.raises(SlackRequestRefused, match="malformed timestamp") as refused:
        verify_and_parse(body, headers | {"X-Slack-Request-Timestamp": "yesterday"}, SIGNING_SECRET)
    assert refused.value.status == 401


def _without(payload: dict, *path: str) -> dict:
    inner = payload
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return payload


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (json.dumps(block_action_payload()).encode(), "not form-encoded payload=<JSON>"),
        (b"payload=%7Bnot+json", "payload is not valid JSON"),
        (form_body(block_action_payload() | {"type": "view_submission"}), "type 'view_submission'"),
        (form_body(_without(block_action_payload(), "actions")), "missing fields: actions"),
        (form_body(block_action_payload() | {"actions": []}), "missing fields: actions"),
        (form_body(_without(block_action_payload(), "container", "channel_id")), "container.channel_id"),
        (form_body(_without(block_action_payload(), "user", "id")), "user.id"),
    ],
    ids=["json-body", "bad-json", "wrong-type", "no-actions", "empty-actions", "no-channel", "no-user"],
)
def test_malformed_but_signed_bodies_are_refused_with_400(body: bytes, reason: str) -> None:
    with pytest.raises(SlackRequestRefused) as refused:
        verify_and_parse(body, sign(body), SIGNING_SECRET)

    assert refused.value.status == 400
    assert reason in refused.value.reason


def test_body_that_is_not_utf8_is_refused_with_400_not_a_crash() -> None:
    _, headers = signed_block_action()

    with pytest.raises(SlackRequestRefused, match="not UTF-8") as refused:
        verify_and_parse(b"payload=\xff\xfe", headers, SIGNING_SECRET)
    assert refused.value.status == 400


def test_missing_signing_secret_is_a_config_error() -> None:
    body, headers = signed_block_action()

    with pytest.raises(ConfigError, match="MEDIC_SLACK_SIGNING_SECRET"):
        verify_and_parse(body, headers, "")
