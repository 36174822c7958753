"""`detect: {anomaly: …}` in a runbook: validated like every spec field; the charts it produces."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from medic.core.runbook import load_runbook
from medic.detect import build
from medic.detect.chart import png_chart, terminal_chart
from medic.errors import RunbookError
from tests.core.test_runbook import SPEC, edited, spec_error, write_spec

ANOMALY = """detect:
  anomaly:
    query: demo_process_resident_bytes{host=$host}
    detector: rate_of_change
    params: {window_s: 20, direction: up}
    lookback: 5m
    step: 2s
"""
THRESHOLD = """detect:
  query: up{host=$host}
  condition: "== 0"
  for: 1s
"""


def test_an_anomaly_detect_loads_with_its_query_and_a_score_condition(tmp_path: Path) -> None:
    runbook = load_runbook(write_spec(tmp_path, edited(THRESHOLD, ANOMALY)))
    anomaly = runbook.detect.anomaly
    assert anomaly is not None
    assert (anomaly.detector, anomaly.lookback, anomaly.step, anomaly.threshold) == ("rate_of_change", 300, 2, 0.5)
    assert runbook.detect.query == "demo_process_resident_bytes{host=$host}"
    assert str(runbook.detect.condition) == ">= 0.5"


@pytest.mark.parametrize(("change", "words"), [
    (("detector: rate_of_change", "detector: crystal_ball"), "unknown detector 'crystal_ball'; known: absence,"),
    (("{window_s: 20, direction: up}", "{window_s: 20, bogus: 1}"), "invalid parameters (bogus: Extra inputs"),
    (("{window_s: 20, direction: up}", "{window_s: -1}"), "window_s: Input should be greater than 0"),
    (("lookback: 5m", "lookback: 10s"), "lookback 10 s holds fewer than 20 steps of 2 s"),
    (("demo_process_resident_bytes{host=$host}", "x{dir=${data_dir}}"), "queries may only use $host"),
])
def test_a_bad_anomaly_spec_says_what_is_wrong_and_where(tmp_path: Path, change: tuple[str, str], words: str) -> None:
    err = spec_error(tmp_path, edited(THRESHOLD, ANOMALY.replace(*change)))
    assert words in str(err), str(err)
    assert err.line is not None and err.line >= 7  # points into the detect section


def test_anomaly_and_a_fixed_condition_together_are_refused(tmp_path: Path) -> None:
    both = ANOMALY + '  query: up{host=$host}\n  condition: "== 0"\n'
    with pytest.raises(RunbookError, match="either 'anomaly' or 'query' \\+ 'condition', not both"):
        load_runbook(write_spec(tmp_path, edited(THRESHOLD, both)))


def _history() -> tuple[list[float], list[float], list[float]]:
    times = [1_700_000_000.0 + 2 * i for i in range(200)]
    values = list(20e6 + np.random.default_rng(4).normal(0, 4e3, 200))
    values[150:] = [v + 1e6 * (i + 1) for i, v in enumerate(values[150:])]  # a 0.5 MB/s leak from row 150
    scores = list(build("rate_of_change", window_s=20, direction="up", learn_above=0.25).run(times, values))
    return times, values, scores


def test_the_terminal_chart_marks_where_the_score_reached_the_threshold() -> None:
    times, values, scores = _history()
    text = terminal_chart(times, values, scores, threshold=0.5, title="memory-leak on web-1", width=50)
    lines = text.splitlines()
    assert lines[0] == "memory-leak on web-1"
    marks = next(line for line in lines if line.strip().startswith("0.0"))
    first_mark = marks.index("!") - marks.index("┘") - 1
    assert 35 <= first_mark <= 40  # row 150 of 200 → column ~37 of 50: the alarm is drawn where it happened
    assert re.search(r"threshold 0.5: \d+ of 200 samples at or above it", text)
    assert "(no data)" in terminal_chart([], [], [], threshold=0.5, title="empty")


def test_the_png_chart_is_a_real_png_image() -> None:
    times, values, scores = _history()
    title = "latency-drift on web-1: rate(x{host=$host}[10s]) / rate(y{host=$host}[10s])"  # two $: not mathtext
    png = png_chart(times, values, scores, threshold=0.5, title=title, reason="costs $5 and $6")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (900, 480)
