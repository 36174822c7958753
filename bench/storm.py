#!/usr/bin/env python3
"""The alert storm against an intake-only medic serve with workers: 1,000 notifications, 50 broken targets.

Topology (issue 10): the lab's Prefect, `medic deploy` (the work pool and its deployments), N
`medic worker`s and `medic serve` with MEDIC_EXECUTION=workers. Every one of the 50 targets really
is broken (service-down), so every run repairs something. Printed:

- answer time of every notification (max / p99 / p50) and HTTP statuses: durable intake answers
  only once the run is recorded in Prefect (or 503 when it cannot be);
- runs per (runbook, target) from Prefect (exactly one each), lost = targets without a run;
- targets healthy at the end (Prometheus `up{job="web"}` == 1 for all of them);
- alert → first stage executing on a worker (median of a few, before the storm).

Starts its own lab (base port 17500, /tmp/medic-lab-stormbench), workers and medic serve, and
always stops them all. `--cluster`: the production topology instead (`medic lab up --with cluster`):
Prefect on PostgreSQL behind API auth, the lab's two workers as their own unix users, its intake-only
medic serve — the bench starts nothing of its own there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from alert_path import Answer, _auth, first_stage_started, storm  # noqa: E402

LAB_DIR = Path("/tmp/medic-lab-stormbench")
BASE_PORT = 17500
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
API_HEADERS: dict[str, str] = {}  # the Prefect API's auth header (the cluster's Prefect wants one)


class Worker:
    """One `medic worker` subprocess, stopped with SIGTERM (then SIGKILL) by the bench."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "medic", "worker", "--name", name], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def timed_storm(url: str, hosts: int, per_host: int, seconds: float) -> tuple[list[float], list[Answer | BaseException], float]:
    """`alert_path.storm`, with each notification's answer time (send → answer)."""
    import alert_path

    times: list[float] = []
    plain = alert_path._post

    async def post(*args: object) -> Answer:
        began = time.monotonic()
        try:
            return await plain(*args)  # type: ignore[arg-type]
        finally:
            times.append(time.monotonic() - began)

    alert_path._post = post  # type: ignore[assignment]
    try:
        answers, sent = asyncio.run(storm(url, hosts=hosts, per_host=per_host, seconds=seconds))
    finally:
        alert_path._post = plain
    return times, answers, sent


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def runs_of_storm(api: str) -> list[dict]:
    runs: list[dict] = []
    offset = 0
    while True:
        page = httpx.post(f"{api}/flow_runs/filter", timeout=30, headers=API_HEADERS, json={
            "flow_runs": {"tags": {"all_": ["medic-serve"]}}, "limit": 200, "offset": offset}).json()
        runs += [r for r in page if "storm-" in (r["parameters"].get("reason") or "")]
        if len(page) < 200:
            return runs
        offset += 200


def latency(url: str, api: str, n: int) -> list[tuple[float, float]]:
    """Alert posted → the run's first stage executing on a worker, on healthy targets (runs end NotNeeded)."""
    from tests.support.server import alert_payload

    samples = []
    for i in range(n):
        payload = alert_payload("ServiceDown", f"web-{i % 5 + 1}", fingerprint=f"lat-{i}-{time.time_ns()}",
                                starts_at=datetime.now(timezone.utc).isoformat())
        sent = time.time()
        entry = httpx.post(f"{url}/alertmanager", json=payload, timeout=30, headers=_auth()).json()["alerts"][0]
        answered = time.time()
        if entry.get("result") != "started":
            raise SystemExit(f"bench: latency alert {i} did not start a run: {entry}")
        samples.append((answered - sent, first_stage_started(api, entry["flow_run_id"], timeout=60,
                                                             headers=API_HEADERS) - sent))
        deadline = time.monotonic() + 60
        while httpx.get(f"{api}/flow_runs/{entry['flow_run_id']}", headers=API_HEADERS).json()["state"]["type"] \
                not in FINAL:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: latency run {entry['flow_run_id']} did not end within 60 s")
            time.sleep(0.2)
    return samples


def start_workers_and_intake(stack: ExitStack, api: str, workers: int, tmp: Path) -> str:
    """The lab's Prefect (SQLite): `medic deploy`, N `medic worker`s and an intake-only medic serve."""
    from tests.support.server import medic_server

    env = {**os.environ, "PREFECT_API_URL": api, "MEDIC_PREFECT_API_URL": api, "MEDIC_EXECUTION": "workers"}
    deployed = subprocess.run([sys.executable, "-m", "medic", "deploy"], env=env, capture_output=True, text=True)
    if deployed.returncode:
        raise SystemExit(f"bench: medic deploy failed: {deployed.stdout}{deployed.stderr}")
    for k in range(workers):
        worker = Worker(f"storm-w{k + 1}", {**env, "MEDIC_STATE_DIR": f"{tmp}/w{k + 1}"}, tmp / f"w{k + 1}.log")
        stack.callback(worker.stop)
    srv = stack.enter_context(medic_server(tmp / "serve", env={"MEDIC_EXECUTION": "workers",
                                                               "MEDIC_INSTANCE": "storm-intake"}))
    return srv.url


