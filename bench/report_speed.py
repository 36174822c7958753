#!/usr/bin/env python3
"""How long `medic report --since 7d` takes over a week of history: N runs of the remediation flow,
each with its four stage task runs, its final state and its incident-timeline artifact, in Prefect.

    MEDIC_LAB_DIR=<a running lab> .venv/bin/python bench/report_speed.py [--runs 350] [--repeat 3]

It needs a lab's Prometheus (`medic lab up`; the SLO figures and charts ask it) and starts its own
embedded (SQLite) Prefect under a temp dir, writes the synthetic history there
through Prefect's REST API (a busy week: 50 runs a day, 1 in 10 paused for a human), then times
`medic report --since 7d` as a user runs it (a new process) and, in this process, its two halves:
reading the runs back from Prefect and building the report. Target: < 2 s. Prints figures (and the
CLI's CPU time, which a loaded machine does not inflate); asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("detect", "diagnose", "recover", "verify")
RUNBOOKS = ("service-down", "disk-full", "high-latency")


async def _post(http: httpx.AsyncClient, path: str, body: dict) -> httpx.Response:
    """POST, again after SQLite's "database is locked" (503) — a few writers share one SQLite file."""
    for delay in (0.05, 0.1, 0.2, 0.4, 0.8, *[1.0] * 30):
        r = await http.post(path, json=body)
        if r.status_code not in (503, 429):
            break
        await asyncio.sleep(delay)
    if r.status_code >= 300:
        raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
    return r


async def _state(http: httpx.AsyncClient, kind: str, run_id: str, type_: str, name: str, *,
                 force: bool = True, **details: str) -> None:
    r = await _post(http, f"/{kind}/{run_id}/set_state", {
        "state": {"type": type_, "name": name, "state_details": details}, "force": force})
    if r.json().get("status") != "ACCEPT":
        raise RuntimeError(f"{kind} {run_id} → {name}: {r.json()}")


async def _one_run(http: httpx.AsyncClient, flow_id: str, i: int) -> None:
    from medic.core.timeline import IncidentTimes, StageSpan

    runbook, target = RUNBOOKS[i % len(RUNBOOKS)], f"web-{i % 6 + 1}"
    r = await _post(http, "/flow_runs/", {
        "flow_id": flow_id, "name": f"bench-{i}", "parameters": {"runbook": runbook, "target": target},
        "tags": [f"runbook:{runbook}", f"target:{target}"], "state": {"type": "RUNNING", "name": "Running"}})
    run_id = r.json()["id"]
    for stage in STAGES:
        t = await _post(http, "/task_runs/", {
            "flow_run_id": run_id, "name": f"{stage}-{uuid.uuid4().hex[:3]}", "task_key": stage,
            "dynamic_key": str(i), "state": {"type": "RUNNING", "name": "Running"}})
        await _state(http, "task_runs", t.json()["id"], "COMPLETED", "Completed")
    if i % 10 == 0:  # asked a human
        await _state(http, "flow_runs", run_id, "PAUSED", "Paused", force=False, pause_key="approval-1")  # as a pause
        await _state(http, "flow_runs", run_id, "RUNNING", "Running")
    outcome = "NotNeeded" if i % 7 == 0 else "Recovered"
    await _state(http, "flow_runs", run_id, "COMPLETED", outcome)
    now = datetime.now(UTC)
    times = IncidentTimes(impact=now - timedelta(seconds=12 + i % 5), alert_fired=now - timedelta(seconds=9),
                          delivered=now - timedelta(seconds=8.9), run_started=now - timedelta(seconds=8),
                          stages=[StageSpan(stage=s, started=now - timedelta(seconds=7 - k), ended=now - timedelta(
                              seconds=6 - k)) for k, s in enumerate(STAGES)],
                          recovered=now - timedelta(seconds=2), resolved=now, step_s=0.1)
    await _post(http, "/artifacts/", {
        "key": f"timeline-{runbook}-{target}", "type": "table", "flow_run_id": run_id,
        "data": [{"timeline": times.model_dump_json(), "ttd_s": times.time_to_detect_s}]})


async def write_history(api: str, runs: int) -> float:
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        r = await _post(http, "/flows/", {"name": "remediate"})
        flow_id = r.json()["id"]
        gate = asyncio.Semaphore(1)  # SQLite: one writer at a time

        async def one(i: int) -> None:
            async with gate:
                await _one_run(http, flow_id, i)

        await asyncio.gather(*(one(i) for i in range(runs)))
    return time.perf_counter() - began


def _figures(name: str, seconds: list[float]) -> None:
    print(f"{name:<46} median {statistics.median(seconds):6.2f} s   max {max(seconds):6.2f} s   (n={len(seconds)})")


def measure(api: str, runs: int, repeat: int) -> None:
    from medic.procedures.report_assembly import assemble
    from medic.orchestration.run_history import read_runs

    print(f"wrote {runs} runs (4 stages, timeline artifact each) in {asyncio.run(write_history(api, runs)):.1f} s")
    env = {**os.environ, "MEDIC_PREFECT_API_URL": api, "PREFECT_API_URL": api}
    cli, cpu, with_charts, reads, builds = [], [], [], [], []
    for _ in range(repeat):
        for extra, walls in (([], cli), (["--charts", tempfile.mkdtemp(prefix="medic-bench-charts-")], with_charts)):
            began, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run([sys.executable, "-m", "medic", "report", "--since", "7d", *extra], env=env,
                                  cwd=ROOT, capture_output=True, text=True)
            walls.append(time.perf_counter() - began)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if not extra:
                cpu.append(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime)
            if done.returncode != 0:
                print(f"medic report {' '.join(extra)} failed ({done.returncode}): {done.stderr[-800:]}")
                return
        until = datetime.now(UTC)
        start = until - timedelta(days=7)
        began = time.perf_counter()
        history = asyncio.run(read_runs(start))
        reads.append(time.perf_counter() - began)
        began = time.perf_counter()
        report, charts = assemble(history, start, until, 7 * 86400)
        builds.append(time.perf_counter() - began)
    timed = sum(1 for r in history if r.incident is not None)
    print(f"read back {len(history)} runs ({timed} with a timeline); report: "
          f"{sum(r.incidents for r in report.runbooks)} incidents, {len(report.slos)} SLO(s), {len(charts)} chart(s)")
    _figures("medic report --since 7d (new process, total)", cli)
    _figures("  its CPU time (user + sys: what load hides)", cpu)
    _figures("medic report --since 7d --charts DIR (4 PNGs)", with_charts)
    _figures("  read the runs from Prefect (in process)", reads)
    _figures("  build the report + charts (in process)", builds)
    print(f"target < 2 s: {'met' if statistics.median(cli) < 2 else 'NOT met'} (median of the CLI, wall clock), "
          f"with charts {'met' if statistics.median(with_charts) < 2 else 'NOT met'} ("
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=350, help="runs in the week (default 350: 50 a day)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the embedded Prefect on SIGTERM too
    from medic.core.net import free_port
    from medic.orchestration.embedded_server import EmbeddedPrefect

    with tempfile.TemporaryDirectory(prefix="medic-bench-report-") as home:
        with EmbeddedPrefect(Path(home), port=free_port()) as server:
            os.environ["PREFECT_API_URL"] = server.api_url
            print(f"embedded Prefect (SQLite) at {server.api_url}")
            measure(server.api_url, args.runs, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
