"""What a remediation found and did: the models passed between stages, and the incident report.

The same `RemediationReport` becomes the flow's return value, the markdown artifact in the Prefect
UI, the CLI's summary and (later) the Slack thread, so they can never disagree.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from medic.core.results import CommandResult
from medic.core.timeline import IncidentTimes
from medic.errors import ExitCode


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Outcome(StrEnum):
    """How a run ended — one vocabulary for remediation, failover/rejoin and maintenance.

    Each outcome has one `Ending` (`ENDINGS`): the flow's final Prefect state (Completed or Failed,
    and its name) and the `medic run` exit code. Every flow and the CLI read it from there.
    """

    # any kind of run
    NOT_NEEDED = "not needed"
    DRY_RUN = "dry run"
    FAILED = "failed"
    REFUSED = "refused"
    REJECTED = "rejected"
    APPROVAL_TIMED_OUT = "approval timed out"
    ALREADY_RUNNING = "already running"
    # remediation
    RECOVERED = "recovered"
    NOT_RECOVERED = "not recovered"
    # failover and rejoin
    PROMOTED = "promoted"
    PROMOTED_NOT_ROUTED = "promoted but clients not re-routed"
    PROMOTED_NOT_VERIFIED = "promoted but not verified"
    PROMOTE_FAILED = "promote failed"
    REJOINED = "rejoined"
    REJOIN_FAILED = "rejoin failed"
    # maintenance
    COMPLETED = "completed"
    STOPPED = "stopped at error threshold"
    SKIPPED = "skipped: outside the maintenance window"

    @property
    def ending(self) -> "Ending":
        return ENDINGS[self]

    @property
    def success(self) -> bool:
        """The run did what it was for (or found nothing to do): exit code 0."""
        return self.ending.exit_code is ExitCode.OK

    @property
    def completed(self) -> bool:
        """The flow ends in a Completed state (else Failed)."""
        return self.ending.completed

    @property
    def state_name(self) -> str:
        return self.ending.state_name

    @property
    def exit_code(self) -> ExitCode:
        return self.ending.exit_code

    @property
    def restored(self) -> bool:
        """Service was restored by this run (what `medic_time_to_recover_seconds` measures)."""
        return self in (Outcome.RECOVERED, Outcome.PROMOTED)


class Ending(NamedTuple):
    """Where an outcome leads: the flow's final state and the CLI's exit code."""

    completed: bool  # Prefect state type: Completed (True) or Failed
    state_name: str  # the final state's name in the Prefect UI
    exit_code: ExitCode


_OK, _FAILED = ExitCode.OK, ExitCode.FAILED
ENDINGS: dict[Outcome, Ending] = {
    Outcome.NOT_NEEDED: Ending(True, "NotNeeded", _OK),
    Outcome.DRY_RUN: Ending(True, "DryRun", _OK),
    Outcome.RECOVERED: Ending(True, "Recovered", _OK),
    Outcome.PROMOTED: Ending(True, "Promoted", _OK),
    Outcome.REJOINED: Ending(True, "Rejoined", _OK),
    Outcome.COMPLETED: Ending(True, "Completed", _OK),
    Outcome.SKIPPED: Ending(True, "Skipped", _OK),
    # another run is on it: nothing wrong with this one, but the caller did not get a run
    Outcome.ALREADY_RUNNING: Ending(True, "AlreadyRunning", ExitCode.ALREADY_RUNNING),
    Outcome.REJECTED: Ending(False, "Rejected", ExitCode.NOT_APPROVED),
    Outcome.APPROVAL_TIMED_OUT: Ending(False, "ApprovalTimedOut", ExitCode.NOT_APPROVED),
    Outcome.FAILED: Ending(False, "Failed", _FAILED),
    Outcome.REFUSED: Ending(False, "Refused", _FAILED),
    Outcome.NOT_RECOVERED: Ending(False, "NotRecovered", _FAILED),
    Outcome.PROMOTED_NOT_ROUTED: Ending(False, "PromotedNotRouted", _FAILED),
    Outcome.PROMOTED_NOT_VERIFIED: Ending(False, "PromotedNotVerified", _FAILED),
    Outcome.PROMOTE_FAILED: Ending(False, "PromoteFailed", _FAILED),
    Outcome.REJOIN_FAILED: Ending(False, "RejoinFailed", _FAILED),
    Outcome.STOPPED: Ending(False, "StoppedAtErrorThreshold", _FAILED),
}


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key from free text: lowercase letters, digits and dashes only, ≤ 100 chars."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100].rstrip("-")


class ApprovalDecision(StrEnum):
    """What became of an approval request (`ApprovalRecord.decision`)."""

    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed out"
    WITHDRAWN = "withdrawn"  # the alert resolved while a human was being asked
    NOT_NEEDED = "not needed"
    NOT_NEEDED_DRY_RUN = "not needed (dry run)"


class ActionStatus(StrEnum):
    """What a recovery action did on one host (`HostAction.status`)."""

    CHANGED = "changed"
    OK = "ok"  # nothing to do: already in the desired state
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"
    WOULD_CHANGE = "would change"  # check mode

    @property
    def failed(self) -> bool:
        return self in (ActionStatus.FAILED, ActionStatus.UNREACHABLE)


class TimelineEntry(BaseModel):
    at: datetime
    stage: str
    message: str


class HostValue(BaseModel):
    """One host's value of a checked query, and whether the condition held long enough."""

    host: str
    value: float | None
    matches: bool
    held_s: float = 0.0


