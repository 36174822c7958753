"""Before a failover acts: the cluster, who the primary is, is it really down, what a promotion risks.

The client endpoint (HAProxy) is the source of truth for "the primary": the one server of its
backend in state ``ready``; a run naming another node is refused (a stale alert must not fail over
the new primary's cluster again). Every other node is asked directly whether it is a writable
primary: if one is, promoting would make a second one. `decide` turns the diagnosis into "ask a
human" or a refusal.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from pydantic import BaseModel, Field

from medic.clients.haproxy import HAProxyRuntime, LoadBalancerError, parse_address
from medic.clients.postgres import DirectCheck, NodeState, ProcessState, direct_check, format_lsn, node_state, wal_end
from medic.clients.prometheus import PrometheusClient, label_matcher
from medic.clients.ssh import SSHSession
from medic.core.inventory import Host, Inventory
from medic.core.report import CheckResult, QueryEvidence
from medic.core.runbook import Runbook
from medic.errors import FailoverError
from medic.procedures import stages

_CLUSTER_VARS = ("medic_pg_cluster", "medic_pg_endpoint", "medic_pg_endpoint_admin", "medic_pg_backend", "medic_pg_port")


# --- the cluster --------------------------------------------------------------------------------


class Cluster(BaseModel):
    """The nodes (inventory hosts) and the client endpoint of one PostgreSQL cluster."""

    name: str
    members: list[Host]
    endpoint: str = Field(description="host:port clients connect to")
    admin: str = Field(description="host:port of the endpoint's HAProxy runtime API")
    backend: str

    def member(self, name: str) -> Host:
        for h in self.members:
            if h.name == name:
                return h
        raise FailoverError(f"{name!r} is not a node of cluster {self.name} "
                            f"(nodes: {', '.join(h.name for h in self.members)})")

    def address(self, host: Host) -> str:
        return f"{host.address}:{host.vars['medic_pg_port']}"

    def runtime(self) -> HAProxyRuntime:
        return HAProxyRuntime(*parse_address(self.admin))


def load_cluster(runbook: Runbook, inventory: Inventory) -> Cluster:
    if runbook.failover is None:
        raise FailoverError(f"runbook {runbook.name} is not a failover runbook (kind: failover)")
    members = inventory.resolve(runbook.failover.members)
    for h in members:
        missing = [v for v in _CLUSTER_VARS if v not in h.vars]
        if missing:
            raise FailoverError(f"inventory host {h.name} lacks {', '.join(missing)}: every node of group "
                                f"{runbook.failover.members!r} needs them (the lab writes them with --with db)")
    v = members[0].vars
    return Cluster(name=v["medic_pg_cluster"], members=members, endpoint=v["medic_pg_endpoint"],
                   admin=v["medic_pg_endpoint_admin"], backend=v["medic_pg_backend"])


class Route(BaseModel):
    """What the client endpoint does right now: server → admin state; the primary is the ready one."""

    servers: dict[str, str]
    error: str | None = None

    @property
    def primary(self) -> str | None:
        ready = [n for n, s in self.servers.items() if s == "ready"]
        return ready[0] if len(ready) == 1 else None

    def refusal_for(self, named: str | None) -> str | None:
        """Why a failover of `named` (None: the routed primary) must not start, or None."""
        if self.primary is None:
            return (f"the endpoint routes writes to no single primary ({self.servers or self.error}); "
                    f"nothing changed — find out which node should take writes before failing over")
        if named is not None and named != self.primary:
            return (f"{named} is not the primary: the endpoint routes writes to {self.primary} — a stale alert "
                    f"or request about an old primary? Failing over now could make a second primary; nothing changed")
        return None


def read_route(cluster: Cluster) -> Route:
    try:
        return Route(servers={s.name: s.admin_state for s in cluster.runtime().servers(cluster.backend)})
    except LoadBalancerError as exc:
        return Route(servers={}, error=str(exc))


# --- detect -------------------------------------------------------------------------------------


class Detection(BaseModel):
    primary: str
    prometheus: CheckResult
    direct: DirectCheck

    @property
    def confirmed(self) -> bool:
        """Down for Prometheus for the configured time *and* silent to a direct query."""
        return self.primary in self.prometheus.matching and not self.direct.answered


def detect(runbook: Runbook, cluster: Cluster, primary: Host, prom: PrometheusClient) -> Detection:
    plan = stages.Plan(runbook=runbook, target=primary.name, hosts=[primary])
    with ThreadPoolExecutor(max_workers=2) as pool:
        check = pool.submit(stages.detect, plan, prom)
        timeout = runbook.failover.direct_check_timeout if runbook.failover else 3.0
        direct = pool.submit(direct_check, cluster.address(primary), timeout=timeout)
        return Detection(primary=primary.name, prometheus=check.result(), direct=direct.result())


def recheck(runbook: Runbook, cluster: Cluster, primary: Host, prom: PrometheusClient) -> Detection:
    """After a human's decision (minutes may have passed): one look at Prometheus, and a direct query."""
    plan = stages.Plan(runbook=runbook, target=primary.name, hosts=[primary])
    timeout = runbook.failover.direct_check_timeout if runbook.failover else 3.0
    with ThreadPoolExecutor(max_workers=2) as pool:
        check = pool.submit(stages.recheck, plan, [primary], prom)
        direct = pool.submit(direct_check, cluster.address(primary), timeout=timeout)
        return Detection(primary=primary.name, prometheus=check.result(), direct=direct.result())


