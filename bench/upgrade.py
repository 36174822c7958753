"""Canary upgrades under traffic: time to roll a bad version back, false rollbacks, failed requests.

Starts its own lab (``--hosts``, default 10; base port ``--base-port``) and always stops it. Sends
steady traffic through HAProxy the whole time and counts every failed request itself. Then runs the
real `upgrade` flow (deployment defaults: canary 10 %, batches 50 %, gate both, 3 checks × 5 s):

* ``--bad`` times each bad version (v2-crash, v2-errors, v2-slow): seconds from the canary serving to
  the failure being seen and to the previous version serving everywhere; failed requests while the
  bad canary served;
* ``--good`` times a good upgrade (alternately v1 → v2 and v2 → v1): completed or (false) rollback,
  duration, failed requests during the run;
* for v2-slow, once per bad round, a *shadow* canary outside the flow: both gates evaluated every
  interval on the same canary over the same seconds until each says no (or 60 s): the baseline gate
  (Mann–Whitney) against the threshold gate at its default p95 limit and at a tight one (1.25 × the
  group's p95 just before), each with failure limit 1.

    .venv/bin/python bench/upgrade.py [--hosts 10] [--bad 20] [--good 50] [--base-port 24000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAB_DIR = Path("/tmp/medic-lab-upgrade-bench")
BAD = ("v2-crash", "v2-errors", "v2-slow")


class Traffic:
    """Requests through HAProxy at a steady pace from a few threads; every answer recorded (time, ok)."""

    def __init__(self, url: str, rate: float, threads: int = 4) -> None:
        self.url, self.pause, self.threads = url, threads / rate, threads
        self.results: list[tuple[float, bool]] = []
        self.lock, self.stop = threading.Lock(), threading.Event()

    def _loop(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self.lock:
                    self.results.append((time.time(), ok))
                self.stop.wait(self.pause)

    def start(self) -> None:
        for _ in range(self.threads):
            threading.Thread(target=self._loop, daemon=True).start()

    def between(self, start: float, end: float) -> tuple[int, int]:
        """(failed, total) answered between two wall-clock times."""
        with self.lock:
            window = [ok for t, ok in self.results if start <= t <= end]
        return sum(1 for ok in window if not ok), len(window)


def _upgrade(**params: object):
    from flows.upgrade import upgrade
    from medic.orchestration.runs import run_flow_now

    return asyncio.run(run_flow_now(upgrade, params)).result


def _shadow_slow(interval: float, limit_s: float = 60.0) -> dict[str, float | None]:
    """One v2-slow canary outside the flow: seconds from serving until each gate says no (None: never)."""
    from medic.clients.prometheus import PrometheusClient
    from medic.core.inventory import load_inventory
    from medic.procedures import upgrade as up
    from medic.procedures.upgrade_analysis import GateSettings, baseline_check, threshold_check
    from medic.settings import get_settings

    hosts = load_inventory().resolve("web")
    by_name = {h.name: h for h in hosts}
    prom = PrometheusClient(get_settings().prometheus_url)
    before = up.versions_serving(prom, list(by_name))
    group_p95 = prom.value('histogram_quantile(0.95, sum by (le) (rate(demo_request_duration_seconds_bucket{job="web"}[30s])))')
    gates = {"baseline": GateSettings(), "threshold": GateSettings(),
             "threshold-tight": GateSettings(max_p95_s=round(1.25 * (group_p95 or 0.01), 4))}
    steps = up.records([hosts[0]], 0)
    found: dict[str, float | None] = {name: None for name in gates}
    failures = {name: 0 for name in gates}
    try:
        up.drain(steps, timeout=10)
        assert not up.install(steps, by_name, "v2-slow")
        up.serve(steps, weight_pct=10)
        assert up.wait_serving(steps, prom, "v2-slow", timeout=10) is None
        serving = time.time()
        names, baseline = [hosts[0].name], [h.name for h in hosts[1:]]
        while time.time() - serving < limit_s and any(v is None for v in found.values()):
            time.sleep(interval - (time.time() - serving) % interval)  # the analysis cadence
            for name, g in gates.items():
                if found[name] is not None:
                    continue
                check = (baseline_check(prom, names, baseline, g, since=serving) if name == "baseline"
                         else threshold_check(prom, names, g, interval))
                failures[name] += not check.passed
                if failures[name] > (0 if name == "baseline" else g.failure_limit):
                    found[name] = round(time.time() - serving, 1)
    finally:
        up.rollback(steps, by_name, before)
        prom.close()
    found["tight_p95_ms"] = gates["threshold-tight"].max_p95_s * 1000
    return found


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "—"
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))]:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--bad", type=int, default=20, help="upgrades to each bad version")
    parser.add_argument("--good", type=int, default=50, help="good upgrades")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second through HAProxy")
    parser.add_argument("--base-port", type=int, default=24000)
    args = parser.parse_args()

    os.environ.update(MEDIC_LAB_DIR=str(LAB_DIR), MEDIC_LAB_BASE_PORT=str(args.base_port),
                      PREFECT_API_URL=f"http://127.0.0.1:{args.base_port + 10}/api",
                      PREFECT_LOGGING_TO_API_ENABLED="false")
    from medic_lab import control
    from medic_lab.state import LabState

    shutil.rmtree(LAB_DIR, ignore_errors=True)
    began = time.monotonic()
    try:
        control.up(LAB_DIR, hosts=args.hosts, base_port=args.base_port, webhook_url="http://127.0.0.1:9/unused")
        lab = LabState.load(LAB_DIR)
        traffic = Traffic(f"http://127.0.0.1:{lab.ports.haproxy}/", args.rate)
        traffic.start()
        time.sleep(20)  # let Prometheus gather a baseline of every host (rate windows, the p95 history)
        bad: dict[str, list] = {v: [] for v in BAD}
        good, shadows = [], []
        target = "v2"
        for i in range(max(args.bad, args.good)):
            for version in BAD if i < args.bad else ():
                r = _upgrade(version=version)
                failed, total = traffic.between(r.canary_serving_at.timestamp() if r.canary_serving_at else 0,
                                                r.rollback_done_at.timestamp() if r.rollback_done_at else 0)
                bad[version].append((r, failed, total))
                print(f"{version}: {'rolled back' if r.rolled_back else r.outcome.value} — detected "
                      f"{r.seconds(r.failure_seen_at)} s, back {r.seconds(r.rollback_done_at)} s; "
                      f"{failed}/{total} failed; {r.rollback_reason[:90]}", flush=True)
                if version == "v2-slow":
                    shadows.append(_shadow_slow(5.0))
                    print(f"  shadow v2-slow canary: {shadows[-1]}", flush=True)
            if i < args.good:
                t0 = time.time()
                r = _upgrade(version=target)
                failed, total = traffic.between(t0, time.time())
                good.append((r, failed, total, time.time() - t0))
                print(f"{target} (good): {r.outcome.value}{' — FALSE ROLLBACK: ' + r.rollback_reason if r.rolled_back else ''}"
                      f"; {time.time() - t0:.0f} s; {failed}/{total} failed", flush=True)
                if not r.rolled_back:
                    target = "v1" if target == "v2" else "v2"
        traffic.stop.set()
        _table(args, bad, good, shadows, time.monotonic() - began)
    finally:
        control.down(LAB_DIR)
        shutil.rmtree(LAB_DIR, ignore_errors=True)
    return 0


def _table(args: argparse.Namespace, bad: dict[str, list], good: list, shadows: list[dict], took: float) -> None:
    print(f"\n## Upgrades on {args.hosts} hosts under {args.rate:g} req/s through HAProxy ({took / 60:.0f} min)\n")
    print("| version | runs | rolled back | serving → failure seen, s (p50 / max) | serving → previous version "
          "everywhere, s (p50 / max) | failed requests while the bad canary served |")
    print("|---|---|---|---|---|---|")
    for version, runs in bad.items():
        seen = [r.seconds(r.failure_seen_at) for r, _, _ in runs if r.rolled_back]
        back = [r.seconds(r.rollback_done_at) for r, _, _ in runs if r.rolled_back]
        failed, total = sum(f for _, f, _ in runs), sum(t for _, _, t in runs)
        print(f"| {version} | {len(runs)} | {sum(r.rolled_back for r, _, _ in runs)} | {_pct(seen, 0.5)} / {_pct(seen, 1)} | "
              f"{_pct(back, 0.5)} / {_pct(back, 1)} | {failed}/{total} ({100 * failed / max(total, 1):.2f} %) |")
    if good:
        failed, total = sum(f for _, f, _, _ in good), sum(t for _, _, t, _ in good)
        print(f"| good (v1 ⇄ v2) | {len(good)} | {sum(r.rolled_back for r, *_ in good)} false | "
              f"run {_pct([d for *_, d in good], 0.5)} s (p50) | — | {failed}/{total} "
              f"({100 * failed / max(total, 1):.2f} %) during the runs |")
    if shadows:
        print("\n### v2-slow (+50 % latency), the same canary judged by each gate (seconds from serving; failure limit 1 "
              "for the thresholds)\n")
        print("| gate | caught | p50 s | max s |")
        print("|---|---|---|---|")
        for name in ("baseline", "threshold", "threshold-tight"):
            got = [s[name] for s in shadows if s[name] is not None]
            label = {"baseline": "baseline (Mann–Whitney vs the other hosts)", "threshold": "threshold p95 ≤ 25 ms (default)",
                     "threshold-tight": f"threshold p95 ≤ 1.25 × group p95 (~{statistics.mean(s['tight_p95_ms'] for s in shadows):.1f} ms)"}[name]
            print(f"| {label} | {len(got)}/{len(shadows)} | {_pct(got, 0.5)} | {_pct(got, 1)} |")


if __name__ == "__main__":
    sys.exit(main())
