"""Bring the ops lab up and down, and report its status.

`up` checks every port first, lays out all state under the lab dir, starts the daemons in parallel
and waits until Prometheus scrapes every target. Any failure during `up` stops what was started.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx
from medic.errors import ConfigError, LabError, PortInUseError
from medic_lab import hosts as lab_hosts
from medic_lab.components import ComponentStatus, LabComponent, registered
from medic_lab.monitoring import alertmanager_config, write_monitoring_configs
from medic_lab.processes import find_lab_processes, spawn, stop_lab_processes
from medic_lab.state import STATE_FILE, LabHost, LabPorts, LabState
from medic.core.paths import DEFAULT_WEBHOOK_URL, LAB_TEMPLATES_DIR

MAX_HOSTS = 50
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def check_port_free(component: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the daemons themselves: TIME_WAIT leftovers are fine, a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise PortInUseError(component, port) from None


def _check_environment(lab_dir: Path) -> None:
    if os.geteuid() != 0:
        raise ConfigError("medic lab needs root: it creates lab users and runs one sshd per host; run it as root")
    for binary in ("/usr/bin/prometheus", "/usr/bin/prometheus-alertmanager", "/usr/sbin/sshd"):
        if not Path(binary).exists():
            raise ConfigError(f"{binary} is missing; run `make setup` to install the lab's Debian packages")
    # Lab users must traverse every parent of the lab dir to reach their host directory.
    for parent in [lab_dir, *lab_dir.parents]:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise ConfigError(
                f"lab dir {lab_dir} is not reachable by the lab users: {parent} is not world-traversable "
                f"(chmod o+x {parent}, or set MEDIC_LAB_DIR elsewhere)"
            )


LAB_PORT_SPAN = 700  # base .. base+700 covers every fixed, per-host and component port


def _check_outside_ephemeral_range(base_port: int) -> None:
    """Ports in the kernel's ephemeral range are handed to outgoing connections at random, so a lab
    listening there would fail to start (or lose a port) at random."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return
    if base_port <= high and base_port + LAB_PORT_SPAN >= low:
        raise ConfigError(f"lab base port {base_port} overlaps the kernel's ephemeral port range {low}-{high}; "
                          f"choose MEDIC_LAB_BASE_PORT below {low - LAB_PORT_SPAN}")


def plan_lab(lab_dir: Path, *, hosts: int, base_port: int, webhook_url: str,
             options: dict[str, bool] | None = None) -> LabState:
    if not 1 <= hosts <= MAX_HOSTS:
        raise ConfigError(f"--hosts must be between 1 and {MAX_HOSTS}, got {hosts}")
    _check_outside_ephemeral_range(base_port)
    ports = LabPorts.from_base(base_port)
    lab_hosts_list = [
        LabHost(
            name=f"web-{i}",
            group="web",
            user=lab_hosts.user_for(f"web-{i}"),
            ssh_port=ports.ssh(i),
            service_port=ports.service(i),
            root=lab_dir / "hosts" / f"web-{i}",
        )
        for i in range(1, hosts + 1)
    ]
    lab = LabState(lab_dir=lab_dir, ports=ports, hosts=lab_hosts_list, webhook_url=webhook_url,
                   started_at=datetime.now(timezone.utc), options=options or {})
    for component in active_components(lab):
        lab.hosts.extend(component.extra_hosts(lab))
    return lab


def active_components(lab: LabState) -> list[LabComponent]:
    return [c for c in registered() if c.enabled(lab)]


def _all_ports(lab: LabState) -> list[tuple[str, int]]:
    p = lab.ports
    fixed = [("prefect", p.prefect)] if lab.with_prefect else []
    fixed += [("prometheus", p.prometheus), ("alertmanager", p.alertmanager),
             ("node-exporter", p.node_exporter)]
    per_host = [(f"sshd of {h.name}", h.ssh_port) for h in lab.hosts]
    per_host += [(f"web service of {h.name}", h.service_port) for h in lab.hosts if h.group == "web"]
    extra = [p for c in active_components(lab) for p in c.ports(lab)]
    return fixed + per_host + extra


def _start_prefect(lab: LabState) -> None:
    from medic.orchestration.embedded_server import server_command, server_env

    home = lab.lab_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    spawn("prefect", server_command(lab.ports.prefect), lab_dir=lab.lab_dir,
          env=server_env(home, lab.ports.prefect), cwd=home)


def start_sshd(host: LabHost, lab: LabState) -> None:
    spawn(f"sshd-{host.name}", ["/usr/sbin/sshd", "-D", "-e", "-f", str(host.root / "sshd" / "sshd_config")],
          lab_dir=lab.lab_dir)


def _start_host(host: LabHost, lab: LabState) -> None:
    start_sshd(host, lab)
    if host.group == "web":
        start_service(host, lab.lab_dir)


