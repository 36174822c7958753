"""The instances a capacity controller moves: a group's hosts behind one HAProxy backend.

An instance *takes traffic* when its HAProxy server is in admin state ``ready``. Adding one starts
its service over SSH (``servicectl start``, idempotent), sets it ``ready`` and waits (bounded) for
HAProxy's health check to pass; removing one drains it (bounded wait for its sessions), sets it
``maint`` and stops its service — silenced in Alertmanager first (when one is given), so the
ServiceDown alert does not send the service-down runbook to start it again; adding it back expires
that silence. Hosts are added in inventory order and removed from the end, so
the pool stays predictable. Each change is a ``ScaleStep`` result, never an exception: a host that
would not start is reported and the next decision sees the real count.

What the controller observes comes from Prometheus: p95 of the service's request-latency histogram
over the instances taking traffic, and the rates of requests arriving at the HAProxy backend and of
its successful (2xx) answers.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel

from medic.clients.alertmanager import AlertmanagerClient, Matcher
from medic.clients.haproxy import HAProxyRuntime
from medic.clients.prometheus import PrometheusClient
from medic.clients.ssh import SSHSession
from medic.core.inventory import Host
from medic.core.polling import wait_until
from medic.core.templates import render_shell
from medic.errors import AlertmanagerError, ConfigError, LoadBalancerError, WaitTimeout
from medic.procedures.capacity import Observation
from medic.procedures.rolling import LBTarget, lb_target

__all__ = ["Pool", "ScaleStep", "p95_query", "rate_query", "served_query"]

START, STOP = "${servicectl} start", "${servicectl} stop"
SILENCE_COMMENT = "medic capacity: instance taken out of service on purpose"
SILENCE_FOR = timedelta(hours=1)  # should medic die, ServiceDown speaks again after this


class ScaleStep(BaseModel):
    """What adding or removing one instance did."""

    host: str
    change: Literal["add", "remove"]
    ok: bool
    detail: str
    seconds: float


def p95_query(hosts: list[str], window: str = "5s") -> str:
    """p95 over the instances taking traffic (names are inventory names: checked, safe in a regex)."""
    names = "|".join(h.replace(".", "\\\\.") for h in hosts) or "none"
    return (f'histogram_quantile(0.95, sum by (le) (rate(demo_request_duration_seconds_bucket'
            f'{{job="web",host=~"{names}"}}[{window}])))')


def rate_query(backend: str, window: str = "5s") -> str:
    return f'sum(rate(haproxy_backend_http_requests_total{{proxy="{backend}"}}[{window}]))'


def served_query(backend: str, window: str = "5s") -> str:
    return f'sum(rate(haproxy_backend_http_responses_total{{proxy="{backend}",code="2xx"}}[{window}]))'


def _number(value: float | None) -> float | None:
    """None for no data: no result, or NaN (no requests in the window)."""
    return None if value is None or math.isnan(value) else value


class Pool:
    """A group's hosts behind one HAProxy backend (inventory vars medic_lb_admin/_backend/_server)."""

    def __init__(self, hosts: list[Host], ssh: SSHSession, *, alertmanager: AlertmanagerClient | None = None,
                 ready_timeout: float = 10.0, drain_timeout: float = 2.0) -> None:
        targets = {h.name: lb_target(h) for h in hosts}
        missing = [name for name, lb in targets.items() if lb is None]
        if not hosts or missing:
            raise ConfigError(f"capacity: every host needs a load balancer (inventory vars medic_lb_admin, "
                              f"medic_lb_backend, medic_lb_server); missing on: {', '.join(missing) or 'no hosts'}")
        backends = {(lb.admin, lb.backend) for lb in targets.values()}
        if len(backends) != 1:
            raise ConfigError(f"capacity: the hosts must share one HAProxy backend, found {sorted(backends)}")
        self.hosts, self.ssh, self.am = hosts, ssh, alertmanager
        self.lb: dict[str, LBTarget] = targets  # type: ignore[assignment]
        self.admin, self.backend = backends.pop()
        self.ready_timeout, self.drain_timeout = ready_timeout, drain_timeout

    @property
    def runtime(self) -> HAProxyRuntime:
        return next(iter(self.lb.values())).runtime()

    def active(self) -> list[str]:
        """Hosts whose server is ``ready`` in HAProxy (taking traffic, or about to once healthy)."""
        states = {s.name: s.admin_state for s in self.runtime.servers(self.backend)}
        return [h.name for h in self.hosts if states.get(self.lb[h.name].server) == "ready"]

    def observe(self, prom: PrometheusClient, *, at: float | None = None, window: str = "5s") -> Observation:
        active = self.active()
        p95 = prom.value(p95_query(active, window)) if active else None
        rate = prom.value(rate_query(self.backend, window))
        served = prom.value(served_query(self.backend, window))
        return Observation(at=time.monotonic() if at is None else at, current=len(active), p95_s=_number(p95),
                           rate_rps=_number(rate), served_rps=_number(served))

    def plan(self, desired: int) -> list[tuple[str, Literal["add", "remove"]]]:
        """Which hosts to add (first inactive in inventory order) or remove (last active)."""
        active = self.active()
        if desired > len(active):
            idle = [h.name for h in self.hosts if h.name not in active]
            return [(name, "add") for name in idle[:desired - len(active)]]
        return [(name, "remove") for name in reversed(active[desired:])]

    def apply(self, host: str, change: Literal["add", "remove"]) -> ScaleStep:
        began = time.monotonic()
        try:
            ok, detail = self._add(host) if change == "add" else self._remove(host)
        except (AlertmanagerError, LoadBalancerError, WaitTimeout) as exc:
            ok, detail = False, str(exc)
        return ScaleStep(host=host, change=change, ok=ok, detail=detail, seconds=round(time.monotonic() - began, 2))

    def _host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def _add(self, name: str) -> tuple[bool, str]:
        host, lb = self._host(name), self.lb[name]
        started = self.ssh.run(host, render_shell(START, host))
        if not started.ok:
            return False, f"servicectl start failed: {started.error or started.stderr.strip() or started.exit_code}"
        lb.runtime().set_state(lb.backend, lb.server, "ready")
        wait_until(lambda: lb.runtime().server(lb.backend, lb.server), what=f"HAProxy health check of {name}",
                   timeout=self.ready_timeout, interval=0.1, done=lambda s: s.up, ignore=(LoadBalancerError,))
        unsilenced = ""
        if self.am:
            ours = [x for x in self.am.silences(label="host", value=name, created_by="medic", state="active")
                    if x.comment == SILENCE_COMMENT]
            for silence in ours:
                self.am.expire_silence(silence.id)
            unsilenced = f", {len(ours)} silence(s) expired" if ours else ""
        return True, f"started ({started.stdout.strip()}), ready in HAProxy and UP{unsilenced}"

    def _remove(self, name: str) -> tuple[bool, str]:
        host, lb = self._host(name), self.lb[name]
        runtime = lb.runtime()
        runtime.set_state(lb.backend, lb.server, "drain")
        drained = runtime.wait_drained(lb.backend, lb.server, self.drain_timeout)
        runtime.set_state(lb.backend, lb.server, "maint")
        if self.am:
            self.am.create_silence([Matcher(name="host", value=name)], comment=SILENCE_COMMENT, duration=SILENCE_FOR)
        stopped = self.ssh.run(host, render_shell(STOP, host))
        cut = "" if drained.drained else f", {drained.sessions_left} sessions cut"
        if not stopped.ok:
            return False, f"in maint{cut}, but servicectl stop failed: {stopped.error or stopped.stderr.strip()}"
        return True, f"drained in {drained.waited_s:.1f} s{cut}, maint in HAProxy, {stopped.stdout.strip()}"
