"""Score every medic detector on a corpus in NAB's layout, the way NAB scores its entries.

    nice -n 10 .venv/bin/python bench/nab.py DATA_DIR OUT_DIR [--detectors novelty,ewma] [--jobs 2]

DATA_DIR holds ``data/<category>/<file>.csv`` and ``labels/combined_windows.json`` (any category,
seen or not: parameters are the detectors' defaults, the same for every file). Writes
``OUT_DIR/<detector>/<category>/<detector>_<file>.csv`` (timestamp,value,anomaly_score,label) and
prints, per detector: the normalised score per profile at the threshold NAB's rule picks (the best
one, found on the labels), the score at a threshold fixed in advance without the labels, false
alarms per day and per series-week on artificialNoAnomaly, median delay from a window's start, and
the cost per sample — beside NAB's published scoreboard.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medic.detect import DETECTORS, build
from medic.detect.nab_corpus import Series, load_corpus, write_results
from medic.detect.nab_scoring import (
    PROFILES,
    LabelledFile,
    best_threshold,
    normalised,
    null_scores,
    perfect_scores,
    score_file,
)

# NAB v1.1 scoreboard, standard profile, whole corpus (58 files), as ../shared/nab/README.md gives it
PUBLISHED = {
    "ARTime": 74.9,
    "Numenta HTM": 70.5,
    "CAD OSE": 69.9,
    "KNN CAD": 58.0,
    "Windowed Gaussian": 39.6,
    "random": 16.8,
}
# Parameters that are not the class defaults, the same for every file (no label, no file name used).
# `threshold` needs a level: it learns the normal range from the first 500 rows of each file. The
# z-score detectors get the cool-down novelty and iforest have by default (60 rows after a score
# ≥ 0.5): without it they score every row of a long deviation, and NAB counts each as an alarm.
COOL = {"cooldown": 60, "alarm": 0.5}
PARAMS: dict[str, dict[str, object]] = {
    "threshold": {"learn_rows": 500},
    "rate_of_change": COOL,
    "robust_z": COOL,
    "ewma": COOL,
    "seasonal": COOL,
}
# Thresholds fixed before looking at any label, from what each score means:
# 1.0 = the rule's condition is met (threshold held / silence reached its limit); 0.5 = the z-score
# detectors' `z_half` σ; novelty 0.5 = anomaly-likelihood tail p of 1e-5 (HTM's convention); the
# isolation forest's own `alarm` level.
FIXED = {"threshold": 1.0, "absence": 1.0, "iforest": 0.7}
FIXED_DEFAULT = 0.5
_CORPUS: list[Series] = []


def _run_one(job: tuple[str, int]) -> tuple[str, int, np.ndarray, float]:
    """Run one detector over one file (in a worker process); returns scores and seconds spent."""
    name, index = job
    series = _CORPUS[index]
    stamps = [t.timestamp() for t in series.file.timestamps]
    detector = build(name, **PARAMS.get(name, {}))
    started = time.process_time()
    scores = detector.run(stamps, series.values)
    return name, index, scores, time.process_time() - started


def fixed_report(
    files: list[LabelledFile], scores: dict[str, np.ndarray], threshold: float
) -> dict[str, float]:
    """Standard score, false alarms and delays at a threshold chosen without the labels."""
    profile = PROFILES["standard"]
    per_file = [score_file(f, scores[f.name], threshold, profile) for f in files]
    total = sum(r.score for r in per_file)
    null = best_threshold(files, null_scores(files), profile).score
    perfect = best_threshold(files, perfect_scores(files), profile).score
    days = sum(r.scored_days for r in per_file) or 1.0
    quiet = [r for r in per_file if r.name.startswith("artificialNoAnomaly/")]
    quiet_weeks = sum(r.scored_days for r in quiet) / 7.0
    delays = [d for r in per_file for d in r.delays_s]
    return {
        "score": normalised(total, null, perfect),
        "fa_per_day": sum(r.false_positive_rows for r in per_file) / days,
        "quiet_fa_per_week": (sum(r.false_positive_rows for r in quiet) / quiet_weeks)
        if quiet_weeks
        else float("nan"),
        "median_delay_min": statistics.median(delays) / 60 if delays else float("nan"),
        "detected": sum(r.true_positives for r in per_file),
        "windows": sum(r.true_positives + r.false_negatives for r in per_file),
    }


def held_out_score(files: list[LabelledFile], scores: dict[str, np.ndarray]) -> float:
    """Standard score when each category is scored at the threshold picked on the *other* categories.

    NAB's rule picks the threshold on the very labels it is scored on; this is the same rule used
    the way it would be on series never seen (categories differ in kind, not just in file)."""
    profile = PROFILES["standard"]
    categories = sorted({f.name.split("/", 1)[0] for f in files})
    total = 0.0
    for category in categories:
        train = [f for f in files if not f.name.startswith(category + "/")]
        test = [f for f in files if f.name.startswith(category + "/")]
        threshold = best_threshold(train, scores, profile).threshold if train else 0.5
        total += sum(score_file(f, scores[f.name], threshold, profile).score for f in test)
    null = best_threshold(files, null_scores(files), profile).score
    perfect = best_threshold(files, perfect_scores(files), profile).score
    return normalised(total, null, perfect)


LEGEND = """
held-out  = standard profile, each category scored at the threshold NAB's rule picks on the OTHER categories
fixed     = threshold fixed before looking at any label (see FIXED); std@fixed = standard score there
FA/day    = detection rows outside windows per day after probation; quiet FA/wk = the same per series-week
            on artificialNoAnomaly; delay = median minutes from a window's start to its first detection
