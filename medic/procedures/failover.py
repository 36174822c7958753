"""The stages of a PostgreSQL failover as plain functions over pydantic models.

`flows/failover.py` wraps each in a Prefect task; the logic lives here so the flow file reads as
the procedure: detect → diagnose → decide → approve → fence → promote → route → verify, and
`rejoin` afterwards. The client endpoint (HAProxy) is the source of truth for "the primary": the one
server of its backend in state ``ready``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from medic.procedures import stages
from medic.clients.ansible import PlaybookResult, run_playbook
from medic.errors import MedicError
from medic.clients.haproxy import HAProxyRuntime, LoadBalancerError, parse_address
from medic.core.inventory import Host, Inventory
from medic.clients.postgres import DirectCheck, NodeState, WriteCheck, direct_check, format_lsn, node_state, wal_end, write_through
from medic.clients.prometheus import PrometheusClient, label_matcher
from medic.core.report import ApprovalRecord, CheckResult, QueryEvidence, TimelineEntry
from medic.core.runbook import Runbook
from medic.clients.ssh import SSHSession

_CLUSTER_VARS = ("medic_pg_cluster", "medic_pg_endpoint", "medic_pg_endpoint_admin", "medic_pg_backend", "medic_pg_port")


class FailoverError(MedicError):
    """The failover cannot even start: the cluster is not described well enough in the inventory."""


class FailoverOutcome(StrEnum):
    NOT_NEEDED = "not needed"
    ALREADY_RUNNING = "already running"
    REFUSED = "refused"
    REJECTED = "rejected"
    APPROVAL_TIMED_OUT = "approval timed out"
    PROMOTED = "promoted"
    PROMOTED_NOT_ROUTED = "promoted but clients not re-routed"
    PROMOTED_NOT_VERIFIED = "promoted but not verified"
    PROMOTE_FAILED = "promote failed"
    REJOINED = "rejoined"
    REJOIN_FAILED = "rejoin failed"

    @property
    def success(self) -> bool:
        return self in (FailoverOutcome.NOT_NEEDED, FailoverOutcome.ALREADY_RUNNING, FailoverOutcome.PROMOTED,
                        FailoverOutcome.REJOINED)

    @property
    def state_name(self) -> str:
        short = {FailoverOutcome.PROMOTED_NOT_ROUTED: "PromotedNotRouted",
                 FailoverOutcome.PROMOTED_NOT_VERIFIED: "PromotedNotVerified"}
        return short.get(self, self.value.title().replace(" ", ""))


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


# --- diagnose -----------------------------------------------------------------------------------


class FailoverDiagnosis(BaseModel):
    """Where each node stands, and the writes a promotion could lose."""

    primary: NodeState
    standbys: list[NodeState]
    candidate: str | None = Field(None, description="the standby to promote: answering, furthest ahead")
    wal_end: int | None = Field(None, description="the old primary's last acknowledged-write position")
    wal_end_source: str = "unknown"
    lag_seconds: float | None = Field(None, description="the standby's replay lag last seen by the primary")
    queries: list[QueryEvidence] = Field(default_factory=list)
    duration_s: float = 0.0

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
    with ThreadPoolExecutor(max_workers=len(cluster.members)) as pool:
        states = list(pool.map(lambda h: node_state(ssh, h), [primary, *others]))
    old, standbys = states[0], states[1:]
    host = label_matcher("host", primary.name)
    last_lsn, q1 = _last_value(prom, f"max_over_time(medic_pg_current_lsn_bytes{{{host}}}[10m])")
    lag_s, q2 = _last_value(prom, f"last_over_time(medic_pg_replication_replay_lag_seconds{{{host}}}[10m])")
    diag = FailoverDiagnosis(primary=old, standbys=standbys, lag_seconds=lag_s, queries=[q1, q2])
    if old.ssh_reachable and old.process in ("stopped", "hung"):
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


def decide(diag: FailoverDiagnosis, *, max_lag_bytes: int, allow_lag: bool, allow_unfenced: bool) -> Decision:
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
    if not diag.primary.ssh_reachable:
        why = f"{diag.primary.host} is unreachable over SSH, so it cannot be fenced ({diag.primary.error})"
        if not allow_unfenced:
            return Decision(refusal=f"{why} — promoting could leave two primaries; run with allow_unfenced to override")
        out.overrides.append(f"OVERRIDE allow_unfenced: {why}")
    return out


# --- fence, promote, route, verify --------------------------------------------------------------


class FenceResult(BaseModel):
    stopped: bool
    stop_detail: str
    endpoint_removed: bool
    endpoint_detail: str

    @property
    def confirmed(self) -> bool:
        return self.stopped and self.endpoint_removed


def fence(cluster: Cluster, primary: Host, ssh: SSHSession) -> FenceResult:
    """Take the old primary out of the endpoint and stop it for good (a hung one is SIGKILLed)."""
    try:
        rt = cluster.runtime()
        rt.set_state(cluster.backend, primary.name, "maint")
        rt.command(f"shutdown sessions server {cluster.backend}/{primary.name}")
        state = rt.server(cluster.backend, primary.name).admin_state
        removed, said = state == "maint", f"endpoint server {primary.name} is {state}"
    except LoadBalancerError as exc:
        removed, said = False, str(exc)
    r = ssh.run(primary, f"{primary.vars['medic_pgctl']} fence", timeout=30)
    detail = (r.stdout or r.stderr or r.error or "").strip()
    return FenceResult(stopped=r.ok, stop_detail=detail or f"exit {r.exit_code}", endpoint_removed=removed,
                       endpoint_detail=said)


class StepResult(BaseModel):
    """A playbook step: did it work, what did it report."""

    ok: bool
    detail: str
    reported: dict[str, object] = Field(default_factory=dict)
    duration_s: float = 0.0


def _step(result: PlaybookResult, host: str) -> StepResult:
    h = result.hosts.get(host)
    failed = next((t for t in h.tasks if t.status in ("failed", "unreachable")), None) if h else None
    detail = (f"{failed.task}: {failed.msg}" if failed else
              ", ".join(t.task for t in h.tasks if t.changed) or "nothing to do" if h else result.error or "no result")
    return StepResult(ok=result.ok, detail=detail[:500], reported=h.return_values if h else {},
                      duration_s=result.duration_s)


def promote(runbook: Runbook, standby: Host, inventory: Inventory, playbooks_dir: Path) -> StepResult:
    result = run_playbook(playbooks_dir / (runbook.recover.playbook or ""), hosts=[standby], inventory=inventory.path,
                          timeout=runbook.recover.timeout)
    return _step(result, standby.name)


class RouteResult(BaseModel):
    routed: bool
    route: Route
    detail: str


def reroute(cluster: Cluster, new_primary: Host) -> RouteResult:
    """Send clients to the new primary: it is ready, every other server is in maint."""
    try:
        rt = cluster.runtime()
        for h in cluster.members:
            if h.name != new_primary.name and rt.server(cluster.backend, h.name).admin_state != "maint":
                rt.set_state(cluster.backend, h.name, "maint")
        rt.set_state(cluster.backend, new_primary.name, "ready")
    except LoadBalancerError as exc:
        return RouteResult(routed=False, route=read_route(cluster), detail=str(exc))
    route = read_route(cluster)
    ok = route.primary == new_primary.name
    return RouteResult(routed=ok, route=route, detail=f"endpoint {cluster.endpoint} → {route.primary or 'nothing'}")


class Verification(BaseModel):
    write: WriteCheck
    prometheus: CheckResult
    expected_port: int

    @property
    def ok(self) -> bool:
        return self.write.ok and self.write.server_port == self.expected_port and not self.prometheus.timed_out


def verify(runbook: Runbook, cluster: Cluster, new_primary: Host, prom: PrometheusClient) -> Verification:
    """A write through the endpoint lands on the new primary, and Prometheus sees it as primary."""
    write = write_through(cluster.endpoint)
    plan = stages.Plan(runbook=runbook, target=new_primary.name, hosts=[new_primary])
    return Verification(write=write, prometheus=stages.verify(plan, [new_primary], prom),
                        expected_port=int(new_primary.vars["medic_pg_port"]))


def rejoin(runbook: Runbook, cluster: Cluster, old: Host, source: Host, inventory: Inventory,
           playbooks_dir: Path, ssh: SSHSession) -> tuple[StepResult, NodeState]:
    """Rebuild `old` as a standby of `source` (pg_rewind, else a base backup) and read its state back."""
    spec = runbook.failover
    assert spec is not None
    result = run_playbook(playbooks_dir / spec.rejoin_playbook, hosts=[old, source], inventory=inventory.path,
                          extravars={"rejoin_host": old.name, "source_host": source.name},
                          timeout=spec.rejoin_timeout)
    return _step(result, old.name), node_state(ssh, old)


# --- the report ---------------------------------------------------------------------------------


class FailoverReport(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    flow: str = "failover"
    cluster: str
    outcome: FailoverOutcome
    summary: str
    old_primary: str | None = None
    new_primary: str | None = None
    reason: str = ""
    overrides: list[str] = Field(default_factory=list)
    detection: Detection | None = None
    diagnosis: FailoverDiagnosis | None = None
    approval: ApprovalRecord | None = None
    fence: FenceResult | None = None
    promote: StepResult | None = None
    route: RouteResult | None = None
    verification: Verification | None = None
    rejoin: StepResult | None = None
    rejoined_state: NodeState | None = None
    timeline: list[TimelineEntry] = Field(default_factory=list)
    flow_run_id: str | None = None

    def to_markdown(self) -> str:
        icon = "✅" if self.outcome.success else ("🚨" if self.outcome.value.startswith("promoted but") else "❌")
        lines = [f"# {icon} PostgreSQL {self.flow} of {self.cluster}: {self.outcome.value}", "", self.summary, "",
                 f"- old primary: {self.old_primary or '—'} · new primary: {self.new_primary or '—'}",
                 f"- reason: {self.reason}"]
        lines += [f"- **{o}**" for o in self.overrides]
        lines += ["", "## Timeline", "", "| time | stage | what happened |", "|---|---|---|"]
        lines += [f"| {e.at.strftime('%H:%M:%S.%f')[:-3]} | {e.stage} | {e.message.replace('|', '/')} |"
                  for e in self.timeline]
        if self.diagnosis:
            lines += ["", "## Nodes", "", "| node | ssh | process | role | received | replayed | receiver |",
                      "|---|---|---|---|---|---|---|"]
            for s in [self.diagnosis.primary, *self.diagnosis.standbys]:
                role = "—" if s.in_recovery is None else ("standby" if s.in_recovery else "primary")
                lines.append(f"| {s.host} | {'yes' if s.ssh_reachable else 'NO'} | {s.process} | {role} | "
                             f"{format_lsn(s.received_lsn)} | {format_lsn(s.replayed_lsn)} | {s.receiver_status or '—'} |")
            lines += ["", f"Risk: {self.diagnosis.risk()}"]
        if self.approval and self.approval.required:
            a = self.approval
            lines += ["", "## Approval", "", f"- decision: **{a.decision}** by {', '.join(a.approvers) or '—'} "
                                             f"via {a.channel or '—'} · waited {a.waited_s:.1f} s"]
        for title, step in (("Fence", self.fence), ("Promote", self.promote), ("Route", self.route),
                            ("Verify", self.verification), ("Rejoin", self.rejoin)):
            if step is not None:
                lines += ["", f"## {title}", "", "```", step.model_dump_json(indent=1)[:1500], "```"]
        return "\n".join(lines) + "\n"
