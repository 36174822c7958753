"""Small real flows and bounded waits shared by the orchestration tests (all against the lab's Prefect)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.states import Paused
from pydantic import BaseModel, Field

from medic.core.polling import wait_until, wait_until_async
from medic.orchestration.pause import wait_for_approval
from medic.orchestration.prefect_compat import force_flow_run_state, pause_keyset
from medic.orchestration.runs import FlowRunOutcome, _create_flow_run, run_flow_now


class Decision(BaseModel):
    approved: bool = Field(description="Run the recovery step?")
    by: str = Field(description="Who decided")


@task
def double(x: int) -> int:
    return 2 * x


@flow
async def adder(x: int) -> int:
    return double(x) + 1


@flow
def sync_adder(x: int) -> int:
    return double(x) + 1


@flow
async def broken() -> None:
    raise RuntimeError("remediation blew up")


@flow
async def needs_approval(timeout: float, key: str = "approval", description: str | None = None) -> str:
    decision = await wait_for_approval(Decision, timeout=timeout, poll_interval=0.2, key=key,
                                       description=description)
    if decision is None:
        return "approval timed out"
    return f"approved={decision.approved} by={decision.by}"


async def wait_paused(flow_run_id: uuid.UUID, timeout: float = 30) -> FlowRun:
    """The run once it is Paused *with* its input keyset (what a resume needs); fails saying its state."""
    async with get_client() as client:

        async def look() -> FlowRun:
            return await client.read_flow_run(flow_run_id)

        def paused(run: FlowRun) -> bool:
            return bool(run.state and run.state.is_paused() and run.state.state_details.run_input_keyset)

        return await wait_until_async(look, what=f"flow run {flow_run_id} paused for input", timeout=timeout,
                                      interval=0.05, done=paused)


async def start_paused(timeout: float, **params: Any) -> tuple[FlowRun, Any]:
    """Start `needs_approval` in this loop and return (its run, the task) once it is paused."""
    run = await _create_flow_run(needs_approval, {"timeout": timeout, **params}, None)
    running = asyncio.create_task(run_flow_now(needs_approval, {"timeout": timeout, **params}, flow_run=run))
    try:
        await wait_paused(run.id)
    except BaseException:
        running.cancel()
        raise
    return run, running


async def forced_pause(key: str, *, with_keyset: bool = True, timeout_s: float = 3600) -> FlowRun:
    """A run of `adder` put straight into Paused (as a pause that died half-way leaves it): Paused with
    the input keyset of `key` (unless `with_keyset=False`) but no schema stored; `timeout_s` < 0 makes a
    pause whose server-side timeout has already passed."""
    run = await _create_flow_run(adder, {"x": 1}, None)
    state = Paused(pause_expiration_time=datetime.now(timezone.utc) + timedelta(seconds=timeout_s), pause_key=key)
    if with_keyset:
        state.state_details.run_input_keyset = pause_keyset(key)
    async with get_client() as client:
        await force_flow_run_state(client, run.id, state)
        return await client.read_flow_run(run.id)


def events_of(api_url: str, flow_run_id: uuid.UUID, *, until: str, timeout: float = 30) -> set[str]:
    """The event names Prefect stored for a flow run, once `until` is among them (stored in batches)."""
    body = {"filter": {"any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 50}  # the API's maximum

    def names() -> set[str]:
        answer = httpx.post(f"{api_url}/events/filter", json=body, timeout=10)
        answer.raise_for_status()
        return {e["event"] for e in answer.json()["events"]}

    return wait_until(names, what=f"event {until} of flow run {flow_run_id} stored", timeout=timeout,
                      interval=0.3, done=lambda seen: until in seen, ignore=httpx.TransportError)


__all__ = ["Decision", "FlowRunOutcome", "adder", "broken", "double", "events_of", "forced_pause", "needs_approval",
           "start_paused", "sync_adder", "wait_paused"]
