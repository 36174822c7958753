"""Each detector on a small synthetic series: the anomaly scores high, its reason says why."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import numpy as np
import pytest

from medic.detect import DETECTORS, build
from medic.errors import DetectError

STEP = 300  # 5-minute samples
# 2024-01-02 was a Tuesday; start at 00:00 UTC so slots line up with hours
START = datetime(2024, 1, 2, tzinfo=UTC).timestamp()


def feed(detector, values, start: float = START):  # type: ignore[no-untyped-def]
    """Feed values at 5-min steps; return the scores."""
    return [detector.update(start + i * STEP, v) for i, v in enumerate(values)]


def noisy(n: int, level: float = 100.0, sd: float = 2.0, seed: int = 1) -> list[float]:
    return list(level + np.random.default_rng(seed).normal(0, sd, n))


def test_threshold_for_scores_by_time_held_and_says_so() -> None:
    d = build("threshold", above=90, for_s=600, metric="cpu", unit="%")
    scores = feed(d, [50, 95, 95, 95, 95])
    assert scores == [0.0, 0.0, pytest.approx(0.5), 1.0, 1.0]
    assert d.reason() == "cpu 95 % above 90 % for 15 min"
    d.update(START + 5 * STEP, 40)
    assert d.reason() == "cpu 40 % is within its limits (≤ 90 %)"


def test_threshold_can_learn_its_range_from_the_first_rows() -> None:
    d = build("threshold", learn_rows=50)
    scores = feed(d, noisy(50) + [100.0, 160.0])
    assert scores[-2] == 0.0 and scores[-1] == 1.0
    assert re.fullmatch(r"value 160 above 1\d\d(\.\d+)? for 0 s", d.reason())


def test_absence_scores_the_silence_against_the_usual_step() -> None:
    d = build("absence", metric="heartbeats")
    feed(d, [1.0] * 10)
    assert d.update(START + 10 * STEP, math.nan) == pytest.approx(1 / 3)
    assert d.silence_at(START + 9 * STEP + 20 * 60) == 1.0  # 20 min of silence, 15 allowed
    assert d.update(START + 9 * STEP + 20 * 60, 1.0) == 1.0
    assert d.reason() == "no heartbeats sample for 20 min (allowed 15 min)"


def test_rate_of_change_against_a_limit_and_against_its_usual_rate() -> None:
    d = build("rate_of_change", window_s=600, limit_per_s=0.1, metric="disk used", unit="GB")
    feed(d, [10, 10, 10, 130])
    assert d.last_score == 1.0
    assert d.reason() == "disk used rising 12 GB/min over 10 min (limit 6/min)"
    learned = build("rate_of_change", window_s=600, metric="queue")
    feed(learned, noisy(200) + [400.0])
    assert learned.last_score > 0.9
    assert re.fullmatch(
        r"queue rising [\d.]+/min over 10 min, \d+\.\dσ from its usual rate", learned.reason()
    )


def test_robust_z_and_ewma_say_how_many_sigma_and_for_how_long() -> None:
    for name, word in (("robust_z", "rolling median"), ("ewma", "moving average")):
        d = build(name, metric="p99 latency", unit="ms")
        scores = feed(d, noisy(300) + [200.0, 200.0, 200.0])
        assert max(scores[100:300]) < 0.5 < scores[-3]
        text = d.reason()
        assert re.fullmatch(rf"p99 latency 200 ms is \d+\.\dσ above its {word} .* for 10 min", text), text



def test_ewma_ignores_deviations_below_its_noise_floor_however_many_sigma() -> None:
    """A quiet service's 0.1 ms → 0.3 ms is many σ but nothing an SRE acts on; 10 ms more is."""
    quiet = [0.0001 + 0.000001 * (i % 3) for i in range(60)]
    plain = build("ewma", half_life=60, z_half=8, min_rows=30, direction="up")
    floored = build("ewma", half_life=60, z_half=8, min_rows=30, direction="up", learn_above=0.25,
                    min_change=0.005)
    assert max(feed(plain, quiet + [0.0003] * 3)[-3:]) > 0.5, "without a floor the tiny step scores high"
    assert feed(floored, quiet + [0.0003] * 3)[-3:] == [0.0, 0.0, 0.0]
    assert "for" not in floored.reason().split("σ")[-1], floored.reason()
    assert min(feed(floored, [0.0103] * 3, start=START + 63 * STEP)) > 0.5, "a 10 ms step is past the floor"
    assert "above its moving average" in floored.reason()

