"""`make demo`: the lab, medic serve, and three incidents remediated with nobody touching a key.

Starts the lab and `medic serve` (whose address the lab's Alertmanager already posts to), injects a
fault, and follows the incident from the outside — Prometheus for the alert, Prefect for the run and
its stages — until the outcome; then the next fault. disk-full needs a human: the demo approves it
as "demo-operator" the way a Slack click or `medic approve` would. Everything it started is stopped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from medic.settings import get_settings

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
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def follow(incident: Incident, *, prom: str, api: str, ui: str, timeout: float = 180) -> None:
    from medic_lab import control, faults

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
                if stage in STAGES and t["state"]["type"] == "COMPLETED" and stage not in seen:
                    seen.add(stage)
                    say(f"  {time.time() - began:5.1f}s  {stage:<10} done")
            state = run["state"]
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
    from medic.orchestration.runtime import ResumeStatus, resume_with_input

    time.sleep(1.5)
    outcome = asyncio.run(resume_with_input(run_id, {"decision": "approve", "approver": "demo-operator",
                                                     "comment": "approved by the demo", "via": "cli"}))
    say(f"         approval   demo-operator approves → {outcome.status.value}")
    return outcome.status is ResumeStatus.ACCEPTED


def main() -> int:
    from medic.cli.run import use_prefect_api
    from medic_lab import control

    settings = get_settings()
    lab_dir = settings.lab_dir
    started_lab = False
    serve: subprocess.Popen[bytes] | None = None
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
        control.set_webhook(lab, f"http://127.0.0.1:{settings.server_port}/alertmanager")
        log = open(lab_dir / "logs" / "medic-serve.log", "ab")
        serve = subprocess.Popen([sys.executable, "-m", "medic", "serve"], stdout=log, stderr=subprocess.STDOUT,
                                 env=os.environ, start_new_session=True)
        _wait_healthy(f"http://127.0.0.1:{settings.server_port}/healthz", serve)
        ui = lab.prefect_api_url.removesuffix("/api")
        say(f"\nmedic serve is listening on http://127.0.0.1:{settings.server_port} (Alertmanager posts there)")
        say(f"Prefect UI: {ui}   ·   Prometheus: {lab.prometheus_url}/alerts   ·   medic logs: {lab_dir}/logs/")
        incidents = [Incident(*i) for i in INCIDENTS]
        for incident in incidents:
            follow(incident, prom=lab.prometheus_url, api=lab.prefect_api_url, ui=ui)
        say("\n━━ summary ━━")
        say(f"{'incident':<26} {'outcome':<12} {'alert after':>12} {'fixed after':>12} {'run took':>9}")
        for i in incidents:
            say(f"{i.fault + ' on ' + i.host:<26} {i.outcome:<12} {i.alert_after_s:>11.1f}s "
                f"{i.recovered_after_s:>11.1f}s {i.run_s:>8.1f}s")
        say(f"\nEvery run, its stages and its incident report are in the Prefect UI: {ui}")
        ok = all(i.outcome == "Recovered" for i in incidents)
        return 0 if ok else 1
    finally:
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
        if started_lab:
            say("demo: stopping the lab …")
            control.down(lab_dir)
            say("demo: done — nothing left running")


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: medic serve exited with {proc.returncode}; see its log under the lab dir")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("demo: medic serve did not become healthy in time")


if __name__ == "__main__":
    sys.exit(main())