# --- diagnose -----------------------------------------------------------------------------------


class FailoverDiagnosis(BaseModel):
    """Where each node stands, and the writes a promotion could lose."""

    primary: NodeState
    standbys: list[NodeState]
    candidate: str | None = Field(None, description="the standby to promote: answering, furthest ahead")
    wal_end: int | None = Field(None, description="the old primary's last acknowledged-write position")
    wal_end_source: str = "unknown"
    lag_seconds: float | None = Field(None, description="the standby's replay lag last seen by the primary")
    writable: list[str] = Field(default_factory=list, description="other nodes answering as a writable primary "
                                                                   "(over SSH or to a direct query)")
    direct: dict[str, DirectCheck] = Field(default_factory=dict, description="a direct query to every other node")
    queries: list[QueryEvidence] = Field(default_factory=list)
    duration_s: float = 0.0

    @property
    def primary_back(self) -> bool:
        """The old primary answers as a writable primary again: there is nothing to fail over."""
        return self.primary.answered and self.primary.in_recovery is False

    @property
    def chosen(self) -> NodeState | None:
        return next((s for s in self.standbys if s.host == self.candidate), None)

    @property
    def at_risk_bytes(self) -> int | None:
        """WAL the old primary had that the standby never received: the writes that would be lost."""
        c = self.chosen
        if c is None or self.wal_end is None or c.received_lsn is None:
            return None
        return max(0, self.wal_end - c.received_lsn)

    @property
    def behind_bytes(self) -> int | None:
        """WAL the standby has not replayed yet, measured from the old primary's end."""
        c = self.chosen
        if c is None or self.wal_end is None or c.replayed_lsn is None:
            return None
        return max(0, self.wal_end - c.replayed_lsn)

    def risk(self) -> str:
        c = self.chosen
        if c is None:
            return "no standby can be promoted"
        loss = "unknown" if self.at_risk_bytes is None else f"{self.at_risk_bytes} bytes of WAL"
        lag = "unknown" if self.lag_seconds is None else f"{self.lag_seconds:.2f} s"
        paused = " — WAL replay is PAUSED on the standby" if c.replay_paused else ""
        return (f"potential data loss: {loss} (old primary's WAL end {format_lsn(self.wal_end)} from "
                f"{self.wal_end_source}, {c.host} received {format_lsn(c.received_lsn)}); replay lag last seen "
                f"{lag}; {c.host} is {self.behind_bytes if self.behind_bytes is not None else 'unknown'} bytes "
                f"behind in replay; replication mode {c.replication_mode or 'unknown'}{paused}")


def _last_value(prom: PrometheusClient, query: str) -> tuple[float | None, QueryEvidence]:
    samples = prom.query(query)
    value = max((s.value for s in samples), default=None)
    return value, QueryEvidence(name=query.split("(")[0], query=query, samples=[(s.labels, s.value) for s in samples])


