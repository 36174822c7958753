"""Bring the ops lab up and down.

`up` checks every port first, lays out the private state under the lab dir and the host roots under
the lab's public dir, starts the daemons and waits until Prometheus scrapes every target. Any failure
— an exception, Ctrl-C, a SIGTERM turned into one — stops what was started and removes what was laid
out. `down` finds every lab process by its marks (see `processes`), so it also cleans up after an `up`
that was killed outright.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx

from medic.core.net import wait_healthy
from medic.core.paths import DEFAULT_WEBHOOK_URL
from medic.errors import ConfigError, LabError, PortInUseError
from medic_lab import hosts as lab_hosts
from medic_lab import readiness
from medic_lab.components import ComponentStatus, active_components
from medic_lab.daemons import start_host, start_monitoring, start_prefect
from medic_lab.dependency_faults import unmount_state_disk
from medic_lab.monitoring import alertmanager_config, write_monitoring_configs
from medic_lab.processes import find_lab_processes, stop_lab_processes, stop_process
from medic_lab.state import PUBLIC_ROOT, STATE_FILE, LabHost, LabPorts, LabState, public_dir_for

MAX_HOSTS = 50
LAB_PORT_SPAN = 700  # base .. base+700 covers every fixed, per-host and component port
#: How long `down` lets a `medic serve` the demo left running finish what it is doing.
SERVE_STOP_GRACE_S = 20.0
Progress = Callable[[str], None]


def check_port_free(component: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the daemons themselves: TIME_WAIT leftovers are fine, a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise PortInUseError(component, port) from None


def _check_environment() -> None:
    if os.geteuid() != 0:
        raise ConfigError("medic lab needs root: it creates lab users and runs one sshd per host; run it as root")
    for binary in ("/usr/bin/prometheus", "/usr/bin/prometheus-alertmanager", "/usr/sbin/sshd"):
        if not Path(binary).exists():
            raise ConfigError(f"{binary} is missing; run `make setup` to install the lab's Debian packages")
    # The lab dir may be private (a checkout under a 0700 home); the public dir's parents may not.
    for parent in PUBLIC_ROOT.parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise ConfigError(f"the lab users cannot reach {PUBLIC_ROOT}: {parent} is not world-traversable "
                              f"(chmod o+x {parent})")


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
    lab = LabState(lab_dir=lab_dir, public_dir=public_dir_for(lab_dir), ports=ports, hosts=[],
                   webhook_url=webhook_url, started_at=datetime.now(timezone.utc), options=options or {})
    lab.hosts = [LabHost(name=f"web-{i}", group="web", user=lab_hosts.user_for(f"web-{i}"), ssh_port=ports.ssh(i),
                         service_port=ports.service(i), root=lab.hosts_dir / f"web-{i}")
                 for i in range(1, hosts + 1)]
    for component in active_components(lab):
        lab.hosts.extend(component.extra_hosts(lab))
    return lab


def _all_ports(lab: LabState) -> list[tuple[str, int]]:
    p = lab.ports
    fixed = [("prefect", p.prefect)] if lab.with_prefect else []
    fixed += [("prometheus", p.prometheus), ("alertmanager", p.alertmanager),
              ("node-exporter", p.node_exporter)]
    per_host = [(f"sshd of {h.name}", h.ssh_port) for h in lab.hosts]
    per_host += [(f"web service of {h.name}", h.service_port) for h in lab.hosts if h.group == "web"]
    extra = [p for c in active_components(lab) for p in c.ports(lab)]
    return fixed + per_host + extra


def lab_is_running(lab_dir: Path) -> bool:
    return bool(find_lab_processes(lab_dir))


def _clear_layout(lab_dir: Path) -> None:
    """Remove what an earlier lab in this dir laid out (never anything else in the dir)."""
    unmount_state_disk(lab_dir)
    for stale in ("hosts", "prometheus", "alertmanager", "ssh", "logs", "pids", "prefect", "postgres", "haproxy",
                  "cluster"):
        shutil.rmtree(lab_dir / stale, ignore_errors=True)
    LabState.forget(lab_dir)
    shutil.rmtree(public_dir_for(lab_dir), ignore_errors=True)


def _lay_out(lab: LabState) -> None:
    """Private dirs and the client key under the lab dir; the public dir 0755 with authorized_keys."""
    lab.lab_dir.mkdir(parents=True, exist_ok=True)
    for d in (PUBLIC_ROOT.parent, PUBLIC_ROOT, lab.public_dir, lab.hosts_dir):
        d.mkdir(exist_ok=True)
        d.chmod(0o755)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    ssh_dir = lab.lab_dir / "ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    client_pub = lab_hosts.write_keypair(ssh_dir / "id_ed25519")  # 0600, root's
    lab.authorized_keys.write_text(client_pub + "\n")
    lab.authorized_keys.chmod(0o644)
    with ThreadPoolExecutor(max_workers=8) as pool:
        known = list(pool.map(lambda h: lab_hosts.prepare_host(h, lab), lab.hosts))
    (ssh_dir / "known_hosts").write_text("\n".join(known) + "\n")


def up(
    lab_dir: Path,
    *,
    hosts: int = 3,
    base_port: int = 19000,
    webhook_url: str = DEFAULT_WEBHOOK_URL,
    with_prefect: bool = True,
    options: dict[str, bool] | None = None,
    progress: Progress = readiness.quiet,
) -> LabState:
    """Start the whole lab; on any failure stop everything that was started and raise."""
    lab_dir = lab_dir.resolve()
    _check_environment()
    if lab_is_running(lab_dir):
        raise LabError(f"a lab is already running in {lab_dir}; run `medic lab down` first")
    lab = plan_lab(lab_dir, hosts=hosts, base_port=base_port, webhook_url=webhook_url, options=options)
    lab.with_prefect = with_prefect
    components = active_components(lab)
    for component, port in _all_ports(lab):
        check_port_free(component, port)

    began = time.monotonic()
    _clear_layout(lab_dir)
    try:
        _lay_out(lab)
        if with_prefect:
            start_prefect(lab)  # the slowest to become ready: start it first
        for component in components:
            component.prepare(lab)
        extra_vars: dict[str, dict] = {}
        for component in components:
            for host, values in component.inventory_vars(lab).items():
                extra_vars.setdefault(host, {}).update(values)
        lab_hosts.write_inventory(lab, extra_vars)
        write_monitoring_configs(lab, [job for c in components for job in c.scrape_configs(lab)])
        start_monitoring(lab)
        for h in lab.hosts:
            start_host(h, lab)
        for component in components:
            component.start(lab)
        progress(f"started {len(lab.hosts)} hosts, Prometheus, Alertmanager, node exporter"
                 + (", Prefect server" if with_prefect else "") + f" in {time.monotonic() - began:.1f} s")
        wait_healthy(f"{lab.alertmanager_url}/-/ready", what="Alertmanager", timeout=15, error=LabError)
        readiness.wait_for_sshd(lab, timeout=10)
        for component in components:
            component.wait(lab, timeout=45)
        readiness.wait_for_targets(lab, timeout=45, progress=progress)
        progress(f"every scrape target up {time.monotonic() - began:.1f} s after start")
        if with_prefect:
            waited = wait_healthy(f"{lab.prefect_api_url}/health", what="Prefect server", timeout=90, error=LabError)
            progress(f"Prefect server ready at {lab.prefect_api_url} ({waited:.1f} s more)")
        lab.save()  # only now: settings.json tells every medic command the lab is there
    except BaseException:
        stop_lab_processes(lab_dir)
        _clear_layout(lab_dir)
        raise
    return lab


def down(lab_dir: Path) -> int:
    """Stop every process of the lab (recorded or not), a `medic serve` the demo left running first,
    and remove the state and the public dir. Returns how many processes were stopped.

    A process that used the lab's Prefect first hands over the events and logs it still owes it
    (else they are retried against the stopped server at exit, ~50 s each).
    """
    import sys

    lab_dir = lab_dir.resolve()
    if "prefect" in sys.modules:
        from medic.orchestration.telemetry import flush_prefect_telemetry

        flush_prefect_telemetry()
    stopped = 0
    serve_pid = _recorded_serve_pid(lab_dir)
    if serve_pid is not None and any(p.pid == serve_pid for p in find_lab_processes(lab_dir)):
        stopped += stop_process(serve_pid, grace=SERVE_STOP_GRACE_S)
    stopped += stop_lab_processes(lab_dir)
    unmount_state_disk(lab_dir)  # the state-disk-full fault's tmpfs, if it was mounted
    LabState.forget(lab_dir)
    shutil.rmtree(public_dir_for(lab_dir), ignore_errors=True)
    return stopped


def _recorded_serve_pid(lab_dir: Path) -> int | None:
    """Read leniently: `down` must work on a state file an older or crashed `up` wrote."""
    try:
        pid = json.loads((lab_dir / STATE_FILE).read_text()).get("serve_pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def require_lab(lab_dir: Path) -> LabState:
    lab = LabState.load(lab_dir.resolve())
    if lab is None:
        raise ConfigError(f"no lab in {lab_dir}; start one with `medic lab up`")
    return lab


def set_webhook(lab: LabState, url: str) -> None:
    """Point Alertmanager at another webhook receiver (reloaded live, no restart)."""
    (lab.lab_dir / "alertmanager" / "alertmanager.yml").write_text(alertmanager_config(url, lab.intake_token_file))
    lab.webhook_url = url
    lab.save()
    try:
        httpx.post(f"{lab.alertmanager_url}/-/reload", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise LabError(f"Alertmanager at {lab.alertmanager_url} did not reload its config: {exc}") from exc


def status(lab_dir: Path) -> list[ComponentStatus]:
    return readiness.status(require_lab(lab_dir))
