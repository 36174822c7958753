#!/usr/bin/env python3
"""Open-loop load through the lab's HAProxy, with profiles, for the capacity controller (issue 15).

Open loop: requests are sent at Poisson arrival times of the profile's rate, whatever the answers do
(a slow backend does not slow the sender down — as with real users). Latency is measured from the
*scheduled* send time, so a backlog in the sender counts too (no coordinated omission).

Each request is ``GET /?work_ms=W``: W ms of one backend's single worker (the capacity model of
lab/host/webapp.py: requests queue FIFO per instance, so one instance serves at most 1000/W req/s and
its latency grows as its load nears that; over MAX_QUEUE_S of queue it answers 503).

Profiles (``--profile``):
- ``step``: ``--low`` req/s, ``--high`` from ``--rise-at`` s until ``--fall-at`` s, then ``--low``;
- ``noisy``: ``--rate`` req/s × a factor drawn uniformly in 1 ± ``--noise`` every ``--noise-period`` s;
- ``ramp``: linear from ``--low`` to ``--high`` over ``--duration``.

At the end (``--duration`` s, or SIGTERM/SIGINT) it writes ``--out``: one JSON object with the
per-second series (by send second: offered rate, sent, ok, errors, p50/p95 ms) and totals. Stdlib only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def rate_at(args: argparse.Namespace, t: float, noise: list[float]) -> float:
    """The offered rate (req/s) of the profile at `t` seconds into the run."""
    if args.profile == "step":
        return args.high if args.rise_at <= t < args.fall_at else args.low
    if args.profile == "ramp":
        return args.low + (args.high - args.low) * min(1.0, t / max(args.duration, 1e-9))
    return args.rate * noise[min(int(t / args.noise_period), len(noise) - 1)]


def one_request(port: int, work_ms: float, timeout: float) -> int:
    """Status code of one request (0: no answer: refused, reset or timed out)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", f"/?work_ms={work_ms:g}")
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="HAProxy's frontend port")
    parser.add_argument("--profile", choices=("step", "noisy", "ramp"), required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--low", type=float, default=20.0)
    parser.add_argument("--high", type=float, default=60.0)
    parser.add_argument("--rise-at", type=float, default=30.0)
    parser.add_argument("--fall-at", type=float, default=90.0)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--noise", type=float, default=0.25)
    parser.add_argument("--noise-period", type=float, default=2.0)
    parser.add_argument("--work-ms", type=float, default=40.0, help="work per request on one backend")
    parser.add_argument("--timeout", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True, help="where to write the JSON summary")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    noise = [rng.uniform(1 - args.noise, 1 + args.noise) for _ in range(int(args.duration / args.noise_period) + 2)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    records: list[tuple[float, float, int]] = []  # (scheduled offset s, latency s, status)
    lock = threading.Lock()
    began = time.monotonic()

    def send(offset: float) -> None:
        status = one_request(args.port, args.work_ms, args.timeout)
        latency = time.monotonic() - (began + offset)
        with lock:
            records.append((offset, latency, status))

    pool = ThreadPoolExecutor(max_workers=400, thread_name_prefix="loadgen")
    offset = 0.0
    while not stop.is_set():
        offset += rng.expovariate(max(rate_at(args, offset, noise), 1e-6))
        if offset >= args.duration:
            break
        if stop.wait(max(0.0, began + offset - time.monotonic())):
            break
        pool.submit(send, offset)
    pool.shutdown(wait=True, cancel_futures=False)

    seconds = math.ceil(min(args.duration, time.monotonic() - began))
    per_second = []
    for s in range(seconds):
        batch = [r for r in records if s <= r[0] < s + 1]
        ok = [r[1] for r in batch if r[2] == 200]
        per_second.append({
            "t": s, "offered_rps": round(rate_at(args, s + 0.5, noise), 2), "sent": len(batch), "ok": len(ok),
            "errors": len(batch) - len(ok),
            "p50_ms": round(1000 * quantile(ok, 0.5), 1) if ok else None,
            "p95_ms": round(1000 * quantile(ok, 0.95), 1) if ok else None,
        })
    total_ok = sum(p["ok"] for p in per_second)
    summary = {"profile": args.profile, "duration_s": args.duration, "work_ms": args.work_ms,
               "sent": len(records), "ok": total_ok, "errors": len(records) - total_ok, "per_second": per_second}
    with open(args.out, "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main()
