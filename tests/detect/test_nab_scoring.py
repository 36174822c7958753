"""NAB scoring on hand-made cases whose totals are worked out by hand from NAB's rules."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from medic.detect.nab_corpus import load_corpus, write_results
from medic.detect.nab_scoring import (
    PROFILES,
    LabelledFile,
    best_threshold,
    normalised,
    null_scores,
    perfect_scores,
    probation_rows,
    scaled_sigmoid,
    score_file,
)
from medic.errors import DetectError

STD = PROFILES["standard"]
T0 = datetime(2024, 1, 1)


def sig(y: float) -> float:
    """σ(y) = 2/(1+e^{5y}) − 1, written out again so the test does not trust the code under test."""
    return 2 / (1 + math.exp(5 * y)) - 1


def make_file(name: str, n: int, windows: tuple[tuple[int, int], ...]) -> LabelledFile:
    return LabelledFile(name, tuple(T0 + timedelta(minutes=5 * i) for i in range(n)), windows)


# 100 rows → probation 15 rows; window A = rows 40..59 (20 rows), window B = rows 80..89 (10 rows)
F = make_file("cat/f.csv", 100, ((40, 59), (80, 89)))


def scores_at(*rows: int) -> np.ndarray:
    s = np.zeros(F.n_rows)
    s[list(rows)] = 1.0
    return s


def test_probation_is_15_percent_capped_at_750_rows() -> None:
    assert probation_rows(100) == 15
    assert probation_rows(4032) == 604
    assert probation_rows(10000) == 750


def test_first_row_of_window_earns_full_weight_and_last_row_almost_nothing() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(sig(-1.0))
    first = score_file(F, scores_at(40, 80), 0.5, STD)
    assert first.score == pytest.approx(2.0)
    last = score_file(F, scores_at(59, 89), 0.5, STD)
    assert last.score == pytest.approx(sig(-1 / 20) / sig(-1) + sig(-1 / 10) / sig(-1))


def test_hand_case_early_tp_one_fp_one_missed_window() -> None:
    """TP on row 45 of window A (5 rows in), an FP on row 70, window B missed.

    TP: y = −(59 − 45 + 1)/20 = −0.75 → σ(−0.75)/σ(−1).
    FP: 11 rows after A's end, A has 20 rows → y = 11/19 → 0.11·σ(11/19) (negative).
    Missed B: −1."""
    result = score_file(F, scores_at(45, 70), 0.5, STD)
    expected = sig(-0.75) / sig(-1) + 0.11 * sig(11 / 19) - 1.0
    assert result.score == pytest.approx(expected)
    assert (result.true_positives, result.false_negatives, result.false_positive_rows) == (1, 1, 1)
    assert result.delays_rows == [5]
    assert result.delays_s == [25 * 60]


def test_only_the_first_detection_in_a_window_counts() -> None:
    assert score_file(F, scores_at(45, 46, 50, 58), 0.5, STD).score == pytest.approx(
        score_file(F, scores_at(45), 0.5, STD).score
    )


def test_fp_before_any_window_costs_full_weight_and_probation_costs_nothing() -> None:
    base = score_file(F, scores_at(), 0.5, STD).score
    assert base == pytest.approx(-2.0)
    assert score_file(F, scores_at(20), 0.5, STD).score == pytest.approx(base - 0.11)
    assert score_file(F, scores_at(3), 0.5, STD).score == pytest.approx(base)
    far = make_file("cat/g.csv", 200, ((40, 49),))  # 10-row window; row 150 is 101 rows = 11.2 widths after
    s = np.zeros(200)
    s[150] = 1
    assert score_file(far, s, 0.5, STD).score == pytest.approx(-1.0 - 0.11)  # its window missed, a far FP


def test_profiles_weigh_fn_and_fp() -> None:
    s = scores_at(45, 70)
    low_fn = score_file(F, s, 0.5, PROFILES["reward_low_FN_rate"]).score
    low_fp = score_file(F, s, 0.5, PROFILES["reward_low_FP_rate"]).score
    assert low_fn == pytest.approx(sig(-0.75) / sig(-1) + 0.11 * sig(11 / 19) - 2.0)
    assert low_fp == pytest.approx(sig(-0.75) / sig(-1) + 0.22 * sig(11 / 19) - 1.0)


def test_null_scores_0_and_perfect_scores_100() -> None:
    files = [F, make_file("cat/quiet.csv", 300, ()), make_file("other/h.csv", 500, ((100, 149), (300, 320)))]
    for profile in PROFILES.values():
        null = best_threshold(files, null_scores(files), profile)
        perfect = best_threshold(files, perfect_scores(files), profile)
        assert null.score == pytest.approx(-4 * profile.fn)
        assert perfect.score == pytest.approx(4 * profile.tp)
        assert normalised(null.score, null.score, perfect.score) == 0.0
        assert normalised(perfect.score, null.score, perfect.score) == 100.0


def test_sweep_picks_the_best_threshold_and_agrees_with_per_file_scoring() -> None:
    """Scores: 0.9 on the early TP, 0.8 on an FP, 0.3 on a late TP in B. Best: threshold 0.3."""
    s = np.zeros(F.n_rows)
    s[45], s[70], s[88] = 0.9, 0.8, 0.3
    sweep = best_threshold([F], {F.name: s}, STD)
    assert sweep.threshold == pytest.approx(0.3)
    assert sweep.score == pytest.approx(score_file(F, s, 0.3, STD).score)
    assert sweep.score == pytest.approx(sig(-0.75) / sig(-1) + 0.11 * sig(11 / 19) + sig(-0.2) / sig(-1))
    # with the FP cost doubled per row and many FPs, staying at 0.9 must win
    s2 = s.copy()
    s2[60:80] = 0.8
    sweep2 = best_threshold([F], {F.name: s2}, STD)
    assert sweep2.threshold == pytest.approx(0.9)


def test_corpus_round_trip_in_nab_layout(tmp_path: Path) -> None:
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    lines = ["timestamp,value"] + [
        f"{(T0 + timedelta(minutes=5 * i)):%Y-%m-%d %H:%M:%S},{i % 7}" for i in range(100)
    ]
    (tmp_path / "data" / "cat" / "f.csv").write_text("\n".join(lines) + "\n")
    start, end = T0 + timedelta(minutes=5 * 40), T0 + timedelta(minutes=5 * 59)
    (tmp_path / "labels" / "combined_windows.json").write_text(
        json.dumps({"cat/f.csv": [[f"{start:%Y-%m-%d %H:%M:%S}.000000", f"{end:%Y-%m-%d %H:%M:%S}.000000"]]})
    )
    [series] = load_corpus(tmp_path)
    assert series.file.windows == ((40, 59),)
    out = write_results(tmp_path / "out", "det", series, np.linspace(0, 1, 100))
    assert out == tmp_path / "out" / "det" / "cat" / "det_f.csv"
    text = out.read_text().splitlines()
    assert text[0] == "timestamp,value,anomaly_score,label"
    assert text[41].endswith(",1") and text[40].endswith(",0") and len(text) == 101


def test_bad_layout_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DetectError, match="no data/ folder"):
        load_corpus(tmp_path)
