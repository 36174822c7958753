"""Measure what Prefect costs medic per flow run, per task, per approval click and per lock.

Needs a Prefect server: PREFECT_API_URL=http://127.0.0.1:PORT/api python bench/prefect_overhead.py [-n 7]
Prints a table of medians (seconds). Figures and their meaning: docs/prefect-runtime.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid

from pydantic import BaseModel
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client

from medic.orchestration.locks import ensure_concurrency_limit, exclusive_slot
from medic.orchestration.pause import resume_with_input, wait_for_approval
from medic.orchestration.runs import run_flow_now

MARKS: dict[str, float] = {}


@task
def step(i: int) -> int:
    return i


@flow
def sync_flow(n: int) -> int:
    return sum(step(i) for i in range(n))


@flow
async def async_flow(n: int) -> int:
    return sum(step(i) for i in range(n))


@flow
async def artifact_flow(k: int) -> float:
    t = time.perf_counter()
    for i in range(k):
        await create_markdown_artifact(markdown=f"# evidence {i}\n\n| a | b |\n|---|---|\n| 1 | 2 |", key=f"bench-{i}")
    return (time.perf_counter() - t) / max(k, 1)


class Decision(BaseModel):
    approved: bool
    by: str


@flow
async def approval_flow(poll: float) -> str:
    decision = await wait_for_approval(Decision, timeout=60, poll_interval=poll)
    MARKS["continued"] = time.perf_counter()
    return "approved" if decision and decision.approved else "not approved"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def timed(fn, n: int) -> float:
    xs = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return median(xs)


async def atimed(make, n: int) -> float:
    xs = []
    for _ in range(n):
        t = time.perf_counter()
        await make()
        xs.append(time.perf_counter() - t)
    return median(xs)


CHILD = r"""
import sys, time, os, asyncio
t0 = float(sys.argv[2])
from prefect import flow, task
mode = sys.argv[1]
@task
def first():
    print("FIRST", time.time() - t0, flush=True)
@task
def step(i): return i
@flow
def sf():
    first(); [step(i) for i in range(5)]
@flow
async def af():
    first(); [step(i) for i in range(5)]
if mode == "import":
    print("FIRST", time.time() - t0)
elif mode == "sync":
    sf()
elif mode == "async":
    asyncio.run(af())
else:
    from medic.orchestration.runs import run_flow_now
    asyncio.run(run_flow_now(af))
"""


def child(mode: str) -> tuple[float, float]:
    """(process start → first task running, process start → process exit)."""
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, repr(t0)],
        capture_output=True, text=True, env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}, check=True,
    ).stdout
    total = time.time() - t0
    first = next(float(line.split()[1]) for line in out.splitlines() if line.startswith("FIRST"))
    return first, total


async def approval_latency(poll: float, n: int) -> float:
    xs = []
    for _ in range(n):
        run_task = asyncio.create_task(run_flow_now(approval_flow, {"poll": poll}))
        async with get_client() as client:
            while True:
                runs = await client.read_flow_runs(limit=1, sort="START_TIME_DESC")
                if runs and runs[0].state and runs[0].state.is_paused() and runs[0].state.state_details.run_input_keyset:
                    run_id = runs[0].id
                    break
                await asyncio.sleep(0.02)
        await asyncio.sleep(poll * 0.37)  # land at an arbitrary point of the poll cycle
        t = time.perf_counter()
        outcome = await resume_with_input(run_id, {"approved": True, "by": "bench"})
        assert outcome.accepted, outcome
        await run_task
        xs.append(MARKS["continued"] - t)
    return median(xs)


async def in_process(n: int, rows: list[tuple[str, float]]) -> None:
    await run_flow_now(async_flow, {"n": 1})  # warm up
    for tasks in (0, 6, 30):
        rows.append((f"run_flow_now(async flow, {tasks} tasks) in a long-lived loop",
                     await atimed(lambda: run_flow_now(async_flow, {"n": tasks}), n)))
    rows.append(("run_flow_now(sync flow, 6 tasks) in a long-lived loop",
                 await atimed(lambda: run_flow_now(sync_flow, {"n": 6}), n)))
    rows.append(("  await async_flow(6) in a long-lived loop (plain call)",
                 await atimed(lambda: async_flow(6), n)))
    o = await run_flow_now(artifact_flow, {"k": 5})
    rows.append(("create_markdown_artifact, per call", o.result))
    name = f"bench-{uuid.uuid4().hex[:8]}"
    await ensure_concurrency_limit(name, 1)

    async def lock_once() -> None:
        async with exclusive_slot(name) as got:
            assert got

    rows.append(("exclusive_slot acquire + release", await atimed(lock_once, n)))

    async def busy_once() -> None:
        async with exclusive_slot(name) as got_outer, exclusive_slot(name) as got_inner:
            assert got_outer and not got_inner

    rows.append(("exclusive_slot held + a refused 2nd attempt", await atimed(busy_once, n)))
    for poll in (1.0, 0.2):
        rows.append((f"approval: resume call → flow continues, poll_interval={poll}",
                     await approval_latency(poll, max(3, n // 2))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=7, help="runs per figure (median)")
    args = ap.parse_args()
    if not os.environ.get("PREFECT_API_URL"):
        sys.exit("set PREFECT_API_URL to a running Prefect server (…/api)")
    n = args.n
    rows: list[tuple[str, float]] = []
    k = max(3, n // 2)
    for mode, label in (("import", "process start → `from prefect import flow` done"),
                        ("sync", "new process, sync @flow called directly"),
                        ("async", "new process, async @flow via asyncio.run"),
                        ("medic", "new process, run_flow_now(async flow)")):
        res = [child(mode) for _ in range(k)]
        if mode == "import":
            rows.append((label, median([r[0] for r in res])))
            continue
        rows.append((f"{label}: start → first task running", median([r[0] for r in res])))
        rows.append((f"{label}: start → process exit (6 tasks)", median([r[1] for r in res])))
    rows.append(("sync @flow, 6 tasks, called directly (default settings)", timed(lambda: sync_flow(6), n)))
    rows.append(("async @flow, 6 tasks, asyncio.run per call", timed(lambda: asyncio.run(async_flow(6)), n)))
    asyncio.run(in_process(n, rows))
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement (median, seconds)':<{width}}  value")
    print("-" * (width + 9))
    for label, value in rows:
        print(f"{label:<{width}}  {value:6.3f}")


if __name__ == "__main__":
    main()
