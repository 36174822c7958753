#!/usr/bin/env python3
"""Runs on workers: pick-up latency, and remediations per minute with 1 and 2 workers.

1. pick-up: a run of remediate/service-down on a healthy lab host is created Scheduled in the pool;
   we measure created → its first stage (the `detect` task) running, from Prefect's own timestamps
   (flow run `created`, task run `start_time`). For `medic worker` at poll 0.25 / 0.5 / 1 s, and for
   Prefect's process worker (`prefect worker start --type process`, PREFECT_WORKER_QUERY_SECONDS=1,
   prefetch 0) on the same deployment in a process pool: a new Python per run.
2. throughput: N lab hosts broken (service-down), N runs created at once, 1 then 2 `medic worker`s:
   wall time until all are Recovered -> remediations per minute, and the 2/1 ratio.

Starts its own lab (base port 22400, /tmp/medic-lab-bench-workers) and always stops it and every
process it started. Usage: .venv/bin/python bench/workers.py [-n 3] [--hosts 6] [--max-runs 1] [--skip-process]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from medic.core.polling import retry, wait_until  # noqa: E402

BIN = Path(sys.executable).parent
POOL, PROCESS_POOL = "medic-bench", "medic-bench-process"


def api(lab: Any, method: str, path: str, **kw: Any) -> Any:
    """One call to the lab's Prefect; SQLite-busy answers (503) are asked again for up to 10 s."""
    answer = retry(lambda: httpx.request(method, lab.prefect_api_url + path, timeout=30, **kw),
                   delays=itertools.repeat(0.2), timeout=10, retry_if=lambda r: r.status_code == 503)
    answer.raise_for_status()
    return answer.json() if answer.content else None


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def create_run(lab: Any, deployment: str, target: str, runbook: str = "service-down") -> str:
    dep = api(lab, "GET", f"/deployments/name/remediate/{deployment}")
    run = api(lab, "POST", f"/deployments/{dep['id']}/create_flow_run",
              json={"parameters": {"runbook": runbook, "target": target}, "tags": ["bench"]})
    return run["id"]


def first_stage_s(lab: Any, run_id: str) -> float:
    """created → the detect task running, once the run has ended."""
    run = wait_until(lambda: api(lab, "GET", f"/flow_runs/{run_id}"), what=f"run {run_id} to end", timeout=180,
                     interval=0.3, done=lambda r: r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED"))
    tasks = api(lab, "POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}},
                                                         "task_runs": {"name": {"like_": "detect"}}, "limit": 5})
    assert tasks and tasks[0]["start_time"], f"run {run_id} ({run['state']['name']}) has no detect task"
    return ts(tasks[0]["start_time"]) - ts(run["created"])


class Procs:
    def __init__(self, logs: Path) -> None:
        self.logs, self.procs = logs, []

    def start(self, name: str, cmd: list[str], env: dict[str, str], ready: str | None = None) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=ROOT)
        self.procs.append(proc)
        if ready:
            wait_until(lambda: log.read_text(), what=f"{name} to be ready", timeout=120, interval=0.3,
                       done=lambda text: ready in text)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)


def medic_env(lab: Any, poll: float, max_runs: int = 8) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": lab.prefect_api_url, "MEDIC_WORK_POOL": POOL,
            "MEDIC_WORKER_POLL_S": str(poll), "MEDIC_WORKER_HEARTBEAT_S": "5", "MEDIC_WORKER_MAX_RUNS": str(max_runs),
            "PREFECT_LOGGING_TO_API_ENABLED": "false"}


