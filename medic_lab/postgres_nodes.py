"""The lab's PostgreSQL nodes: ports, paths, commands as the host's user, and the helpers that start or
find their processes. Shared by the component (`medic_lab.postgres`) and its faults."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel

from medic.clients.haproxy import HAProxyRuntime, LoadBalancerError
from medic.errors import LabError
from medic_lab.processes import alive, spawn, spawned_pid
from medic_lab.reaper import stat_fields
from medic_lab.state import LabHost, LabState

PG_BIN = Path("/usr/lib/postgresql/15/bin")
EXPORTER = Path("/usr/bin/prometheus-postgres-exporter")
HAPROXY = Path("/usr/sbin/haproxy")
NODES = ("pg-1", "pg-2")
#: `--with db3`: a third node (primary + 2 standbys), where a failover can go wrong in more ways.
NODES_3 = (*NODES, "pg-3")
BACKEND = "pg"
CLUSTER = "lab-pg"
#: WAL kept for pg_rewind and slow standbys (the lab writes little; this is days of lab traffic).
WAL_KEEP = "256MB"


def nodes(lab: LabState) -> tuple[str, ...]:
    """The cluster's node names: two, or three with `--with db3` (pg-1 starts as the primary)."""
    return NODES_3 if lab.options.get("db3") else NODES


class PgPorts(BaseModel):
    """The cluster's fixed ports, from the lab's base port (base+150..169 belong to this component).

    pg-1, pg-2 at base+150, 151 (as they always were); pg-3 at base+160; exporters at base+155...
    """

    nodes: dict[str, int]
    exporters: dict[str, int]
    endpoint: int
    endpoint_admin: int
    endpoint_metrics: int

    @classmethod
    def of(cls, lab: LabState) -> "PgPorts":
        b = lab.ports.base + 150
        names = nodes(lab)
        return cls(nodes={n: b + (i if i < 2 else 8 + i) for i, n in enumerate(names)},
                   exporters={n: b + 5 + i for i, n in enumerate(names)},
                   endpoint=b + 2, endpoint_admin=b + 3, endpoint_metrics=b + 4)


def synchronous(lab: LabState) -> bool:
    return bool(lab.options.get("db-sync"))


def pgctl(host: LabHost) -> Path:
    return host.root / "bin" / "pgctl"


def pg_data(host: LabHost) -> Path:
    return host.root / "pgdata"


def run_as(host: LabHost, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command as the host's login user (initdb and pg_ctl refuse root)."""
    return subprocess.run(["runuser", "-u", host.user, "--", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=host.root)


def must(result: subprocess.CompletedProcess[str], what: str, host: LabHost) -> str:
    if result.returncode != 0:
        raise LabError(f"{what} failed on {host.name} (exit {result.returncode}): "
                       f"{(result.stderr or result.stdout).strip()[-500:]}; see {host.root}/log/postgres.log")
    return result.stdout


def psql(host: LabHost, sql: str, *, timeout: float = 10) -> str:
    """One statement on the host's own node, as the lab sets it up (trust on 127.0.0.1)."""
    return must(run_as(host, str(pgctl(host)), "psql", "-At", "-c", sql, timeout=timeout), f"psql {sql!r}", host).strip()


def route_only(ports: PgPorts, primary: str, *, timeout: float = 10) -> None:
    """Once the endpoint's runtime API answers, put every node but the primary in maint."""
    runtime = HAProxyRuntime("127.0.0.1", ports.endpoint_admin)
    deadline = time.monotonic() + timeout
    while True:
        try:
            for node in ports.nodes:
                runtime.set_state(BACKEND, node, "ready" if node == primary else "maint")
            return
        except LoadBalancerError as exc:
            if time.monotonic() > deadline:
                raise LabError(f"the PostgreSQL endpoint did not take its routing: {exc}") from exc
            time.sleep(0.05)


def require_db_host(host: LabHost) -> None:
    if host.group != "db":
        raise LabError(f"{host.name} is not a PostgreSQL host (db hosts: {', '.join(NODES_3)}, "
                       f"pg-3 with `--with db3`)")


def postmaster_pid(host: LabHost) -> int | None:
    """The pid postmaster.pid names (running, dead or a zombie); None without a readable file."""
    try:
        return int((pg_data(host) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def postgres_pids(host: LabHost) -> list[int]:
    """The node's postmaster (from postmaster.pid) and all its children; [] when it is not running."""
    require_db_host(host)
    pm = postmaster_pid(host)
    if pm is None or not alive(pm):
        return []
    children = [int(e) for e in os.listdir("/proc")
                if e.isdigit() and (fields := stat_fields(int(e))) and int(fields[1]) == pm]
    return [pm, *children]


def exporter_pid(lab: LabState, host: LabHost) -> int | None:
    return spawned_pid(lab.lab_dir, f"pg-exporter-{host.name}")


def start_exporter(lab: LabState, host: LabHost) -> None:
    ports = PgPorts.of(lab)
    dsn = f"postgresql://postgres@127.0.0.1:{ports.nodes[host.name]}/postgres?sslmode=disable&connect_timeout=2"
    spawn(f"pg-exporter-{host.name}",
          [str(EXPORTER), f"--web.listen-address=127.0.0.1:{ports.exporters[host.name]}",
           f"--extend.query-path={lab.lab_dir / 'postgres' / 'queries.yml'}", "--disable-settings-metrics",
           "--no-collector.database", "--no-collector.bgwriter", "--log.level=error"],
          lab_dir=lab.lab_dir, env={"DATA_SOURCE_NAME": dsn})
