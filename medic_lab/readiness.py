"""Is the lab ready, and is each part of it up: the bounded waits of `up` and the rows of `status`."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from medic.core.polling import wait_until
from medic.errors import LabError
from medic_lab.components import ComponentStatus, active_components
from medic_lab.state import LabHost, LabState

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    return None


def wait_for_targets(lab: LabState, *, timeout: float, progress: Progress = quiet) -> float:
    """Wait until Prometheus reports every scrape target up; returns seconds waited."""
    began = time.monotonic()
    extra_jobs = [job for c in active_components(lab) for job in c.scrape_configs(lab)]
    expected = 3 + sum(1 for h in lab.hosts if h.group == "web") + sum(
        len(sc.get("targets", [])) for job in extra_jobs for sc in job.get("static_configs", []))
    said = [""]

    def targets_up(client: httpx.Client) -> tuple[int, int]:
        active = client.get(f"{lab.prometheus_url}/api/v1/targets", params={"state": "active"}).json()
        targets = active["data"]["activeTargets"]
        up = sum(1 for t in targets if t["health"] == "up")
        if (msg := f"scrape targets up: {up}/{expected}") != said[0]:
            progress(msg)
            said[0] = msg
        return up, len(targets)

    with httpx.Client(timeout=2.0) as client:
        wait_until(lambda: targets_up(client), what=f"Prometheus to see all {expected} targets up (up, known) — "
                   f"see {lab.lab_dir}/logs/ and {lab.prometheus_url}/targets", timeout=timeout, interval=0.2,
                   done=lambda seen: min(seen) >= expected, ignore=(httpx.HTTPError, KeyError, ValueError),
                   error=LabError)
    return time.monotonic() - began


def wait_for_sshd(lab: LabState, *, timeout: float, hosts: list[LabHost] | None = None) -> None:
    pending = list(hosts if hosts is not None else lab.hosts)

    def still_pending() -> list[str]:
        pending[:] = [h for h in pending if not (tcp_banner(h.ssh_port) or "").startswith("SSH-")]
        return [h.name for h in pending]

    wait_until(still_pending, what=f"sshd to answer (hosts still silent) — see {lab.lab_dir}/logs/sshd-*.log",
               timeout=timeout, done=lambda names: not names, error=LabError)


def tcp_banner(port: int) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(64).decode(errors="replace").strip()
    except OSError:
        return None


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.5).status_code == 200
    except httpx.HTTPError:
        return False


def status(lab: LabState) -> list[ComponentStatus]:
    """One row per component (checked in parallel): name, address, up, detail."""
    checks: list[tuple[str, str, Callable[[], tuple[bool, str]]]] = [
        ("prefect", lab.prefect_api_url, lambda: (http_ok(f"{lab.prefect_api_url}/health"), "")),
        ("prometheus", lab.prometheus_url, lambda: (http_ok(f"{lab.prometheus_url}/-/ready"), "")),
        ("alertmanager", lab.alertmanager_url, lambda: (http_ok(f"{lab.alertmanager_url}/-/ready"),
                                                        f"webhook → {lab.webhook_url}")),
        ("node-exporter", lab.node_exporter_url, lambda: (http_ok(f"{lab.node_exporter_url}/metrics"), "")),
    ]
    if not lab.with_prefect:
        checks.pop(0)
    for h in lab.hosts:
        checks.append((f"{h.name} sshd", f"127.0.0.1:{h.ssh_port}",
                       lambda h=h: ((b := tcp_banner(h.ssh_port)) is not None and b.startswith("SSH-"), f"user {h.user}")))
        if h.group == "web":
            checks.append((f"{h.name} web", f"http://127.0.0.1:{h.service_port}",
                           lambda h=h: (http_ok(f"http://127.0.0.1:{h.service_port}/healthz"), "")))
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda c: c[2](), checks))
        extra = [s for group in pool.map(lambda c: c.status(lab), active_components(lab)) for s in group]
    rows = [ComponentStatus(name=n, address=a, up=ok, detail=d) for (n, a, _), (ok, d) in zip(checks, results)]
    return rows + extra
