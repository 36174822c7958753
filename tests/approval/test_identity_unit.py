"""Proofs of identity without a lab: TOTP against RFC 6238's vectors, proofs bound to one run, pause and
decision, the approver directory and who a policy admits, and `medic validate`'s approval warnings."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from medic.approval.directory import ApproverDirectory, Approver, allowed_names, load_directory, unknown_approvers
from medic.approval.identity import (
    PROOF_MAX_AGE_S,
    STEP_S,
    alert_proof,
    approver_secret,
    check,
    cli_proof,
    decode_secret,
    encode_secret,
    otpauth_uri,
    slack_proof,
    totp,
)
from medic.cli.approvers import approval_warnings
from medic.core.runbook import load_runbooks
from medic.core.paths import PROJECT_ROOT, RUNBOOKS_DIR
from medic.errors import RunbookError
from medic.settings import Settings

KEY = "unit-test-approval-key"
RUN, PAUSE = str(uuid.uuid4()), "approval-1-1"
KNOWN = {"alice", "bob"}
SLACK = {"U0ALICE": "alice"}


def verdict(**overrides: object):
    args = {"decision": "approve", "approver": "alice", "code": "", "proof": "", "run_id": RUN, "pause_key": PAUSE,
            "approval_key": KEY, "known": KNOWN, "slack_ids": SLACK}
    return check(**{**args, **overrides})


def test_totp_matches_rfc_6238_sha1_vectors() -> None:
    secret = b"12345678901234567890"  # RFC 6238 appendix B (SHA1); its 8-digit values, last 6 digits
    expected = {59: "287082", 1111111109: "081804", 1111111111: "050471", 1234567890: "005924", 2000000000: "279037"}
    assert {t: totp(secret, t // STEP_S) for t in expected} == expected


def test_issued_secret_round_trips_and_differs_per_approver() -> None:
    alice = approver_secret(KEY, "alice")
    assert decode_secret(encode_secret(alice)) == alice and len(encode_secret(alice)) == 32
    assert decode_secret(encode_secret(alice).lower()) == alice  # as an app or a person may type it
    assert alice != approver_secret(KEY, "bob") and alice != approver_secret("another-key", "alice")
    assert decode_secret("not base32!") is None and decode_secret("AAAA") is None
    uri = otpauth_uri("alice", alice)
    assert uri.startswith("otpauth://totp/medic:alice?secret=") and "period=30" in uri and "digits=6" in uri


def test_a_code_counts_within_one_step_either_side_only() -> None:
    secret, now = approver_secret(KEY, "alice"), 1_800_000_000.0
    step = int(now // STEP_S)
    for offset, ok in ((-2, False), (-1, True), (0, True), (1, True), (2, False)):
        found = verdict(code=totp(secret, step + offset), now=now)
        assert found.ok is ok, (offset, found)
    good = verdict(code=totp(secret, step), now=now)
    assert (good.name, good.via, good.step) == ("alice", "ui", step)
    assert "wrong or expired code" in verdict(code=totp(approver_secret(KEY, "bob"), step), now=now).reason
    assert "not in the approver directory" in verdict(approver="mallory", code="123456", now=now).reason
    assert "no proof" in verdict(approver="U0ALICE").reason  # a Slack id typed by hand proves nothing


def test_cli_proof_is_bound_to_run_pause_decision_and_time() -> None:
    secret, now = approver_secret(KEY, "alice"), 1_800_000_000
    proof = cli_proof(secret, run_id=RUN, pause_key=PAUSE, decision="approve", ts=now)
    assert verdict(proof=proof, now=now).model_dump(include={"ok", "name", "via"}) == {
        "ok": True, "name": "alice", "via": "cli"}
    refused = {
        "other run": verdict(proof=proof, run_id=str(uuid.uuid4()), now=now),
        "other pause": verdict(proof=proof, pause_key="approval-1-2", now=now),
        "other decision": verdict(proof=proof, decision="reject", now=now),
        "other approver": verdict(proof=proof, approver="bob", now=now),
        "too old": verdict(proof=proof, now=now + PROOF_MAX_AGE_S + 1),
        "future": verdict(proof=proof, now=now - 120),
        "wrong secret": verdict(proof=cli_proof(approver_secret("not-the-key", "alice"), run_id=RUN,
                                                pause_key=PAUSE, decision="approve", ts=now), now=now),
    }
    assert {k: v.ok for k, v in refused.items()} == dict.fromkeys(refused, False)
    assert "forged or misdirected" in refused["other run"].reason and "old" in refused["too old"].reason


def test_slack_and_alert_proofs_need_the_approval_key() -> None:
    now = 1_800_000_000
    good = slack_proof(KEY, run_id=RUN, pause_key=PAUSE, decision="approve", user="U0ALICE", ts=now)
    assert verdict(proof=good, approver="", now=now).name == "alice"  # the identity comes from the directory
    forged = slack_proof("guessed-key", run_id=RUN, pause_key=PAUSE, decision="approve", user="U0ALICE", ts=now)
    assert "forged" in verdict(proof=forged, now=now).reason
    stranger = slack_proof(KEY, run_id=RUN, pause_key=PAUSE, decision="approve", user="U0MALLORY", ts=now)
    assert "not in the approver directory" in verdict(proof=stranger, now=now).reason
    withdrawal = alert_proof(KEY, run_id=RUN, pause_key=PAUSE, ts=now)
    assert verdict(proof=withdrawal, decision="withdraw", now=now).via == "alert"
    assert not verdict(proof=withdrawal, decision="approve", now=now).ok  # never an approval


def test_directory_validation_points_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "approvers.yaml"
    path.write_text("approvers:\n  - name: alice\n  - name: Bob Smith\n")
    with pytest.raises(RunbookError) as bad_name:
        load_directory(path)
    assert f"{path}:3" in str(bad_name.value) and "approvers.1.name" in str(bad_name.value)
    path.write_text("approvers:\n  - {name: alice, slack_id: U0A}\n  - {name: alice}\n")
    with pytest.raises(RunbookError, match="appears twice"):
        load_directory(path)
    assert load_directory(tmp_path / "missing.yaml").approvers == []  # nobody may approve


def test_who_a_policy_admits() -> None:
    directory = ApproverDirectory(approvers=[Approver(name="alice", slack_id="U0ALICE"), Approver(name="bob"),
                                             Approver(name="carol", slack_id="U0CAROL")])
    assert allowed_names(["alice", "U0CAROL", "ghost"], None, directory) == {"alice", "carol"}
    assert allowed_names([], None, directory) == {"alice", "bob", "carol"}  # naming nobody: the directory
    assert allowed_names([], "S0ONCALL", directory, lambda group: {"U0CAROL", "U0STRANGER"}) == {"carol"}
    assert unknown_approvers(["alice", "U0CAROL", "ghost"], directory) == ["ghost"]


def test_validate_warns_about_approvals_nobody_could_verify(tmp_path: Path) -> None:
    directory = tmp_path / "approvers.yaml"
    directory.write_text("approvers:\n  - name: alice\n")
    runbooks = list(load_runbooks(RUNBOOKS_DIR).values())
    unnamed = runbooks[0].model_copy(deep=True)
    unnamed.approval.policy, unnamed.approval.approvers, unnamed.name = "required", [], "unnamed"
    found = approval_warnings(Settings(approvers_file=directory, approval_key=None, lab_dir=tmp_path),
                              [*runbooks, unnamed])
    assert any("MEDIC_APPROVAL_KEY is not set" in w for w in found), found
    assert any("policy 'required' names no approvers" in w for w in found), found
    assert any("'bob' is not in" in w for w in found), found  # disk-full names alice and bob
    shipped = approval_warnings(Settings(approval_key="k", approvers_file=PROJECT_ROOT / "approvers.yaml", lab_dir=tmp_path), runbooks)
    assert shipped == [], shipped  # the shipped runbooks name approvers of the shipped directory