def test_seasonal_names_the_weekday_and_hour_it_compares_with() -> None:
    d = build("seasonal", period="weekly", metric="p99 latency", unit="ms")
    day = [100.0 + (80.0 if 9 <= (i * STEP // 3600) % 24 < 17 else 0.0) for i in range(288)]
    history = [v + e for v, e in zip(day * 14, np.random.default_rng(2).normal(0, 2, 288 * 14))]
    scores = feed(d, history)
    assert max(scores[288 * 7 :]) < 0.5  # busy hours are normal for their hour
    start = START + 14 * 288 * STEP + 10 * 3600  # Tuesday 10:00, a busy hour: 180 ms is normal
    scores = [d.update(start + i * STEP, 330.0) for i in range(3)]
    assert scores[-1] > 0.9
    assert re.fullmatch(
        r"p99 latency 330 ms is \d+\.\dσ above its Tuesday-10:00 baseline 1[78]\d(\.\d)? ms for 10 min",
        d.reason(),
    ), d.reason()


def test_iforest_flags_a_shape_it_never_saw_and_replay_equals_streaming() -> None:
    values = [100 + 10 * math.sin(i / 10) for i in range(400)] + [100, 160, 40, 160, 40, 100, 100, 100]
    streamed = build("iforest", min_rows=100, refit=100, cooldown=0, metric="rps")
    scores = feed(streamed, values)
    assert max(scores[-8:]) > 0.65 > max(scores[150:400])
    assert re.fullmatch(
        r"rps: the window of the last 8 samples scores 0\.\d\d in an isolation forest of 50 trees "
        r"fitted on the \d+ windows before it \(≈0\.5 is ordinary\)",
        streamed.reason(),
    )
    replay = build("iforest", min_rows=100, refit=100, cooldown=0)
    assert np.allclose(replay.run([START + i * STEP for i in range(len(values))], values), scores)


def test_novelty_stays_quiet_on_repeats_and_explains_a_new_shape() -> None:
    d = build("novelty", learn_rows=100, metric="p99 latency")
    daily_spike = [
        (300.0 if i % 96 == 50 else 100.0) + e
        for i, e in enumerate(np.random.default_rng(3).normal(0, 1, 600))
    ]
    scores = feed(d, daily_spike)
    assert max(scores[300:]) < 0.25  # the spike recurs: it has a twin in the past
    scores = [d.update(START + (600 + i) * STEP, 100.0 + 40.0 * (i % 2)) for i in range(6)]
    assert max(scores) > 0.5
    assert re.search(
        r"p99 latency: the last 8 samples \(40 min\) are \d+\.\d× further from any earlier stretch "
        r"of the past \d+ samples than usual \(anomaly likelihood p=\d\.\de-\d+\)",
        d.reason(),
    ), d.reason()


def test_novelty_scores_a_value_beyond_the_range_seen_at_once_and_says_by_how_much() -> None:
    d = build("novelty", learn_rows=100, metric="queue depth")
    feed(d, noisy(300, level=100.0, sd=2.0))  # range roughly 94..106
    inside = d.update(START + 300 * STEP, 105.0)
    assert inside < 0.5
    assert "outside everything seen" not in d.reason()
    beyond = d.update(START + 301 * STEP, 130.0)  # ~2x the range above its top: news at once
    assert beyond == 1.0
    assert re.search(r"queue depth: 130 is outside everything seen in 302 samples by \d+% of their range "
                     r"\(tolerance 5%\)", d.reason()), d.reason()
    again = d.update(START + 302 * STEP, 160.0)  # same incident, within the cool-down: one page
    assert again < 1.0
    off = build("novelty", learn_rows=100, spatial_tolerance=None)
    feed(off, noisy(300, level=100.0, sd=2.0))
    assert off.update(START + 300 * STEP, 130.0) < 1.0  # the likelihood alone needs more rows


def test_scores_stay_in_0_1_and_reasons_exist_for_every_detector_on_odd_input() -> None:
    series = [0.0] * 50 + [1e12, -1e12, math.nan, 0.0] + [5.0] * 400
    for name in DETECTORS:
        params = {"learn_rows": 20} if name == "threshold" else {}
        d = build(name, **params)
        scores = feed(d, series)
        assert all(0.0 <= s <= 1.0 for s in scores), name
        assert d.reason(), name
        assert d.verdict().detector == name


def test_bad_parameters_and_disorder_are_errors_that_say_what_to_do() -> None:
    with pytest.raises(
        DetectError, match=r"detector 'seasonal': invalid parameters \(period: .*\); allowed: metric"
    ):
        build("seasonal", period="monthly")
    with pytest.raises(DetectError, match="unknown detector 'magic'; known: threshold"):
        build("magic")
    with pytest.raises(DetectError, match="give `above`, `below`, or `learn_rows`"):
        build("threshold")
    d = build("ewma")
    d.update(START + 10, 1.0)
    with pytest.raises(DetectError, match="older than the previous row .* feed rows in time order"):
        d.update(START, 1.0)
