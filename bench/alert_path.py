#!/usr/bin/env python3
"""Alert path of medic serve: webhook delivered → flow run executing its first stage, and an alert storm.

1. Latency: POST an Alertmanager (v4) notification to /alertmanager and read, from Prefect, when the
   run's first task (detect) started. Median of N. Peers measured on this machine: Event-Driven
   Ansible ~1.1 s webhook → first playbook task; a Prefect deployment run picked up by serve()
   polling 5-12 s.
2. Storm: 1,000 notifications over 50 targets in 10 s (20 per target, concurrent senders). Every one
   must be acknowledged, exactly one run must start per (runbook, target), and none may be lost.

Starts its own 50-host lab (base port 17000, /tmp/medic-lab-alertbench) and a medic serve, and
always stops both. Targets are healthy, so each run ends "not needed" after detect: the bench
measures medic, not the repair.
"""

from __future__ import annotations

import argparse
import functools
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@functools.lru_cache(maxsize=1)
def _auth() -> dict[str, str]:
    """The intake credential medic serve wants (issue 11), from the bench lab's settings."""
    from tests.support.intake import intake_headers

    return intake_headers()


LAB_DIR = Path("/tmp/medic-lab-alertbench")
BASE_PORT = 17000


def first_stage_started(api: str, run_id: str, timeout: float = 30, headers: dict[str, str] | None = None) -> float:
    """Epoch seconds at which the run's detect task started (Prefect's own timestamp)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}, "limit": 50},
                          headers=headers).json()
        for t in runs:
            if t["task_key"].startswith("detect") or t["name"].startswith("detect"):
                started = t.get("start_time") or t.get("expected_start_time")
                if started:
                    return datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
        time.sleep(0.05)
    raise SystemExit(f"bench: run {run_id} never started its first stage")


def latency(server: str, api: str, n: int) -> list[tuple[float, float]]:
    from tests.support.server import alert_payload

    results = []
    for i in range(n):
        host = f"web-{i % 10 + 1}"
        payload = alert_payload("ServiceDown", host, fingerprint=f"lat-{i}-{time.time_ns()}",
                                starts_at=datetime.utcnow().isoformat() + "Z")
        sent = time.time()
        response = httpx.post(f"{server}/alertmanager", json=payload, timeout=30, headers=_auth())
        answered = time.time()
        entry = response.json()["alerts"][0]
        if entry.get("result") != "started":
            raise SystemExit(f"bench: alert {i} did not start a run: {entry}")
        began = first_stage_started(api, entry["flow_run_id"])
        results.append((answered - sent, began - sent))
        time.sleep(6)  # let the run finish (healthy host: detect settles in 5 s) before the next
    return results


class Answer(NamedTuple):
    status: int
    body: dict


async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def _post(pool: asyncio.Queue, where: tuple[str, int], path: str, body: bytes) -> Answer:
    """One POST on a kept-alive connection: about as cheap for the sender as Alertmanager's Go client."""
    reader, writer = await pool.get()
    try:
        auth = _auth().get("authorization", "").encode()  # the intake credential (issue 11)
        writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nAuthorization: %s\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (path.encode(), where[0].encode(), where[1], auth, len(body), body))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        data = await reader.readexactly(int(length.group(1))) if length else b"{}"
        pool.put_nowait((reader, writer))
        return Answer(int(head.split(b" ", 2)[1]), json.loads(data))
    except BaseException:
        writer.close()
        pool.put_nowait(await _open(*where))
        raise


