"""Canary upgrades against the real lab: the install playbook, HAProxy weights, Prometheus gates, rollback.

Every test that upgrades takes `at_v1`: before and after it, pass or fail, every web host serves v1
(installed by the same playbook), every HAProxy server has its configured weight and is ready, and
Prometheus sees v1 everywhere.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from medic.clients.ansible import run_playbook
from medic.clients.haproxy import HAProxyRuntime
from medic.core.inventory import load_inventory
from medic.core.report import Outcome
from medic.errors import UpgradeConfigError
from medic.orchestration.runs import FlowRunOutcome, run_flow_now
from medic.procedures import upgrade as up
from medic.procedures.upgrade_analysis import GateSettings
from medic.procedures.upgrade_report import UpgradeReport
from medic.settings import get_settings
from medic_lab.state import LabState
from tests.support.lab_health import restored, web_hosts  # noqa: F401 (fixture)
from tests.support.waits import wait_for_no_problems

WEIGHT = 100  # medic_lab/haproxy.py: every server's configured weight
FAST = dict(analysis_interval=3.0, analysis_count=2)


def _run(**params: Any) -> tuple[FlowRunOutcome, UpgradeReport]:
    from flows.upgrade import upgrade

    outcome = asyncio.run(run_flow_now(upgrade, params))
    assert isinstance(outcome.result, UpgradeReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result


def _installed(lab: LabState) -> dict[str, str]:
    """What each web host's `current` symlink points at (the files, not the process)."""
    return {h.name: os.path.basename(os.readlink(h.root / "current")) for h in web_hosts(lab)}


def _problems(lab: LabState, version: str) -> list[str]:
    from medic.clients.prometheus import PrometheusClient

    with PrometheusClient(lab.prometheus_url) as prom:
        serving = up.versions_serving(prom, [h.name for h in web_hosts(lab)])
    servers = HAProxyRuntime("127.0.0.1", lab.ports.haproxy_admin).servers("web")
    return ([f"{n} installs {v}" for n, v in _installed(lab).items() if v != version]
            + [f"{h.name} serves {serving.get(h.name)}" for h in web_hosts(lab) if serving.get(h.name) != version]
            + [f"{s.name} {s.admin_state}/{s.status} weight {s.weight}" for s in servers
               if not s.up or s.admin_state != "ready" or s.weight != WEIGHT])


def _back_to_v1(lab: LabState) -> None:
    wrong = [h for h in web_hosts(lab) if _installed(lab)[h.name] != "v1"]
    if wrong:
        inventory = load_inventory()
        result = run_playbook(get_settings().playbooks_dir / up.PLAYBOOK, hosts=[inventory.host(h.name) for h in wrong],
                              extravars={"version": "v1"}, timeout=120)
        assert result.ok, f"could not put {[h.name for h in wrong]} back at v1: {result.error}"
    runtime = HAProxyRuntime("127.0.0.1", lab.ports.haproxy_admin)
    for s in runtime.servers("web"):
        runtime.set_weight("web", s.name, WEIGHT)
        runtime.set_state("web", s.name, "ready")
    wait_for_no_problems(lambda: _problems(lab, "v1"), what="every web host back at v1, UP, weight 100", timeout=60)


@pytest.fixture
def at_v1(lab: LabState, restored: None) -> Iterator[LabState]:  # noqa: F811 - the imported fixture
    _back_to_v1(lab)
    try:
        yield lab
    finally:
        _back_to_v1(lab)


def _assert_rolled_back(lab: LabState, report: UpgradeReport, outcome: FlowRunOutcome, why: str) -> None:
    assert outcome.state_name == "Failed" and report.outcome is Outcome.FAILED, outcome.message
    assert report.rolled_back and why in report.rollback_reason, report.to_markdown()
    assert report.rollback_done_at and report.canary_serving_at, report.to_markdown()
    assert report.problems == [], report.problems
    assert all(h.rolled_back for h in report.hosts if h.touched), report.to_markdown()
    # The rollback itself left every host on v1, serving, at its weight: checked before the fixture repairs.
    assert _problems(lab, "v1") == []


def test_crashing_version_rolls_back_without_analysis(at_v1: LabState) -> None:
    outcome, report = _run(version="v2-crash", analysis_interval=30.0, analysis_count=3)
    _assert_rolled_back(at_v1, report, outcome, "")
    assert [c.gate for c in report.checks] == ["hard"], report.to_markdown()  # no threshold/baseline check ran
    assert [h.stage for h in report.hosts] == [0], "only the canary was touched"


