"""The steps of a canary upgrade: check the parameters, drain, install, weigh, serve — and roll back.

Plain functions over ``HostUpgrade`` records (the flow wraps them in Prefect tasks), so whatever
fails, the record says what was done to whom and what to undo. Installing is
``playbooks/install-version.yml`` (a versioned directory, the ``current`` symlink, a restart; the
version it replaced stays on disk as ``previous``); a rollback is the same playbook with each host's
previous version, on every host that was touched, drained first, then its weight and admin state
restored as they were before the upgrade.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from pydantic import BaseModel, Field

from medic.clients.ansible import run_playbook
from medic.clients.haproxy import LoadBalancerError
from medic.clients.prometheus import PrometheusClient
from medic.core.inventory import Host, Inventory
from medic.core.polling import retry
from medic.errors import MaintenanceConfigError, MedicError, UpgradeConfigError
from medic.procedures.maintenance import parse_batch_size, split_batches
from medic.procedures.rolling import LBTarget, lb_target
from medic.procedures.upgrade_analysis import JOB, GateSettings, hosts_matcher
from medic.settings import get_settings

__all__ = ["HostUpgrade", "check_upgrade", "drain", "install", "plan_stages", "rollback", "serve", "versions_serving"]

VERSION = re.compile(r"^[a-z0-9][a-z0-9.-]{0,31}$")
PLAYBOOK = "install-version.yml"
_BOUNDS = {"canary_weight": (1, 100), "analysis_interval": (2.0, 600.0), "analysis_count": (1, 100),
           "failure_limit": (0, 10), "max_error_ratio": (0.0, 1.0), "max_p95_s": (0.001, 60.0),
           "alpha": (1e-6, 0.2), "min_effect": (0.0, 10.0)}


class HostUpgrade(BaseModel):
    """Everything done to one host by an upgrade, filled in step by step."""

    host: str
    stage: int = Field(description="0 = the canary, then 1, 2, … for the batches")
    lb: LBTarget | None = None
    weight_before: int | None = None
    state_before: str | None = None
    previous: str = Field("", description="the version it ran before (what a rollback installs)")
    touched: bool = Field(False, description="medic drained it or installed on it: a rollback must undo that")
    installed: bool = False
    rolled_back: bool = False
    detail: str = ""


def check_upgrade(inventory: Inventory, *, group: str, version: str, batch_size: str, gate: str,
                  settings: GateSettings, canary_weight: int, analysis_interval: float, analysis_count: int) -> list[Host]:
    """The group's hosts; UpgradeConfigError naming the parameter for anything not acceptable."""
    try:
        hosts = inventory.resolve(group)
    except MedicError as exc:
        raise UpgradeConfigError(f"group {group!r} is refused: {exc}; nothing was changed") from exc
    if len(hosts) < 2:
        raise UpgradeConfigError(f"group {group!r} has {len(hosts)} host: a canary upgrade needs at least 2 "
                                 f"(one canary, one baseline); nothing was changed")
    if not isinstance(version, str) or not VERSION.fullmatch(version):
        raise UpgradeConfigError(f"version {version!r} is refused: a package version like 'v2' or 'v2-slow' "
                                 f"(lowercase letters, digits, '.', '-'); nothing was changed")
    repos = {str(h.vars.get("medic_package_repo", "")) for h in hosts}
    for repo in repos:
        available = sorted(p.name for p in Path(repo).iterdir() if p.is_dir()) if repo and Path(repo).is_dir() else []
        if version not in available:
            where = repo or "(none: set medic_package_repo in the inventory)"
            raise UpgradeConfigError(f"version {version!r} is not in the package repository {where} (it has: "
                                     f"{', '.join(available) or 'nothing'}); nothing was changed")
    if gate not in ("threshold", "baseline", "both"):
        raise UpgradeConfigError(f"gate {gate!r} is refused: threshold, baseline or both; nothing was changed")
    try:
        parse_batch_size(batch_size, len(hosts))
    except MaintenanceConfigError as exc:
        raise UpgradeConfigError(f"{exc}; nothing was changed") from exc
    values = {"canary_weight": canary_weight, "analysis_interval": analysis_interval, "analysis_count": analysis_count,
              **settings.model_dump(exclude={"gate"})}
    for name, value in values.items():
        low, high = _BOUNDS[name]
        if not low <= value <= high:
            raise UpgradeConfigError(f"{name} {value:g} is refused: from {low:g} to {high:g}; nothing was changed")
    return hosts


def plan_stages(hosts: list[Host], serving: dict[str, str], version: str, batch_size: str) -> list[list[Host]]:
    """The canary (the first host not on `version`) alone, then the rest in batches."""
    todo = [h for h in hosts if serving.get(h.name) != version]
    if not todo:
        return []
    rest = todo[1:]
    return [[todo[0]]] + (split_batches(rest, parse_batch_size(batch_size, len(hosts))) if rest else [])