async def storm(server: str, hosts: int, per_host: int, seconds: float) -> tuple[list[Answer | BaseException], float]:
    """Send hosts × per_host notifications on a fixed timetable over `seconds`; (answers, time to send).

    With httpx's AsyncClient the sender itself needed 16 s for the 1,000 next to a 50-host lab (measured),
    so this one writes raw HTTP/1.1 on 32 kept-alive connections, about as cheaply as Alertmanager."""
    from tests.support.server import alert_payload

    bodies = [json.dumps(alert_payload("ServiceDown", f"web-{h}", fingerprint=f"storm-{h}",
                                       starts_at="2026-11-22T05:00:00Z")).encode() for h in range(1, hosts + 1)]
    where = (server.split("//")[1].split(":")[0], int(server.rsplit(":", 1)[1]))
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(32):
        pool.put_nowait(await _open(*where))
    total = hosts * per_host
    gap = seconds / total
    loop = asyncio.get_running_loop()
    tasks = []
    began = loop.time()
    for i in range(total):
        tasks.append(asyncio.create_task(_post(pool, where, "/alertmanager", bodies[i % hosts])))
        # on a fixed timetable: a sleep per send would add this loop's own delays to every gap
        await asyncio.sleep(max(0.0, began + (i + 1) * gap - loop.time()))
    sent = loop.time() - began
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return answers, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=7, help="latency samples")
    args = parser.parse_args()

    from medic_lab import control
    from tests.support.server import medic_server

    os.environ.update(MEDIC_LAB_DIR=str(LAB_DIR), MEDIC_LAB_BASE_PORT=str(BASE_PORT))
    try:
        print("bench: starting a 50-host lab …", flush=True)
        lab = control.up(LAB_DIR, hosts=50, base_port=BASE_PORT, webhook_url="http://127.0.0.1:9/unused")
        os.environ["PREFECT_API_URL"] = lab.prefect_api_url
        with tempfile.TemporaryDirectory(prefix="medic-bench-state-") as state, medic_server(Path(state)) as srv:
            print(f"bench: medic serve at {srv.url}", flush=True)
            samples = latency(srv.url, lab.prefect_api_url, args.n)
            acks = [a for a, _ in samples]
            firsts = [f for _, f in samples]
            print(f"\nwebhook answered:                median {statistics.median(acks) * 1000:6.0f} ms "
                  f"(max {max(acks) * 1000:.0f} ms)")
            print(f"webhook → first stage executing: median {statistics.median(firsts) * 1000:6.0f} ms "
                  f"(max {max(firsts) * 1000:.0f} ms)  n={len(firsts)}")
            print(f"  vs Event-Driven Ansible ~1100 ms: {1.1 / statistics.median(firsts):.1f}x faster; "
                  f"vs serve() polling 5000-12000 ms: {5 / statistics.median(firsts):.0f}-"
                  f"{12 / statistics.median(firsts):.0f}x faster")

            began = time.monotonic()
            responses, sent = asyncio.run(storm(srv.url, hosts=50, per_host=20, seconds=10))
            took = time.monotonic() - began
            answered = [r for r in responses if isinstance(r, Answer)]
            errors = [r for r in responses if not isinstance(r, Answer) or r.status != 200]
            results = Counter(r.body["alerts"][0]["result"] for r in answered)
            started_per_target = Counter(r.body["alerts"][0]["target"] for r in answered
                                         if r.body["alerts"][0]["result"] == "started")
            settle = time.monotonic()
            while httpx.get(f"{srv.url}/healthz?verbose=1", headers=_auth()).json()["active_runs"] \
                    and time.monotonic() - settle < 300:
                time.sleep(1)  # queued and rate-limited runs finish before we count
            runs = httpx.post(f"{lab.prefect_api_url}/flow_runs/filter", json={
                "flow_runs": {"tags": {"all_": ["medic-serve"]}, "name": {"like_": "service-down on web-"}},
                "limit": 200}).json()
            storm_runs = Counter(r["parameters"]["target"] for r in runs if "storm" in r["parameters"].get("reason", ""))
            print(f"\nstorm: {len(responses)} notifications over 50 targets sent in {sent:.1f} s, "
                  f"last answered after {took:.1f} s")
            print(f"  acknowledged (HTTP 200): {len(responses) - len(errors)}/{len(responses)}")
            print(f"  results: {dict(results)}")
            details = Counter(r.body["alerts"][0].get("detail", "")[:160] for r in answered
                              if r.body["alerts"][0]["result"] == "error")
            for detail, count in details.most_common(3):
                print(f"  error ×{count}: {detail}")
            print(f"  runs started: {sum(started_per_target.values())}, targets with exactly one run: "
                  f"{sum(1 for c in storm_runs.values() if c == 1)}/50, with more than one: "
                  f"{sum(1 for c in storm_runs.values() if c > 1)}, lost (no run): {50 - len(storm_runs)}")
            srv.stop()
    finally:
        control.down(LAB_DIR)


if __name__ == "__main__":
    main()
