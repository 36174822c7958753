"""What a failover does once a human approved: fence the old primary, promote, route, verify; rejoin.

Each step returns what it saw (a result model), never raises for a failed step: the flow decides.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from medic.clients.ansible import PlaybookResult, run_playbook
from medic.clients.haproxy import LoadBalancerError
from medic.clients.postgres import NodeState, WriteCheck, node_state, write_through
from medic.clients.prometheus import PrometheusClient
from medic.clients.ssh import SSHSession
from medic.core.inventory import Host, Inventory
from medic.core.report import CheckResult
from medic.core.runbook import Runbook
from medic.core.templates import render_shell
from medic.procedures import stages
from medic.procedures.failover.assess import Cluster, Route, read_route


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
    r = ssh.run(primary, render_shell("${pgctl} fence", primary, where="fence command"), timeout=30)
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
    failed = next((t for t in h.tasks if t.failed), None) if h else None
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