def start_cluster_clients(lab: object) -> str:
    """The cluster runs its own workers and intake; the bench only needs the API's auth string."""
    from medic_lab.cluster_prefect import AUTH_KEY, cluster_secret
    from medic_lab.cluster_workers import intake_url

    os.environ[AUTH_KEY] = cluster_secret(lab.lab_dir).get_secret_value()  # type: ignore[attr-defined]
    from medic.orchestration.api import prefect_auth_headers

    API_HEADERS.update(prefect_auth_headers())
    return intake_url(lab)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--per-host", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("-n", type=int, default=5, help="alert → first stage samples")
    parser.add_argument("--cluster", action="store_true", help="the production topology (medic lab up --with cluster)")
    args = parser.parse_args()

    from medic_lab import control, faults
    from medic_lab.cluster_workers import WORKERS

    os.environ.update(MEDIC_LAB_DIR=str(LAB_DIR), MEDIC_LAB_BASE_PORT=str(BASE_PORT))
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="medic-storm-") as tmp:
        print(f"bench: starting a {args.hosts}-host lab{' with the cluster topology' if args.cluster else ''} …",
              flush=True)
        stack.callback(control.down, LAB_DIR)
        lab = control.up(LAB_DIR, hosts=args.hosts, base_port=BASE_PORT, webhook_url="http://127.0.0.1:9/unused",
                         options={"cluster": True} if args.cluster else None)
        api = lab.prefect_api_url
        os.environ["PREFECT_API_URL"] = api
        if args.cluster:
            url = start_cluster_clients(lab)
            print(f"bench: the cluster's intake at {url}, Prefect on PostgreSQL, workers "
                  f"{', '.join(WORKERS)} as their own users", flush=True)
        else:
            url = start_workers_and_intake(stack, api, args.workers, Path(tmp))
            print(f"bench: intake-only medic serve at {url}, {args.workers} worker(s)", flush=True)

        samples = latency(url, api, args.n)
        acks, firsts = [a for a, _ in samples], [f for _, f in samples]
        print(f"\nalert answered (run recorded Scheduled): median {statistics.median(acks) * 1000:.0f} ms "
              f"(max {max(acks) * 1000:.0f})")
        print(f"alert → first stage executing on a worker: median {statistics.median(firsts) * 1000:.0f} ms "
              f"(min {min(firsts) * 1000:.0f}, max {max(firsts) * 1000:.0f}) n={len(firsts)}")

        for h in range(1, args.hosts + 1):
            faults.break_host(lab, "service-down", f"web-{h}")
        print(f"bench: broke service-down on all {args.hosts} targets; storm …", flush=True)
        times, answers, sent = timed_storm(url, args.hosts, args.per_host, args.seconds)
        statuses = Counter(a.status if isinstance(a, Answer) else type(a).__name__ for a in answers)
        results = Counter(a.body["alerts"][0]["result"] for a in answers if isinstance(a, Answer) and a.status == 200)
        print(f"\nstorm: {len(answers)} notifications over {args.hosts} targets sent in {sent:.1f} s")
        print(f"  answer time: max {max(times):.2f} s, p99 {pct(times, 99):.2f} s, p50 {pct(times, 50):.3f} s")
        print(f"  HTTP: {dict(statuses)}; results: {dict(results)}")
        refusals = Counter(a.body.get("error", "")[:200] for a in answers if isinstance(a, Answer) and a.status != 200)
        for reason, count in refusals.most_common(3):
            print(f"  refused ×{count}: {reason}")

        # Alertmanager resends what got a 5xx (with backoff): do the same for every notification refused.
        from tests.support.server import alert_payload

        refused_hosts = sorted({a.body["alerts"][0]["target"] for a in answers
                                if isinstance(a, Answer) and a.status != 200 and a.body.get("alerts")})
        resends = 0
        for host in refused_hosts:
            payload = alert_payload("ServiceDown", host, fingerprint=f"storm-{host.split('-')[1]}",
                                    starts_at="2026-11-22T05:00:00Z")
            for delay in (0.5, 1, 2, 4, 8, 16):
                resends += 1
                if httpx.post(f"{url}/alertmanager", json=payload, headers=_auth(), timeout=30).status_code == 200:
                    break
                time.sleep(delay)
        print(f"  Alertmanager-style resends of refused targets ({len(refused_hosts)}): {resends} request(s)")

        began = time.monotonic()
        while True:
            runs = runs_of_storm(api)
            live = [r for r in runs if r["state"]["type"] not in FINAL]
            if not live or time.monotonic() - began > 900:
                break
            time.sleep(2)
        per_target = Counter(r["parameters"]["target"] for r in runs)
        print(f"  runs: {len(runs)} ({len(live)} not final after {time.monotonic() - began:.0f} s); "
              f"targets with exactly one run: {sum(1 for c in per_target.values() if c == 1)}/{args.hosts}, "
              f"more than one: {sum(1 for c in per_target.values() if c > 1)}, "
              f"lost (no run): {args.hosts - len(per_target)}")
        print(f"  run endings: {dict(Counter(r['state']['name'] for r in runs))}")
        up = httpx.get(f"{lab.prometheus_url}/api/v1/query", params={"query": 'up{job="web"}'}).json()["data"]["result"]
        healthy = sum(1 for s in up if s["value"][1] == "1")
        print(f"  targets healthy at the end: {healthy}/{args.hosts}")


if __name__ == "__main__":
    main()
