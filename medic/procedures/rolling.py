"""The steps of a rolling restart, one batch at a time: silence → drain → restart → health → ready → unsilence.

Each step is a plain function over a batch (the flow wraps each in a Prefect task) and fills in the
batch's ``HostStep`` records, so a failure anywhere still leaves a record of what was done to whom.
``restore`` is the safety net the flow calls in ``finally``: every server medic drained goes back to
the admin state it had before (normally ``ready``) — a host whose restart failed too, because HAProxy's
own health check keeps a dead server out of rotation and lets it back in when it is repaired; the
report says what HAProxy shows for it. Every silence medic created is expired.

Why SSH ``servicectl restart`` and not the restart playbook: measured on a loaded 20-host lab, one
restart by SSH took 2.0 s (nearly all of it the service's own stop/start), the playbook with
``restart_if_running=true`` 4.5 s (ansible-playbook start-up plus its tasks); ``bench/rolling_restart.py``
prints both.
"""

from __future__ import annotations

import itertools
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from enum import StrEnum

from pydantic import BaseModel, Field

from medic.clients.alertmanager import AlertmanagerClient, Matcher
from medic.core.polling import retry
from medic.errors import MedicError
from medic.clients.haproxy import DrainWait, HAProxyRuntime, LoadBalancerError, parse_address
from medic.core.inventory import Host
from medic.clients.ssh import CommandResult, SSHSession
from medic.core.templates import render_shell

log = logging.getLogger(__name__)

RESTART_COMMAND = "${servicectl} restart"
HEALTH_COMMAND = "curl -fsS -m 2 http://127.0.0.1:${service_port}/healthz"
_PID = re.compile(r"\(pid (\d+)\)")

class HostStatus(StrEnum):
    """Where one host of a rolling restart stands (`HostStep.status`)."""

    PENDING = "pending"
    RESTARTED = "restarted"
    FAILED = "failed"
    NOT_STARTED = "not started"
    WOULD_RESTART = "would restart"


class LBTarget(BaseModel):
    """Where a host sits in a load balancer (inventory vars medic_lb_admin/_backend/_server)."""

    admin: str
    backend: str
    server: str

    def runtime(self) -> HAProxyRuntime:
        return HAProxyRuntime(*parse_address(self.admin))


def lb_target(host: Host, admin_override: str | None = None) -> LBTarget | None:
    """The host's load-balancer entry, or None when the inventory puts it behind none."""
    v = host.vars
    admin = admin_override or v.get("medic_lb_admin")
    if not (admin and v.get("medic_lb_backend") and v.get("medic_lb_server")):
        return None
    return LBTarget(admin=str(admin), backend=str(v["medic_lb_backend"]), server=str(v["medic_lb_server"]))


class HostStep(BaseModel):
    """Everything done to one host, filled in step by step."""

    host: str
    batch: int
    status: HostStatus = HostStatus.PENDING
    detail: str = ""
    lb: LBTarget | None = None
    lb_before: str | None = Field(None, description="admin state before medic touched it")
    drained: bool = Field(False, description="medic put it in drain and has not restored it yet")
    drain: DrainWait | None = None
    silence_id: str | None = None
    restart: CommandResult | None = None
    pid_after: int | None = None
    healthy: bool | None = None
    lb_after: str = Field("", description="what HAProxy shows at the end: admin state, status, check")

    @property
    def failed(self) -> bool:
        return self.status is HostStatus.FAILED


class StepTimes(BaseModel):
    """Seconds per step of one batch (for the report and the bench)."""

    silence: float = 0.0
    drain: float = 0.0
    restart: float = 0.0
    health: float = 0.0
    ready: float = 0.0
    unsilence: float = 0.0


class BatchResult(BaseModel):
    index: int
    hosts: list[str]
    times: StepTimes = Field(default_factory=StepTimes)
    duration_s: float = 0.0


def _parallel(fn, items: list) -> list:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(len(items), 16), thread_name_prefix="medic-rolling") as pool:
        return list(pool.map(fn, items))


def silence(steps: list[HostStep], am: AlertmanagerClient, *, comment: str, duration: timedelta) -> None:
    for s in steps:
        s.silence_id = am.create_silence([Matcher(name="host", value=s.host)], comment=comment, duration=duration)


