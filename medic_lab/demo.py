"""`make demo`: the lab, medic serve, and three incidents remediated with nobody touching a key.

Starts the lab and `medic serve` (whose address the lab's Alertmanager already posts to), injects a
fault, and follows the incident from the outside — Prometheus for the alert, Prefect for the run and
its stages — until the outcome; then the next fault. disk-full needs a human: the demo approves it
as "demo-operator" the way a Slack click or `medic approve` would. Everything it started is stopped —
unless `--keep` (`make demo KEEP=1`): then the lab, medic serve and the Prefect UI stay up, their
addresses are printed, and `medic lab down` (`make demo-stop`) stops all of it, medic serve included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from medic.core.net import wait_healthy
from medic.core.paths import DEFAULT_LAB_DIR, PROJECT_ROOT
from medic.errors import LabError
from medic.settings import get_settings
from medic_lab import control, faults
from medic_lab.processes import spawn, stop_process
from medic_lab.state import LabState

#: How long medic serve may take to finish its runs when the demo stops it.
SERVE_STOP_GRACE_S = 30.0
#: Who approves in the demo (an entry of approvers.yaml), with the credential medic derives for them.
DEMO_APPROVER = "alice"

INCIDENTS = [
    ("service-down", "web-2", "ServiceDown", "service-down"),
    ("slow", "web-3", "HighLatency", "high-latency"),
    ("disk-full", "web-1", "DiskAlmostFull", "disk-full"),
]
STAGES = ("detect", "diagnose", "recover", "verify")


def say(message: str = "") -> None:
    print(message, flush=True)


@dataclass
class Incident:
    fault: str
    host: str
    alertname: str
    runbook: str
    outcome: str = "—"
    alert_after_s: float = 0.0
    recovered_after_s: float = 0.0
    run_s: float = 0.0


def _alert_firing(prom: str, alertname: str, host: str) -> bool:
    q = f'ALERTS{{alertname="{alertname}",host="{host}",alertstate="firing"}}'
    return bool(httpx.get(f"{prom}/api/v1/query", params={"query": q}, timeout=5).json()["data"]["result"])


def _find_run(api: str, runbook: str, host: str, since: float) -> dict | None:
    runs = httpx.post(f"{api}/flow_runs/filter", timeout=5, json={
        "flow_runs": {"tags": {"all_": ["medic-serve", f"runbook:{runbook}", f"target:{host}"]}},
        "sort": "EXPECTED_START_TIME_DESC", "limit": 5}).json()
    for run in runs:
        created = run.get("created") or ""
        if created and _epoch(created) >= since - 1:
            return run
    return None


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def follow(incident: Incident, *, prom: str, api: str, ui: str, timeout: float = 180) -> None:
    lab = control.require_lab(get_settings().lab_dir)
    began = time.time()
    say(f"\n━━ incident: {incident.fault} on {incident.host} ━━")
    say(f"  fault      {faults.break_host(lab, incident.fault, incident.host)}")
    run = None
    seen: set[str] = set()
    approved = False
    while time.time() - began < timeout:
        now = time.time() - began
        if "alert" not in seen and _alert_firing(prom, incident.alertname, incident.host):
            seen.add("alert")
            incident.alert_after_s = now
            say(f"  {now:5.1f}s  alert      {incident.alertname} firing for {incident.host} → Alertmanager → medic serve")
        if run is None:
            run = _find_run(api, incident.runbook, incident.host, began)
            if run:
                say(f"  {now:5.1f}s  runbook    {incident.runbook} started: {ui}/runs/flow-run/{run['id']}")
        if run is not None:
            run = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=5).json()
            tasks = httpx.post(f"{api}/task_runs/filter", timeout=5,
                               json={"flow_runs": {"id": {"any_": [run["id"]]}}, "limit": 50}).json()
            for t in sorted(tasks, key=lambda t: t.get("start_time") or ""):
                stage = t["name"].split("-")[0]
                # a task run just created may have no state yet
                if stage in STAGES and (t.get("state") or {}).get("type") == "COMPLETED" and stage not in seen:
                    seen.add(stage)
                    say(f"  {time.time() - began:5.1f}s  {stage:<10} done")
            state = run.get("state") or {"type": "PENDING", "name": "Pending"}
            if state["type"] == "PAUSED" and not approved:
                say(f"  {now:5.1f}s  approval   the runbook asks a human (Slack card / Prefect UI / `medic approve "
                    f"{run['id']}`)")
                approved = _approve(run["id"])
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                incident.outcome = state["name"]
                incident.recovered_after_s = time.time() - began
                incident.run_s = (_epoch(run["end_time"]) - _epoch(run["start_time"])) if run.get("end_time") else 0
                say(f"  {incident.recovered_after_s:5.1f}s  outcome    {state['name']}: {state.get('message', '')}")
                return
        time.sleep(0.25)
    incident.outcome = "timed out"
    say(f"  no outcome within {timeout:.0f} s — see {ui}")
    faults.fix_host(lab, incident.fault, incident.host)


def _approve(run_id: str) -> bool:
    """Approve as `medic approve` does, as alice (approvers.yaml) with the credential medic issues her."""
    from medic.approval.identity import approver_secret
    from medic.cli.approvers import send_decision

    time.sleep(1.5)
    key = get_settings().approval_key
    assert key is not None  # main() sets one
    outcome, verdict = asyncio.run(send_decision(run_id, decision="approve", name=DEMO_APPROVER,
                                                 secret=approver_secret(key.get_secret_value(), DEMO_APPROVER),
                                                 comment="approved by the demo"))
    say(f"         approval   {DEMO_APPROVER} approves → {outcome.status.value}, {verdict or 'no verdict'}")
    return outcome.accepted and verdict == "counted"


def _approval_key() -> None:
    """Approvals are verified (issue 11): without MEDIC_APPROVAL_KEY, the demo makes a one-off key for
    itself and the medic serve it starts (the environment is inherited)."""
    if get_settings().approval_key is None:
        os.environ["MEDIC_APPROVAL_KEY"] = secrets.token_urlsafe(32)
        get_settings.cache_clear()
        say("demo: MEDIC_APPROVAL_KEY is not set — using a one-off key for this demo (set your own to approve "
            "runs yourself with `medic approvers issue NAME`)")


def _stop_command(lab_dir: Path) -> str:
    """The one command that stops what --keep left running, as the user can paste it here."""
    if lab_dir == DEFAULT_LAB_DIR.resolve() and Path.cwd().resolve() == PROJECT_ROOT:
        return "make demo-stop"
    env = "" if lab_dir == DEFAULT_LAB_DIR.resolve() else f"MEDIC_LAB_DIR={lab_dir} "
    return f"{env}{Path(sys.executable).parent / 'medic'} lab down"


def _start_serve(lab: LabState, port: int) -> subprocess.Popen[bytes]:
    """medic serve as a lab process (so `medic lab down` finds it), its pid in the lab state."""
    serve = spawn("medic-serve", [sys.executable, "-m", "medic", "serve"], lab_dir=lab.lab_dir)
    lab.serve_pid = serve.pid
    lab.save()
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", what="medic serve", timeout=90, proc=serve, error=LabError)
    except BaseException:
        stop_process(serve.pid, grace=5)
        raise
    return serve


def _left_running(lab: LabState, port: int, ui: str) -> None:
    say("\n━━ left running (--keep) ━━")
    say(f"  Prefect UI     {ui}")
    say(f"  Prometheus     {lab.prometheus_url}")
    say(f"  Alertmanager   {lab.alertmanager_url}")
    say(f"  medic serve    http://127.0.0.1:{port}   (pid {lab.serve_pid}, log {lab.lab_dir}/logs/medic-serve.log)")
    say(f"  stop all of it:  {_stop_command(lab.lab_dir)}")


def main(argv: list[str] | None = None) -> int:
    from medic.cli.run import use_prefect_api

    parser = argparse.ArgumentParser(prog="python -m medic_lab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave the lab, medic serve and the Prefect UI running at the end")
    args = parser.parse_args(argv)
    settings = get_settings()
    lab_dir = settings.lab_dir.resolve()
    started_lab = False
    serve: subprocess.Popen[bytes] | None = None
    lab: LabState | None = None
    try:
        if control.lab_is_running(lab_dir):
            say(f"demo: using the lab already running in {lab_dir}")
            lab = control.require_lab(lab_dir)
        else:
            say("demo: starting the lab (Prometheus, Alertmanager, Prefect, HAProxy, 3 SSH hosts) …")
            lab = control.up(lab_dir, hosts=3, base_port=settings.lab_base_port, progress=lambda m: say(f"  lab: {m}"))
            started_lab = True
        get_settings.cache_clear()
        settings = get_settings()
        use_prefect_api(settings)
        _approval_key()
        control.set_webhook(lab, f"http://127.0.0.1:{settings.server_port}/alertmanager")
        serve = _start_serve(lab, settings.server_port)
        ui = lab.prefect_api_url.removesuffix("/api")
        say(f"\nmedic serve is listening on http://127.0.0.1:{settings.server_port} (Alertmanager posts there)")
        say(f"Prefect UI: {ui}   ·   Prometheus: {lab.prometheus_url}/alerts   ·   medic logs: {lab_dir}/logs/")
        incidents = [Incident(*i) for i in INCIDENTS]
        demo_began = time.time()
        for incident in incidents:
            follow(incident, prom=lab.prometheus_url, api=lab.prefect_api_url, ui=ui)
        say("\n━━ summary ━━")
        say(f"{'incident':<26} {'outcome':<12} {'alert after':>12} {'fixed after':>12} {'run took':>9}")
        for i in incidents:
            say(f"{i.fault + ' on ' + i.host:<26} {i.outcome:<12} {i.alert_after_s:>11.1f}s "
                f"{i.recovered_after_s:>11.1f}s {i.run_s:>8.1f}s")
        from medic_lab.demo_report import report_after_demo

        report_after_demo(lab_dir, time.time() - demo_began, say)  # TTD / TTA / TTR, SLOs, charts
        say(f"\nEvery run, its stages and its incident report are in the Prefect UI: {ui}")
        ok = all(i.outcome == "Recovered" for i in incidents)
        return 0 if ok else 1
    finally:
        if args.keep and lab is not None and serve is not None:
            _left_running(lab, settings.server_port, lab.prefect_api_url.removesuffix("/api"))
        else:
            _stop(lab, serve, started_lab)


def _stop(lab: LabState | None, serve: subprocess.Popen[bytes] | None, started_lab: bool) -> None:
    if serve is not None:
        stop_process(serve.pid, grace=SERVE_STOP_GRACE_S)
        if lab is not None and not started_lab:
            lab.serve_pid = None
            lab.save()
    if started_lab and lab is not None:
        say("demo: stopping the lab …")
        control.down(lab.lab_dir)
        say("demo: done — nothing left running")


if __name__ == "__main__":
    sys.exit(main())
