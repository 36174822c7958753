"""Slack down while a run asks for approval: the run waits anyway and the decision reaches it by the CLI.

A real `medic serve` with Slack configured against the local fake Slack (tests/fakes), which answers
every request with 503 for the test (Slack's outage page). The fixtures and helpers are the Slack
approval tests' own (tests/approval/test_approval_slack.py).
"""

from __future__ import annotations

import asyncio

import pytest

from medic.orchestration.pause import ResumeStatus
from medic_lab.state import LabState
from tests.approval.test_approval_slack import (  # noqa: F401 (fixtures)
    disk_full, final_state, runbooks_dir, serve_env, server, slack, start_run, wait_input_schema, wait_state)
from tests.fakes.slack_api import FakeSlack
from tests.support.approvals import answer_as
from tests.support.server import MedicServer

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def test_slack_down_the_run_still_waits_and_the_cli_decision_reaches_it(
        lab: LabState, slack: FakeSlack, server: MedicServer, disk_full) -> None:  # noqa: F811
    """Nothing lost: with every Slack call failing, the run is Paused (not Failed, not Crashed), the
    approval sent the other way (`medic approve`'s proven decision) is accepted, and the run recovers."""
    disk_full("web-2")
    slack.fail_next(10_000, status=503)
    try:
        run_id = start_run(server, "disk-full-slack", "web-2")
        wait_state(lab, run_id, {"PAUSED", "COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
        wait_input_schema(lab, run_id)
        assert any(not c.ok for c in slack.calls()), "the fake Slack was never asked: nothing was tested"
    finally:
        slack.clear_faults()  # Slack is back for the rest of the module
    outcome = asyncio.run(answer_as(run_id, {"decision": "approve", "approver": "alice"}))
    assert outcome.status is ResumeStatus.ACCEPTED, outcome
    ended = final_state(lab, run_id)
    assert ended["name"] == "Recovered", (ended, server.logs()[-3000:])
