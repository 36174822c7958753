"""SLO specs: `slos/*.yaml`, validated like runbooks (errors name the file, line and field).

An SLO says which events are good (the SLI, as good/total PromQL or a latency threshold on a
histogram), what share of them must be (`objective`, in percent) over which `window`, and how fast
the error budget may burn before someone is told — the Google SRE Workbook's multiwindow,
multi-burn-rate pairs by default: page at 14.4× over 1 h (and 5 m), at 6× over 6 h (and 30 m); a
ticket at 1× over 3 d (and 6 h). `medic slo rules` turns the specs into Prometheus rules
(medic.procedures.slo_rules).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medic.core.runbook import LABEL, NAME, Duration, _Spec
from medic.core.spec_file import load_named_spec
from medic.errors import RunbookError

__all__ = ["BurnAlert", "EventsSLI", "LatencySLI", "SLOSpec", "load_slo", "load_slos"]

_METRIC = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
_SELECTOR = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*,?\s*)*$')


class EventsSLI(_Spec):
    """good/total as PromQL counters: each is wrapped as `sum(rate(<it>[<window>]))`."""

    good: str = Field(pattern=_METRIC.replace("$", r"(\{.*\})?$"), description="counter of good events, e.g. "
                      'http_requests_total{code!~"5.."}')
    total: str = Field(pattern=_METRIC.replace("$", r"(\{.*\})?$"), description="counter of all events")


class LatencySLI(_Spec):
    """Requests answered within `le` seconds, from a Prometheus histogram (le must be one of its buckets)."""

    histogram: str = Field(pattern=_METRIC, description="histogram base name, e.g. demo_request_duration_seconds")
    le: str = Field(pattern=r"^\d+(\.\d+)?$", description="the bucket bound that counts as fast enough")
    selector: str = Field("", description='label matchers, e.g. job="web"')

    @model_validator(mode="after")
    def _selector(self) -> "LatencySLI":
        if not _SELECTOR.match(self.selector):
            raise ValueError(f'selector must be label matchers like job="web", got {self.selector!r}')
        return self


class BurnAlert(_Spec):
    """Alert when the budget burns `burn` times too fast over both windows (long for significance,
    short so the alert stops soon after the burning does)."""

    long: Duration
    short: Duration
    burn: float = Field(gt=0)
    severity: Literal["page", "ticket"] = "page"

    @model_validator(mode="after")
    def _order(self) -> "BurnAlert":
        if self.short >= self.long:
            raise ValueError("the short window must be shorter than the long one")
        return self


#: The SRE Workbook's recommendation for a 30-day window (chapter 5, "Alerting on SLOs").
WORKBOOK = [BurnAlert(long=3600, short=300, burn=14.4), BurnAlert(long=21600, short=1800, burn=6.0),
            BurnAlert(long=259200, short=21600, burn=1.0, severity="ticket")]


class SLOSpec(_Spec):
    name: str = Field(pattern=NAME)
    service: str = Field(pattern=NAME, description="the service it is about (reports group by it)")
    description: str = ""
    sli: EventsSLI | LatencySLI = Field(description="events: good/total counters, or latency: a histogram bound")
    objective: float = Field(gt=0, lt=100, description="percent of good events, e.g. 99.9")
    window: Duration = Field(30 * 86400.0, description="the compliance period, e.g. 30d")
    alerts: list[BurnAlert] = Field(default_factory=lambda: list(WORKBOOK))
    labels: dict[str, str] = Field(default_factory=dict, description="added to every alert (e.g. team)")
    depends_on: list[str] = Field(default_factory=list, description="SLOs of the components it needs (web → db)")

    @model_validator(mode="after")
    def _labels(self) -> "SLOSpec":
        for name in self.labels:
            if not re.match(LABEL, name):
                raise ValueError(f"label name {name!r} is not a Prometheus label name")
        if any(a.long > self.window for a in self.alerts):
            raise ValueError("an alert window is longer than the SLO window")
        return self

    @property
    def budget(self) -> float:
        """The allowed share of bad events (0.001 for 99.9 %)."""
        return 1.0 - self.objective / 100.0


def load_slo(path: Path) -> SLOSpec:
    return load_named_spec(path, SLOSpec, kind="SLO")


def load_slos(directory: Path) -> dict[str, SLOSpec]:
    """Every SLO in a directory by name; a dependency that names no SLO there is an error."""
    slos = {s.name: s for s in (load_slo(p) for p in sorted(directory.glob("*.yaml")))}
    for slo in slos.values():
        missing = [d for d in slo.depends_on if d not in slos]
        if missing:
            raise RunbookError(f"SLO {slo.name} depends on {', '.join(missing)}, which is not an SLO in {directory}",
                               file=str(directory / f"{slo.name}.yaml"), field="depends_on",
                               expected=f"one of: {', '.join(sorted(slos))}", found=", ".join(missing))
    return slos
