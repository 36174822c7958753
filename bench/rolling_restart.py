"""Rolling restart of a 20-host lab: time per host, total, and where the time goes.

Starts its own lab (base port 29000, /tmp/medic-lab-h6-bench) and always stops it. Runs the real
`rolling-restart` flow in batches of 5 and of 25 %, then prints the share of the run spent in the
steps that do the work (draining, restarting, health-checking) against medic's own overhead
(silences, HAProxy calls, Prefect tasks, the rest). Also times one restart by SSH against the
restart playbook, the choice `medic/rolling.py` made.

    .venv/bin/python bench/rolling_restart.py [--hosts 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

LAB_DIR = Path("/tmp/medic-lab-h6-bench")
BASE_PORT = 29000


def _point_at_lab() -> None:
    os.environ["MEDIC_LAB_DIR"] = str(LAB_DIR)
    os.environ["MEDIC_LAB_BASE_PORT"] = str(BASE_PORT)
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{BASE_PORT + 10}/api"
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"  # nothing to flush into a lab that is gone


def _restart_choice() -> None:
    from medic.clients.ansible import run_playbook
    from medic.core.inventory import load_inventory
    from medic.procedures.rolling import RESTART_COMMAND
    from medic.settings import get_settings
    from medic.clients.ssh import SSHSession
    from medic.core.templates import render_shell

    host = load_inventory().host("web-1")
    ssh_times, book_times = [], []
    with SSHSession() as ssh:
        for _ in range(3):
            t0 = time.monotonic()
            assert ssh.run(host, render_shell(RESTART_COMMAND, host)).ok
            ssh_times.append(time.monotonic() - t0)
    for _ in range(2):
        t0 = time.monotonic()
        result = run_playbook(get_settings().playbooks_dir / "restart-service.yml", hosts=[host],
                              extravars={"restart_if_running": True})
        assert result.ok, result
        book_times.append(time.monotonic() - t0)
    print(f"one restart: SSH `servicectl restart` {statistics.median(ssh_times):.2f} s, "
          f"restart-service.yml {statistics.median(book_times):.2f} s "
          f"(×{statistics.median(book_times) / statistics.median(ssh_times):.1f})")


def _run(batch_size: str, hosts: int) -> None:
    from flows.maintenance import rolling_restart
    from medic.orchestration.runs import run_flow_now

    t0 = time.monotonic()
    outcome = asyncio.run(run_flow_now(rolling_restart, {"group": "web", "batch_size": batch_size,
                                                         "reason": "bench"}))
    wall = time.monotonic() - t0
    report = outcome.result
    if outcome.state_name != "Completed":
        print(f"batch {batch_size}: {outcome.state_name}: {outcome.message}")
        return
    steps = {k: sum(getattr(b.times, k) for b in report.batches)
             for k in ("silence", "drain", "restart", "health", "ready", "unsilence")}
    work = steps["drain"] + steps["restart"] + steps["health"]
    overhead = wall - work
    print(f"batch {batch_size}: {len(report.batches)} batches, total {wall:.2f} s "
          f"(flow {report.duration_s:.2f} s), {wall / hosts:.2f} s per host")
    print("  " + ", ".join(f"{k} {v:.2f} s ({v / wall:.0%})" for k, v in steps.items()))
    print(f"  draining+restarting+health-checking {work:.2f} s ({work / wall:.0%}); "
          f"medic's own overhead {overhead:.2f} s ({overhead / wall:.0%}: silences, HAProxy calls, "
          f"Prefect tasks and run, report)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=20)
    args = parser.parse_args()
    _point_at_lab()
    from medic_lab import control

    LAB_DIR.mkdir(parents=True, exist_ok=True)
    LAB_DIR.chmod(0o755)
    try:
        t0 = time.monotonic()
        control.up(LAB_DIR, hosts=args.hosts, base_port=BASE_PORT, webhook_url="http://127.0.0.1:9/unused")
        print(f"lab with {args.hosts} web hosts + HAProxy up in {time.monotonic() - t0:.1f} s")
        _restart_choice()
        for batch_size in ("5", "25%"):
            _run(batch_size, args.hosts)
    finally:
        control.down(LAB_DIR)
        shutil.rmtree(LAB_DIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
