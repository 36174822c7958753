"""The gate for maintenance runs: parameters validated, deviations from what was reviewed approved.

A maintenance flow can be started by anyone who reaches Prefect's API, with any parameters. So,
whatever started it (schedule, UI, API, `medic`):

* every parameter is checked before anything runs: the group is an inventory target; cleanup
  patterns are file-name globs of a safe charset (no ``/``, no ``..``); the minimum age is within
  ``MIN_AGE_BOUNDS``; batch sizes, error budgets and timeouts are sane. A bad one fails the run with
  a ``MaintenanceConfigError`` saying which and why;
* the run is compared with the parameters that were reviewed: the deployment's own in prefect.yaml
  (reviewed code, like the flow's defaults, which apply to a run without a deployment). Other
  patterns, a shorter minimum age, ``ignore_window`` or hosts outside the reviewed group are
  *deviations*: the run asks for an approval through medic's gate (verified approvers only) and
  the request names each deviation. A dry run changes nothing and asks nobody; a scheduled run with
  its reviewed parameters stays hands-off.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from medic.core.inventory import Inventory
from medic.errors import MaintenanceConfigError, MedicError

if TYPE_CHECKING:
    from medic.core.progress import Timeline
    from medic.procedures.maintenance_report import MaintenanceReport

__all__ = ["Deviation", "MAINTENANCE_APPROVAL_TIMEOUT_S", "MIN_AGE_BOUNDS", "approve_deviations", "check_cleanup",
           "check_rolling", "deviations", "flow_defaults", "parse_age", "parse_patterns", "reviewed_parameters"]

#: Shortest and longest minimum age a cleanup accepts, in seconds (5 minutes, a year).
MIN_AGE_BOUNDS = (5 * 60, 365 * 86400)
#: How long a maintenance run waits for a decision on its deviations.
MAINTENANCE_APPROVAL_TIMEOUT_S = 900.0
_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,64}$")
_AGE = re.compile(r"^(\d{1,6})([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_PATTERNS = 20
_TIMEOUT_BOUNDS = (1.0, 600.0)


class Deviation(BaseModel):
    """One parameter that differs from what was reviewed, as the approval request shows it."""

    parameter: str
    reviewed: str
    asked: str
    why: str

    def __str__(self) -> str:
        return f"{self.parameter}: {self.asked} (reviewed: {self.reviewed}) — {self.why}"


def parse_patterns(text: str) -> list[str]:
    """Comma-separated file-name globs; each of a safe charset, no '/', no '..'."""
    patterns = [p.strip() for p in str(text).split(",") if p.strip()]
    if not patterns or len(patterns) > _MAX_PATTERNS:
        raise MaintenanceConfigError(f"patterns {text!r}: give 1 to {_MAX_PATTERNS} comma-separated file name "
                                     f"patterns, e.g. '*.tmp,*.log.[0-9]*'; nothing was run")
    for p in patterns:
        if not _PATTERN.match(p) or ".." in p:
            raise MaintenanceConfigError(
                f"pattern {p!r} is refused: a pattern is a file name glob of letters, digits and _ . * ? [ ] ! - "
                f"(at most 64; no '/', no '..', no spaces or template characters); nothing was run")
    return patterns


def parse_age(text: str) -> int:
    """A minimum age like '1d', '12h', '30m' in seconds, within MIN_AGE_BOUNDS."""
    m = _AGE.match(str(text).strip())
    low, high = MIN_AGE_BOUNDS
    seconds = int(m[1]) * _UNIT_S[m[2]] if m else -1
    if not low <= seconds <= high:
        raise MaintenanceConfigError(f"min_age {text!r} is refused: give a number and a unit s/m/h/d/w from "
                                     f"{low // 60}m to {high // 86400}d (e.g. '1d', '12h'); nothing was run")
    return seconds


def _targets(inventory: Inventory, group: str) -> set[str]:
    try:
        return {h.name for h in inventory.resolve(group)}
    except MedicError as exc:
        raise MaintenanceConfigError(f"group {group!r} is refused: {exc}") from exc


def _check_common(inventory: Inventory, group: str, max_errors: int) -> set[str]:
    hosts = _targets(inventory, group)
    if not 0 <= max_errors <= len(hosts):
        raise MaintenanceConfigError(f"max_errors {max_errors} is refused: from 0 to the group's {len(hosts)} "
                                     f"host(s); nothing was run")
    return hosts


def check_cleanup(inventory: Inventory, *, group: str, patterns: str, min_age: str, max_errors: int) -> None:
    """Raise MaintenanceConfigError for any cleanup parameter that is not acceptable at all."""
    _check_common(inventory, group, max_errors)
    parse_patterns(patterns)
    parse_age(min_age)


def check_rolling(inventory: Inventory, *, group: str, max_errors: int, drain_timeout: float,
                  health_timeout: float) -> None:
    """Raise MaintenanceConfigError for any rolling-restart parameter that is not acceptable at all."""
    _check_common(inventory, group, max_errors)
    low, high = _TIMEOUT_BOUNDS
    for name, value in (("drain_timeout", drain_timeout), ("health_timeout", health_timeout)):
        if not low <= value <= high:
            raise MaintenanceConfigError(f"{name} {value:g} is refused: from {low:g} to {high:g} seconds; "
                                         f"nothing was run")


def reviewed_parameters(defaults: dict[str, Any], flow_name: str, deployment: str | None) -> dict[str, Any]:
    """The flow's defaults with the deployment's parameters from prefect.yaml over them (no deployment,
    or one prefect.yaml does not list: the defaults alone)."""
    from medic.orchestration.deployments import load_specs

    reviewed = dict(defaults)
    if deployment:
        for spec in load_specs():
            if spec.name == deployment and spec.flow_name == flow_name:
                reviewed.update(spec.parameters)
    return reviewed


def deviations(inventory: Inventory, asked: dict[str, Any], reviewed: dict[str, Any]) -> list[Deviation]:
    """What in `asked` needs a human because it differs from `reviewed` in a riskier direction."""
    found: list[Deviation] = []
    outside = sorted(_targets(inventory, asked["group"]) - _targets(inventory, reviewed["group"]))
    if outside:
        found.append(Deviation(parameter="group", reviewed=reviewed["group"], asked=asked["group"],
                               why=f"hosts outside the reviewed group: {', '.join(outside)}"))
    if asked.get("ignore_window") and not reviewed.get("ignore_window"):
        found.append(Deviation(parameter="ignore_window", reviewed="false", asked="true",
                               why="runs outside the maintenance window"))
    if "patterns" in asked:
        extra = [p for p in parse_patterns(asked["patterns"]) if p not in parse_patterns(reviewed["patterns"])]
        if extra:
            found.append(Deviation(parameter="patterns", reviewed=reviewed["patterns"], asked=asked["patterns"],
                                   why=f"deletes files matching {', '.join(extra)} too"))
    if "min_age" in asked and parse_age(asked["min_age"]) < parse_age(reviewed["min_age"]):
        found.append(Deviation(parameter="min_age", reviewed=reviewed["min_age"], asked=asked["min_age"],
                               why="deletes younger files"))
    return found


def flow_defaults(flow: Any) -> dict[str, Any]:
    """A flow's parameter defaults (its code is reviewed like prefect.yaml)."""
    import inspect

    fn = getattr(flow, "fn", flow)
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


