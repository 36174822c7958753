"""A failover's durable hold on its cluster: set before the fence, given back only by the run or a human.

The cluster's slot (a Prefect global concurrency limit, flows/failover.py `one_per_cluster`) is a
*lease*: when the process running the failover dies (SIGKILL, a crash, a SIGTERM past its grace), the
lease lapses on its own and a new failover could start on a cluster left half-way — fenced and not
promoted, or promoted and not routed — by a run nobody finished. So from the fence on (the first
change to the cluster) the run also writes a *hold*: a Prefect Variable naming the run and the step
it is in, updated at each step and removed when the run ends on its own. A hold left by a run that
is not running any more (medic serve died under it) keeps refusing every failover and rejoin of the
cluster until a human has looked at the cluster and said so: `medic failover-ack CLUSTER --reason …`,
audited (a `decision` record) before the hold is removed.

Kept in Prefect, like the slot: it survives a restart of medic serve and of the Prefect server, and
every medic process (serve, workers, the CLI) sees the same one.
"""

from __future__ import annotations

import asyncio
import getpass
from datetime import datetime
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.variables import Variable
from pydantic import BaseModel, Field

from medic.core.audit import AuditRecord
from medic.core.report import utcnow
from medic.errors import PrefectError

__all__ = ["ABANDONED", "Hold", "acknowledge", "hold_name", "holder_live", "read_hold", "release", "set_step"]


class Hold(BaseModel):
    """Who holds the cluster, and where it was last seen."""

    flow_run_id: str
    runbook: str
    cluster: str
    step: str = Field(description="the step the run was in when it last said so (fence, promote, route, verify)")
    since: datetime = Field(default_factory=utcnow)
    lease_id: str | None = Field(None, description="the run's lease on the cluster's slot, released by the ack")

    def refusal(self) -> str:
        return (f"{self.cluster} is held by failover run {self.flow_run_id}, which stopped during its "
                f"'{self.step}' step ({self.since:%Y-%m-%d %H:%M:%S} UTC) without finishing: the cluster may be "
                f"fenced and not promoted, or promoted and not routed. Check the cluster by hand, then "
                f"`medic failover-ack {self.cluster} --reason …` to release it; nothing was done")


def hold_name(lock: str) -> str:
    """The Variable's name for the slot `lock` (Variable names: letters, digits, '-' and '_')."""
    return f"{lock}-hold"


async def read_hold(lock: str) -> Hold | None:
    try:
        value = await Variable.aget(hold_name(lock), default=None)
    except Exception as exc:  # noqa: BLE001 - any client failure is "Prefect cannot answer"
        raise PrefectError(f"cannot read the hold {hold_name(lock)!r} from Prefect: {exc}") from exc
    return None if value is None else Hold.model_validate(value)


async def set_step(lock: str, hold: Hold, step: str) -> None:
    """Write (or move) the run's hold to `step`, before the step changes anything."""
    hold.step = step
    try:
        await Variable.aset(hold_name(lock), hold.model_dump(mode="json"), overwrite=True)
    except Exception as exc:  # noqa: BLE001
        raise PrefectError(f"cannot record the failover's hold on {hold.cluster} ({hold_name(lock)!r}) before "
                           f"its {step} step: {exc}; nothing was changed by that step") from exc


#: Runs this process gave up on (medic serve stopping past its grace): they keep their hold even if
#: their thread still reaches its end before the process exits.
ABANDONED: set[str] = set()


async def release(lock: str, flow_run_id: str) -> bool:
    """Remove the hold if `flow_run_id` holds it (a run ending on its own); False when it does not."""
    if flow_run_id in ABANDONED:
        return False
    held = await read_hold(lock)
    if held is None or held.flow_run_id != flow_run_id:
        return False
    return bool(await Variable.aunset(hold_name(lock)))


async def acknowledge(lock: str, *, reason: str, who: str | None = None) -> Hold | None:
    """A human's word that the held cluster was checked: audited first (fail closed), then released."""
    from medic.orchestration.audit_store import record

    held = await read_hold(lock)
    if held is None:
        return None
    if (state := await _run_state(held.flow_run_id)) not in FINAL:
        raise PrefectError(f"{held.cluster} is held by run {held.flow_run_id}, which Prefect shows {state}: if it "
                           f"is alive it releases the hold itself; if its medic serve died, start medic serve "
                           f"again (it marks the run Crashed), then acknowledge; nothing was released")
    await asyncio.to_thread(record, AuditRecord(kind="decision", flow_run_id=held.flow_run_id, runbook=held.runbook, target=held.cluster,
                       who=who or f"cli:{getpass.getuser()}", what="acknowledge interrupted failover",
                       where="cli", result="released",
                       detail=f"held since {held.since.isoformat()} at step {held.step}; reason: {reason}"))
    await Variable.aunset(hold_name(lock))
    if held.lease_id:  # the dead run's lease on the slot: released now, not at its lapse (≤ 300 s)
        async with get_client() as client:
            await client.release_concurrency_slots_with_lease(lease_id=UUID(held.lease_id))
    return held


FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED", "missing")


async def _run_state(flow_run_id: str) -> str:
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            run = await client.read_flow_run(UUID(flow_run_id))
        except ObjectNotFound:
            return "missing"
    return run.state.type.value if run.state else "unknown"


async def holder_live(hold: Hold) -> bool:
    """Whether the run that holds the cluster is still in a non-final state in Prefect."""
    return await _run_state(hold.flow_run_id) not in FINAL
