#!/usr/bin/env python3
"""Time to recover per runbook, split into: waiting for metrics, remote work, medic's own overhead.

For each runbook, N times: inject the fault, wait until Prometheus shows it, then run the flow and
take the split from the incident report (detect/verify waits = metrics; diagnose + recover, and the
check-mode preview on an approval card = remote work; everything else = medic). Three ways to run:

  cli   — `medic run --local`: a fresh Python process runs the flow itself (interpreter + imports included)
  thin  — `medic run` with a `medic serve` running: the CLI streams the stages from the warm server
  warm  — in a long-lived process, as `medic serve` runs alert-triggered remediations
thin and warm start with one uncounted run: a serving process has paid its imports and first-run
set-up long before the alert that matters (that first run is printed apart).

Starts its own lab (base port 16000, /tmp/medic-lab-bench) and always stops it, unless --lab-dir
points at a running one. Approval (disk-full) is answered at once by the script, and that wait is
reported apart. Usage: .venv/bin/python bench/remediate.py [-n 3] [--mode cli|thin|warm|all]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medic.core.net import free_port  # noqa: E402
from medic.core.polling import wait_until  # noqa: E402
from medic.errors import WaitTimeout  # noqa: E402

CASES = [("service-down", "service-down", "web-2", 'up{job="web",host="web-2"} == 0'),
         ("disk-full", "disk-full", "web-1",
          'demo_data_dir_used_bytes{host="web-1"} / demo_data_dir_capacity_bytes{host="web-1"} > 0.9'),
         ("high-latency", "slow", "web-3", 'ALERTS{alertname="HighLatency",host="web-3",alertstate="firing"}')]


def split(report: dict, wall: float) -> dict[str, float]:
    metrics = (report["detect"] or {}).get("waited_s", 0) + ((report.get("verify") or {}).get("waited_s", 0))
    remote = ((report.get("diagnosis") or {}).get("duration_s", 0) + ((report.get("recovery") or {}).get("duration_s", 0))
              + (report.get("approval") or {}).get("preview_s", 0))  # the check-mode run shown on the card
    human = (report.get("approval") or {}).get("waited_s", 0)
    return {"total": wall, "metrics": metrics, "remote": remote, "human": human,
            "overhead": wall - metrics - remote - human}


def wait_for(prom_url: str, promql: str, timeout: float = 60) -> None:
    import httpx

    def result() -> list:
        return httpx.get(f"{prom_url}/api/v1/query", params={"query": promql}).json()["data"]["result"]

    try:
        wait_until(result, what=f"the fault showing in Prometheus: {promql}", timeout=timeout, interval=0.2)
    except WaitTimeout as exc:
        raise SystemExit(f"bench: {exc}") from None


def run_cli(runbook: str, target: str, *, local: bool = True) -> tuple[dict, float]:
    report_path = Path(tempfile.mkstemp(suffix=".json")[1])
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "medic", "run", runbook, "--target", target,
                             "--report", str(report_path), *(["--local"] if local else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ)
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:
        output.append(line)
        if "medic approve " in line:
            run_id = line.split("medic approve ", 1)[1].split("`")[0]
            subprocess.run([sys.executable, "-m", "medic", "approve", run_id], capture_output=True, check=True)
    proc.wait()
    wall = time.perf_counter() - began
    if not report_path.read_text().strip():
        raise SystemExit(f"bench: `medic run {runbook}` left no report (exit {proc.returncode}):\n{''.join(output)}")
    report = json.loads(report_path.read_text())
    report_path.unlink()
    return report, wall


def run_warm(runbook: str, target: str) -> tuple[dict, float]:
    from tests.support.flows import remediate, remediate_and_decide

    os.environ.setdefault("MEDIC_APPROVAL_KEY", f"bench-{os.urandom(16).hex()}")  # approvals are verified (issue 11)
    from medic.settings import get_settings

    get_settings.cache_clear()

    began = time.perf_counter()
    if runbook == "disk-full":
        _, report, _ = asyncio.run(remediate_and_decide(
            runbook, target, [{"decision": "approve", "approver": "alice"}]))
    else:
        _, report = remediate(runbook, target)
    return json.loads(report.model_dump_json()), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=3)
    parser.add_argument("--mode", choices=["cli", "thin", "warm", "all"], default="all")
    parser.add_argument("--lab-dir", help="use this running lab instead of starting one")
    args = parser.parse_args()

    from medic_lab import control, faults
    from medic.settings import get_settings

    own_lab = args.lab_dir is None
    lab_dir = Path(args.lab_dir or "/tmp/medic-lab-bench")
    os.environ["MEDIC_LAB_DIR"] = str(lab_dir)
    if own_lab:
        os.environ["MEDIC_LAB_BASE_PORT"] = "16000"
    get_settings.cache_clear()
    cleanup = contextlib.ExitStack()
    try:
        if own_lab:
            print("bench: starting a lab of 3 hosts …", flush=True)
            lab = control.up(lab_dir, hosts=3, base_port=16000, webhook_url="http://127.0.0.1:9/unused")
        else:
            lab = control.require_lab(lab_dir)
        os.environ["PREFECT_API_URL"] = lab.prefect_api_url
        from medic.cli.run import use_prefect_api

        use_prefect_api(get_settings())
        modes = ["cli", "thin", "warm"] if args.mode == "all" else [args.mode]
        rows: list[tuple[str, str, dict[str, float], str]] = []
        if "thin" in modes:  # `medic run` then talks to this server; stopped and removed in `finally`
            from tests.support.server import medic_server

            os.environ["MEDIC_SERVER_PORT"] = str(free_port())
            state = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="medic-bench-serve-"))
            cleanup.enter_context(medic_server(Path(state), port=int(os.environ["MEDIC_SERVER_PORT"])))
        for mode in modes:
            if mode != "cli":  # a serving process has run flows before the alert that matters
                runbook, fault, host, visible = CASES[0]
                faults.break_host(lab, fault, host)
                wait_for(lab.prometheus_url, visible)
                report, wall = run_warm(runbook, host) if mode == "warm" else run_cli(runbook, host, local=False)
                print(f"  {mode} first run of the serving process (imports, clients; not counted): "
                      f"{report['outcome']} {wall:5.2f} s, medic {split(report, wall)['overhead']:.2f} s", flush=True)
            for runbook, fault, host, visible in CASES:
                for i in range(args.n):
                    faults.break_host(lab, fault, host)
                    wait_for(lab.prometheus_url, visible)
                    if mode == "warm":
                        report, wall = run_warm(runbook, host)
                    else:
                        report, wall = run_cli(runbook, host, local=mode == "cli")
                    if report["outcome"] != "recovered":
                        faults.fix_host(lab, fault, host)
                    rows.append((mode, runbook, split(report, wall), report["outcome"]))
                    print(f"  {mode:<4} {runbook:<13} #{i + 1}: {report['outcome']:<10} {wall:5.2f} s", flush=True)
        print()
        print(f"{'mode':<5} {'runbook':<13} {'n':>2} {'total':>7} {'metrics':>8} {'remote':>7} {'human':>6} "
              f"{'medic':>7}   (median seconds)")
        for mode in modes:
            for runbook, *_ in CASES:
                picked = [r[2] for r in rows if r[0] == mode and r[1] == runbook]
                med = {k: statistics.median(p[k] for p in picked) for k in picked[0]}
                print(f"{mode:<5} {runbook:<13} {len(picked):>2} {med['total']:>7.2f} {med['metrics']:>8.2f} "
                      f"{med['remote']:>7.2f} {med['human']:>6.2f} {med['overhead']:>7.2f}")
        print("\nmetrics = detect + verify waiting on Prometheus; remote = SSH diagnosis + playbook; "
              "human = approval wait;\nmedic = everything else (process start and imports for cli, Prefect "
              "bookkeeping, artifacts).")
        print("peer: a sync Prefect flow run alone pays ~1.1 s at exit; medic's flow is async and pays none.")
    finally:
        cleanup.close()
        if own_lab:
            control.down(lab_dir)


if __name__ == "__main__":
    main()
