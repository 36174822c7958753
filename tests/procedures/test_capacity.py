"""The capacity controllers on synthetic series: the HPA rule against hand-computed examples, ours
against the issue's targets (step: overshoot ≤ 1; noisy constant: no reversals) and its limits."""

from __future__ import annotations

import random

import pytest

from medic.errors import ConfigError
from medic.procedures.capacity import CapacityLimits, HPARule, HPASettings, Observation
from medic.procedures.capacity_adaptive import AdaptiveController, AdaptiveSettings
from tests.procedures.capacity_plant import Plant, reversals, simulate

TARGET = 0.25
LIMITS = CapacityLimits(min_instances=1, max_instances=8, max_step=2, cooldown_s=6)
PERIOD = 1.5


def hpa(**limits) -> HPARule:
    return HPARule(HPASettings(target_s=TARGET).scaled(10), CapacityLimits(**{**LIMITS.model_dump(), **limits}))


def ours() -> AdaptiveController:
    return AdaptiveController(AdaptiveSettings(target_s=TARGET), LIMITS)


def obs(at: float, current: int, p95: float | None, rate: float | None = None) -> Observation:
    return Observation(at=at, current=current, p95_s=p95, rate_rps=rate)


# -- the HPA rule ------------------------------------------------------------------------------------


def test_hpa_scales_by_the_ratio_and_skips_inside_the_tolerance() -> None:
    rule = hpa()
    up = rule.decide(obs(0, 2, 0.5))  # ceil(2 × 2.0) = 4
    assert (up.desired, up.reason) == (4, "p95 500 ms > target 250 ms: ceil(2 × 2.00) = 4 → +2")
    assert rule.decide(obs(1.5, 4, 0.27)).desired == 4  # ratio 1.08: inside 10 %
    assert "within tolerance" in rule.decide(obs(3.0, 4, 0.23)).reason  # ratio 0.92
    assert rule.decide(obs(4.5, 4, 0.28)).desired == 5  # ratio 1.12: ceil(4.48) = 5


def test_hpa_scale_down_waits_for_the_highest_recommendation_of_the_window_to_leave() -> None:
    rule = hpa()  # window 300 s / 10 = 30 s
    assert rule.decide(obs(0, 2, 0.5)).desired == 4  # recommendation 4 at t=0
    held = rule.decide(obs(1.5, 4, 0.1))  # raw ceil(4 × 0.4) = 2, but 4 was recommended 1.5 s ago
    assert held.desired == 4 and "stabilised to 4" in held.reason
    assert rule.decide(obs(30.0, 4, 0.1)).desired == 4  # t=0 is still inside [0, 30]
    assert rule.decide(obs(31.5, 4, 0.1)).desired == 2  # now the highest of the window is 2


def test_hpa_scale_up_policy_and_limits() -> None:
    assert hpa().decide(obs(0, 2, 5.0)).desired == 6  # ceil(2 × 20) = 40; policy max(2 × 2, 2 + 4) = 6
    capped = hpa(max_instances=5).decide(obs(0, 2, 5.0))
    assert capped.desired == 5 and "limits [1, 5]" in capped.reason
    assert hpa(min_instances=2).decide(obs(0, 3, 0.01)).desired == 2  # ceil(3 × 0.04) = 1 → min 2


def test_hpa_skips_a_period_without_a_metric() -> None:
    d = hpa().decide(obs(0, 3, None))
    assert d.desired == 3 and "no p95" in d.reason


# -- ours ------------------------------------------------------------------------------------------


def step_load(t: float) -> float:
    return 60.0 if 40 <= t < 140 else 20.0


@pytest.mark.parametrize("seed", range(1, 6))
def test_ours_converges_on_a_step_with_overshoot_at_most_one(seed: int) -> None:
    decisions = simulate(ours(), Plant(instances=2, seed=seed), step_load, duration_s=220, period_s=PERIOD)
    high = [d.desired for d in decisions if 40 <= d.at < 140]
    settled = high[-1]
    assert settled == 4, "60 req/s at 25 per instance holds p95 under 250 ms from 4 instances"
    assert max(high) - settled <= 1
    assert decisions[-1].desired == 2, "back to 2 once the load is low again"


