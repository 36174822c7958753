"""The lab's PostgreSQL cluster: a primary and a streaming replica, metrics, a client endpoint, faults.

Enabled with `medic lab up --with db` (asynchronous replication) or `--with db-sync` (synchronous:
every commit waits for the standby's flush); `--with db3` (alone or with `db-sync`) adds a third node.
Two (three) SSH hosts of group ``db``, ``pg-1`` (primary) and ``pg-2`` (``pg-3``) (standbys), each run PostgreSQL 15 as the host's own unprivileged user from a data dir under
the host dir, controlled by the host's ``bin/pgctl`` (port and socket dir on the command line:
pg_rewind copies config files between nodes). Authentication is ``trust`` on 127.0.0.1 and the local
socket only — the lab has no database password, so none can leak.

Clients use the **endpoint**, a HAProxy TCP frontend of its own (not the web one): backend ``pg``
has one server per node, named after the host; exactly the primary is ``ready``, the others are in
``maint``. Its runtime API is a TCP admin socket (`medic.clients.haproxy.HAProxyRuntime`).

Metrics: one Debian ``prometheus-postgres-exporter`` per node (job ``postgres``, label ``host``) with
the custom queries of ``lab/postgres/queries.yml`` (role, WAL positions, replay backlog/paused,
per-standby lag in bytes and seconds), and HAProxy's built-in exporter (job ``pg-endpoint``).

Ports: base+150.. (see `PgPorts`); SSH of the db hosts: ``ports.ssh(51)``, ``ports.ssh(52)`` (``ports.ssh(53)``).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import httpx

from medic.core.paths import LAB_TEMPLATES_DIR
from medic.errors import LabError
from medic_lab import postgres_faults
from medic_lab.components import ComponentStatus, Fault, LabComponent
from medic_lab.hosts import ensure_user, user_for
from medic_lab.postgres_nodes import (BACKEND, CLUSTER, EXPORTER, HAPROXY, PG_BIN, WAL_KEEP, PgPorts, must, nodes,
                                      pg_data, pgctl, psql, route_only, run_as, start_exporter, synchronous)
from medic_lab.processes import spawn
from medic_lab.state import LabHost, LabState

__all__ = ["PgPorts", "Postgres", "pg_data", "psql"]


def _conf(lab: LabState) -> str:
    """Settings shared by every node (copied between nodes by pg_basebackup and pg_rewind)."""
    return "\n".join([
        "", "# medic lab (ports and socket dir are given on the command line by bin/pgctl)",
        "wal_level = replica", "max_wal_senders = 10", "max_replication_slots = 10",
        f"wal_keep_size = '{WAL_KEEP}'", "hot_standby = on", "wal_log_hints = on",
        "wal_receiver_status_interval = 1s", "wal_receiver_timeout = 10s", "wal_sender_timeout = 10s",
        "shared_buffers = 16MB", "max_connections = 50", "log_line_prefix = '%m [%p] '",
        # the cluster's chosen mode; the promote/rejoin playbooks read it back
        f"medic.replication_mode = '{'sync' if synchronous(lab) else 'async'}'", "",
    ])


def _endpoint_config(lab: LabState, ports: PgPorts) -> str:
    # Standbys are put in maint through the runtime API at start: a server `disabled` in the config
    # stays in config-maint, which `set server ... state ready` cannot lift (HAProxy 2.6).
    servers = [f"    server {n} 127.0.0.1:{p}" for n, p in ports.nodes.items()]
    return "\n".join([
        "# the lab's PostgreSQL client endpoint (clients connect here, never to a node)",
        "global",
        f"    stats socket ipv4@127.0.0.1:{ports.endpoint_admin} level admin",
        "    maxconn 500",
        "defaults",
        "    mode tcp", "    timeout connect 2s", "    timeout client 1h", "    timeout server 1h",
        "frontend pg_endpoint",
        f"    bind 127.0.0.1:{ports.endpoint}",
        f"    default_backend {BACKEND}",
        f"backend {BACKEND}",
        *servers,
        "frontend metrics",
        "    mode http",
        f"    bind 127.0.0.1:{ports.endpoint_metrics}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "",
    ])


class Postgres(LabComponent):
    name = "db"

    def enabled(self, lab: LabState) -> bool:
        return bool(lab.options.get("db") or lab.options.get("db-sync") or lab.options.get("db3"))

    def extra_hosts(self, lab: LabState) -> list[LabHost]:
        ports = PgPorts.of(lab)
        return [LabHost(name=n, group="db", user=user_for(n), ssh_port=lab.ports.ssh(51 + i),
                        service_port=ports.nodes[n], root=lab.hosts_dir / n)
                for i, n in enumerate(nodes(lab))]

    def ports(self, lab: LabState) -> list[tuple[str, int]]:
        p = PgPorts.of(lab)
        found = [(f"PostgreSQL on {n}", port) for n, port in p.nodes.items()]
        found += [(f"postgres exporter of {n}", port) for n, port in p.exporters.items()]
        return found + [("PostgreSQL endpoint", p.endpoint), ("PostgreSQL endpoint admin", p.endpoint_admin),
                        ("PostgreSQL endpoint metrics", p.endpoint_metrics)]

    # -- layout ----------------------------------------------------------------------------------

    def prepare(self, lab: LabState) -> None:
        for missing in (PG_BIN / "initdb", EXPORTER, HAPROXY):
            if not missing.exists():
                raise LabError(f"{missing} is missing; install the Debian packages postgresql, "
                               f"prometheus-postgres-exporter and haproxy (`make setup`)")
        ports = PgPorts.of(lab)
        for host in self._hosts(lab):
            account = ensure_user(host.user)
            shutil.copy2(LAB_TEMPLATES_DIR / "host" / "pgctl", pgctl(host))
            env = host.root / "etc" / "pg.env"
            env.write_text(f"PGBIN={PG_BIN}\nPGDATA={pg_data(host)}\nPGPORT={ports.nodes[host.name]}\n"
                           f"PGHOST_NAME={host.name}\n")
            for path in (pgctl(host), env):
                os.chown(path, account.pw_uid, account.pw_gid)
        primary = self._hosts(lab)[0]
        must(run_as(primary, str(PG_BIN / "initdb"), "-D", str(pg_data(primary)), "-U", "postgres", "-k",
                     "-A", "trust", "-E", "UTF8", "--locale=C", "-N"), "initdb", primary)
        with open(pg_data(primary) / "postgresql.conf", "a") as conf:
            conf.write(_conf(lab))
        d = lab.lab_dir / "postgres"
        d.mkdir(parents=True, exist_ok=True)
        (d / "haproxy.cfg").write_text(_endpoint_config(lab, ports))
        shutil.copy2(LAB_TEMPLATES_DIR / "postgres" / "queries.yml", d / "queries.yml")

    # -- daemons ---------------------------------------------------------------------------------

    def start(self, lab: LabState) -> None:
        primary, *standbys = self._hosts(lab)
        ports = PgPorts.of(lab)
        must(run_as(primary, str(pgctl(primary)), "start"), "starting PostgreSQL", primary)
        psql(primary, "CREATE TABLE IF NOT EXISTS medic_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        for standby in standbys:
            must(run_as(standby, str(PG_BIN / "pg_basebackup"), "-D", str(pg_data(standby)), "-R", "-X", "stream",
                         "-c", "fast", "-d", f"host=127.0.0.1 port={ports.nodes[primary.name]} user=postgres"),
                  "pg_basebackup", standby)
            must(run_as(standby, str(pgctl(standby)), "start"), "starting PostgreSQL", standby)
        if synchronous(lab):
            psql(primary, "ALTER SYSTEM SET synchronous_standby_names = '*'")
            psql(primary, "SELECT pg_reload_conf()")
        for host in (primary, *standbys):
            self.start_exporter(lab, host)
        d = lab.lab_dir / "postgres"
        spawn("pg-endpoint", [str(HAPROXY), "-db", "-f", str(d / "haproxy.cfg")], lab_dir=lab.lab_dir)
        route_only(ports, primary.name)

    def start_exporter(self, lab: LabState, host: LabHost) -> None:
        start_exporter(lab, host)

    def wait(self, lab: LabState, *, timeout: float) -> None:
        primary, *standbys = self._hosts(lab)
        deadline = time.monotonic() + timeout
        streaming = ""
        missing = standbys
        while time.monotonic() < deadline:
            streaming = psql(primary, "SELECT string_agg(application_name, ',') FROM pg_stat_replication "
                                      "WHERE state = 'streaming'")
            missing = [s for s in standbys if s.name not in streaming.split(",")]
            if not missing:
                return
            time.sleep(0.1)
        raise LabError(f"{', '.join(s.name for s in missing)} not streaming from {primary.name} after {timeout:.0f} s "
                       f"(streaming: {streaming or 'none'}); see {missing[0].root}/log/postgres.log")

    def scrape_configs(self, lab: LabState) -> list[dict[str, Any]]:
        p = PgPorts.of(lab)
        return [
            {"job_name": "postgres", "scrape_timeout": "900ms",
             "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"host": n, "cluster": CLUSTER}}
                                for n, port in p.exporters.items()]},
            {"job_name": "pg-endpoint",
             "static_configs": [{"targets": [f"127.0.0.1:{p.endpoint_metrics}"], "labels": {"cluster": CLUSTER}}]},
        ]

    def inventory_vars(self, lab: LabState) -> dict[str, dict[str, Any]]:
        p = PgPorts.of(lab)
        common = {"medic_pg_cluster": CLUSTER, "medic_pg_endpoint": f"127.0.0.1:{p.endpoint}",
                  "medic_pg_endpoint_admin": f"127.0.0.1:{p.endpoint_admin}", "medic_pg_backend": BACKEND,
                  "medic_pg_bin": str(PG_BIN)}
        return {h.name: {**common, "medic_pg_port": p.nodes[h.name], "medic_pg_data": str(pg_data(h)),
                         "medic_pgctl": str(pgctl(h))}
                for h in self._hosts(lab)}

    def faults(self) -> list[Fault]:
        return postgres_faults.FAULTS

    def status(self, lab: LabState) -> list[ComponentStatus]:
        p = PgPorts.of(lab)
        rows = []
        for host in self._hosts(lab):
            said = run_as(host, str(pgctl(host)), "status", timeout=10)
            rows.append(ComponentStatus(name=f"{host.name} postgres", address=f"127.0.0.1:{p.nodes[host.name]}",
                                        up=said.returncode == 0, detail=said.stdout.strip()))
        try:
            up = httpx.get(f"http://127.0.0.1:{p.endpoint_metrics}/metrics", timeout=1.5).status_code == 200
        except httpx.HTTPError:
            up = False
        rows.append(ComponentStatus(name="pg endpoint", address=f"127.0.0.1:{p.endpoint}", up=up,
                                    detail=f"admin 127.0.0.1:{p.endpoint_admin}, "
                                           f"{'synchronous' if synchronous(lab) else 'asynchronous'} replication"))
        return rows

    @staticmethod
    def _hosts(lab: LabState) -> list[LabHost]:
        found = [lab.host(n) for n in nodes(lab)]
        if any(h is None for h in found):
            raise LabError(f"the lab has no db hosts {', '.join(nodes(lab))}; start it with `medic lab up --with db`")
        return [h for h in found if h is not None]
