"""Run the real remediation flow in-process against the session lab, and read what it left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from flows.remediate import remediate as remediate_flow
from medic.core.polling import wait_until_async
from medic.core.progress import add_listener
from medic_lab.state import LabState
from medic.orchestration.pause import resume_with_input
from medic.orchestration.runs import FlowRunOutcome, run_flow_now
from medic.core.report import RemediationReport
from tests.support.approvals import answer_as
from tests.support.waits import wait_for

Samples = list[tuple[dict[str, str], float]]


def remediate(runbook: str, target: str | None, **params: Any) -> tuple[FlowRunOutcome, RemediationReport]:
    outcome = asyncio.run(run_flow_now(remediate_flow, {"runbook": runbook, "target": target, **params}))
    assert isinstance(outcome.result, RemediationReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result


async def answer_pause(run_id: str, decision: dict[str, Any], *, timeout: float = 60) -> str:
    """Resume a run with `decision` as soon as it is paused; the resume status (accepted, rejected …).

    The run announces its pause (the `medic approve` line) a moment before it is paused: until then
    the answer is "not_paused", and it is asked again."""
    def send() -> Any:  # a decision without a code or proof is sent proven, as `medic approve` does
        if "code" in decision or "proof" in decision:
            return resume_with_input(run_id, decision)
        return answer_as(run_id, decision)

    result = await wait_until_async(
        send, what=f"run {run_id} to be paused and take {decision}",
        timeout=timeout, done=lambda r: r.status.value != "not_paused")
    return result.status.value


async def run_and_answer(flow: Any, params: dict[str, Any], decisions: list[dict[str, Any]], *,
                         asking: asyncio.Event | None = None, gate: asyncio.Event | None = None,
                         ) -> tuple[FlowRunOutcome, list[str]]:
    """Run a flow in-process and answer its approval pause with each decision in turn (the 'click').

    `asking` is set once the run asks its human; the answers wait for `gate` when one is given.
    Returns the outcome and the resume status of every answer given."""
    run_ids: asyncio.Queue[str] = asyncio.Queue()
    asked = asyncio.Event()
    loop = asyncio.get_running_loop()
    statuses: list[str] = []

    def on_entry(entry: Any, recorded: bool) -> None:
        if recorded and entry.stage == "approval" and "medic approve " in entry.message:
            loop.call_soon_threadsafe(run_ids.put_nowait, entry.message.split("medic approve ", 1)[1].split("`")[0])

    async def answer() -> None:
        run_id = await run_ids.get()
        asked.set()
        if asking is not None:
            asking.set()
        if gate is not None:
            await gate.wait()
        for decision in decisions:
            statuses.append(await answer_pause(run_id, decision))

    remove = add_listener(on_entry)
    answering = asyncio.create_task(answer())
    try:
        outcome = await run_flow_now(flow, params)
    except BaseException:
        answering.cancel()
        raise
    finally:
        remove()
    if asked.is_set():
        await asyncio.wait_for(answering, timeout=30)  # its last answer ended the run: it is finishing
    else:
        answering.cancel()  # the run never asked a human (not needed, refused first …)
    return outcome, statuses


async def remediate_and_decide(runbook: str, target: str, decisions: list[dict[str, Any]],
                               **params: Any) -> tuple[FlowRunOutcome, RemediationReport, list[str]]:
    """Run a remediation that pauses for approval, and answer each pause with the next decision."""
    outcome, statuses = await run_and_answer(remediate_flow, {"runbook": runbook, "target": target, **params}, decisions)
    assert isinstance(outcome.result, RemediationReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result, statuses


def metric(lab: LabState, promql: str) -> Samples:
    data = httpx.get(f"{lab.prometheus_url}/api/v1/query", params={"query": promql}).json()["data"]["result"]
    return [(r["metric"], float(r["value"][1])) for r in data]


def wait_metric(lab: LabState, promql: str, predicate: Callable[[Samples], bool], *, what: str | None = None,
                timeout: float = 30) -> Samples:
    """The first result of `promql` that satisfies `predicate`; fails the test with the last one seen."""
    return wait_for(lambda: metric(lab, promql), what=what or f"Prometheus: {promql}", timeout=timeout,
                    done=predicate, interval=0.3, ignore=httpx.HTTPError)