class CheckResult(BaseModel):
    query: str
    condition: str
    values: list[HostValue]
    matching: list[str] = Field(description="hosts where the condition held for the required time")
    waited_s: float
    timed_out: bool = False
    reasons: dict[str, str] = Field(default_factory=dict,
                                    description="per host, why (an anomaly detector's words); empty for a threshold")


class QueryEvidence(BaseModel):
    name: str
    query: str
    samples: list[tuple[dict[str, str], float]] = Field(default_factory=list)
    error: str | None = None


class CommandEvidence(BaseModel):
    name: str
    result: CommandResult


class Diagnosis(BaseModel):
    commands: list[CommandEvidence] = Field(default_factory=list)
    queries: list[QueryEvidence] = Field(default_factory=list)
    duration_s: float = 0.0

    def unreachable(self) -> list[str]:
        return sorted({c.result.host for c in self.commands if c.result.error and c.result.exit_code is None})


class HostAction(BaseModel):
    host: str
    status: ActionStatus = Field(description="changed, ok (nothing to do), failed, unreachable, skipped, would change")
    detail: str = ""
    return_values: dict[str, Any] = Field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status.failed


class RecoveryResult(BaseModel):
    action: str
    check_mode: bool
    hosts: list[HostAction]
    batches: int
    stopped_early: bool = False
    duration_s: float = 0.0

    @property
    def errors(self) -> int:
        return sum(1 for h in self.hosts if h.failed)


class ApprovalRecord(BaseModel):
    """Who decided what, when and how (filled by the approval step)."""

    required: bool
    decision: ApprovalDecision = Field(description="approved, rejected, timed out, withdrawn, not needed")
    approvers: list[str] = Field(default_factory=list)
    comment: str | None = None
    channel: str | None = Field(None, description="slack, ui, cli")
    decided_at: datetime | None = None
    waited_s: float = 0.0
    preview_s: float = Field(0.0, description="the check-mode run of the recovery shown on the card (remote work)")


class RemediationReport(BaseModel):
    runbook: str
    target: str
    hosts: list[str]
    reason: str
    dry_run: bool
    outcome: Outcome
    summary: str
    started_at: datetime
    finished_at: datetime
    flow_run_id: str | None = None
    detect: CheckResult | None = None
    diagnosis: Diagnosis | None = None
    approval: ApprovalRecord | None = None
    recovery: RecoveryResult | None = None
    verify: CheckResult | None = None
    timeline: list[TimelineEntry] = Field(default_factory=list)
    incident: IncidentTimes | None = Field(None, description="machine timestamps: impact → recovered (medic.core.timeline)")

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_markdown(self) -> str:
        return render_markdown(self)


