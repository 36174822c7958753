"""Reading a directory in NAB's layout and writing results in NAB's layout.

Layout read: ``DATA_DIR/data/<category>/<file>.csv`` (``timestamp,value``) and
``DATA_DIR/labels/combined_windows.json`` (``"<category>/<file>.csv": [[start, end], ...]``).
Layout written: ``OUT/<detector>/<category>/<detector>_<file>.csv`` with
``timestamp,value,anomaly_score,label`` — what NAB's own scorer reads.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from medic.detect.nab_scoring import LabelledFile, windows_to_rows
from medic.errors import DetectError


@dataclass(frozen=True)
class Series:
    """One NAB data file: its rows and its windows (as rows)."""

    file: LabelledFile
    raw_timestamps: tuple[str, ...]
    values: np.ndarray

    @property
    def category(self) -> str:
        return self.file.name.split("/", 1)[0]


def _parse_time(text: str, where: str) -> datetime:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise DetectError(
            f"{where}: timestamp {text!r} is not ISO 8601 (NAB writes '2014-04-10 07:15:00')"
        ) from exc


def read_series(path: Path, name: str, spans: list[list[str]]) -> Series:
    """Read one ``timestamp,value`` CSV and place its windows on its rows."""
    raw, stamps, values = [], [], []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise DetectError(
                f"{path}: first line must be 'timestamp,value' (NAB's data layout), found {header!r}"
            )
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            raw.append(row[0])
            stamps.append(_parse_time(row[0], f"{path}:{line_no}"))
            try:
                values.append(float(row[1]))
            except (IndexError, ValueError) as exc:
                raise DetectError(f"{path}:{line_no}: value {row[1:2]!r} is not a number") from exc
    windows = windows_to_rows(
        stamps, [(_parse_time(a, f"{name} window"), _parse_time(b, f"{name} window")) for a, b in spans]
    )
    return Series(
        LabelledFile(name, tuple(stamps), windows), tuple(raw), np.asarray(values, dtype=np.float64)
    )


def load_corpus(data_dir: Path) -> list[Series]:
    """Every data file under ``data_dir/data`` with its windows (files with no entry have none)."""
    data_root = data_dir / "data"
    labels_path = data_dir / "labels" / "combined_windows.json"
    if not data_root.is_dir():
        raise DetectError(f"{data_dir}: no data/ folder; expected NAB's layout data/<category>/<file>.csv")
    if not labels_path.is_file():
        raise DetectError(f"{data_dir}: no labels/combined_windows.json; expected NAB's layout")
    try:
        windows = json.loads(labels_path.read_text())
    except json.JSONDecodeError as exc:
        raise DetectError(f"{labels_path}: not valid JSON ({exc})") from exc
    out = []
    for path in sorted(data_root.glob("*/*.csv")):
        name = f"{path.parent.name}/{path.name}"
        out.append(read_series(path, name, windows.get(name, [])))
    if not out:
        raise DetectError(f"{data_root}: no <category>/<file>.csv files found")
    return out


def results_path(out_dir: Path, detector: str, name: str) -> Path:
    """``OUT/<detector>/<category>/<detector>_<file>.csv``."""
    category, file = name.split("/", 1)
    return out_dir / detector / category / f"{detector}_{file}"


def write_results(out_dir: Path, detector: str, series: Series, scores: np.ndarray) -> Path:
    """Write one results file in NAB's layout."""
    path = results_path(out_dir, detector, series.file.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = series.file.labels()
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "value", "anomaly_score", "label"])
        for ts, value, score, label in zip(series.raw_timestamps, series.values, scores, labels):
            shown = value if not math.isfinite(value) or value != int(value) else int(value)
            writer.writerow([ts, shown, f"{float(score):.6g}", int(label)])
    return path
