"""Runbook specs: pydantic models of `runbooks/*.yaml`, and loading them by file or by name.

A spec says, for one kind of incident: how to confirm it (detect), what evidence to gather
(diagnose), how to repair (recover), whether a human must agree (approval) and how to know the
repair worked (verify). One flow executes any spec, so a new runbook is YAML plus maybe a playbook.
Every error names the file, the line, the field, what was expected and what was found (see
`medic.core.spec_file`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from medic.core.spec_file import load_named_spec
from medic.core.templates import check_shell, placeholders
from medic.errors import MedicError, RunbookError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(value: Any) -> float:
    """'500ms', '2s', '10m', '1h', '30d', '1w' or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 2s, 500ms, 10m")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError("a duration such as 2s, 500ms, 10m")


Duration = Annotated[float, BeforeValidator(parse_duration)]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">=": operator.ge, ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$")


class Condition(BaseModel):
    """A comparison applied to each sample's value, written as e.g. ``> 0.9`` or ``== 0``."""

    op: str
    threshold: float

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"op": "==", "threshold": value}
        if isinstance(value, str):
            m = _CONDITION.match(value)
            if not m:
                raise ValueError("a comparison such as '> 0.9' or '== 0'")
            return {"op": m.group(1), "threshold": float(m.group(2))}
        return value

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]*$"


class Trigger(_Spec):
    """Which Alertmanager alerts start this runbook."""

    alertname: str = Field(description="the alert's alertname label")
    matchers: dict[Annotated[str, Field(pattern=LABEL)], str] = Field(
        default_factory=dict, description="other labels that must equal these values")


class Targets(_Spec):
    """Where the runbook may act."""

    default: str | None = Field(None, description="inventory host or group used when none is given")
    from_label: str = Field("host", pattern=LABEL, description="alert label that names the inventory host")
    within: str | None = Field(None, description="inventory group a target must belong to")


def _query_placeholders(value: str) -> str:
    unknown = placeholders(value) - {"host"}
    if unknown:
        raise ValueError(f"queries may only use $host, not {', '.join('$' + u for u in sorted(unknown))}")
    return value


def _command_placeholders(value: str) -> str:
    return check_shell(value)  # a malformed '$', a placeholder in $((…)), quotes medic cannot follow


Query = Annotated[str, AfterValidator(_query_placeholders)]
Command = Annotated[str, AfterValidator(_command_placeholders)]


class Check(_Spec):
    """A PromQL query and a condition on each series' value."""

    query: Query = Field(description="PromQL; $host is replaced by the quoted host name")
    condition: Condition
    host_label: str = Field("host", pattern=LABEL, description="label that says which host a series is about")

    @property
    def per_host(self) -> bool:
        return "host" in placeholders(self.query)


class Anomaly(_Spec):
    """Detect with a streaming detector (medic.detect) over the query's recent history, for metrics with
    no good fixed threshold: a slow leak, a drift, a shape never seen before."""

    query: Query = Field(description="PromQL range-evaluated over `lookback`; $host is the quoted host name")
    detector: str = Field("novelty", description="a medic.detect detector: novelty, ewma, robust_z, seasonal, …")
    params: dict[Annotated[str, Field(pattern=LABEL)], str | int | float | bool | None] = Field(
        default_factory=dict, description="the detector's parameters (see `medic detect --help`)")
    lookback: Duration = Field(600.0, gt=0, description="history scored, ending now")
    step: Duration = Field(5.0, gt=0, description="resolution of that history")
    threshold: float = Field(0.5, gt=0, le=1, description="a score at or above this is the problem")
    within: Duration = Field(60.0, ge=0, description="how recent a score at the threshold must be to count")

    @model_validator(mode="after")
    def _detector_exists(self) -> "Anomaly":
        from medic.detect import DETECTORS, build  # the detectors' own validation (numpy only; sklearn is lazy)

        if self.detector not in DETECTORS:
            raise ValueError(f"unknown detector {self.detector!r}; known: {', '.join(sorted(DETECTORS))}")
        try:
            build(self.detector, **self.params)
        except MedicError as exc:  # DetectError names the bad parameter and the allowed ones
            raise ValueError(str(exc)) from None
        if self.lookback < 20 * self.step:
            raise ValueError(f"lookback {self.lookback:g} s holds fewer than 20 steps of {self.step:g} s")
        return self


class Detect(Check):
    """A condition on a query's value (threshold + for), or an anomaly detector over its history."""

    hold: Duration = Field(0.0, alias="for", description="how long the condition must hold to count")
    settle: Duration = Field(5.0, description="how long to wait for fresh metrics before saying 'not needed'")
    anomaly: Anomaly | None = Field(None, description="detect by anomaly score instead of a fixed condition")

    @model_validator(mode="before")
    @classmethod
    def _anomaly_form(cls, value: Any) -> Any:
        """`detect: {anomaly: {...}}` alone: the checked query is the anomaly's, the condition its score."""
        if isinstance(value, dict) and isinstance(value.get("anomaly"), dict):
            if "query" in value or "condition" in value:
                raise ValueError("either 'anomaly' or 'query' + 'condition', not both")
            anomaly = value["anomaly"]
            query = anomaly.get("query", "")
            try:
                _query_placeholders(query) if isinstance(query, str) else None
            except ValueError:
                query = ""  # the error is reported once, where it is: at detect.anomaly.query
            return {**value, "query": query if isinstance(query, str) else "",
                    "condition": f">= {anomaly.get('threshold', 0.5)}"}
        return value