@pytest.mark.parametrize("seed", range(1, 6))
def test_ours_never_reverses_under_a_noisy_constant_load_where_the_hpa_rule_does(seed: int) -> None:
    rng = random.Random(seed)
    noise = [rng.uniform(0.75, 1.25) for _ in range(400)]

    def load(t: float) -> float:
        return 50 * noise[int(t / 2)]

    mine = simulate(ours(), Plant(instances=2, seed=seed), load, duration_s=600, period_s=PERIOD)
    theirs = simulate(hpa(), Plant(instances=2, seed=seed), load, duration_s=600, period_s=PERIOD)
    assert reversals(mine) == 0, [d.reason for d in mine if d.change]
    assert reversals(theirs) > 0


def test_ours_respects_max_step_cooldown_and_max() -> None:
    c = AdaptiveController(AdaptiveSettings(target_s=TARGET), LIMITS.model_copy(update={"max_instances": 5}))
    first = c.decide(obs(0, 2, 5.0))  # e clipped to 2: u = 2.4 → +2 (max_step 2)
    assert (first.desired, first.change) == (4, 2) and first.reason.endswith("→ +2")
    cooling = c.decide(obs(1.5, 4, 5.0))
    assert cooling.desired == 4 and "cooldown" in cooling.reason
    assert c.decide(obs(6.0, 4, 5.0)).desired == 5  # +2 clamped to max 5
    assert "at max 5" in c.decide(obs(20.0, 5, 5.0)).reason


def test_ours_holds_while_p95_is_already_falling() -> None:
    c = ours()
    c.decide(obs(0, 2, 2.0))
    d = c.decide(obs(10, 4, 1.0))
    assert d.desired == 4 and "already falling" in d.reason


def test_ours_scales_down_one_at_a_time_after_the_window_and_not_into_a_load_seen_over_target() -> None:
    c = ours()
    c.decide(obs(0, 2, 1.0, rate=40))  # 20 req/s per instance went over target: learned
    decisions = [c.decide(obs(t, 4, 0.05, rate=40)) for t in (10, 20, 30, 39, 45)]
    assert [d.desired for d in decisions] == [4, 4, 4, 4, 3]  # 30 s under half the target, then -1
    assert c.decide(obs(80, 3, 0.05, rate=40)).desired == 3  # 2 would take 20 each: held
    assert "p95 went over target at 20.0" in c.decide(obs(120, 3, 0.05, rate=40)).reason


def test_limits_refuse_min_over_max() -> None:
    with pytest.raises(ConfigError, match="min_instances 5 > max_instances 2"):
        CapacityLimits(min_instances=5, max_instances=2)


def test_hpa_time_scale_must_be_positive() -> None:
    assert HPASettings(target_s=TARGET).scaled(10).down_window_s == 30
    with pytest.raises(ConfigError, match="HPA time scale 0 must be > 0"):
        HPASettings(target_s=TARGET).scaled(0)


def test_the_pool_refuses_hosts_outside_one_load_balancer() -> None:
    from medic.clients.ssh import SSHSession
    from medic.core.inventory import Host
    from medic.procedures.capacity_pool import Pool, p95_query

    lb = {"medic_lb_admin": "127.0.0.1:9081", "medic_lb_backend": "web"}
    a = Host(name="web-1", address="127.0.0.1", vars={**lb, "medic_lb_server": "web-1"})
    bare = Host(name="web-2", address="127.0.0.1")
    other = Host(name="web-3", address="127.0.0.1", vars={**lb, "medic_lb_backend": "api", "medic_lb_server": "web-3"})
    with SSHSession() as ssh:
        with pytest.raises(ConfigError, match="missing on: web-2"):
            Pool([a, bare], ssh)
        with pytest.raises(ConfigError, match="must share one HAProxy backend"):
            Pool([a, other], ssh)
        with pytest.raises(ConfigError, match="no hosts"):
            Pool([], ssh)
    assert 'host=~"web-1|db\\\\.x"' in p95_query(["web-1", "db.x"])  # a dot is a literal dot in the regex


def test_ours_sizes_from_the_answered_rate_when_saturated_and_holds_while_a_backlog_drains() -> None:
    c = ours()
    d = c.decide(Observation(at=0, current=2, p95_s=2.5, rate_rps=70, served_rps=50))
    assert d.desired == 4  # 25 answered per instance at most: 70 / (25 × 75 %) = 3.7 → 4
    assert "saturated, answering 50 of 70 req/s (25.0 per instance at most): 4 needed at 75%" in d.reason
    held = c.decide(Observation(at=10, current=4, p95_s=2.0, rate_rps=70, served_rps=100))
    assert held.desired == 4 and "a backlog is draining (answering 100 req/s, 70 arriving)" in held.reason