def start_service(host: LabHost, lab_dir: Path) -> None:
    """Start the host's web service as the host's user, as `servicectl start` would."""
    proc = spawn(
        f"web-{host.name}",
        ["/usr/bin/python3", str(host.root / "bin" / "webapp.py"), "--host-name", host.name, "--port",
         str(host.service_port), "--data-dir", str(host.data_dir), "--capacity-bytes",
         str(lab_hosts.DATA_CAPACITY_BYTES)],
        lab_dir=lab_dir,
        user=host.user,
        cwd=host.root,
    )
    pidfile = host.root / "run" / "web.pid"
    pidfile.write_text(f"{proc.pid}\n")
    account = lab_hosts.ensure_user(host.user)
    os.chown(pidfile, account.pw_uid, account.pw_gid)


def _start_monitoring(lab: LabState) -> None:
    d, p = lab.lab_dir, lab.ports
    spawn("node-exporter", ["/usr/bin/prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{p.node_exporter}",
          "--collector.disable-defaults", "--collector.cpu", "--collector.meminfo", "--collector.loadavg",
          "--collector.filesystem", "--collector.netdev", "--collector.uname", "--collector.time"],
          lab_dir=d)
    spawn("alertmanager", ["/usr/bin/prometheus-alertmanager", f"--config.file={d}/alertmanager/alertmanager.yml",
          f"--storage.path={d}/alertmanager/data", f"--web.listen-address=127.0.0.1:{p.alertmanager}",
          "--cluster.listen-address=", "--log.level=warn"], lab_dir=d)
    spawn("prometheus", ["/usr/bin/prometheus", f"--config.file={d}/prometheus/prometheus.yml",
          f"--storage.tsdb.path={d}/prometheus/data", f"--web.listen-address=127.0.0.1:{p.prometheus}",
          "--web.enable-lifecycle", "--storage.tsdb.retention.time=2d", "--log.level=warn"], lab_dir=d)
    spawn("traffic", [sys.executable, str(LAB_TEMPLATES_DIR / "traffic.py"), "--lab-dir", str(d),
          *[str(h.service_port) for h in lab.hosts]], lab_dir=d)


def wait_for_targets(lab: LabState, *, timeout: float, progress: Progress = _quiet) -> float:
    """Wait until Prometheus reports every scrape target up; returns seconds waited."""
    began = time.monotonic()
    extra_jobs = [job for c in active_components(lab) for job in c.scrape_configs(lab)]
    expected = 3 + sum(1 for h in lab.hosts if h.group == "web") + sum(
        len(sc.get("targets", [])) for job in extra_jobs for sc in job.get("static_configs", []))
    last = ""
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() - began < timeout:
            try:
                active = client.get(f"{lab.prometheus_url}/api/v1/targets", params={"state": "active"}).json()
                targets = active["data"]["activeTargets"]
                up = sum(1 for t in targets if t["health"] == "up")
                msg = f"scrape targets up: {up}/{expected}"
                if msg != last:
                    progress(msg)
                    last = msg
                if up >= expected and len(targets) >= expected:
                    return time.monotonic() - began
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.2)
    raise LabError(f"Prometheus did not see all {expected} targets up within {timeout:.0f} s ({last}); "
                   f"see {lab.lab_dir}/logs/ and {lab.prometheus_url}/targets")


def wait_for_http(url: str, *, what: str, timeout: float) -> float:
    began = time.monotonic()
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() - began < timeout:
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise LabError(f"{what} did not answer at {url} within {timeout:.0f} s")


def wait_for_sshd(lab: LabState, *, timeout: float, hosts: list[LabHost] | None = None) -> None:
    deadline = time.monotonic() + timeout
    pending = list(hosts if hosts is not None else lab.hosts)
    while pending and time.monotonic() < deadline:
        pending = [h for h in pending if not (_tcp_banner(h.ssh_port) or "").startswith("SSH-")]
        if pending:
            time.sleep(0.1)
    if pending:
        names = ", ".join(h.name for h in pending)
        raise LabError(f"sshd did not answer on {names} within {timeout:.0f} s; see {lab.lab_dir}/logs/sshd-*.log")


def lab_is_running(lab_dir: Path) -> bool:
    return bool(find_lab_processes(lab_dir))


