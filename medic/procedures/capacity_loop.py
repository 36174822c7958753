"""The capacity loop: observe → decide → (audit, act) every period, for a while; the flow's body.

Every decision that changes the count is audited (``medic.core.audit``): in "recommend only" mode
as a ``decision`` record that says what would have been done and why, and nothing is touched;
otherwise an ``intent`` record first (fail closed: no change unless Prefect holds it), then the
change, then an ``action`` record with what each host did. Holds are not audited (they are in the
returned ``CapacityRun`` and the run's logs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from pydantic import BaseModel, Field

from medic.clients.prometheus import PrometheusClient
from medic.core.audit import AuditRecord
from medic.procedures.capacity import Decision, Observation
from medic.procedures.capacity_pool import Pool, ScaleStep

__all__ = ["CapacityRun", "Controller", "run_loop"]

log = logging.getLogger(__name__)
RUNBOOK = "capacity"


class Controller(Protocol):
    name: str

    def decide(self, obs: Observation) -> Decision: ...


class CapacityRun(BaseModel):
    """What one capacity run saw, decided and did."""

    controller: str
    group: str
    recommend_only: bool
    started_with: int
    ended_with: int = 0
    decisions: list[Decision] = Field(default_factory=list)
    steps: list[ScaleStep] = Field(default_factory=list)

    @property
    def changes(self) -> list[Decision]:
        return [d for d in self.decisions if d.change]


Audit = Callable[[AuditRecord, bool], object]  # (record, fail_closed)


def run_loop(controller: Controller, pool: Pool, prom: PrometheusClient, *, group: str, period_s: float,
             duration_s: float, recommend_only: bool, audit: Audit, run_id: str | None = None,
             stop: threading.Event | None = None) -> CapacityRun:
    """Decide every `period_s` for `duration_s` (or until `stop` is set); act unless `recommend_only`."""
    stop = stop or threading.Event()
    began = time.monotonic()
    run = CapacityRun(controller=controller.name, group=group, recommend_only=recommend_only,
                      started_with=len(pool.active()))
    tick = 0
    while not stop.is_set() and time.monotonic() - began < duration_s:
        obs = pool.observe(prom, at=time.monotonic() - began)
        decision = controller.decide(obs)
        run.decisions.append(decision)
        if decision.change:
            log.info("capacity %s: %s", controller.name, decision.reason)
            run.steps += _carry_out(decision, pool, group=group, recommend_only=recommend_only, audit=audit,
                                    run_id=run_id)
        tick += 1
        stop.wait(max(0.0, began + tick * period_s - time.monotonic()))  # the controller's own period
    run.ended_with = len(pool.active())
    return run


def _carry_out(decision: Decision, pool: Pool, *, group: str, recommend_only: bool, audit: Audit,
               run_id: str | None) -> list[ScaleStep]:
    what = f"capacity ({decision.controller}): {decision.current} → {decision.desired} instances"
    base = dict(flow_run_id=run_id, runbook=RUNBOOK, target=group, who="medic", what=what, detail=decision.reason)
    if recommend_only:
        audit(AuditRecord(kind="decision", where=group, result="recommend only: not applied", **base), False)
        return []
    plan = pool.plan(decision.desired)
    hosts = ", ".join(f"{change} {host}" for host, change in plan)
    audit(AuditRecord(kind="intent", where=hosts, result="about to act", **base), True)
    steps = [pool.apply(host, change) for host, change in plan]
    audit(AuditRecord(kind="action", where=hosts,
                      result=", ".join(f"{s.host}: {s.change} {'ok' if s.ok else 'failed'}" for s in steps),
                      **{**base, "detail": f"{decision.reason}; " + "; ".join(f"{s.host}: {s.detail} ({s.seconds:.1f} s)"
                                                                      for s in steps)}), False)
    return steps
