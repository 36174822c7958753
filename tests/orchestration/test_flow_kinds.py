"""Which flow, deployment and parameters each kind of runbook gets (alerts, medic run, /runs)."""

from __future__ import annotations

import pytest

from medic.errors import RunbookError
from medic.orchestration.flow_kinds import choose, load_flow
from medic.core.paths import RUNBOOKS_DIR
from medic.core.runbook import find_runbook


def test_a_remediation_runbook_runs_the_remediate_flow_under_its_deployment() -> None:
    choice = choose(find_runbook("service-down", RUNBOOKS_DIR), "web-2", reason="alert", require_approval=True)
    assert choice.deployment == "remediate/service-down"
    assert choice.parameters == {"runbook": "service-down", "target": "web-2", "dry_run": False, "reason": "alert",
                                 "require_approval": True}
    assert load_flow(choice.entrypoint).name == "remediate"


def test_a_failover_runbook_runs_the_failover_flow_with_the_alert_host_as_primary() -> None:
    choice = choose(find_runbook("postgres-failover", RUNBOOKS_DIR), "pg-1", reason="alert")
    assert choice.deployment == "failover/postgres-failover"
    assert choice.parameters == {"runbook": "postgres-failover", "primary": "pg-1", "reason": "alert"}
    assert load_flow(choice.entrypoint).name == "failover"


def test_a_failover_has_no_dry_run() -> None:
    with pytest.raises(RunbookError, match="has no dry run"):
        choose(find_runbook("postgres-failover", RUNBOOKS_DIR), None, reason="cli", dry_run=True)
