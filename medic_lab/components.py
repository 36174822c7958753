"""Optional parts of the lab (HAProxy, PostgreSQL, ...) plug in here instead of into control.py.

A component declares its ports (checked before anything starts), lays out its files, starts its
daemons with `processes.spawn` (so `down` finds them), waits until ready, adds Prometheus scrape
jobs, inventory hosts/groups and faults, and reports its status. Everything it starts must carry
the lab dir in its command line or be spawned through `spawn` (environment marker).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from medic_lab.state import LabHost, LabState

FaultAction = Callable[[LabHost, LabState], str]


@dataclass(frozen=True)
class Fault:
    """A fault the lab can inject into a host and undo; each makes its alert fire for real."""

    name: str
    summary: str  # one line, for `medic lab break --help`
    inject: FaultAction
    repair: FaultAction


class ComponentStatus(BaseModel):
    name: str
    address: str
    up: bool
    detail: str = ""


class LabComponent:
    """Base class: every hook is optional."""

    name = "component"

    def enabled(self, lab: LabState) -> bool:
        return True

    def extra_hosts(self, lab: LabState) -> list[LabHost]:
        """SSH hosts this component needs (they get sshd + user like web hosts, but no web service)."""
        return []

    def ports(self, lab: LabState) -> list[tuple[str, int]]:
        return []

    def start_prefect(self, lab: LabState) -> bool:
        """Start the lab's Prefect server in place of the default SQLite one; True if this did.
        Called first, before `prepare` (Prefect is the slowest to become ready)."""
        return False

    def prepare(self, lab: LabState) -> None:
        """Write configs and data (all under lab.lab_dir) before anything starts."""

    def start(self, lab: LabState) -> None:
        """Start daemons (through medic_lab.processes.spawn)."""

    def wait(self, lab: LabState, *, timeout: float) -> None:
        """Block until ready; raise LabError naming what is not."""

    def scrape_configs(self, lab: LabState) -> list[dict[str, Any]]:
        return []

    def inventory_vars(self, lab: LabState) -> dict[str, dict[str, Any]]:
        """Extra inventory variables per host name (merged into the generated inventory)."""
        return {}

    def faults(self) -> list[Fault]:
        """Faults of this component; the host argument is the component's own host."""
        return []

    def status(self, lab: LabState) -> list[ComponentStatus]:
        return []


def active_components(lab: LabState) -> list[LabComponent]:
    return [c for c in registered() if c.enabled(lab)]


def registered() -> list[LabComponent]:
    """Every optional component medic knows, in start order."""
    found: list[LabComponent] = []
    for module_name, class_name in _COMPONENTS:
        module = __import__(module_name, fromlist=[class_name])
        found.append(getattr(module, class_name)())
    return found


#: (module, class) of each component; components add themselves here.
_COMPONENTS: list[tuple[str, str]] = [("medic_lab.haproxy", "HAProxy"), ("medic_lab.postgres", "Postgres"),
                                       ("medic_lab.cluster", "Cluster")]
