"""Runs a previous life of *this* medic serve left behind, and how an embedded medic serve takes them back.

Only the runs tagged `medic-serve:<instance>` of this instance are orphans: another medic serve on
the same Prefect (another instance name) is alive and owns its runs — its paused run, its slot — and
is never touched. In workers mode there is nothing to adopt: runs belong to the pool, and the
workers' janitor ends those of a dead worker.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Crashed, Pending

from medic.errors import PrefectError
from medic.orchestration.live_runs import RUN_TAG, find_runs, instance_tag

__all__ = ["abandon_runs", "claim_orphans"]

log = logging.getLogger("medic.orchestration.orphans")
_ORPHAN_STATES = (StateType.PAUSED, StateType.RUNNING, StateType.PENDING)


async def claim_orphans(instance: str) -> list[FlowRun]:
    """This instance's runs left Paused/Running/Pending, made Pending again and ready to re-execute.

    A remediation flow is safe to run again from the top: detect re-checks the problem, and the
    approval step pauses under a fresh key, so the card's buttons keep working after a restart. Any
    other kind (a failover half-way through) is ended Crashed with what to do, never replayed.
    """
    from medic.orchestration.prefect_compat import force_flow_run_state

    from medic.clients.ansible_env import sweep_stale

    sweep_stale()  # first: a dead life's ansible-playbook must not go on acting for a run marked Crashed
    claimed: list[FlowRun] = []
    runs = await find_runs([RUN_TAG, instance_tag(instance)], _ORPHAN_STATES)
    async with get_client() as client:
        for run in runs:
            if any(t.startswith("kind:") and t != "kind:remediation" for t in run.tags):
                where = await _last_step(client, run.id)
                await force_flow_run_state(client, run.id, Crashed(
                    message=f"medic serve stopped during this run's {where} step; not replayed. Check the "
                            f"cluster by hand; a failover past its fence keeps the cluster held until "
                            f"`medic failover-ack CLUSTER --reason …`"))
                log.error("run %s (%s) was interrupted during its %s step by a medic serve restart; not replayed",
                          run.id, run.name, where)
                continue
            await force_flow_run_state(client, run.id, Pending(message=f"adopted after {instance} restarted"))
            fresh = await client.read_flow_run(run.id)
            params = fresh.parameters or {}
            await _free_orphan_slot(client, str(params.get("runbook")), str(params.get("target")))
            claimed.append(fresh)
    return claimed


async def _free_orphan_slot(client: Any, runbook: str, target: str) -> None:
    """Give back the remediation slot an orphaned run still holds.

    The dead medic serve cannot release its lease (it lapses up to 300 s later), so the re-executed
    run would find its own slot taken and end "already running" instead of asking for approval again.
    The adopted run is the only rightful holder, so the slot count is reset before it starts. When the
    old lease lapses later, Prefect decrements the count again (not below 0): for the rest of the run a
    `medic run` elsewhere could then take the slot; medic serve's own dedupe still holds.
    """
    from prefect.exceptions import ObjectNotFound

    from medic.orchestration.locks import remediation_lock_name
    from medic.orchestration.prefect_compat import reset_concurrency_slots

    try:
        await reset_concurrency_slots(client, remediation_lock_name(runbook, target))
    except (ObjectNotFound, PrefectError) as exc:  # no lock yet / unusable names: nothing to free
        log.info("no remediation slot to free for %s on %s: %s", runbook, target, exc)


async def _last_step(client: Any, flow_run_id: Any) -> str:
    """The step (task) the run started last, as Prefect recorded it: what it was doing when it died."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    try:
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                            sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=1)
    except Exception as exc:  # noqa: BLE001 - the message is still worth writing without it
        log.warning("cannot read the task runs of %s: %s", flow_run_id, exc)
        return "unknown"
    if not tasks:
        return "first"
    name = tasks[0].name.rsplit("-", 1)[0]  # Prefect names a task run `<task>-<suffix>`
    state = tasks[0].state.name if tasks[0].state else "unknown"
    return name if state in ("Running", "Pending") else f"{name} ({state}, the next not started)"


async def abandon_runs(run_ids: list[str]) -> None:
    """medic serve is stopping and these runs are still executing past the grace period: end each
    failover/rejoin among them Crashed naming its step *now* (not only at the next start), then stop the
    playbooks this process started, so nothing acts on a host for a run that says it has ended. Their
    threads die with the process; a failover past its fence keeps its cluster held (cluster_hold) for
    a human. Remediations are left to be adopted by the next start, as before."""
    import os
    import tempfile
    from pathlib import Path

    from medic.clients.ansible_env import _STALE
    from medic.clients.ansible_procs import stop_leftovers
    from medic.orchestration.prefect_compat import force_flow_run_state

    from medic.orchestration.cluster_hold import ABANDONED

    async with get_client() as client:
        runs = [await client.read_flow_run(run_id) for run_id in run_ids]
    # A remediation is left as it was: the next start adopts it and runs it again from the top.
    run_ids = [str(r.id) for r in runs if any(t.startswith("kind:") and t != "kind:remediation" for t in r.tags)]
    if not run_ids:
        return
    ABANDONED.update(run_ids)  # a thread that still reaches its end must not give the hold back
    async with get_client() as client:
        for run_id in run_ids:
            where = await _last_step(client, run_id)
            try:
                await force_flow_run_state(client, run_id, Crashed(
                    message=f"medic serve was stopped during this run's {where} step; not replayed. Check the "
                            f"cluster by hand; a failover past its fence keeps the cluster held until "
                            f"`medic failover-ack CLUSTER --reason …`"))
            except Exception as exc:  # noqa: BLE001 - the next start marks it Crashed instead
                log.error("cannot mark run %s Crashed on the way out: %s", run_id, exc)
            log.error("run %s was still running its %s step when medic serve stopped: marked Crashed", run_id, where)
    for entry in Path(tempfile.gettempdir()).glob("medic-ansible-*"):
        if (m := _STALE.match(entry.name)) and int(m["pid"]) == os.getpid():  # a run dir of this process
            stop_leftovers(entry)
