"""Adaptive capacity: keep the web group's p95 latency at a target by changing how many instances
take traffic in HAProxy (start/stop the service over SSH, ready/maint in HAProxy), within limits.

A long-running flow (or a deployment on a schedule, each run covering `duration_s`): every
`period_s` it observes p95 and the request rate in Prometheus, asks the controller — ours
(`medic.procedures.capacity_adaptive`) or Kubernetes' HPA rule (`medic.procedures.capacity`, for
comparison) — and, unless `recommend_only`, applies the decision (a stopped instance is silenced in
Alertmanager, so the service-down runbook leaves it alone). Every change is audited (intent
before acting, action after); in recommend-only mode a `decision` record says what would have been
done and nothing is touched. The run's artifact lists every change with its reason.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from medic.clients.alertmanager import AlertmanagerClient
from medic.clients.prometheus import PrometheusClient
from medic.clients.ssh import SSHSession
from medic.core.inventory import load_inventory
from medic.orchestration import audit_store
from medic.procedures.capacity import CapacityLimits, HPARule, HPASettings
from medic.procedures.capacity_adaptive import AdaptiveController, AdaptiveSettings
from medic.procedures.capacity_loop import CapacityRun, run_loop
from medic.procedures.capacity_pool import Pool
from medic.settings import get_settings

log = logging.getLogger("medic.flows.capacity")


def make_controller(controller: str, *, target_s: float, limits: CapacityLimits, hpa_time_scale: float):
    """The controller by name; the HPA rule keeps its documented constants divided by the time scale."""
    if controller == "hpa":
        return HPARule(HPASettings(target_s=target_s).scaled(hpa_time_scale), limits)
    return AdaptiveController(AdaptiveSettings(target_s=target_s), limits)


def _report(run: CapacityRun, target_ms: float) -> str:
    lines = [f"# Capacity of {run.group} ({run.controller}{', recommend only' if run.recommend_only else ''})",
             "", f"Target p95 {target_ms:g} ms; instances {run.started_with} → {run.ended_with}; "
             f"{len(run.decisions)} decisions, {len(run.changes)} changes.", "",
             "| t (s) | from | to | reason |", "|---|---|---|---|"]
    lines += [f"| {d.at:.1f} | {d.current} | {d.desired} | {d.reason} |" for d in run.changes]
    return "\n".join(lines)


@flow(name="capacity", flow_run_name="capacity of {group} ({controller})", persist_result=False, log_prints=False)
def capacity(
    group: str = "web",
    controller: Literal["adaptive", "hpa"] = "adaptive",
    target_p95_ms: float = 250.0,
    period_s: float = 1.5,
    duration_s: float = 300.0,
    min_instances: int = 1,
    max_instances: int = 10,
    max_step: int = 2,
    cooldown_s: float = 6.0,
    recommend_only: bool = False,
    hpa_time_scale: float = 10.0,
) -> CapacityRun:
    """Hold the group's p95 latency at a target by changing the number of instances taking traffic.

    Args:
        group: Inventory group whose hosts sit behind one HAProxy backend; only they are touched.
        controller: "adaptive" (ours: PI on log latency, learned capacity, stabilised scale-down) or
            "hpa" (Kubernetes' HPA rule, for comparison).
        target_p95_ms: The p95 latency to hold, in milliseconds.
        period_s: Seconds between two decisions.
        duration_s: How long this run controls (a schedule starts the next one).
        min_instances: Never fewer instances taking traffic.
        max_instances: Never more instances taking traffic (at most the group's size).
        max_step: Most instances one decision of ours adds or removes.
        cooldown_s: Seconds after a scale-up before ours changes anything again.
        recommend_only: Audit what would be done and why, change nothing.
        hpa_time_scale: The HPA rule's 15 s period and 300 s window divided by this (10: 1.5 s and 30 s).
    """
    hosts = load_inventory().resolve(group)
    limits = CapacityLimits(min_instances=min_instances, max_instances=min(max_instances, len(hosts)),
                            max_step=max_step, cooldown_s=cooldown_s)
    chosen = make_controller(controller, target_s=target_p95_ms / 1000, limits=limits,
                             hpa_time_scale=hpa_time_scale)
    run_id = str(get_run_context().flow_run.id)
    am_url = get_settings().alertmanager_url
    with SSHSession() as ssh, PrometheusClient() as prom, \
            (AlertmanagerClient(am_url) if am_url else contextlib.nullcontext()) as am:
        pool = Pool(hosts, ssh, alertmanager=am)  # silences what it stops, so ServiceDown stays quiet
        result = run_loop(chosen, pool, prom, group=group, period_s=period_s, duration_s=duration_s,
                          recommend_only=recommend_only, run_id=run_id,
                          audit=lambda entry, closed: audit_store.record(entry, fail_closed=closed))
    log.info("capacity of %s: %d → %d instances, %d changes", group, result.started_with, result.ended_with,
             len(result.changes))
    create_markdown_artifact(_report(result, target_p95_ms), key="capacity-report",
                             description=f"capacity of {group} ({controller})")
    return result
