"""The stages of a PostgreSQL failover as plain functions over pydantic models.

`flows/failover.py` wraps each in a Prefect task; the logic lives here so the flow file reads as
the procedure: detect → diagnose → decide → approve → fence → promote → route → verify, and
`rejoin` afterwards.

    assess   the cluster and its route; detect, diagnose, decide (nothing changes)
    act      fence, promote, reroute, verify, rejoin (each returns a result model)
    asks     what a human is asked (and asked again after a re-check or a failed fence)
    report   FailoverReport: the flow's return value and markdown artifact
"""

from __future__ import annotations

from medic.procedures.failover.act import (
    FenceResult,
    RouteResult,
    StepResult,
    Verification,
    fence,
    promote,
    rejoin,
    reroute,
    verify,
)
from medic.procedures.failover.assess import (
    Cluster,
    Decision,
    Detection,
    FailoverDiagnosis,
    Route,
    decide,
    detect,
    diagnose,
    load_cluster,
    read_route,
    recheck,
    writable_check,
    writable_nodes,
)
from medic.procedures.failover.asks import (
    Ask,
    Evidence,
    asked_overrides,
    failover_request,
    fence_failed_request,
    rejoin_request,
)
from medic.procedures.failover.report import FailoverReport

__all__ = [
    "Ask", "Evidence", "asked_overrides", "failover_request", "fence_failed_request", "recheck", "rejoin_request",
    "writable_check", "writable_nodes",
    "Cluster", "Decision", "Detection", "FailoverDiagnosis", "FailoverReport", "FenceResult", "Route",
    "RouteResult", "StepResult", "Verification", "decide", "detect", "diagnose", "fence", "load_cluster",
    "promote", "read_route", "rejoin", "reroute", "verify",
]
