"""The janitor: runs of a dead worker end, and a remediation runs again once (PrefectHQ/prefect#16746).

Prefect leaves the runs of a worker that died (kill -9, lost machine) Running forever. Every medic
worker sweeps its pool every few seconds; several janitors at once are harmless:

    rule   a run of the pool in Running, Pending or Paused whose worker (`prefect.worker.name`
           label) has not heartbeated for `worker_dead_after_s` — or is not in the pool at all, or
           is this worker's own name but was taken by a previous process of that name — is orphaned.
           (A paused approval waits *inside* its worker's thread: the worker died, so did the pause.)
    claim  the janitor proposes Crashed (not forced): only the one whose proposal Prefect accepts acts.
    then   a remediation (tag `kind:remediation`, or flow `remediate` with no kind tag) that is not
           itself a rerun: its remediation slot is given back (the dead holder's lease would keep it
           up to 300 s) and ONE new run of the same deployment is created with the same parameters and
           tags plus `rerun-of:<id>`, under the idempotency key `rerun:<id>` (two janitors: one run).
           Remediations are idempotent by design (detect re-checks first).
           Any other kind (failover, maintenance, rejoin) — and a rerun that died too — is never
           re-run: "interrupted on dead worker W; a human must check …", plus an audit record.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any, Literal, Protocol
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Crashed
from pydantic import BaseModel

from medic.core.audit import AuditRecord
from medic.errors import MedicError

__all__ = ["Janitor", "JanitorAction", "WORKER_LABEL"]

log = logging.getLogger("medic.orchestration.janitor")
WORKER_LABEL = "prefect.worker.name"  # BaseWorker labels every run it takes with its name
_ORPHAN_STATES = [StateType.RUNNING, StateType.PENDING, StateType.PAUSED]
_PAGE = 200  # explicit paging: this server answers 422 to the client's `limit: null` (MACHINE-NOTES)


class JanitorAction(BaseModel):
    """What one sweep did to one orphaned run."""

    flow_run_id: str
    flow_run_name: str
    worker: str
    was: str  # the state it was left in
    action: Literal["rerun", "crashed"]
    message: str
    rerun_id: str | None = None


class LocalWorker(Protocol):
    """The worker a janitor runs in (`MedicWorker`): its runs are alive by definition."""

    name: str

    def taken_here(self, run: FlowRun) -> bool: ...


class Janitor:
    """Sweeps `pool` for runs of dead workers; `worker` is the one it runs in (its own runs are alive)."""

    def __init__(self, pool: str, *, dead_after_s: float, worker: LocalWorker | None = None) -> None:
        self.pool, self.dead_after_s, self.worker = pool, dead_after_s, worker
        self.interval_s = max(0.5, min(5.0, dead_after_s / 3))
        self._flow_names: dict[UUID, str] = {}

    async def sweep(self) -> list[JanitorAction]:
        """One pass over the pool; returns what it did (usually nothing)."""
        async with get_client() as client:
            workers = await client.read_workers_for_work_pool(self.pool, offset=0, limit=_PAGE)
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_ORPHAN_STATES))),
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.pool])),
                sort=FlowRunSort.START_TIME_ASC, limit=_PAGE)  # sort too: `sort: null` is refused (422)
            now = datetime.datetime.now(datetime.timezone.utc)
            heartbeats = {w.name: w.last_heartbeat_time for w in workers}
            actions = []
            for run in runs:
                why = self._dead(run, heartbeats, now)
                if why is not None:
                    action = await self._end(client, run, why)
                    if action is not None:
                        actions.append(action)
            return actions

    def _dead(self, run: FlowRun, heartbeats: dict[str, Any], now: datetime.datetime) -> str | None:
        """Why `run`'s worker is dead, or None (alive, or not taken by a worker: e.g. an embedded run)."""
        name = (run.labels or {}).get(WORKER_LABEL)
        if not isinstance(name, str):
            return None
        if self.worker is not None and name == self.worker.name:
            return None if self.worker.taken_here(run) else f"worker {name} restarted (this run is its previous life's)"
        last = heartbeats.get(name)
        if last is None:
            return f"worker {name} is not in pool {self.pool}"
        silent = (now - last).total_seconds()
        return f"worker {name} has not heartbeated for {silent:.0f} s" if silent > self.dead_after_s else None

    async def _end(self, client: PrefectClient, run: FlowRun, why: str) -> JanitorAction | None:
        worker = str((run.labels or {}).get(WORKER_LABEL))
        was = run.state.type.value if run.state is not None else "?"
        rerun = await self._is_remediation(client, run) and not any(t.startswith("rerun-of:") for t in run.tags)
        message = (f"interrupted on dead worker {worker} ({why}); re-run once as a new run (rerun-of:{run.id})"
                   if rerun else f"interrupted on dead worker {worker} ({why}); a human must check the cluster "
                   f"before starting it again")
        result = await client.set_flow_run_state(run.id, Crashed(message=message))
        if result.status is not SetStateStatus.ACCEPT:
            return None  # another janitor (or the run itself) got there first
        params = dict(run.parameters or {})
        if not rerun:
            log.error("run %s (%s) %s", run.id, run.name, message)
            await _audit(AuditRecord(
                kind="escalation", flow_run_id=str(run.id), runbook=params.get("runbook"),
                target=params.get("target") or params.get("primary") or params.get("group"), who="medic janitor",
                what="interrupted on dead worker, not re-run", where=worker, result=f"crashed (was {was})",
                detail=message))
            return JanitorAction(flow_run_id=str(run.id), flow_run_name=run.name, worker=worker, was=was,
                                 action="crashed", message=message)
        if was != StateType.PENDING.value:  # Pending never reached the flow body: it holds no slot
            await _free_slot(client, params)
        new = await client.create_flow_run_from_deployment(
            run.deployment_id, parameters=params, tags=[*run.tags, f"rerun-of:{run.id}"],  # type: ignore[arg-type]
            idempotency_key=f"rerun:{run.id}")
        log.warning("run %s (%s) %s: rerun %s", run.id, run.name, message, new.id)
        await _audit(AuditRecord(
            kind="decision", flow_run_id=str(run.id), runbook=params.get("runbook"), target=params.get("target"),
            who="medic janitor", what="re-run after dead worker", where=worker, result=f"rerun {new.id}",
            detail=message))
        return JanitorAction(flow_run_id=str(run.id), flow_run_name=run.name, worker=worker, was=was,
                             action="rerun", message=message, rerun_id=str(new.id))

    async def _is_remediation(self, client: PrefectClient, run: FlowRun) -> bool:
        kinds = [t.removeprefix("kind:") for t in run.tags if t.startswith("kind:")]
        if kinds:
            return kinds == ["remediation"]
        if run.deployment_id is None:
            return False
        if run.flow_id not in self._flow_names:
            self._flow_names[run.flow_id] = (await client.read_flow(run.flow_id)).name
        return self._flow_names[run.flow_id] == "remediate"