def unsilence(steps: list[HostStep], am: AlertmanagerClient) -> list[str]:
    """Expire every silence of these steps; returns problems (never raises: it runs in finally)."""
    problems = []
    for s in steps:
        if s.silence_id:
            try:
                am.expire_silence(s.silence_id)
                s.silence_id = None
            except MedicError as exc:
                problems.append(f"{s.host}: silence {s.silence_id} not expired: {exc}")
    return problems


def drain(steps: list[HostStep], *, timeout: float) -> None:
    """Put each server in drain, then wait (in parallel, at most `timeout` s) for its sessions to end."""
    for s in steps:
        if s.lb is None:
            continue
        rt = s.lb.runtime()
        s.lb_before = rt.server(s.lb.backend, s.lb.server).admin_state
        rt.set_state(s.lb.backend, s.lb.server, "drain")
        s.drained = True

    def wait(s: HostStep) -> None:
        if s.lb is not None:
            s.drain = s.lb.runtime().wait_drained(s.lb.backend, s.lb.server, timeout)

    _parallel(wait, steps)


def restart(steps: list[HostStep], hosts: dict[str, Host], ssh: SSHSession, *, timeout: float) -> None:
    results = ssh.fan_out([hosts[s.host] for s in steps], lambda h: render_shell(RESTART_COMMAND, h), timeout=timeout)
    for s, r in zip(steps, results):
        s.restart = r
        if r.ok:
            found = _PID.findall(r.stdout)
            s.pid_after = int(found[-1]) if found else None
        else:
            s.status, s.healthy = HostStatus.FAILED, False
            s.detail = f"restart failed: {r.error or f'exit {r.exit_code}'}: {(r.stderr or r.stdout).strip()[:200]}"


def health(steps: list[HostStep], hosts: dict[str, Host], ssh: SSHSession, *, timeout: float) -> None:
    """Poll each restarted host's /healthz (on the host, over SSH) until it answers or `timeout` passes."""
    pending = [s for s in steps if s.status is HostStatus.PENDING]

    def still_pending() -> list[HostStep]:
        if pending:
            results = ssh.fan_out([hosts[s.host] for s in pending], lambda h: render_shell(HEALTH_COMMAND, h), timeout=5)
            for s, r in zip(pending, results):
                if r.ok:
                    s.healthy, s.status = True, HostStatus.RESTARTED
            pending[:] = [s for s in pending if s.status is HostStatus.PENDING]
        return pending

    for s in retry(still_pending, delays=itertools.repeat(0.1), retry_if=bool, timeout=timeout):
        s.status, s.healthy = HostStatus.FAILED, False
        s.detail = f"restarted but /healthz did not answer within {timeout:g} s"


def ready(steps: list[HostStep], *, timeout: float) -> None:
    """Give every drained server its old admin state back; wait until HAProxy has the healthy ones UP."""
    restore(steps)
    # Until HAProxy agrees: healthy hosts UP, failed ones out of rotation (so the report is true).
    waiting = [s for s in steps if s.lb is not None]

    def disagreeing() -> list[HostStep]:
        waiting[:] = [s for s in waiting if s.lb.runtime().server(s.lb.backend, s.lb.server).up != bool(s.healthy)]
        return waiting

    for s in retry(disagreeing, delays=itertools.repeat(0.05), retry_if=bool, timeout=timeout):
        if s.healthy:
            s.status, s.detail = HostStatus.FAILED, f"healthy on the host but HAProxy did not report it UP within {timeout:g} s"
    describe_lb(steps)


def restore(steps: list[HostStep]) -> list[str]:
    """Undo every drain still in place; returns problems (never raises: it runs in finally)."""
    problems = []
    for s in steps:
        if not (s.drained and s.lb):
            continue
        try:
            s.lb.runtime().set_state(s.lb.backend, s.lb.server, s.lb_before or "ready")
            s.drained = False
        except LoadBalancerError as exc:
            problems.append(f"{s.host}: still drained in HAProxy ({exc})")
    return problems


def describe_lb(steps: list[HostStep]) -> None:
    """Record what HAProxy shows for each host now (for the report)."""
    for s in steps:
        if s.lb is None:
            s.lb_after = "no load balancer"
            continue
        try:
            srv = s.lb.runtime().server(s.lb.backend, s.lb.server)
            out = " — out of rotation until its health check passes" if srv.admin_state == "ready" and not srv.up else ""
            s.lb_after = f"{srv.admin_state}, {srv.status or srv.operational_state} ({srv.check_status}){out}"
        except LoadBalancerError as exc:
            s.lb_after = f"unknown: {exc}"
