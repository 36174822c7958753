"""The report of an upgrade run: the flow's return value and its markdown artifact, from one model."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from medic.core.report import Outcome, TimelineEntry
from medic.procedures.upgrade import HostUpgrade
from medic.procedures.upgrade_analysis import Check, GateSettings


class UpgradeReport(BaseModel):
    group: str
    version: str
    reason: str
    gates: GateSettings
    canary_weight: int
    batch_size: str
    outcome: Outcome
    summary: str
    started_at: datetime
    finished_at: datetime
    flow_run_id: str | None = None
    hosts: list[HostUpgrade] = Field(default_factory=list)
    checks: list[Check] = Field(default_factory=list)
    rolled_back: bool = False
    rollback_reason: str = ""
    canary_serving_at: datetime | None = Field(None, description="the new version first served (canary UP, metric seen)")
    failure_seen_at: datetime | None = Field(None, description="the check that decided to roll back")
    rollback_done_at: datetime | None = Field(None, description="previous version serving everywhere again")
    problems: list[str] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)

    def seconds(self, end: datetime | None) -> float | None:
        """Seconds from the canary serving to ``end`` (None when either is unknown)."""
        if end is None or self.canary_serving_at is None:
            return None
        return round((end - self.canary_serving_at).total_seconds(), 2)

    def to_markdown(self) -> str:
        icon = "✅" if self.outcome.success else ("↩️" if self.rolled_back else "❌")
        g = self.gates
        lines = [f"# {icon} upgrade of {self.group} to {self.version}: "
                 + ("rolled back" if self.rolled_back else self.outcome.value), "", self.summary, "",
                 f"- gate **{g.gate}**: threshold 5xx ≤ {g.max_error_ratio:.2%}, p95 ≤ {g.max_p95_s * 1000:.0f} ms, "
                 f"failure limit {g.failure_limit}; baseline α={g.alpha:g}, min effect +{g.min_effect:.0%}",
                 f"- canary weight {self.canary_weight} %, batch size {self.batch_size}; reason: {self.reason}",
                 f"- started {self.started_at.isoformat(timespec='seconds')}"]
        if self.rolled_back:
            lines.append(f"- **rolled back**: {self.rollback_reason} — detected "
                         f"{self.seconds(self.failure_seen_at)} s and previous version serving everywhere "
                         f"{self.seconds(self.rollback_done_at)} s after the canary started serving")
        lines += [f"- ⚠️ {p}" for p in self.problems]
        if self.hosts:
            lines += ["", "## Hosts", "", "| stage | host | before | weight | result | detail |", "|---|---|---|---|---|---|"]
            for h in self.hosts:
                result = "rolled back" if h.rolled_back else ("upgraded" if h.installed else "not upgraded")
                lines.append(f"| {'canary' if h.stage == 0 else h.stage} | {h.host} | {h.previous or '—'} | "
                             f"{h.weight_before if h.weight_before is not None else '—'} | {result} | "
                             f"{h.detail.replace('|', '/')} |")
        if self.checks:
            lines += ["", "## Analysis", "", "| at | gate | verdict | why |", "|---|---|---|---|"]
            for c in self.checks:
                lines.append(f"| {c.at.strftime('%H:%M:%S')} | {c.gate} | {'pass' if c.passed else '**fail**'} | "
                             f"{c.reason.replace('|', '/')} |")
        if self.timeline:
            lines += ["", "## Timeline", ""] + [f"- {e.at.strftime('%H:%M:%S.%f')[:-3]} **{e.stage}** {e.message}"
                                                 for e in self.timeline]
        return "\n".join(lines) + "\n"