async def _audit(entry: AuditRecord) -> None:
    """Into the audit log in Prefect (after the fact: never fails the sweep)."""
    from medic.orchestration import audit_store

    await asyncio.to_thread(audit_store.record, entry, fail_closed=False)


async def _free_slot(client: PrefectClient, params: dict[str, Any]) -> None:
    """Give back the remediation slot the dead run held, so its rerun does not end "already running"."""
    from prefect.exceptions import ObjectNotFound

    from medic.core.inventory import load_inventory
    from medic.core.runbook import find_runbook
    from medic.orchestration.locks import remediation_lock_name
    from medic.orchestration.prefect_compat import reset_concurrency_slots
    from medic.procedures import stages
    from medic.settings import get_settings

    runbook, target = params.get("runbook"), params.get("target")
    try:  # the flow locks the *planned* target: a run without one uses the runbook's default
        spec = find_runbook(str(runbook), get_settings().runbooks_dir)
        target = stages.plan(spec, target, load_inventory()).target
    except MedicError as exc:
        log.info("cannot tell which slot %s on %s held (%s); none freed", runbook, target, exc)
        return
    name = remediation_lock_name(str(runbook), str(target))
    try:
        held = (await client.read_global_concurrency_limit_by_name(name)).active_slots
        await reset_concurrency_slots(client, name)
    except (ObjectNotFound, MedicError) as exc:  # no lock yet: nothing to free
        log.info("no remediation slot to free for %s on %s: %s", runbook, target, exc)
        return
    log.info("freed remediation slot %s (%d held)", name, held)
