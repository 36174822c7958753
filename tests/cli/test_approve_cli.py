"""`medic approve` refuses to send anything it cannot prove, and `medic approvers issue` prints the one
credential medic derives for an approver. Real `medic` processes; nothing here needs the lab."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from medic.approval.identity import approver_secret, encode_secret

KEY = "cli-test-approval-key"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    directory = tmp_path / "approvers.yaml"
    directory.write_text("approvers:\n  - name: alice\n    slack_id: U0ALICE\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIC_APPROVER", "MEDIC_APPROVAL"))}
    return {**clean, "MEDIC_APPROVERS_FILE": str(directory), "MEDIC_LAB_DIR": str(tmp_path / "no-lab")}


def medic(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medic", *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


def test_approve_without_a_secret_sends_nothing_and_says_how(env: dict[str, str]) -> None:
    run_id = str(uuid.uuid4())
    missing = medic("approve", run_id, "--approver", "alice", env=env)
    assert missing.returncode == 2, missing
    assert "no approver secret for alice: set MEDIC_APPROVER_SECRET" in missing.stderr
    assert "medic approvers issue alice" in missing.stderr and "nothing was sent" in missing.stderr
    nameless = medic("approve", run_id, env={**env, "MEDIC_APPROVER_SECRET": "A" * 32})
    assert nameless.returncode == 2 and "needs --approver NAME" in nameless.stderr, nameless
    garbled = medic("approve", run_id, "--approver", "alice", env={**env, "MEDIC_APPROVER_SECRET": "hunter2"})
    assert garbled.returncode == 2 and "is not a medic approver secret" in garbled.stderr, garbled
    assert "hunter2" not in garbled.stderr + garbled.stdout


def test_approvers_issue_prints_the_derived_secret_once(env: dict[str, str]) -> None:
    issued = medic("approvers", "issue", "alice", env={**env, "MEDIC_APPROVAL_KEY": KEY})
    assert issued.returncode == 0, issued
    secret = encode_secret(approver_secret(KEY, "alice"))
    assert f"  {secret}\n" in issued.stdout
    assert f"otpauth://totp/medic:alice?secret={secret}&issuer=medic" in issued.stdout
    assert KEY not in issued.stdout
    stranger = medic("approvers", "issue", "mallory", env={**env, "MEDIC_APPROVAL_KEY": KEY})
    assert stranger.returncode == 2 and "'mallory' is not in the approver directory" in stranger.stderr
    keyless = medic("approvers", "issue", "alice", env=env)
    assert keyless.returncode == 2 and "MEDIC_APPROVAL_KEY is not set" in keyless.stderr, keyless
    listed = medic("approvers", "list", env=env)
    assert listed.returncode == 0 and "alice" in listed.stdout and "U0ALICE" in listed.stdout
