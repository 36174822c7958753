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

__all__ = ["claim_orphans"]

log = logging.getLogger("medic.orchestration.orphans")
_ORPHAN_STATES = (StateType.PAUSED, StateType.RUNNING, StateType.PENDING)


async def claim_orphans(instance: str) -> list[FlowRun]:
    """This instance's runs left Paused/Running/Pending, made Pending again and ready to re-execute.

    A remediation flow is safe to run again from the top: detect re-checks the problem, and the
    approval step pauses under a fresh key, so the card's buttons keep working after a restart. Any
    other kind (a failover half-way through) is ended Crashed with what to do, never replayed.
    """
    from medic.orchestration.prefect_compat import force_flow_run_state

    claimed: list[FlowRun] = []
    runs = await find_runs([RUN_TAG, instance_tag(instance)], _ORPHAN_STATES)
    async with get_client() as client:
        for run in runs:
            if any(t.startswith("kind:") and t != "kind:remediation" for t in run.tags):
                await force_flow_run_state(client, run.id, Crashed(
                    message="medic serve restarted during this run; check the cluster, then start it again"))
                log.error("run %s (%s) was interrupted by a medic serve restart; not replayed", run.id, run.name)
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
