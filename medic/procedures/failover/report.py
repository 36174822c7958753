"""The report of a failover or rejoin run: the flow's return value and its markdown artifact."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from medic.clients.postgres import NodeState, format_lsn
from medic.core.report import ApprovalRecord, Outcome, TimelineEntry, utcnow
from medic.core.timeline import IncidentTimes, StageSpan
from medic.procedures.failover.act import FenceResult, RouteResult, StepResult, Verification
from medic.procedures.failover.asks import Ask
from medic.procedures.failover.assess import Detection, FailoverDiagnosis


class FailoverReport(BaseModel):
    """What a failover (or rejoin) found and did; `runbook` + `outcome` are what /metrics counts."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    flow: str = "failover"
    runbook: str = Field(description="the kind: failover runbook this run executed")
    cluster: str
    outcome: Outcome
    summary: str
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    old_primary: str | None = None
    new_primary: str | None = None
    reason: str = ""
    overrides: list[str] = Field(default_factory=list, description="safety limits passed, and why")
    overrides_asked: list[str] = Field(default_factory=list, description="the overrides the run was started with")
    asks: list[Ask] = Field(default_factory=list, description="every approval request of this run, in order")
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
    stages: list[StageSpan] = Field(default_factory=list, description="each step's start and end, as the flow timed it")
    incident: IncidentTimes | None = Field(None, description="machine timestamps: impact → clients write again")
    flow_run_id: str | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_at is None else (self.finished_at - self.started_at).total_seconds()

    def to_markdown(self) -> str:
        alarming = self.outcome in (Outcome.PROMOTED_NOT_ROUTED, Outcome.PROMOTED_NOT_VERIFIED)
        icon = "✅" if self.outcome.success else ("🚨" if alarming else "❌")
        lines = [f"# {icon} PostgreSQL {self.flow} of {self.cluster}: {self.outcome.value}", "", self.summary, "",
                 f"- old primary: {self.old_primary or '—'} · new primary: {self.new_primary or '—'}",
                 f"- reason: {self.reason}"]
        lines += [f"- **{o}**" for o in [*self.overrides_asked, *self.overrides]]
        lines += ["", "## Timeline", "", "| time | stage | what happened |", "|---|---|---|"]
        lines += [f"| {e.at.strftime('%H:%M:%S.%f')[:-3]} | {e.stage} | {e.message.replace('|', '/')} |"
                  for e in self.timeline]
        if self.diagnosis:
            lines += ["", "## Nodes", "", "| node | ssh | process | role | received | replayed | receiver |",
                      "|---|---|---|---|---|---|---|"]
            for s in [self.diagnosis.primary, *self.diagnosis.standbys]:
                role = "—" if s.in_recovery is None else ("standby" if s.in_recovery else "**primary**")
                lines.append(f"| {s.host} | {'yes' if s.ssh_reachable else 'NO'} | {s.process} | {role} | "
                             f"{format_lsn(s.received_lsn)} | {format_lsn(s.replayed_lsn)} | {s.receiver_status or '—'} |")
            if self.diagnosis.writable:
                lines += ["", f"Answering as a writable primary: **{', '.join(self.diagnosis.writable)}**"]
            lines += ["", f"Risk: {self.diagnosis.risk()}"]
        if self.approval and self.approval.required:
            a = self.approval
            lines += ["", "## Approval", "", f"- decision: **{a.decision}** by {', '.join(a.approvers) or '—'} "
                                             f"via {a.channel or '—'} · waited {a.waited_s:.1f} s"]
            lines += [f"- asked: {k.title} → {k.decision or 'no decision'} ({k.risk})" for k in self.asks]
        if self.incident:
            lines += ["", *self.incident.markdown_lines()]
        for title, step in (("Fence", self.fence), ("Promote", self.promote), ("Route", self.route),
                            ("Verify", self.verification), ("Rejoin", self.rejoin)):
            if step is not None:
                lines += ["", f"## {title}", "", "```", step.model_dump_json(indent=1)[:1500], "```"]
        return "\n".join(lines) + "\n"
