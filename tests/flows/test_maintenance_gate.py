"""Maintenance runs pass the same gate, whoever starts them: bad parameters are refused before
anything runs; parameters outside the reviewed ones (prefect.yaml) pause for a verified approval
instead of deleting; the reviewed parameters stay hands-off. Real lab, real Prefect, real playbooks."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medic.core.inventory import load_inventory
from medic.core.report import Outcome
from medic.errors import MaintenanceConfigError
from medic.orchestration.deployments import load_specs
from medic.orchestration.runs import FlowRunOutcome, run_flow_now, start_deployment_run_now
from medic.procedures import maintenance_gate as gate
from medic.procedures.maintenance_report import MaintenanceReport
from medic_lab.state import LabState
from tests.support.flows import answer_pause

DEPLOYMENT = "cleanup-web"
TWO_DAYS_S = 2 * 86400


@pytest.fixture
def old_files(lab: LabState) -> Iterator[dict[str, Path]]:
    """In web-1's data dir: a file only a deviating pattern matches, one the reviewed patterns match;
    both two days old. Removed afterwards, whatever happened."""
    tag = uuid.uuid4().hex[:8]
    data = lab.host("web-1").data_dir
    files = {"deviating": data / f"medic-gate-{tag}.bak", "reviewed": data / f"medic-gate-{tag}.tmp"}
    old = time.time() - TWO_DAYS_S
    for path in files.values():
        path.write_text("junk\n")
        os.utime(path, (old, old))
    yield files
    for path in files.values():
        path.unlink(missing_ok=True)


def _deployment_run(params: dict[str, Any], answer: dict[str, Any] | None = None
                    ) -> tuple[FlowRunOutcome, MaintenanceReport, str | None]:
    """A run of prefect.yaml's cleanup deployment (as the UI/API/schedule starts it), executed here;
    when `answer` is given, it is sent as soon as the run is paused for approval."""
    from flows import maintenance

    spec = next(s for s in load_specs() if s.name == DEPLOYMENT)

    async def go() -> tuple[FlowRunOutcome, str | None]:
        await (await maintenance.cleanup.ato_deployment(name=DEPLOYMENT, parameters=spec.parameters)).aapply()
        run, task = await start_deployment_run_now(maintenance.cleanup, f"maintenance-cleanup/{DEPLOYMENT}", params)
        status = await answer_pause(str(run.id), answer, timeout=120) if answer else None
        return await task, status

    outcome, status = asyncio.run(go())
    assert isinstance(outcome.result, MaintenanceReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result, status


def test_a_deviating_pattern_pauses_for_approval_instead_of_deleting(lab: LabState,
                                                                     old_files: dict[str, Path]) -> None:
    outcome, report, status = _deployment_run(
        {"group": "web-1", "patterns": "*.tmp,*.bak", "reason": "ticket 42"},
        answer={"decision": "reject", "approver": "alice", "comment": "not today"})
    assert status == "accepted"
    assert report.outcome is Outcome.REJECTED and outcome.state_type == "FAILED"
    assert "patterns: *.tmp,*.bak (reviewed: *.tmp,*.log.[0-9]*) — deletes files matching *.bak too" in report.summary
    assert old_files["deviating"].exists() and old_files["reviewed"].exists()  # nothing was deleted
    asked = [e.message for e in report.timeline if e.stage == "approval"]
    assert any("parameters outside the reviewed ones → asking for approval: patterns" in m for m in asked), asked


def test_an_approved_deviation_runs(lab: LabState, old_files: dict[str, Path]) -> None:
    outcome, report, status = _deployment_run(
        {"group": "web-1", "patterns": "*.bak", "min_age": "1d", "ignore_window": True},
        answer={"decision": "approve", "approver": "bob"})
    assert status == "accepted"
    assert report.outcome is Outcome.COMPLETED, report.summary
    assert not old_files["deviating"].exists() and old_files["reviewed"].exists()


def test_the_reviewed_parameters_stay_hands_off(lab: LabState, old_files: dict[str, Path]) -> None:
    """The deployment's own parameters (a narrower group is no deviation): no approval, it just runs."""
    outcome, report, _ = _deployment_run({"group": "web-1"})
    assert report.outcome is Outcome.COMPLETED, report.summary
    assert not [e for e in report.timeline if e.stage == "approval"]
    assert not old_files["reviewed"].exists() and old_files["deviating"].exists()


@pytest.mark.parametrize(("params", "message"), [
    ({"patterns": "../*.tmp"}, "pattern '../*.tmp' is refused"),
    ({"patterns": "logs/*.log"}, "pattern 'logs/*.log' is refused"),
    ({"patterns": "{{ lookup('pipe', 'id') }}"}, "is refused: a pattern is a file name glob"),
    ({"patterns": " , "}, "give 1 to 20 comma-separated file name patterns"),
    ({"min_age": "-1d"}, "min_age '-1d' is refused"),
    ({"min_age": "10s"}, "min_age '10s' is refused: give a number and a unit s/m/h/d/w from 5m to 365d"),
    ({"group": "nowhere"}, "group 'nowhere' is refused"),
    ({"max_errors": 2}, "max_errors 2 is refused: from 0 to the group's 1 host(s)"),
])
def test_bad_cleanup_parameters_are_refused_before_anything_runs(lab: LabState, old_files: dict[str, Path],
                                                                  params: dict[str, Any], message: str) -> None:
    from flows import maintenance

    outcome = asyncio.run(run_flow_now(maintenance.cleanup, {"group": "web-1", **params}))
    assert outcome.state_type == "FAILED" and message in (outcome.message or ""), outcome.message
    assert all(p.exists() for p in old_files.values())


def test_bad_rolling_restart_timeouts_are_refused(lab: LabState) -> None:
    with pytest.raises(MaintenanceConfigError, match="drain_timeout 0 is refused: from 1 to 600 seconds"):
        gate.check_rolling(load_inventory(), group="web", max_errors=0, drain_timeout=0, health_timeout=30)


def test_deviations_name_what_differs_in_the_riskier_direction(lab: LabState) -> None:
    inventory = load_inventory()
    reviewed = {"group": "web", "patterns": "*.tmp,*.log.[0-9]*", "min_age": "1d", "ignore_window": False}
    assert gate.deviations(inventory, {**reviewed, "group": "web-2", "patterns": "*.tmp", "min_age": "2d"},
                           reviewed) == []
    found = gate.deviations(inventory, {"group": "web", "patterns": "*", "min_age": "1h", "ignore_window": True},
                            {**reviewed, "group": "web-1"})
    assert [d.parameter for d in found] == ["group", "ignore_window", "patterns", "min_age"]
    assert found[0].why.startswith("hosts outside the reviewed group: web-2, web-3")
    assert str(found[3]) == "min_age: 1h (reviewed: 1d) — deletes younger files"
