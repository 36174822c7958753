"""What the lab runs: Prefect, the monitoring stack, and per host an sshd and the demo web service.

Every daemon goes through `processes.spawn` (environment marker, log under ``<lab>/logs``, reaped by
this process), so `medic lab down` finds and stops all of them.
"""

from __future__ import annotations

import os
import sys

from medic.core.paths import LAB_TEMPLATES_DIR
from medic.orchestration.embedded_server import server_command, server_env
from medic_lab import hosts as lab_hosts
from medic_lab.components import active_components
from medic_lab.processes import spawn
from medic_lab.state import LabHost, LabState


def start_prefect(lab: LabState) -> None:
    """The lab's Prefect server: a component's (e.g. `cluster`: on PostgreSQL, with auth), else SQLite."""
    if any(component.start_prefect(lab) for component in active_components(lab)):
        return
    home = lab.lab_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    spawn("prefect", server_command(lab.ports.prefect), lab_dir=lab.lab_dir,
          env=server_env(home, lab.ports.prefect), cwd=home)


def start_sshd(host: LabHost, lab: LabState) -> None:
    spawn(f"sshd-{host.name}", ["/usr/sbin/sshd", "-D", "-e", "-f", str(host.root / "sshd" / "sshd_config")],
          lab_dir=lab.lab_dir)


def start_service(host: LabHost, lab: LabState) -> None:
    """Start the host's web service as the host's user, as `servicectl start` would."""
    proc = spawn(
        f"web-{host.name}",
        ["/usr/bin/python3", str(host.root / "bin" / "webapp.py"), "--host-name", host.name, "--port",
         str(host.service_port), "--data-dir", str(host.data_dir), "--capacity-bytes",
         str(lab_hosts.DATA_CAPACITY_BYTES)],
        lab_dir=lab.lab_dir,
        user=host.user,
        cwd=host.root,
    )
    pidfile = host.root / "run" / "web.pid"
    pidfile.write_text(f"{proc.pid}\n")
    account = lab_hosts.ensure_user(host.user)
    os.chown(pidfile, account.pw_uid, account.pw_gid)


def start_host(host: LabHost, lab: LabState) -> None:
    start_sshd(host, lab)
    if host.group == "web":
        start_service(host, lab)


def start_monitoring(lab: LabState) -> None:
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