def up(
    lab_dir: Path,
    *,
    hosts: int = 3,
    base_port: int = 19000,
    webhook_url: str = DEFAULT_WEBHOOK_URL,
    with_prefect: bool = True,
    options: dict[str, bool] | None = None,
    progress: Progress = _quiet,
) -> LabState:
    """Start the whole lab; on any failure stop everything that was started and raise LabError."""
    lab_dir = lab_dir.resolve()
    _check_environment(lab_dir)
    if lab_is_running(lab_dir):
        raise LabError(f"a lab is already running in {lab_dir}; run `medic lab down` first")
    lab = plan_lab(lab_dir, hosts=hosts, base_port=base_port, webhook_url=webhook_url, options=options)
    lab.with_prefect = with_prefect
    components = active_components(lab)
    for component, port in _all_ports(lab):
        check_port_free(component, port)

    began = time.monotonic()
    if lab_dir.exists():
        for stale in ("hosts", "prometheus", "alertmanager", "ssh", "logs", "pids", "prefect", STATE_FILE):
            path = lab_dir / stale
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.chmod(0o755)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    try:
        if with_prefect:
            _start_prefect(lab)  # the slowest to become ready: start it first
        ssh_dir = lab_dir / "ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        client_pub = lab_hosts.write_keypair(ssh_dir / "id_ed25519")
        (ssh_dir / "authorized_keys").write_text(client_pub + "\n")
        (ssh_dir / "authorized_keys").chmod(0o644)
        with ThreadPoolExecutor(max_workers=8) as pool:
            known = list(pool.map(lambda h: lab_hosts.prepare_host(h, lab), lab.hosts))
        (ssh_dir / "known_hosts").write_text("\n".join(known) + "\n")
        for component in components:
            component.prepare(lab)
        extra_vars: dict[str, dict] = {}
        for component in components:
            for host, values in component.inventory_vars(lab).items():
                extra_vars.setdefault(host, {}).update(values)
        lab_hosts.write_inventory(lab, extra_vars)
        write_monitoring_configs(lab, [job for c in components for job in c.scrape_configs(lab)])
        lab.save()
        _start_monitoring(lab)
        for h in lab.hosts:
            _start_host(h, lab)
        for component in components:
            component.start(lab)
        progress(f"started {len(lab.hosts)} hosts, Prometheus, Alertmanager, node exporter"
                 + (", Prefect server" if with_prefect else "") + f" in {time.monotonic() - began:.1f} s")
        wait_for_http(f"{lab.alertmanager_url}/-/ready", what="Alertmanager", timeout=15)
        wait_for_sshd(lab, timeout=10)
        for component in components:
            component.wait(lab, timeout=45)
        wait_for_targets(lab, timeout=45, progress=progress)
        progress(f"every scrape target up {time.monotonic() - began:.1f} s after start")
        if with_prefect:
            waited = wait_for_http(f"{lab.prefect_api_url}/health", what="Prefect server", timeout=90)
            progress(f"Prefect server ready at {lab.prefect_api_url} ({waited:.1f} s more)")
    except BaseException:
        stop_lab_processes(lab_dir)
        raise
    return lab


def down(lab_dir: Path) -> int:
    """Stop every process of the lab (recorded or not). Returns how many were stopped.

    A process that used the lab's Prefect first hands over the events and logs it still owes it
    (else they are retried against the stopped server at exit, ~50 s each).
    """
    import sys

    lab_dir = lab_dir.resolve()
    if "prefect" in sys.modules:
        from medic.orchestration.runtime import flush_prefect_telemetry

        flush_prefect_telemetry()
    stopped = stop_lab_processes(lab_dir)
    (lab_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped


def require_lab(lab_dir: Path) -> LabState:
    lab = LabState.load(lab_dir.resolve())
    if lab is None:
        raise ConfigError(f"no lab in {lab_dir}; start one with `medic lab up`")
    return lab


def set_webhook(lab: LabState, url: str) -> None:
    """Point Alertmanager at another webhook receiver (reloaded live, no restart)."""
    (lab.lab_dir / "alertmanager" / "alertmanager.yml").write_text(alertmanager_config(url))
    lab.webhook_url = url
    lab.save()
    try:
        httpx.post(f"{lab.alertmanager_url}/-/reload", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise LabError(f"Alertmanager at {lab.alertmanager_url} did not reload its config: {exc}") from exc


def _tcp_banner(port: int) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(64).decode(errors="replace").strip()
    except OSError:
        return None


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.5).status_code == 200
    except httpx.HTTPError:
        return False


def status(lab_dir: Path) -> list[ComponentStatus]:
    lab = require_lab(lab_dir)
    checks: list[tuple[str, str, Callable[[], tuple[bool, str]]]] = [
        ("prefect", lab.prefect_api_url, lambda: (_http_ok(f"{lab.prefect_api_url}/health"), "")),
        ("prometheus", lab.prometheus_url, lambda: (_http_ok(f"{lab.prometheus_url}/-/ready"), "")),
        ("alertmanager", lab.alertmanager_url, lambda: (_http_ok(f"{lab.alertmanager_url}/-/ready"),
                                                        f"webhook → {lab.webhook_url}")),
        ("node-exporter", lab.node_exporter_url, lambda: (_http_ok(f"{lab.node_exporter_url}/metrics"), "")),
    ]
    if not lab.with_prefect:
        checks.pop(0)
    for h in lab.hosts:
        checks.append((f"{h.name} sshd", f"127.0.0.1:{h.ssh_port}",
                       lambda h=h: ((b := _tcp_banner(h.ssh_port)) is not None and b.startswith("SSH-"), f"user {h.user}")))
        if h.group == "web":
            checks.append((f"{h.name} web", f"http://127.0.0.1:{h.service_port}",
                           lambda h=h: (_http_ok(f"http://127.0.0.1:{h.service_port}/healthz"), "")))
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda c: c[2](), checks))
        extra = [s for group in pool.map(lambda c: c.status(lab), active_components(lab)) for s in group]
    rows = [ComponentStatus(name=n, address=a, up=ok, detail=d) for (n, a, _), (ok, d) in zip(checks, results)]
    return rows + extra
