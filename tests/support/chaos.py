"""Helpers of the fault-injection suite (tests/chaos): alerts to medic serve, runs' ends, leftover processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import httpx

from medic_lab.reaper import stat_fields
from medic_lab.state import LabState
from tests.support.intake import send_alert
from tests.support.lab_health import seen
from tests.support.prefect_api import prefect_json
from tests.support.server import MedicServer, alert_payload
from tests.support.waits import wait_for

#: `inject(fault, host=None)`: the tests/chaos fixture that breaks the lab and fixes it at teardown.
Inject = Callable[..., str]


def _client_sockets(port: int) -> set[str]:
    """Inodes of TCP sockets (any state but LISTEN) whose remote end is 127.0.0.1:`port`."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state != "0A" and int(remote.split(":")[1], 16) == port:
                inodes.add(inode)
    return inodes


def our_client_processes(port: int | None = None) -> list[str]:
    """Live ssh / ansible-playbook processes started under this test process (an ssh ControlMaster of a
    healthy host, detached to serve later runs, excepted), and any process holding a connection to
    127.0.0.1:`port`."""
    me, found = os.getpid(), []
    sockets = _client_sockets(port) if port else set()
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(int(entry))) is not None and fields[0] != b"Z":
            parents[int(entry)] = int(fields[1])
    for pid in parents:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/comm", "rb") as f:
                comm = f.read().strip().decode(errors="replace")
            fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")} if sockets else set()
        except OSError:
            continue
        if sockets and {f"socket:[{inode}]" for inode in sockets} & fds:
            found.append(f"{pid} {cmdline[:160]} (connected to port {port})")
            continue
        is_client = (comm == "ssh" and not cmdline.endswith("[mux]")) or "ansible-playbook" in cmdline
        ancestor, seen = parents.get(pid), set()
        while ancestor and ancestor != me and ancestor not in seen:
            seen.add(ancestor)
            ancestor = parents.get(ancestor)
        if is_client and ancestor == me:
            found.append(f"{pid} {cmdline[:160]}")
    return found


def close_ssh_masters(port: int) -> None:
    """End the ssh ControlMasters ([mux]) earlier tests left connected to 127.0.0.1:`port` (they live
    60 s after their run), so a test that hangs that host starts from no connection and counts only its own."""
    import signal

    def masters() -> list[int]:
        inodes = {f"socket:[{i}]" for i in _client_sockets(port)}
        pids = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                fds = {os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")}
            except OSError:
                continue
            if cmdline.startswith("ssh") and cmdline.endswith("[mux]") and inodes & fds:
                pids.append(int(entry))
        return pids

    for pid in masters():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    wait_for(masters, what=f"no ssh ControlMaster connected to port {port}", timeout=10,
             done=lambda left: not left)


FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def post_alert(server: MedicServer, payload: dict) -> dict:
    """One notification as Alertmanager sends it; the answer for its one alert."""
    response = send_alert(server.url, payload)
    assert response.status_code == 200, response.text
    return response.json()["alerts"][0]


def final_run(lab: LabState, run_id: str, timeout: float = 120) -> dict:
    """The run as Prefect shows it once it has ended (bounded wait)."""
    return wait_for(lambda: prefect_json(lab.prefect_api_url, "GET", f"/flow_runs/{run_id}"),
                    what=f"run {run_id} to end", timeout=timeout, done=lambda run: run["state"]["type"] in FINAL,
                    ignore=httpx.HTTPError)


def fire(lab: LabState, server: MedicServer, broken: Inject, fault: str, host: str, alertname: str, *,
         tag: str, starts_at: str) -> tuple[dict, dict]:
    """Break `host` with `fault`, wait until Prometheus shows it, then post its alert (a fresh fingerprint
    `chaos-<tag>-…`) as Alertmanager would: (the payload, to send again; medic's answer, a started run)."""
    broken(fault, host)
    seen(lab, fault, host)
    payload = alert_payload(alertname, host, fingerprint=f"chaos-{tag}-{uuid.uuid4().hex[:8]}", starts_at=starts_at)
    answer = post_alert(server, payload)
    assert answer["result"] == "started", answer
    return payload, answer


def resend_repairs_once(lab: LabState, server: MedicServer, payload: dict, first: dict, *,
                        passing: tuple[str, ...] = ("duplicate",)) -> None:
    """The same alert sent again (until it is answered otherwise than `passing`) starts one new run,
    which ends Recovered; sent once more, it is answered by that run and starts nothing."""
    second = wait_for(lambda: post_alert(server, payload), what=f"the resend to be taken (answered not {passing})",
                      timeout=30, done=lambda answer: answer["result"] not in passing, interval=0.5)
    assert second["result"] == "started" and second["flow_run_id"] != first["flow_run_id"], second
    recovered = final_run(lab, second["flow_run_id"])
    assert recovered["state"]["name"] == "Recovered", (recovered["state"], server.logs()[-2000:])
    third = wait_for(lambda: post_alert(server, payload), what="the second resend to be answered (not a duplicate)",
                     timeout=30, done=lambda answer: answer["result"] != "duplicate", interval=0.5)
    assert third["result"] == "already handled" and third["flow_run_id"] == second["flow_run_id"], third
