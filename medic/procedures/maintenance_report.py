"""The report of a maintenance run: the flow's return value and its markdown artifact, from one model."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from medic.procedures.maintenance import WindowCheck
from medic.core.report import Outcome, TimelineEntry
from medic.procedures.rolling import BatchResult, HostStep


class CleanupStatus(StrEnum):
    """What the clean-up did on one host (`CleanupHost.status`)."""

    CLEANED = "cleaned"
    NOTHING_TO_DO = "nothing to do"
    WOULD_CLEAN = "would clean"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    NOT_STARTED = "not started"


class CleanupHost(BaseModel):
    host: str
    batch: int
    status: CleanupStatus = Field(description="cleaned, nothing to do, would clean, failed, unreachable, not started")
    files_deleted: int = 0
    bytes_freed: int = 0
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in (CleanupStatus.FAILED, CleanupStatus.UNREACHABLE)


class MaintenanceReport(BaseModel):
    action: str = Field(description="rolling restart, cleanup")
    group: str
    batch_size: str
    max_errors: int
    dry_run: bool
    reason: str
    outcome: Outcome
    summary: str
    window: WindowCheck | None = None
    started_at: datetime
    finished_at: datetime
    flow_run_id: str | None = None
    hosts: list[HostStep] = Field(default_factory=list)
    cleaned: list[CleanupHost] = Field(default_factory=list)
    batches: list[BatchResult] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list, description="clean-up steps that did not work")
    timeline: list[TimelineEntry] = Field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_markdown(self) -> str:
        icon = "✅" if self.outcome.success else "❌"
        lines = [f"# {icon} {self.action} of {self.group}: {self.outcome.value}", "", self.summary, "",
                 f"- batch size {self.batch_size}, max errors {self.max_errors}"
                 + (" · **dry run**" if self.dry_run else ""),
                 f"- started {self.started_at.isoformat(timespec='seconds')} · took {self.duration_s:.1f} s",
                 f"- reason: {self.reason}"]
        if self.window:
            lines.append(f"- window: {self.window.reason}")
        lines += [f"- ⚠️ {p}" for p in self.problems]
        if self.hosts:
            lines += ["", "## Hosts", "", "| batch | host | result | HAProxy now | drain | new pid | detail |",
                      "|---|---|---|---|---|---|---|"]
            for h in self.hosts:
                drain = (f"{h.drain.waited_s:.2f} s" + ("" if h.drain.drained else f", {h.drain.sessions_left} cut")
                         if h.drain else "—")
                lines.append(f"| {h.batch} | {h.host} | {h.status} | {h.lb_after or '—'} | {drain} | "
                             f"{h.pid_after or '—'} | {h.detail.replace('|', '/')} |")
        if self.cleaned:
            lines += ["", "## Hosts", "", "| batch | host | result | files | bytes freed | detail |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {c.batch} | {c.host} | {c.status} | {c.files_deleted} | {c.bytes_freed} | "
                      f"{c.detail.replace('|', '/')[:200]} |" for c in self.cleaned]
        if self.batches:
            lines += ["", "## Batches (seconds)", "", "| batch | hosts | silence | drain | restart | health | ready "
                      "| unsilence | total |", "|---|---|---|---|---|---|---|---|---|"]
            for b in self.batches:
                t = b.times
                lines.append(f"| {b.index} | {', '.join(b.hosts)} | {t.silence:.2f} | {t.drain:.2f} | {t.restart:.2f} "
                             f"| {t.health:.2f} | {t.ready:.2f} | {t.unsilence:.2f} | {b.duration_s:.2f} |")
        lines += ["", "## Timeline", "", "| time | stage | what happened |", "|---|---|---|"]
        lines += [f"| {e.at.strftime('%H:%M:%S.%f')[:-3]} | {e.stage} | {e.message} |" for e in self.timeline]
        return "\n".join(lines) + "\n"
