"""What a failover asks a human, and when it must ask again.

A human approves *figures*: which standby is promoted, how many bytes of WAL may be lost, how far
behind it is, which overrides were asked. An approval can wait 15 minutes, so the flow detects and
diagnoses again afterwards and compares (`Evidence.changes`): any change that makes the decision
riskier or different means a fresh approval that shows the new figures; a fence that fails after
approval means a fresh approval that shows the failure. Overrides (`allow_lag`, `allow_unfenced`)
are never silent: every one asked is on every request ("override asked: …"), needed or not.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from medic.approval.gate import ApprovalRequest
from medic.clients.postgres import NodeState, format_lsn
from medic.core.runbook import Runbook
from medic.procedures.failover.act import FenceResult
from medic.procedures.failover.assess import Cluster, Decision, Detection, FailoverDiagnosis

#: What each override lets medic do, as the card says it.
OVERRIDES = {"allow_lag": "promote although the standby is beyond the lag limit",
             "allow_unfenced": "promote without fencing the old primary (risk: two primaries)"}


def asked_overrides(*, allow_lag: bool, allow_unfenced: bool) -> list[str]:
    """The overrides this run was started with, as the card shows them."""
    asked = [name for name, on in (("allow_lag", allow_lag), ("allow_unfenced", allow_unfenced)) if on]
    return [f"override asked: {OVERRIDES[name]} ({name})" for name in asked]


class Ask(BaseModel):
    """One approval request of a run, as the report keeps it."""

    key: str
    title: str
    risk: str
    why: str
    decision: str | None = None
    approvers: list[str] = Field(default_factory=list)


class Evidence(BaseModel):
    """The figures a human approved; `changes` says which moved since."""

    candidate: str | None
    at_risk_bytes: int | None
    behind_bytes: int | None
    writable: list[str]
    primary_reachable: bool
    primary_process: str
    needed: list[str]

    @classmethod
    def of(cls, diag: FailoverDiagnosis, decision: Decision) -> "Evidence":
        return cls(candidate=diag.candidate, at_risk_bytes=diag.at_risk_bytes, behind_bytes=diag.behind_bytes,
                   writable=list(diag.writable), primary_reachable=diag.primary.ssh_reachable,
                   primary_process=str(diag.primary.process), needed=list(decision.needed))

    def changes(self, now: "Evidence") -> list[str]:
        """What differs in a way the approver did not see (less replay lag alone is not a change)."""
        out = []
        if now.candidate != self.candidate:
            out.append(f"the standby to promote is now {now.candidate} (approved: {self.candidate})")
        if now.at_risk_bytes != self.at_risk_bytes:
            out.append(f"potential data loss is now {_bytes(now.at_risk_bytes)} (approved: {_bytes(self.at_risk_bytes)})")
        if now.behind_bytes is None and self.behind_bytes is not None or (
                now.behind_bytes or 0) > (self.behind_bytes or 0):
            out.append(f"the standby is now {_bytes(now.behind_bytes)} behind in replay "
                       f"(approved: {_bytes(self.behind_bytes)})")
        if now.writable != self.writable:
            out.append(f"nodes answering as writable primary: {', '.join(now.writable) or 'none'} "
                       f"(approved: {', '.join(self.writable) or 'none'})")
        if (now.primary_reachable, now.primary_process) != (self.primary_reachable, self.primary_process):
            out.append(f"the old primary is now {'reachable' if now.primary_reachable else 'UNREACHABLE'} over SSH, "
                       f"{now.primary_process} (approved: {'reachable' if self.primary_reachable else 'unreachable'}, "
                       f"{self.primary_process})")
        if now.needed != self.needed:
            out.append(f"overrides needed now: {', '.join(now.needed) or 'none'} "
                       f"(approved: {', '.join(self.needed) or 'none'})")
        return out


def _bytes(value: int | None) -> str:
    return "unknown" if value is None else f"{value} bytes"


def _node_line(s: NodeState, writable: list[str]) -> str:
    role = "—" if s.in_recovery is None else ("standby" if s.in_recovery else "PRIMARY (writable)")
    if s.host in writable:
        role = "PRIMARY (writable)"
    return (f"{s.host}: ssh {'ok' if s.ssh_reachable else 'unreachable'}, {s.process}, {role}, "
            f"received {format_lsn(s.received_lsn)}, replayed {format_lsn(s.replayed_lsn)}")


def nodes_summary(diag: FailoverDiagnosis) -> str:
    """Every node, those answering as primary included (they are why a failover may be refused)."""
    lines = [_node_line(s, diag.writable) for s in [diag.primary, *diag.standbys]]
    known = {diag.primary.host, *(s.host for s in diag.standbys)}
    lines += [f"{n}: answers a direct query as PRIMARY (writable)" for n in diag.writable if n not in known]
    return "\n".join(lines)


def failover_request(spec: Runbook, cluster: Cluster, old: str, d: Detection, diag: FailoverDiagnosis,
                     decision: Decision, asked: list[str], *, changed: list[str], flow_run_id: str) -> ApprovalRequest:
    """The approval of fence + promote, with the current figures (and, asked again, what changed)."""
    new = diag.candidate
    again = " — ASKED AGAIN: the evidence changed while waiting" if changed else ""
    return ApprovalRequest(
        title=f"PostgreSQL failover of {cluster.name}: promote {new}, fence {old}"
              + (" [OVERRIDE ASKED]" if asked or decision.overrides else "") + again,
        runbook=spec.name, targets=[old, new or "?"],
        evidence=f"{d.prometheus.query} {d.prometheus.condition} held on {old}; direct query to "
                 f"{cluster.address(cluster.member(old))}: {d.direct.detail}",
        diagnosis=nodes_summary(diag),
        planned_action=f"fence {old} (endpoint server → maint, stop it over SSH; a hung one is killed), "
                       f"run {spec.recover.playbook} on {new}, route {cluster.endpoint} → {new}; detect and diagnose "
                       f"are repeated after your decision, and a change asks you again",
        risk="; ".join([*changed, diag.risk(), *decision.overrides, *asked]),
        why=f"runbook {spec.name}: a failover always asks a human — promoting a standby may lose writes"
            + (" and an override was asked" if asked or decision.overrides else ""),
        flow_run_id=flow_run_id)


def fence_failed_request(spec: Runbook, cluster: Cluster, old: str, new: str, fence: FenceResult,
                         diag: FailoverDiagnosis, asked: list[str], *, flow_run_id: str) -> ApprovalRequest:
    """Fencing failed after the approval: promoting now is a different decision, so ask it."""
    failure = f"fencing {old} FAILED: {fence.stop_detail}; {fence.endpoint_detail}"
    return ApprovalRequest(
        title=f"PostgreSQL failover of {cluster.name}: fencing {old} FAILED — promote {new} WITHOUT fencing?",
        runbook=spec.name, targets=[old, new],
        evidence=failure,
        diagnosis=nodes_summary(diag),
        planned_action=f"run {spec.recover.playbook} on {new} although {old} is NOT confirmed stopped, "
                       f"route {cluster.endpoint} → {new} (every node is asked again just before promoting; "
                       f"one answering as primary stops it). Reject: nothing is promoted — {old} is "
                       f"{'out of' if fence.endpoint_removed else 'STILL in'} the endpoint",
        risk="; ".join([failure, f"override asked: {OVERRIDES['allow_unfenced']}", diag.risk(), *asked]),
        why="the earlier approval was for fence-then-promote; fencing failed, so promoting needs a new decision",
        flow_run_id=flow_run_id)


def rejoin_request(spec: Runbook, cluster: Cluster, host: NodeState, source: str, *,
                   flow_run_id: str) -> ApprovalRequest:
    """Rebuilding a node may delete its data dir (the base-backup fallback): a human decides."""
    return ApprovalRequest(
        title=f"PostgreSQL rejoin in {cluster.name}: rebuild {host.host} as a standby of {source}",
        runbook=spec.name, targets=[host.host, source],
        evidence=f"the endpoint routes writes to {source}; {host.host} is not streaming from it",
        diagnosis=_node_line(host, []),
        planned_action=f"fence {host.host}, pg_rewind it onto {source}; if rewind fails, DELETE its data dir and "
                       f"take a fresh base backup from {source}; start it as a standby",
        risk=f"{host.host}'s writes that {source} never received are discarded (its data dir may be deleted)",
        why=f"runbook {spec.name}: a rejoin changes a database node and may delete its data",
        flow_run_id=flow_run_id)