def diagnose(cluster: Cluster, primary: Host, ssh: SSHSession, prom: PrometheusClient) -> FailoverDiagnosis:
    """Every node's state over SSH, the old primary's WAL end (disk, else Prometheus), the lag."""
    began = time.monotonic()
    others = [h for h in cluster.members if h.name != primary.name]
    with ThreadPoolExecutor(max_workers=2 * len(cluster.members)) as pool:
        direct = pool.submit(writable_check, cluster, exclude={primary.name})
        states = list(pool.map(lambda h: node_state(ssh, h), [primary, *others]))
        checks = direct.result()
    old, standbys = states[0], states[1:]
    host = label_matcher("host", primary.name)
    last_lsn, q1 = _last_value(prom, f"max_over_time(medic_pg_current_lsn_bytes{{{host}}}[10m])")
    lag_s, q2 = _last_value(prom, f"last_over_time(medic_pg_replication_replay_lag_seconds{{{host}}}[10m])")
    writable = {s.host for s in standbys if s.answered and s.in_recovery is False}
    writable |= {n for n, c in checks.items() if c.answered and c.in_recovery is False}
    diag = FailoverDiagnosis(primary=old, standbys=standbys, lag_seconds=lag_s, queries=[q1, q2],
                             writable=sorted(writable), direct=checks)
    if old.ssh_reachable and old.process in (ProcessState.STOPPED, ProcessState.HUNG):
        end, _ = wal_end(ssh, primary)
        if end is not None:
            diag.wal_end, diag.wal_end_source = end, "the old primary's WAL on disk (pg_waldump)"
    if diag.wal_end is None and last_lsn:
        diag.wal_end, diag.wal_end_source = int(last_lsn), "Prometheus (last scrape: a lower bound)"
    ready = [s for s in standbys if s.answered and s.in_recovery]
    if ready:
        diag.candidate = max(ready, key=lambda s: (s.received_lsn or 0, s.replayed_lsn or 0)).host
    diag.duration_s = round(time.monotonic() - began, 3)
    return diag


class Decision(BaseModel):
    """Whether medic may go on to ask a human, and which safety limits a human overrides."""

    refusal: str | None = None
    overrides: list[str] = Field(default_factory=list)
    needed: list[str] = Field(default_factory=list, description="the overrides this diagnosis needs: allow_lag, "
                                                                "allow_unfenced")


def writable_check(cluster: Cluster, *, exclude: set[str], timeout: float = 3.0) -> dict[str, DirectCheck]:
    """Ask every node but `exclude` directly (from medic's machine, no SSH needed) what it is."""
    nodes = [h for h in cluster.members if h.name not in exclude]
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        found = pool.map(lambda h: direct_check(cluster.address(h), timeout=timeout), nodes)
        return {h.name: c for h, c in zip(nodes, found)}


def writable_nodes(checks: dict[str, DirectCheck]) -> list[str]:
    return sorted(n for n, c in checks.items() if c.answered and c.in_recovery is False)


def decide(diag: FailoverDiagnosis, *, max_lag_bytes: int, allow_lag: bool, allow_unfenced: bool) -> Decision:
    if diag.writable:
        many = len(diag.writable) > 1
        return Decision(refusal=f"{', '.join(diag.writable)} {'answer' if many else 'answers'} as a writable primary: "
                                f"promoting {diag.candidate or 'a standby'} would make a second primary — find out "
                                f"why (a failover by hand?) and fence {'them' if many else 'it'} or route the "
                                f"endpoint to {'one of them' if many else 'it'}")
    if diag.candidate is None:
        return Decision(refusal="no standby answers in recovery: nothing can be promoted")
    out = Decision()
    behind = diag.behind_bytes
    if behind is None or behind > max_lag_bytes:
        why = (f"{diag.candidate} is {behind} bytes behind (limit {max_lag_bytes})" if behind is not None
               else f"how far {diag.candidate} is behind is unknown")
        if not allow_lag:
            return Decision(refusal=f"{why}; promoting it would lose or delay writes — run with allow_lag to override")
        out.overrides.append(f"OVERRIDE allow_lag: {why}")
        out.needed.append("allow_lag")
    if not diag.primary.ssh_reachable:
        why = f"{diag.primary.host} is unreachable over SSH, so it cannot be fenced ({diag.primary.error})"
        if not allow_unfenced:
            return Decision(refusal=f"{why} — promoting could leave two primaries; run with allow_unfenced to override")
        out.overrides.append(f"OVERRIDE allow_unfenced: {why}")
        out.needed.append("allow_unfenced")
    return out
