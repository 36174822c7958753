"""The re-check after a human's decision: no data is not "the problem is gone".

What happens after a Prometheus restart (tests/chaos/test_detect_outage.py does it for real, where
whether Prometheus wrote staleness markers at its shutdown depends on how long the shutdown took): for
a scrape or two every series is absent. The answers here are scripted so that both orders are certain.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from medic.clients.prometheus import Sample
from medic.core.inventory import Host, Inventory
from medic.core.paths import RUNBOOKS_DIR
from medic.core.runbook import find_runbook
from medic.procedures import stages


class ScriptedPrometheus:
    """Answers each instant query with the next scripted list of values (None: no series); the last
    answer repeats. Counts the queries."""

    def __init__(self, answers: list[float | None]) -> None:
        self.answers, self.asked = answers, 0

    def query(self, promql: str, *, at: float | None = None) -> list[Sample]:
        value = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        return [] if value is None else [Sample(labels={"host": "web-1"}, value=value, timestamp=0.0)]


def _plan() -> stages.Plan:
    inventory = Inventory(path=Path("inventory.yml"), groups={"web": ["web-1"]},
                          hosts={"web-1": Host(name="web-1", address="127.0.0.1", groups=["web"])})
    return stages.plan(find_runbook("service-down", RUNBOOKS_DIR), "web-1", inventory)


def test_a_host_without_data_is_asked_again_until_its_value_comes_back() -> None:
    plan, slept = _plan(), []
    prom = ScriptedPrometheus([None, None, 0.0])  # restarted Prometheus: absent twice, then `up` 0 again
    result = stages.recheck(plan, plan.hosts, prom, sleep=slept.append)  # type: ignore[arg-type]
    assert result.matching == ["web-1"] and prom.asked == 3, (result, prom.asked)
    assert slept == [stages.POLL_INTERVAL_S] * 2


def test_a_problem_gone_is_answered_at_once_and_no_data_for_good_counts_as_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan()
    healthy = ScriptedPrometheus([1.0])
    assert stages.recheck(plan, plan.hosts, healthy, sleep=lambda s: None).matching == []  # type: ignore[arg-type]
    assert healthy.asked == 1, "a value that answers the question is not asked again"
    monkeypatch.setattr(stages, "RECHECK_NO_DATA_S", 0.3)  # and a settle of 0.3 s: the same rule, shorter
    detect = plan.runbook.detect.model_copy(update={"settle": 0.3})
    quick = plan.model_copy(update={"runbook": plan.runbook.model_copy(update={"detect": detect})})
    never = ScriptedPrometheus([None])
    result = stages.recheck(quick, quick.hosts, never, sleep=time.sleep)  # type: ignore[arg-type]
    assert result.matching == [] and result.values[0].value is None
    assert never.asked >= 2 and result.waited_s >= 0.3, (never.asked, result.waited_s)
