#!/usr/bin/env python3
"""Shared state in Prefect: what an audit write, an audit read, a card change and a flap-guard
question cost, and how card changes from several processes serialise.

    .venv/bin/python bench/shared_state.py [--api URL] [--n 50] [--writers 2]

Without --api it starts its own embedded (SQLite) Prefect under a temp dir on a free port and
stops it afterwards; with --api it uses that server (e.g. the cluster's PostgreSQL one). Prints
median / p90 / max per operation, and card changes per second with W concurrent processes.
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
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHANGER = """
import sys, time
from medic.approval.card_store import CardStore
run, n = sys.argv[1], int(sys.argv[2])
store = CardStore()
store.get(run)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(n):
    store.change(run, lambda r: r.model_copy(update={"consumed": r.consumed + 1}))
"""


def _figures(name: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    print(f"{name:<34} n={len(ms):<4} median {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   max {ms[-1]:7.1f} ms")


def _timed(n: int, op: Callable[[int], object]) -> list[float]:
    took = []
    for i in range(n):
        began = time.perf_counter()
        op(i)
        took.append(time.perf_counter() - began)
    return took


def measure(n: int, writers: int) -> None:
    from medic.approval.card_store import CardRecord, CardStore
    from medic.clients.slack import ApprovalCard
    from medic.core.audit import AuditRecord
    from medic.orchestration.audit_store import read_records, record
    from medic.orchestration.flap_guard import FlapGuard

    run_id, runbook = str(uuid.uuid4()), f"bench-{uuid.uuid4().hex[:6]}"
    record(AuditRecord(kind="decision", who="bench", what="warm-up"))  # connection and imports
    _figures("audit write (confirmed)", _timed(n, lambda i: record(AuditRecord(
        kind="intent", flow_run_id=run_id, runbook=runbook, target=f"web-{i % 5}", who="bench", what="restart"))))
    _figures(f"audit read, one run ({n} records)", _timed(20, lambda i: read_records(flow_run_id=run_id)))
    _figures("audit read, newest 50", _timed(20, lambda i: read_records(limit=50)))
    guard = FlapGuard(max_runs=3, window_s=3600)
    _figures("flap guard tripped()", _timed(20, lambda i: asyncio.run(guard.tripped((runbook, "web-1")))))

    card = ApprovalCard(title="bench", runbook=runbook, targets=["web-1"], detect_query="up == 0", detect_value="0",
                        diagnosis_summary="stopped", planned_action="restart", flow_run_id=run_id,
                        flow_run_url="http://127.0.0.1/", deadline=datetime.now(timezone.utc) + timedelta(hours=1))
    store = CardStore()
    store.change(run_id, lambda _: CardRecord(flow_run_id=run_id, card=card))
    _figures("card read", _timed(n, lambda i: store.get(run_id)))
    _figures("card change (mutex + read + write)", _timed(n, lambda i: store.change(
        run_id, lambda r: r.model_copy(update={"consumed": r.consumed + 1}))))

    before = store.get(run_id).consumed
    procs = [subprocess.Popen([sys.executable, "-c", CHANGER, run_id, str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(writers)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        began = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        codes = [p.wait(timeout=600) for p in procs]
        took = time.perf_counter() - began
    finally:
        for p in procs:
            p.kill()
    after = store.get(run_id).consumed
    print(f"{writers} processes × {n} card changes: {writers * n / took:.1f} changes/s, exit codes {codes}, "
          f"lost updates {writers * n - (after - before)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", help="use this Prefect API instead of starting an embedded one")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--writers", type=int, default=2)
    args = parser.parse_args()
    if args.api:
        os.environ["PREFECT_API_URL"] = args.api
        measure(args.n, args.writers)
        return 0
    from medic.core.net import free_port
    from medic.orchestration.embedded_server import EmbeddedPrefect

    with tempfile.TemporaryDirectory(prefix="medic-bench-state-") as home:
        with EmbeddedPrefect(Path(home), port=free_port()) as server:
            os.environ["PREFECT_API_URL"] = server.api_url
            print(f"embedded Prefect (SQLite) at {server.api_url}")
            measure(args.n, args.writers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
