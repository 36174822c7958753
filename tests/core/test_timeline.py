"""The incident timeline's arithmetic by hand: impact and recovery found in series, TTD/TTA/TTR,
the budget an incident burned, the report's table, and the percentiles `medic report` makes of them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from medic.clients.prometheus import Series
from medic.errors import PromQLError
from medic.core.inventory import Host
from medic.core.report import Outcome
from medic.core.slo import SLOSpec
from medic.core.timeline import BudgetBurn, IncidentTimes, StageClock, StageSpan
from medic.orchestration.run_history import RunRecord
from medic.core.runbook import Check
from medic.procedures.incident_times import find_impact, first_bad, first_good, slos_for
from medic.procedures.ops_report import Distribution, build_report, render_markdown, slack_summary

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def down(v: float) -> bool:
    return v == 0


def test_impact_is_the_start_of_the_bad_run_that_covers_the_alert() -> None:
    # good, a short blip, good again, then the outage that the alert (at t=9) is about
    up = Series(points=[(0, 1), (1, 0), (2, 1), (3, 1), (4, 0), (5, 0), (6, 0), (7, 0), (8, 0), (9, 0), (10, 0)])
    assert first_bad([up], down, anchor=9) == (4, False)
    other = Series(points=[(t, 0 if t >= 6 else 1) for t in range(11)])
    assert first_bad([up, other], down, anchor=9) == (4, False)  # earliest over the affected hosts
    always = Series(points=[(t, 0) for t in range(11)])
    assert first_bad([always], down, anchor=9) == (0, True)  # bad since before the window: say so
    assert first_bad([Series(points=[(t, 1) for t in range(11)])], down, anchor=9) == (None, False)


class GridPrometheus:
    """Answers a range query as Prometheus does (a point at start + i·step while ≤ end), from a value per
    host that is a function of time; counts the points it returned. Only the search is under test here —
    tests/flows/test_incident_timeline.py reads real outages from the lab's Prometheus."""

    def __init__(self, value_at: dict[str, Callable[[float], float]]) -> None:
        self.value_at, self.points = value_at, 0

    def query_range(self, query: str, *, start: float, end: float, step: float) -> list[Series]:
        n = int(round((end - start) / step, 6)) + 1
        if n > 11_000:  # what Prometheus answers (bad_data)
            raise PromQLError(f"exceeded maximum resolution of 11,000 points per timeseries: {n}")
        grid = [round(start + i * step, 3) for i in range(n)]
        self.points += n * len(self.value_at)
        return [Series(labels={"host": h}, points=[(t, f(t)) for t in grid]) for h, f in self.value_at.items()]


def test_the_two_pass_look_back_finds_what_one_fine_pass_finds_from_a_tenth_of_the_points() -> None:
    check = Check(query="up", condition="== 0")
    hosts = [Host(name=n, address="127.0.0.1") for n in ("web-1", "web-2")]
    anchor = 1_000_000.594543  # Prometheus answers at x.595 for a grid asked from x.594543 (rounded to the ms)
    cases = {  # host → its value over time; what the impact is
        "one host down 37.3 s before the alert": ({"web-1": lambda t: 0 if t >= anchor - 37.3 else 1,
                                                   "web-2": lambda t: 1}, anchor - 37.3),
        "the earliest of two hosts": ({"web-1": lambda t: 0 if t >= anchor - 12.05 else 1,
                                       "web-2": lambda t: 0 if t >= anchor - 80.76 else 1}, anchor - 80.7),
        "an earlier blip is not the outage": ({"web-1": lambda t: 0 if t >= anchor - 5.5 or 300 < anchor - t < 310
                                               else 1, "web-2": lambda t: 1}, anchor - 5.5),
        "down 0.6 s before the anchor: only its last coarse point is bad": (
            {"web-1": lambda t: 0 if t >= anchor - 0.6 else 1, "web-2": lambda t: 1}, anchor - 0.6),
        "down since before the window": ({"web-1": lambda t: 0, "web-2": lambda t: 1}, anchor - 600),
    }
    for name, (value_at, expected) in cases.items():
        two_pass, one_pass = GridPrometheus(value_at), GridPrometheus(value_at)
        found = find_impact(check, hosts, two_pass, down, anchor=anchor, until=anchor, step_s=0.1, lookback_s=600)
        fine = first_bad(one_pass.query_range("up", start=anchor - 600, end=anchor, step=0.1), down, anchor)
        assert found[0] is not None and abs(found[0] - expected) <= 1e-3, (name, found, expected)
        assert found == fine, (name, found, fine)
        assert two_pass.points * 8 < one_pass.points, (name, two_pass.points, one_pass.points)
    # An alert that has fired for 3 hours, its problem gone by then and back now: a 10-minute window
    # before detect's end, not 3 hours at 0.1 s (Prometheus refuses more than 11,000 points).
    later = anchor + 3 * 3600
    again = GridPrometheus({"web-1": lambda t: 0 if t >= later - 42.25 else 1, "web-2": lambda t: 1})
    assert find_impact(check, hosts, again, down, anchor=anchor, until=later, step_s=0.1,
                       lookback_s=600) == (pytest.approx(later - 42.2, abs=1e-3), False)
    healthy = GridPrometheus({"web-1": lambda t: 1, "web-2": lambda t: 1})
    assert find_impact(check, hosts, healthy, down, anchor=anchor, until=anchor, step_s=0.1,
                       lookback_s=600) == (None, False)