def pickup(lab: Any, procs: Procs, n: int, skip_process: bool, only_process: bool = False) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    healthy = lab.hosts[-1].name
    for poll in () if only_process else (0.25, 0.5, 1.0):
        worker = procs.start(f"pickup-{poll}", [str(BIN / "medic"), "worker", "--name", f"bench-{poll}"],
                             medic_env(lab, poll), ready="ready in pool")
        first_stage_s(lab, create_run(lab, "service-down", healthy))  # one uncounted run: first-run set-up
        figures[f"medic worker, poll {poll:g} s"] = [first_stage_s(lab, create_run(lab, "service-down", healthy))
                                                     for _ in range(n)]
        show(f"medic worker, poll {poll:g} s", figures[f"medic worker, poll {poll:g} s"])
        procs.stop(worker)
    if not skip_process:
        env = {**medic_env(lab, 1.0), "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "0"}
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", PROCESS_POOL, "--type", "process",
                        "--overwrite"], env=env, check=True, capture_output=True)
        dep = api(lab, "GET", "/deployments/name/remediate/service-down")
        api(lab, "POST", "/deployments/", json={
            "name": "service-down-process", "flow_id": dep["flow_id"], "work_pool_name": PROCESS_POOL,
            "entrypoint": dep["entrypoint"], "path": str(ROOT), "parameter_openapi_schema":
            dep["parameter_openapi_schema"], "parameters": dep["parameters"],
            # without a pull step the runner *copies* `path` (the whole checkout, .venv included) per run
            "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]})
        worker = procs.start("pickup-process", [str(BIN / "prefect"), "worker", "start", "--pool", PROCESS_POOL,
                                                "--type", "process"], env, ready="started")
        first_stage_s(lab, create_run(lab, "service-down-process", healthy))
        figures["prefect process worker, poll 1 s"] = [
            first_stage_s(lab, create_run(lab, "service-down-process", healthy)) for _ in range(n)]
        show("prefect process worker, poll 1 s", figures["prefect process worker, poll 1 s"])
        procs.stop(worker)
    return figures


def show(label: str, values: list[float]) -> None:
    print(f"  {label:34s} {statistics.median(values):5.2f} s  ({min(values):.2f}-{max(values):.2f})", flush=True)


def throughput(lab: Any, procs: Procs, hosts: list[str], workers: int, max_runs: int) -> float:
    from medic_lab import faults

    started = [procs.start(f"tp-{workers}-{i}", [str(BIN / "medic"), "worker", "--name", f"tp-{workers}-{i}"],
                           medic_env(lab, 0.25, max_runs), ready="ready in pool") for i in range(workers)]
    for host in hosts:
        faults.break_host(lab, "service-down", host)
    for host in hosts:  # Prometheus must see each one down, or detect says "not needed"
        wait_until(lambda h=host: api_prom(lab, f'up{{job="web",host="{h}"}}'), what=f"{host} down", timeout=60,
                   interval=0.3, done=lambda v: v == 0)
    began = time.monotonic()
    runs = [create_run(lab, "service-down", host) for host in hosts]
    states = [wait_until(lambda r=r: api(lab, "GET", f"/flow_runs/{r}"), what=f"run {r}", timeout=300, interval=0.3,
                         done=lambda x: x["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED"))["state"]["name"]
              for r in runs]
    wall = time.monotonic() - began
    for proc in started:
        procs.stop(proc)
    print(f"  {workers} worker(s): {len(hosts)} remediations in {wall:.1f} s -> {60 * len(hosts) / wall:.1f}/min "
          f"({', '.join(sorted(set(states)))})")
    return 60 * len(hosts) / wall


def api_prom(lab: Any, promql: str) -> float | None:
    result = httpx.get(f"{lab.prometheus_url}/api/v1/query", params={"query": promql}).json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=3, help="runs per pick-up figure")
    parser.add_argument("--hosts", type=int, default=6, help="broken hosts for the throughput figure")
    parser.add_argument("--skip-process", action="store_true", help="skip Prefect's process worker")
    parser.add_argument("--max-runs", type=int, default=1,
                        help="MEDIC_WORKER_MAX_RUNS for the throughput part: what one worker's machine can take at "
                             "once. Below --hosts, so capacity is what a second worker adds (with max-runs >= hosts "
                             "one worker already runs them all at once); 1 keeps this shared 2-core machine's CPU "
                             "from being the limit instead of the workers")
    parser.add_argument("--only", choices=("process", "throughput"), help="only this part")
    args = parser.parse_args()
    lab_dir = Path("/tmp/medic-lab-bench-workers")
    os.environ["MEDIC_LAB_DIR"] = str(lab_dir)
    from medic_lab import control

    procs = Procs(Path(tempfile_dir()))
    lab = control.up(lab_dir, hosts=args.hosts + 1, base_port=22400, webhook_url="http://127.0.0.1:9/unused")
    try:
        env = medic_env(lab, 0.5)
        subprocess.run([str(BIN / "medic"), "deploy", "--no-schedules"], env=env, check=True, capture_output=True)
        print(f"pick-up: run created -> first stage (detect) running, {args.n} runs each (median, min-max)")
        figures = {} if args.only == "throughput" else pickup(lab, procs, args.n, args.skip_process,
                                                               args.only == "process")
        ours, theirs = figures.get("medic worker, poll 0.5 s"), figures.get("prefect process worker, poll 1 s")
        if ours and theirs:
            print(f"  process worker / medic worker (poll 0.5 s), medians: "
                  f"{statistics.median(theirs) / statistics.median(ours):.1f}x")
        if args.only == "process":
            return
        print(f"throughput: {args.hosts} hosts broken (service-down), all runs created at once, "
              f"at most {args.max_runs} runs per worker")
        hosts = [h.name for h in lab.hosts[:args.hosts]]
        one = throughput(lab, procs, hosts, 1, args.max_runs)
        two = throughput(lab, procs, hosts, 2, args.max_runs)
        print(f"  ratio 2 workers / 1 worker: {two / one:.2f}x")
    finally:
        procs.stop_all()
        control.down(lab_dir)
        shutil.rmtree(lab_dir, ignore_errors=True)


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="medic-bench-workers-")


if __name__ == "__main__":
    main()
