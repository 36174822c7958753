"""Run the real remediation flow in-process against the session lab, and read what it left behind."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from medic_lab.state import LabState
from medic.orchestration.runtime import FlowRunOutcome, resume_with_input, run_flow_now
from medic.core.report import RemediationReport


def remediate(runbook: str, target: str | None, **params: Any) -> tuple[FlowRunOutcome, RemediationReport]:
    from flows.remediate import remediate as flow

    outcome = asyncio.run(run_flow_now(flow, {"runbook": runbook, "target": target, **params}))
    assert isinstance(outcome.result, RemediationReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result


async def remediate_and_decide(runbook: str, target: str, decisions: list[dict[str, Any]],
                               **params: Any) -> tuple[FlowRunOutcome, RemediationReport, list[str]]:
    """Run a flow that pauses for approval, and answer each pause with the next decision."""
    from flows.remediate import remediate as flow
    from medic.core.progress import add_listener

    run_ids: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def on_entry(entry: Any, recorded: bool) -> None:
        if recorded and entry.stage == "approval" and "medic approve " in entry.message:
            loop.call_soon_threadsafe(run_ids.put_nowait, entry.message.split("medic approve ", 1)[1].split("`")[0])

    remove = add_listener(on_entry)
    statuses: list[str] = []

    async def answer() -> None:
        run_id = await run_ids.get()
        for decision in decisions:
            for _ in range(100):  # the run pauses shortly after announcing it
                result = await resume_with_input(run_id, decision)
                if result.status.value != "not_paused":
                    break
                await asyncio.sleep(0.1)
            statuses.append(result.status.value)

    try:
        answering = asyncio.create_task(answer())
        outcome = await run_flow_now(flow, {"runbook": runbook, "target": target, **params})
        await asyncio.wait_for(answering, timeout=5) if not answering.done() else None
    finally:
        remove()
    assert isinstance(outcome.result, RemediationReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result, statuses


def metric(lab: LabState, promql: str) -> list[tuple[dict[str, str], float]]:
    data = httpx.get(f"{lab.prometheus_url}/api/v1/query", params={"query": promql}).json()["data"]["result"]
    return [(r["metric"], float(r["value"][1])) for r in data]


def wait_metric(lab: LabState, promql: str, predicate: Any, timeout: float = 20) -> list[tuple[dict[str, str], float]]:
    deadline = time.monotonic() + timeout
    while True:
        result = metric(lab, promql)
        if predicate(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.3)