def test_recovered_is_the_first_good_sample_that_stays_good_on_every_host() -> None:
    a = Series(points=[(10, 0), (11, 0), (12, 1), (13, 0), (14, 1), (15, 1)])  # flaps once, then good at 14
    b = Series(points=[(10, 0), (11, 1), (12, 1), (13, 1), (14, 1), (15, 1)])
    assert first_good([a, b], down, after=10) == 14
    assert first_good([a, Series(points=[(10, 0), (15, 0)])], down, after=10) is None  # still down: not recovered


def test_derived_times_and_the_table_in_order() -> None:
    times = IncidentTimes(impact=at(0), alert_fired=at(3), delivered=at(3.01), run_started=at(3.2),
                          stages=[StageSpan(stage="detect", started=at(3.3), ended=at(4)),
                                  StageSpan(stage="recover", started=at(5), ended=at(7))],
                          recovered=at(6.5), resolved=at(8), step_s=0.1,
                          budget=[BudgetBurn(slo="web-latency", objective=99.9, window_s=30 * 86400, measured=0.0,
                                             if_all_failed=6.5 / 6 / (30 * 86400 * 0.001))])  # 1/6 of traffic, 6.5 s
    assert (times.time_to_detect_s, times.time_to_start_s, times.time_to_recover_s) == (3.0, 3.2, 6.5)
    assert round(times.time_to_acknowledge_s or 0, 6) == 0.2  # no human: alert fired → run started
    assert [name for name, _ in times.ordered()] == ["impact", "alert fired", "delivered to medic", "run started",
                                                     "detect started", "detect ended", "recover started",
                                                     "recovered", "recover ended", "resolved"]
    text = "\n".join(times.markdown_lines())
    assert "| recovered | 12:00:06.500 | +6.5 s |" in text and "time to recover: 6.5 s (impact → recovered)" in text
    assert "assumes traffic spread evenly" in text and "0.0418 % if every request" in text
    asked = times.model_copy(update={"human_decision": at(63)})
    assert asked.time_to_acknowledge_s == 60.0


def test_the_stage_clock_times_a_stage_even_when_it_raises() -> None:
    clock = StageClock()
    with clock.stage("detect"):
        pass
    try:
        with clock.stage("recover"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert [s.stage for s in clock.spans] == ["detect", "recover"] and all(s.seconds >= 0 for s in clock.spans)


def test_the_slos_of_a_target_are_those_of_its_groups() -> None:
    web = SLOSpec.model_validate({"name": "web-latency", "service": "web", "objective": 99.9,
                                  "sli": {"histogram": "h", "le": "0.25"}})
    db = web.model_copy(update={"name": "db-up", "service": "db"})
    host = Host(name="web-2", address="127.0.0.1", groups=["web"])
    assert [s.name for s in slos_for([host], [web, db])] == ["web-latency"]


def test_ops_report_has_ttd_tta_ttr_percentiles_per_runbook() -> None:
    runs = []
    for i, (ttd, ttr) in enumerate([(2.0, 8.0), (3.0, 9.0), (4.0, 30.0)]):
        times = IncidentTimes(impact=at(0), alert_fired=at(ttd), run_started=at(ttd + 0.5), recovered=at(ttr),
                              resolved=at(ttr + 1), step_s=0.1)
        runs.append(RunRecord(id=f"r{i}", flow="remediate", runbook="service-down", target="web-1",
                              outcome=Outcome.RECOVERED, state_name="Recovered", started=at(ttd), ended=at(ttr),
                              incident=times))
    (stats,) = build_report(runs, since=T0, until=at(3600)).runbooks
    assert stats.ttd == Distribution(n=3, p50=3.0, p90=3.8, max=4.0)
    assert stats.ttr == Distribution(n=3, p50=9.0, p90=25.8, max=30.0)
    assert stats.tta == Distribution(n=3, p50=0.5, p90=0.5, max=0.5)
    text = render_markdown(build_report(runs, since=T0, until=at(3600)))
    assert "| service-down | 3.0 / 3.8 / 4.0 s (n=3) | 0.5 / 0.5 / 0.5 s (n=3) | 9.0 / 25.8 / 30.0 s (n=3) |" in text
    assert "service-down: time to recover p50 9 s, p90 26 s (from impact)" in slack_summary(
        build_report(runs, since=T0, until=at(3600)))