def test_erroring_version_rolls_back_by_the_threshold_gate(at_v1: LabState) -> None:
    outcome, report = _run(version="v2-errors", gate="threshold", failure_limit=0, **FAST)
    _assert_rolled_back(at_v1, report, outcome, "5xx ratio")
    assert {c.gate for c in report.checks} == {"threshold"}


def test_slow_version_rolls_back_by_the_baseline_gate(at_v1: LabState) -> None:
    outcome, report = _run(version="v2-slow", gate="baseline", analysis_interval=4.0, analysis_count=3)
    _assert_rolled_back(at_v1, report, outcome, "Mann–Whitney")
    failed = [c for c in report.checks if not c.passed]
    assert failed[-1].gate == "baseline" and failed[-1].values["latency_ratio"] > 1.2, report.to_markdown()


def test_good_version_reaches_every_host(at_v1: LabState) -> None:
    outcome, report = _run(version="v2", batch_size="100%", **FAST)
    assert outcome.state_name == "Completed" and report.outcome is Outcome.COMPLETED, report.to_markdown()
    assert not report.rolled_back and [h.stage for h in report.hosts].count(0) == 1
    assert {h.host for h in report.hosts} == {h.name for h in web_hosts(at_v1)}
    assert all(h.previous == "v1" for h in report.hosts), report.to_markdown()
    assert _problems(at_v1, "v2") == []
    again, second = _run(version="v2", **FAST)
    assert second.outcome is Outcome.NOT_NEEDED, second.summary


@pytest.mark.parametrize(("params", "error"), [
    ({"version": "v9"}, "version 'v9' is not in the package repository"),
    ({"version": "v2; rm -rf /"}, "is refused: a package version like"),
    ({"gate": "vibes"}, "gate 'vibes' is refused"),
    ({"canary_weight": 0}, "canary_weight 0 is refused"),
    ({"max_error_ratio": 2.0}, "max_error_ratio 2 is refused"),
    ({"group": "nope"}, "group 'nope' is refused"),
    ({"batch_size": "0"}, "batch size '0'"),
])
def test_bad_parameters_are_refused_before_anything_runs(lab: LabState, params: dict, error: str) -> None:
    asked = {"group": "web", "version": "v2", "batch_size": "50%", "gate": "both", "canary_weight": 10,
             "analysis_interval": 5.0, "analysis_count": 3}
    gates = {k: params.pop(k) for k in list(params) if k in GateSettings.model_fields and k != "gate"}
    asked.update(params)
    with pytest.raises(UpgradeConfigError, match=error) as caught:
        up.check_upgrade(load_inventory(), settings=GateSettings.model_construct(**{**GateSettings().model_dump(), **gates}),
                         **asked)
    assert "nothing was changed" in str(caught.value)


def test_a_bad_version_fails_the_run_with_the_reason(lab: LabState) -> None:
    from flows.upgrade import upgrade

    outcome = asyncio.run(run_flow_now(upgrade, {"version": "v9"}))
    assert outcome.state_name == "Failed" and "not in the package repository" in (outcome.message or ""), outcome.message
    assert set(_installed(lab).values()) == {"v1"}


def test_a_weight_out_of_range_is_refused_before_reaching_haproxy() -> None:
    from medic.errors import LoadBalancerNameError

    with pytest.raises(LoadBalancerNameError, match="weight 300 is refused: give 0-256; nothing was sent"):
        HAProxyRuntime("127.0.0.1", 9).set_weight("web", "web-1", 300)  # port 9: nothing listens, nothing is sent


def test_a_rejection_past_the_canary_rolls_the_canary_back(at_v1: LabState) -> None:
    from flows.upgrade import upgrade
    from tests.support.flows import run_and_answer

    outcome, statuses = asyncio.run(run_and_answer(
        upgrade, {"version": "v2", "approve_canary": True, **FAST},
        [{"decision": "reject", "approver": "alice", "comment": "not before the freeze ends"}]))
    report = outcome.result
    assert statuses == ["accepted"] and isinstance(report, UpgradeReport), (statuses, outcome.message)
    _assert_rolled_back(at_v1, report, outcome, "not approved past the canary")
    assert [h.stage for h in report.hosts] == [0], "nothing past the canary was touched"
    assert all(c.passed for c in report.checks if c.gate != "hard"), "the canary itself had passed its analysis"
