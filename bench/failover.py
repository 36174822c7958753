"""PostgreSQL failover, measured: time to writes on the new primary, and the no-lost-writes proof.

For each replication mode (synchronous, asynchronous) it starts its own lab (`--with db-sync` /
`--with db`, base port 30000, /tmp/medic-lab-h7-bench; always stopped), runs `write_load` through
the endpoint, stalls the primary's WAL sender for a moment (SIGSTOP, like a slow network — so
asynchronous commits get ahead of the standby), kills the primary (`pg-primary-down`), runs the failover flow
and approves it from this script through `resume_with_input` (the simulated click). It prints:

- break → first acknowledged write on the new primary, split into detection (flow start → confirmed
  down), waiting for the human, and medic's own work (the rest);
- acknowledged rows lost on the new primary, and the approval card's estimate (WAL bytes at risk)
  converted to rows with the bytes-per-insert measured before the stall.

    .venv/bin/python bench/failover.py [--modes sync async] [--stall 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LAB_DIR = Path("/tmp/medic-lab-h7-bench")
BASE_PORT = 30000
APPROVE = {"decision": "approve", "approver": "alice"}  # proven as `medic approve` does


def _walsender(host: Any) -> int | None:
    from medic_lab.postgres_nodes import postgres_pids as _postgres_pids

    for pid in _postgres_pids(host)[1:]:
        try:
            if b"walsender" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:  # a short-lived backend that has exited
            continue
    return None


async def _failover_with_click() -> Any:
    """The failover flow, each of its approval pauses answered with a proven "approve" (the click)."""
    from flows.failover import failover
    from tests.support.pg_approvals import APPROVE, run_and_decide

    outcome, answered = await run_and_decide(failover, {"reason": "bench"}, [APPROVE, APPROVE])
    return outcome


def _approvals_verifiable(lab_dir: Path) -> None:
    """The bench approves like `medic approve`: with the configured approval key, else a bench key."""
    from medic.core.runbook import find_runbook
    from medic.settings import get_settings

    if get_settings().approval_key is None:
        names = find_runbook("postgres-failover", get_settings().runbooks_dir).approval.approvers or ["bench"]
        (lab_dir / "approvers.yaml").write_text("approvers:\n" + "".join(f"  - name: {n}\n" for n in names))
        os.environ.update(MEDIC_APPROVAL_KEY="bench-approval-key", MEDIC_APPROVERS_FILE=str(lab_dir / "approvers.yaml"))
        get_settings.cache_clear()


def one(mode: str, stall: float) -> dict[str, Any]:
    from medic_lab import control, faults
    from medic_lab.postgres import PgPorts
    from medic.clients.postgres import parse_lsn, run_sql
    from medic.settings import get_settings
    from write_load import WriteLoad, check

    get_settings.cache_clear()
    _approvals_verifiable(LAB_DIR)
    lab = control.up(LAB_DIR, hosts=1, base_port=BASE_PORT, options={"db-sync" if mode == "sync" else "db": True},
                     webhook_url="http://127.0.0.1:9/unused")
    os.environ["PREFECT_API_URL"] = lab.prefect_api_url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: lab.prefect_api_url}):
            ports = PgPorts.of(lab)
            endpoint = f"127.0.0.1:{ports.endpoint}"

            def lsn() -> int:
                return parse_lsn(run_sql(endpoint, "SELECT pg_current_wal_lsn()").stdout.strip()) or 0

            load = WriteLoad(endpoint, start=1)
            load.__enter__()
            time.sleep(0.5)
            lsn_a, acks_a = lsn(), len(load.acks)
            time.sleep(2.0)
            lsn_b, acks_b = lsn(), len(load.acks)
            bytes_per_row = (lsn_b - lsn_a) / max(1, acks_b - acks_a)
            sender = _walsender(lab.host("pg-1"))
            os.kill(sender, signal.SIGSTOP)
            time.sleep(stall)
            t0, t0_wall = time.monotonic(), datetime.now(timezone.utc)
            faults.break_host(lab, "pg-primary-down", "pg-1")  # SIGKILLs the stopped walsender too
            outcome = asyncio.run(_failover_with_click())
            report = outcome.result
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                    a.at > t0 and a.server_port == ports.nodes["pg-2"] for a in load.acks):
                time.sleep(0.05)
            first_new = next((a.at for a in load.acks if a.at > t0 and a.server_port == ports.nodes["pg-2"]), None)
            time.sleep(0.5)
            result = load.stop()
            loss = check(endpoint, result)
    finally:
        control.down(LAB_DIR)
        shutil.rmtree(LAB_DIR, ignore_errors=True)

    detect_at = next(e.at for e in report.timeline if e.stage == "detect")
    detection = (detect_at - t0_wall).total_seconds()
    human = report.approval.waited_s if report.approval else 0.0  # the last request's wait (one when nothing changed)
    total = (first_new - t0) if first_new else float("nan")
    at_risk = report.diagnosis.at_risk_bytes if report.diagnosis else None
    return {
        "mode": mode, "outcome": report.outcome.value, "asks": [a.key for a in report.asks], "total": total, "detection": detection, "human": human,
        "medic": total - detection - human, "acked": loss.acknowledged, "lost": len(loss.lost_ids),
        "lost_ids": loss.lost_ids, "at_risk_bytes": at_risk, "bytes_per_row": bytes_per_row,
        "estimated_rows": None if at_risk is None else at_risk / bytes_per_row,
        "timeline": [(round((e.at - t0_wall).total_seconds(), 2), e.stage, e.message[:110]) for e in report.timeline],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    parser.add_argument("--stall", type=float, default=1.0, help="seconds the primary's WAL sender is stopped before the kill")
    args = parser.parse_args()
    if len(args.modes) > 1:
        # one process per lab: a process that saw one Prefect server keeps state that confuses
        # concurrency-limit reads against the next server on the same URL
        return max(subprocess.run([sys.executable, __file__, "--modes", m, "--stall", str(args.stall)]).returncode
                   for m in args.modes)
    os.environ.update(MEDIC_LAB_DIR=str(LAB_DIR), MEDIC_LAB_BASE_PORT=str(BASE_PORT))
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    LAB_DIR.chmod(0o755)
    rows = [one(mode, args.stall) for mode in args.modes]
    for r in rows:
        print(f"\n== {r['mode']}hronous replication: {r['outcome']} (approvals asked: {', '.join(r['asks'])})")
        for at, stage, msg in r["timeline"]:
            print(f"  +{at:6.2f} s  {stage:9} {msg}")
        print(f"  break → first write on the new primary: {r['total']:.2f} s = detection {r['detection']:.2f} s"
              f" + human {r['human']:.2f} s + medic {r['medic']:.2f} s")
        est = "unknown" if r["estimated_rows"] is None else f"{r['estimated_rows']:.1f} rows"
        print(f"  writes: {r['acked']} acknowledged, {r['lost']} lost {r['lost_ids'][:10]}; card estimate "
              f"{r['at_risk_bytes']} bytes at risk ≈ {est} ({r['bytes_per_row']:.0f} WAL bytes per insert)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
