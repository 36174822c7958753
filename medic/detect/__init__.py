"""Streaming anomaly detectors: each sees a metric's rows in order, uses only the past, and gives a
score in [0, 1] with a reason an operator can check against the graph.

    build("seasonal", period="weekly", metric="p99 latency", unit="ms")

| name | what it flags |
|---|---|
| threshold | a level crossed and held (Prometheus' `> X for: D`), or outside a learned range |
| absence | the series stopped reporting |
| rate_of_change | moving faster than a limit, or than it usually does |
| robust_z | far from its rolling median, in rolling-MAD σ |
| ewma | far from its exponentially weighted mean (O(1): for very many series) |
| seasonal | far from the same time of day / week |
| iforest | a window of recent samples an IsolationForest isolates quickly |
| novelty | recent samples unlike any earlier stretch (k-NN + anomaly likelihood): best on NAB |
"""

from __future__ import annotations

from medic.detect.base import Detector, DetectorParams, Verdict
from medic.detect.iforest import IsolationForestDetector
from medic.detect.novelty import Novelty
from medic.detect.rules import Absence, RateOfChange, ThresholdFor
from medic.detect.seasonal import SeasonalBaseline
from medic.detect.stats import Ewma, RobustZScore
from medic.errors import DetectError

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (
        ThresholdFor,
        Absence,
        RateOfChange,
        RobustZScore,
        Ewma,
        SeasonalBaseline,
        IsolationForestDetector,
        Novelty,
    )
}
DEFAULT = "novelty"


def build(name: str, **params: object) -> Detector:
    """A fresh detector by name; unknown names and parameters are errors that list what exists."""
    cls = DETECTORS.get(name)
    if cls is None:
        raise DetectError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")
    return cls(**params)


__all__ = ["DEFAULT", "DETECTORS", "Detector", "DetectorParams", "Verdict", "build"]
