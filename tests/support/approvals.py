"""The tests' approvers: a directory for the session, their credentials, and proven decisions.

The session (tests/conftest.py) sets a fresh MEDIC_APPROVAL_KEY and points MEDIC_APPROVERS_FILE at
`write_directory`'s file, so every medic component the tests start — in-process flows, `medic serve`,
`medic approve` subprocesses — verifies approvals exactly as in production. MALLORY is in no directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from medic.approval.answers import resume_proven
from medic.approval.identity import STEP_S, approver_secret, cli_proof, encode_secret, totp
from medic.orchestration.pause import ResumeOutcome
from medic.settings import get_settings

ALICE, BOB, CAROL, MALLORY = "U0ALICE", "U0BOB", "U0CAROL", "U0MALLORY"
DIRECTORY = {"alice": ALICE, "bob": BOB, "carol": CAROL}  # name → Slack id


def write_directory(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"approvers": [{"name": n, "slack_id": s} for n, s in DIRECTORY.items()]}))
    return path


def secret_of(name: str) -> bytes:
    """What `medic approvers issue NAME` would print (decoded), from the session's approval key."""
    key = get_settings().approval_key
    assert key is not None, "MEDIC_APPROVAL_KEY is not set for the tests (tests/conftest.py sets it)"
    return approver_secret(key.get_secret_value(), name)


def secret_text(name: str) -> str:
    return encode_secret(secret_of(name))


def code_of(name: str, *, at: float | None = None) -> str:
    """The 6-digit code an authenticator app shows `name` now (or at `at`)."""
    return totp(secret_of(name), int((time.time() if at is None else at) // STEP_S))


def proven(decision: dict[str, Any], run_id: str) -> Any:
    """`decision` ({decision, approver[, comment]}) as `medic approve` sends it: a payload builder
    for the run's current pause (see medic.approval.answers.resume_proven)."""
    name = decision["approver"]

    def payload_for(pause_key: str) -> dict[str, Any]:
        return {"decision": decision["decision"], "approver": name, "comment": decision.get("comment", ""),
                "proof": cli_proof(secret_of(name), run_id=run_id, pause_key=pause_key,
                                   decision=decision["decision"])}

    return payload_for


async def answer_as(run_id: str, decision: dict[str, Any]) -> ResumeOutcome:
    """Resume `run_id` with a proven decision (the approver's own credential, this run, this pause)."""
    return await resume_proven(run_id, proven(decision, run_id))
