"""Adaptive capacity vs Kubernetes' HPA rule on the same lab, under a step load and a noisy constant load.

Starts its own lab (8 web hosts, base port 25350, /tmp/medic-lab-capacity-bench) and always stops it
(or uses a running one: --lab-dir/--base-port). For each load profile, each controller in turn
starts from the same instances and controls the web group through the same loop as flows/capacity.py
(HAProxy ready/maint + servicectl start/stop over SSH; decisions every 1.5 s; the HPA rule's 15 s and
300 s divided by 10), while lab/loadgen.py sends open-loop traffic through HAProxy (40 ms of a
backend's single worker per request: 25 req/s per instance at most).

Prints per run: overshoot (most instances in the high phase − where it settled), settling time
(step → last change of the phase), direction reversals per hour, seconds the users' p95 (measured by
the load generator, per second) was over the target, failed requests. Writes docs/capacity.png
(instances and p95 over time, both controllers) and docs/capacity.json (the series).

    .venv/bin/python bench/capacity.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LAB_DIR = Path("/tmp/medic-lab-capacity-bench")
BASE_PORT = 25350
TARGET_S = 0.25
PERIOD_S = 1.5
START_WITH = 2


def _point_at_lab(lab_dir: Path, base: int) -> None:
    os.environ["MEDIC_LAB_DIR"] = str(lab_dir)
    os.environ["MEDIC_LAB_BASE_PORT"] = str(base)
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{base + 10}/api"


def profiles(quick: bool) -> dict[str, dict]:
    k = 0.5 if quick else 1.0
    return {
        "step": {"args": ["--profile", "step", "--low", "20", "--high", "70", "--rise-at", str(30 * k),
                          "--fall-at", str(120 * k)], "duration": 210 * k, "rise": 30 * k, "fall": 120 * k},
        "noisy": {"args": ["--profile", "noisy", "--rate", "50", "--noise", "0.25"], "duration": 180 * k},
    }


def run_one(name: str, profile: dict, controller_name: str, pool, prom, haproxy_port: int) -> dict:
    from flows.capacity import make_controller
    from medic.procedures.capacity import CapacityLimits
    from medic.procedures.capacity_loop import run_loop

    for host, change in pool.plan(START_WITH):  # everyone starts from the same instances
        assert pool.apply(host, change).ok
    limits = CapacityLimits(min_instances=1, max_instances=len(pool.hosts), max_step=2, cooldown_s=6)
    controller = make_controller(controller_name, target_s=TARGET_S, limits=limits, hpa_time_scale=10)
    out = Path(tempfile.mkdtemp(prefix="medic-capacity-")) / "load.json"
    load = subprocess.Popen([sys.executable, str(ROOT / "lab" / "loadgen.py"), "--port", str(haproxy_port),
                             "--duration", str(profile["duration"]), "--out", str(out), *profile["args"]])
    audit: list = []
    try:
        run = run_loop(controller, pool, prom, group="web", period_s=PERIOD_S, duration_s=profile["duration"],
                       recommend_only=False, audit=lambda entry, _closed: audit.append(entry))
        load.wait(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
    users = json.loads(out.read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    return {"profile": name, "controller": controller_name, "users": users,
            "ticks": [{"t": d.at, "instances": d.desired, "p95_s": d.p95_s, "reason": d.reason}
                      for d in run.decisions], "audited": len(audit)}


def figures(result: dict, profile: dict) -> dict:
    ticks, per_second = result["ticks"], result["users"]["per_second"]
    changes = [(t["t"], t["instances"]) for prev, t in zip(ticks, ticks[1:]) if t["instances"] != prev["instances"]]
    signs = [1 if b["instances"] > a["instances"] else -1 for a, b in zip(ticks, ticks[1:]) if a["instances"] != b["instances"]]
    reversals = sum(1 for a, b in zip(signs, signs[1:]) if a != b)
    hours = profile["duration"] / 3600
    over = sum(1 for p in per_second if p["p95_ms"] is not None and p["p95_ms"] > TARGET_S * 1000)
    out = {"reversals": reversals, "reversals_per_h": reversals / hours, "over_target_s": over,
           "errors": result["users"]["errors"], "sent": result["users"]["sent"], "changes": len(changes)}
    if "rise" in profile:
        high = [t["instances"] for t in ticks if profile["rise"] <= t["t"] < profile["fall"]]
        out["overshoot"] = max(high) - high[-1]
        out["settled_high"] = high[-1]
        in_high = [t for t, _n in changes if profile["rise"] <= t < profile["fall"]]
        in_low = [t for t, _n in changes if t >= profile["fall"]]
        out["settle_up_s"] = (in_high[-1] - profile["rise"]) if in_high else 0.0
        out["settle_down_s"] = (in_low[-1] - profile["fall"]) if in_low else None
        out["settled_low"] = ticks[-1]["instances"]
    return out


def chart(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = sorted({r["profile"] for r in results}, key=["step", "noisy"].index)
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 6), sharex="col", squeeze=False)
    colors = {"adaptive": "tab:blue", "hpa": "tab:red"}
    for col, name in enumerate(names):
        for r in (r for r in results if r["profile"] == name):
            c, label = colors[r["controller"]], "ours" if r["controller"] == "adaptive" else "HPA rule"
            axes[0][col].step([t["t"] for t in r["ticks"]], [t["instances"] for t in r["ticks"]], where="post",
                              color=c, label=label)
            ps = [p for p in r["users"]["per_second"] if p["p95_ms"] is not None]
            axes[1][col].plot([p["t"] for p in ps], [p["p95_ms"] for p in ps], color=c, lw=0.9, label=label)
        axes[0][col].set_title(f"{name} load" + (" (20 → 70 → 20 req/s)" if name == "step" else " (50 req/s ± 25 %)"))
        axes[0][col].yaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][col].set_ylabel("instances taking traffic")
        axes[1][col].axhline(TARGET_S * 1000, color="gray", ls="--", lw=0.8, label="target")
        axes[1][col].set_yscale("log")
        axes[1][col].set_ylabel("users' p95 per second (ms)")
        axes[1][col].set_xlabel("seconds")
        axes[0][col].legend(loc="upper right")
        axes[1][col].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab-dir", type=Path, help="use this running lab instead of starting one")
    parser.add_argument("--base-port", type=int, default=BASE_PORT)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="half-length phases (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "capacity.png")
    parser.add_argument("--replot", action="store_true", help="only draw the chart again from the .json next to --out")
    args = parser.parse_args()
    if args.replot:
        chart(json.loads(args.out.with_suffix(".json").read_text()), args.out)
        return 0
    lab_dir = args.lab_dir or LAB_DIR
    _point_at_lab(lab_dir, args.base_port)
    from medic_lab import control

    if not args.lab_dir:
        control.down(lab_dir)
        control.up(lab_dir, hosts=args.hosts, base_port=args.base_port, webhook_url="http://127.0.0.1:9/unused",
                   with_prefect=False)
    try:
        return _bench(args, lab_dir)
    finally:
        if not args.lab_dir:
            control.down(lab_dir)


def _bench(args: argparse.Namespace, lab_dir: Path) -> int:
    from medic.clients.prometheus import PrometheusClient
    from medic.clients.ssh import SSHSession
    from medic.core.inventory import load_inventory
    from medic.procedures.capacity_pool import Pool

    results = []
    with SSHSession() as ssh, PrometheusClient() as prom:
        pool = Pool(load_inventory().resolve("web"), ssh)
        try:
            for name, profile in profiles(args.quick).items():
                for controller in ("adaptive", "hpa"):
                    print(f"… {name} load, {controller}", flush=True)
                    r = run_one(name, profile, controller, pool, prom, args.base_port + 80)
                    r["figures"] = figures(r, profile)
                    results.append(r)
        finally:
            for host, change in pool.plan(len(pool.hosts)):
                pool.apply(host, change)
    print(f"\ncapacity: target p95 {TARGET_S * 1000:.0f} ms, decisions every {PERIOD_S} s, HPA rule 15 s/300 s ÷ 10, "
          f"{len(pool.hosts)} hosts, start at {START_WITH}")
    print(f"{'load':<6} {'controller':<9} {'overshoot':>9} {'settle↑ s':>9} {'settle↓ s':>9} {'rev/h':>6} "
          f"{'s over':>7} {'changes':>7} {'failed':>11}")
    for r in results:
        f = r["figures"]
        print(f"{r['profile']:<6} {r['controller']:<9} {f.get('overshoot', '-')!s:>9} "
              f"{f.get('settle_up_s', '-') if 'settle_up_s' not in f else format(f['settle_up_s'], '.0f'):>9} "
              f"{'-' if f.get('settle_down_s') is None else format(f['settle_down_s'], '.0f'):>9} "
              f"{f['reversals_per_h']:>6.0f} {f['over_target_s']:>7} {f['changes']:>7} "
              f"{f['errors']:>5}/{f['sent']:<5}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chart(results, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(
        [{k: v for k, v in r.items()} for r in results], indent=1))
    print(f"chart: {args.out}  series: {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