class Verify(Check):
    timeout: Duration = Field(60.0, description="give up and report 'not recovered' after this")
    hold: Duration = Field(0.0, alias="for", description="how long the healthy condition must hold")


class DiagnoseCommand(_Spec):
    name: str
    run: Command = Field(description="shell command; $host and ${var} (inventory medic_var) are quoted")
    timeout: Duration = 10.0


class DiagnoseQuery(_Spec):
    name: str
    query: Query = Field(description="PromQL; $host is replaced by the quoted host name")


class Diagnose(_Spec):
    commands: list[DiagnoseCommand] = Field(default_factory=list)
    queries: list[DiagnoseQuery] = Field(default_factory=list)


Scalar = str | int | float | bool


def _playbook_name(value: str | None) -> str | None:
    if value is not None and ("/" in value or "\\" in value or not value.endswith((".yml", ".yaml"))):
        raise ValueError("a playbook file name under playbooks/ ending in .yml, without a directory")
    return value


class Recover(_Spec):
    """Exactly one of: an Ansible playbook (with variables) or a shell command."""

    playbook: str | None = Field(None, description="file name under playbooks/")
    vars: dict[Annotated[str, Field(pattern=LABEL)], Scalar] = Field(default_factory=dict)
    command: Command | None = None
    timeout: Duration = 300.0

    @field_validator("playbook")
    @classmethod
    def _playbook_file(cls, value: str | None) -> str | None:
        return _playbook_name(value)

    @model_validator(mode="after")
    def _one_action(self) -> "Recover":
        if (self.playbook is None) == (self.command is None):
            raise ValueError("exactly one of 'playbook' or 'command'")
        return self

    @property
    def description(self) -> str:
        return f"playbook {self.playbook}" if self.playbook else f"command `{self.command}`"


class Approval(_Spec):
    policy: Literal["none", "required"] = "none"
    timeout: Duration = Field(600.0, description="no decision by then counts as 'not approved'")
    approvers: list[str] = Field(default_factory=list, description=(
        "names in the approver directory (approvers.yaml) allowed to decide; a Slack id is mapped through "
        "it; naming nobody (and no group) admits everyone in the directory"))
    approver_group: str | None = Field(None, description="Slack user group id; its members in approvers.yaml may decide")
    required_approvals: int = Field(1, ge=1, le=5, description="distinct approvers needed (N-of-M)")
    escalate_to: str | None = Field(None, description="Slack channel or user told when nobody answers")


class Limits(_Spec):
    max_parallel: int = Field(1, ge=1, le=1000, description="hosts recovered at once (batch size)")
    max_errors: int = Field(0, ge=0, description="failed hosts tolerated before stopping")


class Failover(_Spec):
    """The settings of a `kind: failover` runbook (flows/failover.py), beyond detect/recover/verify."""

    members: str = Field(description="inventory group of the cluster's nodes (primary + standbys)")
    max_lag_bytes: int = Field(16 * 1024 * 1024, ge=0,
                               description="refuse to promote a standby further behind than this (WAL bytes)")
    direct_check_timeout: Duration = Field(3.0, description="how long the direct query to the primary may take")
    rejoin_playbook: str = Field("pg-rejoin.yml", description="file name under playbooks/ that rebuilds a standby")
    rejoin_timeout: Duration = 300.0

    @field_validator("rejoin_playbook")
    @classmethod
    def _rejoin_file(cls, value: str) -> str:
        return _playbook_name(value) or value


class Runbook(_Spec):
    name: str = Field(pattern=NAME)
    description: str
    trigger: Trigger | None = None
    targets: Targets = Field(default_factory=Targets)
    detect: Detect
    diagnose: Diagnose = Field(default_factory=Diagnose)
    recover: Recover
    approval: Approval = Field(default_factory=Approval)
    verify: Verify
    limits: Limits = Field(default_factory=Limits)

    kind: Literal["remediation", "failover"] = Field(
        "remediation", description="remediation: flows/remediate.py; failover: flows/failover.py")
    failover: Failover | None = Field(None, description="settings of a kind: failover runbook")

    source: Path | None = Field(None, exclude=True, description="the file it was loaded from")

    @model_validator(mode="after")
    def _kind_section(self) -> "Runbook":
        if (self.kind == "failover") != (self.failover is not None):
            raise ValueError("a 'failover' section exactly when kind is failover")
        return self


# --- loading ---------------------------------------------------------------------------------


def load_runbook(path: Path) -> Runbook:
    """Read and validate one spec; raises RunbookError pointing at the offending line."""
    runbook = load_named_spec(path, Runbook, kind="runbook")
    runbook.source = path
    return runbook


def load_runbooks(directory: Path) -> dict[str, Runbook]:
    """Every spec in a directory, by name (the first invalid one raises)."""
    return {rb.name: rb for rb in (load_runbook(p) for p in sorted(directory.glob("*.yaml")))}


def find_runbook(name: str, directory: Path) -> Runbook:
    path = directory / f"{name}.yaml"
    if not re.fullmatch(NAME, name) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
        raise RunbookError(f"no runbook named {name!r}", file=str(directory), expected=f"one of: {known}", found=name)
    return load_runbook(path)