def versions_serving(prom: PrometheusClient, names: list[str]) -> dict[str, str]:
    """What each host serves now, by its ``demo_build_info`` (hosts without one are missing)."""
    return {s.labels["host"]: s.labels.get("version", "")
            for s in prom.query(f"demo_build_info{{{JOB},{hosts_matcher(names)}}}") if "host" in s.labels}


def records(stage: list[Host], index: int) -> list[HostUpgrade]:
    admin = get_settings().haproxy_admin
    return [HostUpgrade(host=h.name, stage=index, lb=lb_target(h, admin)) for h in stage]


def drain(steps: list[HostUpgrade], *, timeout: float) -> None:
    """Take each host out of rotation (drain) and wait, bounded, for its sessions to finish."""
    for s in steps:
        s.touched = True
        if s.lb is None:
            continue
        rt = s.lb.runtime()
        srv = rt.server(s.lb.backend, s.lb.server)
        if s.state_before is None:
            s.state_before, s.weight_before = srv.admin_state, srv.weight
        rt.set_state(s.lb.backend, s.lb.server, "drain")
    for s in steps:
        if s.lb is not None:
            s.lb.runtime().wait_drained(s.lb.backend, s.lb.server, timeout)


def install(steps: list[HostUpgrade], hosts: dict[str, Host], version: str | dict[str, str]) -> list[str]:
    """Run the install playbook (one version for all, or one per host); returns per-host problems."""
    problems: list[str] = []
    by_version: dict[str, list[HostUpgrade]] = {}
    for s in steps:
        v = version if isinstance(version, str) else version.get(s.host, "")
        if not v:
            problems.append(f"{s.host}: no version to install (its previous version is unknown)")
            continue
        by_version.setdefault(v, []).append(s)
    playbook = get_settings().playbooks_dir / PLAYBOOK
    for v, group in by_version.items():
        result = run_playbook(playbook, hosts=[hosts[s.host] for s in group], extravars={"version": v}, timeout=120)
        for s in group:
            r = result.hosts.get(s.host)
            if r is not None and r.succeeded:
                s.previous = s.previous or str(r.return_values.get("previous") or "")
                s.installed = True
                continue
            failed = [t for t in (r.tasks if r else []) if t.failed]
            problems.append(f"{s.host}: installing {v} failed: "
                            + (failed[-1].msg if failed else (result.error or "unreachable or no result"))[:300])
    return problems


def serve(steps: list[HostUpgrade], *, weight_pct: int = 100) -> None:
    """Put each host back in rotation at ``weight_pct`` % of its weight before the upgrade (at least 1)."""
    for s in steps:
        if s.lb is None:
            continue
        rt = s.lb.runtime()
        if s.weight_before is not None:
            rt.set_weight(s.lb.backend, s.lb.server, max(1, round(s.weight_before * weight_pct / 100)))
        rt.set_state(s.lb.backend, s.lb.server, "ready")


def wait_serving(steps: list[HostUpgrade], prom: PrometheusClient, version: str, *, timeout: float) -> str | None:
    """Wait until every host is UP in HAProxy and Prometheus sees it serve ``version``; None, or what is missing."""
    names = [s.host for s in steps]

    def missing() -> str:
        try:
            down = [s.host for s in steps if s.lb and not s.lb.runtime().server(s.lb.backend, s.lb.server).up]
        except LoadBalancerError as exc:
            return str(exc)
        if down:
            return f"not UP in HAProxy: {', '.join(down)}"
        serving = versions_serving(prom, names)
        wrong = [f"{n} ({serving.get(n) or 'no version metric'})" for n in names if serving.get(n) != version]
        return f"not serving {version}: {', '.join(wrong)}" if wrong else ""

    return retry(missing, delays=itertools.repeat(0.25), retry_if=bool, timeout=timeout) or None


def rollback(steps: list[HostUpgrade], hosts: dict[str, Host], fallback: dict[str, str]) -> list[str]:
    """Every touched host: drained, its previous version installed, its weight and admin state restored.
    Never raises (it runs on the way out); returns what could not be undone."""
    touched = [s for s in steps if s.touched]
    problems: list[str] = []
    for s in touched:
        try:
            if s.lb is not None:
                s.lb.runtime().set_state(s.lb.backend, s.lb.server, "drain")
        except LoadBalancerError as exc:
            problems.append(f"{s.host}: not drained before rollback ({exc})")
    try:  # a host only drained gets its old version "again": the playbook changes nothing there
        problems += install(touched, hosts, {s.host: s.previous or fallback.get(s.host, "") for s in touched})
    except MedicError as exc:
        problems.append(f"rollback playbook could not run: {exc}")
    failed = {p.split(":", 1)[0] for p in problems}
    for s in touched:
        s.rolled_back = s.host not in failed
        try:
            if s.lb is not None:
                rt = s.lb.runtime()
                if s.weight_before is not None:
                    rt.set_weight(s.lb.backend, s.lb.server, s.weight_before)
                rt.set_state(s.lb.backend, s.lb.server, s.state_before or "ready")
        except LoadBalancerError as exc:
            problems.append(f"{s.host}: weight/state not restored in HAProxy ({exc})")
    return problems