def _fmt(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"


def _check_table(check: CheckResult) -> list[str]:
    lines = [f"`{check.query}` — condition `{check.condition}` (waited {check.waited_s:.1f} s)", "",
             "| host | value | condition holds | held for |", "|---|---|---|---|"]
    lines += [f"| {v.host} | {_fmt(v.value)} | {'yes' if v.matches else 'no'} | {v.held_s:.1f} s |" for v in check.values]
    if check.reasons:
        lines += ["", *(f"- **{host}**: {why}" for host, why in check.reasons.items())]
    return lines


def _code(text: str, limit: int = 1500) -> str:
    text = text.strip() or "(no output)"
    if len(text) > limit:
        text = text[:limit] + "\n…"
    return "```\n" + text.replace("```", "'''") + "\n```"


def render_diagnosis(diagnosis: Diagnosis) -> str:
    lines = ["## Diagnosis", ""]
    for q in diagnosis.queries:
        lines.append(f"**{q.name}** — `{q.query}`")
        if q.error:
            lines.append(f"> query failed: {q.error}")
        for labels, value in q.samples[:20]:
            who = labels.get("host") or ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
            lines.append(f"- {who}: {value:.4g}")
        lines.append("")
    for c in diagnosis.commands:
        r = c.result
        status = r.error or f"exit {r.exit_code}"
        lines += [f"**{c.name}** on `{r.host}` ({status}, {r.duration_s:.2f} s)", _code(r.stdout + r.stderr), ""]
    return "\n".join(lines)


def render_markdown(report: RemediationReport) -> str:
    icon = "✅" if report.outcome.success else "❌"
    lines = [
        f"# {icon} {report.runbook} on {report.target}: {report.outcome.value}",
        "",
        report.summary,
        "",
        f"- hosts: {', '.join(report.hosts) or '—'}",
        f"- started: {report.started_at.isoformat(timespec='seconds')} · took {report.duration_s:.1f} s"
        + (" · **dry run**" if report.dry_run else ""),
        f"- reason: {report.reason}",
        "",
        "## Timeline",
        "",
        "| time | stage | what happened |",
        "|---|---|---|",
    ]
    lines += [f"| {e.at.strftime('%H:%M:%S.%f')[:-3]} | {e.stage} | {e.message} |" for e in report.timeline]
    if report.incident:
        lines += ["", *report.incident.markdown_lines()]
    if report.detect:
        lines += ["", "## Detect", "", *_check_table(report.detect)]
    if report.diagnosis:
        lines += ["", render_diagnosis(report.diagnosis)]
    if report.approval and report.approval.required:
        a = report.approval
        lines += ["", "## Approval", "", f"- decision: **{a.decision}**" + (f" by {', '.join(a.approvers)}" if a.approvers else ""),
                  f"- via: {a.channel or '—'} · waited {a.waited_s:.1f} s"]
        if a.comment:
            lines.append(f"- comment: {a.comment}")
    if report.recovery:
        r = report.recovery
        lines += ["", "## Action", "", f"{r.action}" + (" (check mode: nothing changed)" if r.check_mode else "")
                  + f" — {r.batches} batch(es), {r.duration_s:.1f} s" + (" — **stopped early**" if r.stopped_early else ""),
                  "", "| host | result | detail | reported |", "|---|---|---|---|"]
        for h in r.hosts:
            reported = ", ".join(f"{k}={v}" for k, v in h.return_values.items()) or ""
            lines.append(f"| {h.host} | {h.status} | {h.detail.replace('|', '/')[:200]} | {reported} |")
    if report.verify:
        lines += ["", "## Verify", "", *_check_table(report.verify)]
    return "\n".join(lines) + "\n"