async def approve_deviations(report: "MaintenanceReport", found: list[Deviation], *, targets: list[str],
                             timeline: "Timeline") -> bool:
    """Ask medic's approval gate about the deviations (each shown on the request); True when approved.
    Not approved: the report says so and names the deviations; nothing was done."""
    from medic.approval.gate import ApprovalRequest, request_decision
    from medic.core.report import ApprovalDecision, Outcome
    from medic.core.runbook import Approval
    from medic.orchestration.run_log import tell

    asked = "; ".join(str(d) for d in found)
    tell(timeline, "approval", f"parameters outside the reviewed ones → asking for approval: {asked}")
    request = ApprovalRequest(
        title=f"maintenance {report.action} of {report.group}: parameters outside the reviewed ones",
        runbook=f"maintenance {report.action}", targets=targets,
        evidence=f"deviations from the reviewed parameters → {asked}",
        diagnosis=f"reason given: {report.reason}",
        planned_action=f"{report.action} of {report.group} ({', '.join(targets)}) with "
                       + ", ".join(f"{d.parameter}={d.asked}" for d in found),
        why="a maintenance run asks for parameters outside the reviewed ones (prefect.yaml / the flow's "
            "defaults): " + asked,
        flow_run_id=report.flow_run_id or "")
    policy = Approval(policy="required", timeout=MAINTENANCE_APPROVAL_TIMEOUT_S)
    record = await request_decision(request, policy, timeline=timeline)
    if record.decision is ApprovalDecision.APPROVED:
        tell(timeline, "approval", f"approved by {', '.join(record.approvers)}: {asked}")
        return True
    report.outcome = (Outcome.APPROVAL_TIMED_OUT if record.decision is ApprovalDecision.TIMED_OUT
                      else Outcome.REJECTED)
    report.summary = (f"Nothing was done: the deviation(s) from the reviewed parameters were not approved "
                      f"({record.decision}{': ' + record.comment if record.comment else ''}) — {asked}.")
    return False