µs/sample = CPU time per row; series/core@10s = how many series one core can score at a 10 s step"""


def print_table(
    files: list[LabelledFile],
    names: list[str],
    scores: dict[str, dict[str, np.ndarray]],
    cpu: dict[str, float],
    rows: int,
) -> None:
    """The results table, the published scoreboard beside it, and what the columns mean."""
    bases = {
        p: (
            best_threshold(files, null_scores(files), prof).score,
            best_threshold(files, perfect_scores(files), prof).score,
        )
        for p, prof in PROFILES.items()
    }
    head = f"{'detector':<15}{'standard':>14}{'low_FP':>14}{'low_FN':>14}{'held-out':>9}"
    head += f" | {'fixed':>5}{'std@fixed':>10}"
    head += (
        f"{'FA/day':>8}{'quiet FA/wk':>12}{'delay':>7}{'found':>7} | {'µs/sample':>9}{'series/core@10s':>16}"
    )
    print(
        "\nNAB v1.1 scoring, normalised (null = 0, perfect = 100), (threshold NAB's rule picks on the labels)"
    )
    print(head + "\n" + "-" * len(head))
    for name in names:
        cells = []
        for p, prof in PROFILES.items():
            sweep = best_threshold(files, scores[name], prof)
            cells.append(f"{normalised(sweep.score, *bases[p]):6.1f} ({sweep.threshold:5.3f})")
        fixed = FIXED.get(name, FIXED_DEFAULT)
        fr = fixed_report(files, scores[name], fixed)
        us = cpu[name] / rows * 1e6
        line = (
            f"{name:<15}{cells[0]:>14}{cells[1]:>14}{cells[2]:>14}{held_out_score(files, scores[name]):9.1f}"
        )
        line += f" | {fixed:5.2f}{fr['score']:10.1f}{fr['fa_per_day']:8.2f}{fr['quiet_fa_per_week']:12.2f}"
        line += f"{fr['median_delay_min']:7.0f}{fr['detected']:>4}/{fr['windows']:<2}"
        line += f" | {us:9.1f}{10e6 / us if us else float('inf'):16,.0f}"
        print(line)
    print("\npublished NAB scoreboard (standard profile, all 58 NAB files; this corpus may be part of it):")
    print("  " + ", ".join(f"{entry} {std:.1f}" for entry, std in PUBLISHED.items()))
    print(LEGEND)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (the machine is shared)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.detectors.split(",") if n.strip()]
    for n in names:
        if n not in DETECTORS:
            parser.error(f"unknown detector {n!r}; known: {', '.join(DETECTORS)}")

    _CORPUS[:] = load_corpus(args.data_dir)
    files = [s.file for s in _CORPUS]
    rows = sum(f.n_rows for f in files)
    n_windows = sum(len(f.windows) for f in files)
    print(
        f"{args.data_dir}: {len(files)} files, {rows} rows, {n_windows} windows; "
        f"detectors: {', '.join(names)}"
    )
    started = time.perf_counter()
    scores: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
    cpu: dict[str, float] = {n: 0.0 for n in names}
    jobs = [(n, i) for n in names for i in range(len(_CORPUS))]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(_run_one, jobs, chunksize=4))
    else:
        results = [_run_one(j) for j in jobs]
    for name, index, s, spent in results:
        series = _CORPUS[index]
        scores[name][series.file.name] = s
        cpu[name] += spent
        write_results(args.out_dir, name, series, s)
    wall = time.perf_counter() - started

    print_table(files, names, scores, cpu, rows)
    print(
        f"wall time {wall:.0f} s for {len(jobs)} detector×file runs, {args.jobs} process(es); "
        f"results in {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
