"""Put the shared session lab back the way every test expects it, and prove it is so.

The session lab is shared by every test module, so a test that breaks a web host, drains a HAProxy
server, silences a host or re-points Alertmanager must leave it healthy even when it fails. Use the
fixtures `broken` (inject faults) or `restored` (import them into the test module), or
`lab_restored` in a fixture of your own — never the test's last lines. Before and after the test
they point Alertmanager back at the session default, repair every web fault on every web host (each
repair is idempotent), set every HAProxy server ready and expire medic's silences; then they wait
(bounded) until Prometheus, HAProxy and the alerts all say healthy, and fail naming what is not.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from medic.clients.alertmanager import AlertmanagerClient
from medic.clients.haproxy import HAProxyRuntime
from medic_lab import control, faults
from medic_lab.faults import WONT_START_MARK
from medic_lab.state import LabHost, LabState
from tests.support.flows import metric
from tests.support.waits import wait_for, wait_for_no_problems

#: Where the session lab's Alertmanager sends notifications when no test listens (tests/conftest.py).
DEFAULT_WEBHOOK = "http://127.0.0.1:9/unused"
#: Repairs in the order that works from any mix of faults: a host needs its sshd before its service.
#: ("slow" is repaired first and only on a service that answers: see `restore_web_lab`.)
REPAIRS = ("host-down", "wont-start", "service-down", "disk-full")
#: After a repair: a scrape (1 s), a HAProxy health check (250 ms) and an alert evaluation with a 5 s
#: latency window must all catch up; generous for a loaded 2-core machine.
HEALTHY_WITHIN_S = 60
LATENCY = 'demo_request_duration_seconds_bucket{job="web"}'

Inject = Callable[[str, str], str]


def web_hosts(lab: LabState) -> list[LabHost]:
    return [h for h in lab.hosts if h.group == "web"]


def restore_web_lab(lab: LabState) -> None:
    """Undo whatever a test may have done to the web side of the lab (every step is idempotent)."""
    if lab.webhook_url != DEFAULT_WEBHOOK:  # first: the repairs' alerts must not reach a test's receiver
        control.set_webhook(lab, DEFAULT_WEBHOOK)
    for host in web_hosts(lab):
        # The slow fault is lifted by SIGUSR2, which *kills* a web service that has not installed its
        # handler yet (one started a moment ago). Only a service that answers has, and only a running
        # one can be slow: so before any restart, and only then.
        if _serving(host):
            faults.fix_host(lab, "slow", host.name)
            faults.fix_host(lab, "leak", host.name)  # also ends a drift (one signal heals both)
        for fault in REPAIRS:
            faults.fix_host(lab, fault, host.name)
    runtime = HAProxyRuntime("127.0.0.1", lab.ports.haproxy_admin)
    for server in runtime.servers("web"):
        if server.admin_state != "ready":
            runtime.set_state("web", server.name, "ready")
    with AlertmanagerClient(lab.alertmanager_url) as am:
        for silence in am.silences(created_by="medic", state="active"):
            am.expire_silence(silence.id)


def web_lab_problems(lab: LabState) -> list[str]:
    """What is not healthy on the web side of the lab right now ([] when all is well)."""
    problems: list[str] = []
    names = [h.name for h in web_hosts(lab)]
    up = {m.get("host"): v for m, v in metric(lab, 'up{job="web"}')}
    problems += [f"{n}: Prometheus up={up.get(n, 'missing')}" for n in names if up.get(n) != 1]
    full = metric(lab, 'demo_data_dir_used_bytes{job="web"} / demo_data_dir_capacity_bytes{job="web"} > 0.9')
    problems += [f"{m.get('host')}: data dir {v:.0%} full" for m, v in full]
    slow = metric(lab, f"histogram_quantile(0.9, sum by (host, le) (rate({LATENCY}[5s]))) > 0.25")
    problems += [f"{m.get('host')}: p90 latency {v:.2f} s" for m, v in slow]
    problems += [f"{a['labels'].get('host')}: alert {a['labels'].get('alertname')} {a.get('state')}"
                 for a in active_alerts(lab) if a["labels"].get("host") in names]  # pending ones fire later too
    for server in HAProxyRuntime("127.0.0.1", lab.ports.haproxy_admin).servers("web"):
        if server.admin_state != "ready" or server.status != "UP":
            problems.append(f"{server.name}: HAProxy {server.admin_state}, {server.status}")
    for host in web_hosts(lab):
        if WONT_START_MARK in (host.root / "etc" / "service.env").read_text():
            problems.append(f"{host.name}: service config still broken (wont-start)")
        if not _listening(host.ssh_port):
            problems.append(f"{host.name}: sshd not listening on {host.ssh_port}")
    with AlertmanagerClient(lab.alertmanager_url) as am:
        problems += [f"silence {s.id} by medic still active" for s in am.silences(created_by="medic", state="active")]
    return problems


def active_alerts(lab: LabState) -> list[dict]:
    """The alerts Prometheus's rule manager holds active (pending or firing) now — not the `ALERTS`
    series, whose last sample outlives a Prometheus restart by its 5-minute lookback when the alert
    ended before the restarted Prometheus first evaluated it (no staleness marker is ever written)."""
    response = httpx.get(f"{lab.prometheus_url}/api/v1/alerts", timeout=10)
    response.raise_for_status()
    return list(response.json()["data"]["alerts"])


def wait_web_lab_healthy(lab: LabState, *, timeout: float = HEALTHY_WITHIN_S) -> None:
    wait_for_no_problems(lambda: web_lab_problems(lab), what="the session lab's web side to be healthy",
                         timeout=timeout, interval=0.3, ignore=httpx.HTTPError)


#: How Prometheus shows each web fault (host-down: the scrape of the web service fails as well).
SEEN = {"service-down": ("up{{job=\"web\",host=\"{h}\"}}", lambda v: v == 0),
        "host-down": ("up{{job=\"web\",host=\"{h}\"}}", lambda v: v == 0),
        "disk-full": ("demo_data_dir_used_bytes{{host=\"{h}\"}} / demo_data_dir_capacity_bytes{{host=\"{h}\"}}",
                      lambda v: v > 0.9)}


def seen(lab: LabState, fault: str, host: str, *, timeout: float = 30) -> None:
    """Until Prometheus shows `fault` on `host` (what a runbook's detect stage will ask it)."""
    query, bad = SEEN[fault]
    promql = query.format(h=host)
    wait_for(lambda: metric(lab, promql), what=f"Prometheus to show {fault} on {host} ({promql})", timeout=timeout,
             done=lambda samples: bool(samples) and bad(samples[0][1]), interval=0.3, ignore=httpx.HTTPError)


@contextmanager
def lab_restored(lab: LabState) -> Iterator[Inject]:
    """Restores the lab and checks it; yields `inject(fault, host)`; afterwards — pass or fail — restores
    and checks it again (a failure there is the test's teardown error, naming what is still wrong).

    Restoring first too makes the test independent of modules that do not use these fixtures."""
    restore_web_lab(lab)
    wait_web_lab_healthy(lab)
    try:
        yield lambda fault, host: faults.break_host(lab, fault, host)
    finally:
        restore_web_lab(lab)
        wait_web_lab_healthy(lab)


@pytest.fixture
def broken(lab: LabState) -> Iterator[Inject]:
    """`broken(fault, host)` injects a fault; after the test the lab is restored and checked."""
    with lab_restored(lab) as inject:
        yield inject


@pytest.fixture
def restored(lab: LabState) -> Iterator[LabState]:
    """For a test that changes the lab without a fault (drains, restarts): restored and checked after."""
    with lab_restored(lab):
        yield lab


def _serving(host: LabHost) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{host.service_port}/", timeout=5)
        return True
    except httpx.HTTPError:
        return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
