"""The human decision before a risky recovery.

The flow run pauses waiting for a typed `ApprovalInput` (the Prefect UI renders it as a form; Slack
buttons, `medic approve` and `medic run`'s prompt send the same input through Prefect's resume API).
A runbook may require N distinct approvers; a rejection by anyone ends it; no decision within the
spec's timeout counts as "not approved". Nothing is changed unless the decision is "approved".

How a run ends after its approval point (the flow run's final state, type/name):

    approved by N        → recover + verify: Completed/Recovered (or Failed/NotRecovered, Failed/Failed)
    rejected by anyone   → Failed/Rejected, summary names who (and their comment); nothing changed
    nobody within timeout→ Failed/ApprovalTimedOut; escalated to escalate_to / the escalation channel
    alert resolved       → Completed/NotNeeded (withdrawn); nothing changed
    its process died     → the next click finds nobody takes the input: Crashed, and the card says so

Only verified identities count (`medic.approval.identity`, `medic.approval.verify`): a decision
carries a proof — a UI code, a CLI proof, or medic serve's proof of a Slack click — bound to this run
and pause; an unproven one is refused, audited and the run keeps waiting. Without MEDIC_APPROVAL_KEY,
or with no approver of the policy in the directory, nothing could be verified: the run ends "not
approved" (Failed/Rejected) at once, saying what to configure.

While Slack is configured the card (`medic.approval.notify.ApprovalCards`) shows the wait and then the outcome;
every decision is appended to the audit log in Prefect (`medic.orchestration.audit_store`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from medic.core import audit
from medic.orchestration import audit_store
from medic.orchestration.prefect_rest import patient
from medic.approval.card import ApprovalCard, Decision, approval_markdown, waiting_line
from medic.approval.directory import load_directory
from medic.approval.inputs import ApprovalInput
from medic.approval.tally import Tally
from medic.approval.verify import cannot_verify, verify_answer
from medic.errors import MedicError
from medic.core.inventory import Host
from medic.core.progress import Timeline
from medic.core.report import ApprovalDecision, ApprovalRecord, CheckResult, Diagnosis, utcnow
from medic.orchestration.run_log import tell
from medic.settings import Settings

if TYPE_CHECKING:
    from medic.approval.notify import ApprovalCards
    from medic.core.runbook import Approval, Runbook
    from medic.clients.ssh import SSHSession
    from medic.procedures.stages import Plan

log = logging.getLogger("medic.approval.gate")

PAUSE_POLL_INTERVAL_S = 0.2  # click → flow continues in ~poll/2 + 0.1 s (see docs/prefect-runtime.md)


def _attempt() -> int:
    """How many times this flow run has been started: a run re-executed after a medic restart pauses
    under fresh keys (Prefect refuses a pause key it has seen, and would drop the input)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run.run_count if ctx and ctx.flow_run else 1


class ApprovalRequest(BaseModel):
    """Everything a human needs to decide, whichever path they decide on (Slack card, UI, CLI)."""

    title: str
    runbook: str
    targets: list[str]
    evidence: str = Field(description="the detect evidence: query and values")
    diagnosis: str = Field("", description="a short diagnosis summary")
    planned_action: str = Field(description="the exact action: playbook + hosts, or the command")
    check_mode_result: str | None = None
    risk: str | None = Field(None, description="e.g. potential data loss for a failover")
    why: str = Field("", description="why a human is asked: the runbook's policy, the flap guard, an override")
    flow_run_id: str


async def request_decision(
    request: ApprovalRequest,
    policy: "Approval",
    *,
    timeline: Timeline,
    settings: Settings | None = None,
    pause_key: str = "approval",
) -> ApprovalRecord:
    """Post the approval card, pause until N distinct approvers approve, someone rejects or time runs
    out, then show the outcome on the card, audit it, and escalate a timeout. A run that asks more than
    once (a failover re-asking after its re-check) gives each request its own `pause_key`: Prefect
    hands a reused key's earlier input straight back."""
    from medic.approval.notify import ApprovalCards

    cards = ApprovalCards(settings)
    # The card is the run's one way to a human: a Prefect restart while it is posted or read is
    # waited out, not turned into a failed run whose successor asks the human again.
    with patient(cards.settings.prefect_outage_wait_s):
        return await _ask(request, policy, cards, timeline, pause_key)


async def _ask(request: ApprovalRequest, policy: "Approval", cards: "ApprovalCards", timeline: Timeline,
               pause_key: str) -> ApprovalRecord:
    unverifiable = await asyncio.to_thread(cannot_verify, policy, cards.settings, cards.notifier.usergroup_members)
    if unverifiable is not None:
        return _fail_closed(request, unverifiable, timeline, cards.settings)
    card = _card(request, policy, cards.settings)
    await asyncio.to_thread(cards.show, card)
    tell(timeline, "approval", f"found {request.evidence}; planned action: {request.planned_action}"
                               + (f"; risk: {request.risk}" if request.risk else ""))
    tell(timeline, "approval", waiting_line(card))
    record = await _collect(request, policy, cards, timeline, card, pause_key)
    timed_out = record.decision is ApprovalDecision.TIMED_OUT
    audit_store.record(audit.AuditRecord(
        kind="decision", flow_run_id=request.flow_run_id, runbook=request.runbook, target=", ".join(request.targets),
        who=", ".join(record.approvers) or "nobody", what=record.decision, where=record.channel or "",
        result="recovery runs" if record.decision is ApprovalDecision.APPROVED else "nothing changed",
        detail=record.comment or f"waited {record.waited_s:.1f} s"), settings=cards.settings)
    if timed_out:
        await asyncio.to_thread(cards.decide, request.flow_run_id, Decision.TIMED_OUT)
        posted = await asyncio.to_thread(cards.escalate, card, to=policy.escalate_to, waited_s=record.waited_s)
        audit_store.record(audit.AuditRecord(
            kind="escalation", flow_run_id=request.flow_run_id, runbook=request.runbook,
            target=", ".join(request.targets), who="medic", what="approval timed out: escalated",
            where=policy.escalate_to or cards.settings.slack_escalation_channel or "log",
            result="posted" if posted else "logged only"), settings=cards.settings, fail_closed=False)
    return record


def _fail_closed(request: ApprovalRequest, why: str, timeline: Timeline, settings: Settings) -> ApprovalRecord:
    """Nothing could prove an approval: not approved, now, and say what to configure."""
    tell(timeline, "approval", f"{why} → not approved, nothing changed", level=logging.ERROR)
    audit_store.record(audit.AuditRecord(
        kind="decision", flow_run_id=request.flow_run_id, runbook=request.runbook, target=", ".join(request.targets),
        who="medic", what="not approved", where="", result="refused: cannot verify approvals", detail=why),
        settings=settings, fail_closed=False)
    return ApprovalRecord(required=True, decision=ApprovalDecision.REJECTED, approvers=[], comment=why,
                          channel="medic", decided_at=utcnow())


_CARD_DECISION = {ApprovalDecision.APPROVED: Decision.APPROVED, ApprovalDecision.REJECTED: Decision.REJECTED,
                  ApprovalDecision.WITHDRAWN: Decision.WITHDRAWN}


def _card(request: ApprovalRequest, policy: "Approval", settings: Settings) -> ApprovalCard:
    from medic.approval.notify import flow_run_url

    query, _, value = request.evidence.partition(" → ")
    return ApprovalCard(
        title=request.title, runbook=request.runbook, targets=request.targets, detect_query=query,
        detect_value=value or "(see the flow run)", diagnosis_summary=request.diagnosis or "(no diagnosis)",
        planned_action=request.planned_action + (f"\nRisk: {request.risk}" if request.risk else ""),
        check_mode_result=request.check_mode_result, flow_run_id=request.flow_run_id,
        flow_run_url=flow_run_url(settings, request.flow_run_id),
        deadline=utcnow() + timedelta(seconds=policy.timeout), approvals_required=policy.required_approvals,
        why=request.why, approvers=list(policy.approvers), approver_group=policy.approver_group)


async def _collect(request: ApprovalRequest, policy: "Approval", cards: "ApprovalCards",
                   timeline: Timeline, card: ApprovalCard, pause_key: str = "approval") -> ApprovalRecord:
    """The waiting itself: one pause per input, until the inputs amount to a decision. Each pause
    carries the card as the Resume dialog's Markdown description."""
    from medic.orchestration.pause import wait_for_approval

    began = time.monotonic()
    deadline = began + policy.timeout
    tally = Tally(policy.required_approvals, timeline)
    pauses = 0
    while True:
        remaining = deadline - time.monotonic()
        answer = None
        pauses += 1  # every pause its own key: a refused input must not leave its key reusable
        key = f"{pause_key}-{_attempt()}-{pauses}"
        if remaining > 0:
            shown = card.model_copy(update={"approved_by": _shown(tally.approved, cards.settings)})
            answer = await wait_for_approval(ApprovalInput, timeout=remaining, poll_interval=PAUSE_POLL_INTERVAL_S,
                                             key=key, description=approval_markdown(shown))
        if answer is None:
            tell(timeline, "approval", f"no decision within {policy.timeout:g} s — not approved, nothing changed",
                 level=logging.WARNING)
            return ApprovalRecord(required=True, decision=ApprovalDecision.TIMED_OUT, approvers=list(tally.approved),
                                  waited_s=time.monotonic() - began)
        verdict = await verify_answer(answer, run_id=request.flow_run_id, pause_key=key, policy=policy,
                                      settings=cards.settings, group_members=cards.notifier.usergroup_members,
                                      approved=tally.approved)
        record = tally.add(answer, verdict) if verdict.ok else None
        if not verdict.ok:
            tally.refused(answer, verdict)
            audit_store.record(audit.AuditRecord(
                kind="decision", flow_run_id=request.flow_run_id, runbook=request.runbook,
                target=", ".join(request.targets), who=f"{answer.approver[:64] or '?'} (unverified)",
                what=answer.decision, where=verdict.via or "unknown", result=f"refused: {verdict.reason}"),
                settings=cards.settings, fail_closed=False)
        decided = None
        if record is not None:  # decided: mark the card before counting the input (a click waits on the count)
            record.waited_s = time.monotonic() - began
            decided = await asyncio.to_thread(cards.decide, request.flow_run_id, _CARD_DECISION[record.decision],
                                              by=_shown(record.approvers, cards.settings), note=record.comment,
                                              show=False)
        await asyncio.to_thread(cards.consumed, request.flow_run_id, approved_by=_shown(tally.approved, cards.settings))
        if record is not None:
            if decided is not None:  # Slack after the count: a slow Slack never holds up the click's answer
                await asyncio.to_thread(cards.refresh, decided)
            return record


def _shown(names: list[str], settings: Settings) -> list[str]:
    """Verified names as the card shows them: the Slack id (a mention) where the directory has one."""
    try:
        directory = load_directory(settings.approvers_file)
    except Exception:  # noqa: BLE001 - a display detail; verification already read the directory
        return list(names)
    return [(entry.slack_id if (entry := directory.get(n)) and entry.slack_id else n) for n in names]


def why_approval(runbook: "Runbook", *, forced: bool, reason: str = "") -> str:
    """Why this run asks a human: the runbook's policy, or require_approval (set by the flap guard)."""
    if runbook.approval.policy == "required":
        return f"runbook {runbook.name} requires approval (approval policy: required)"
    if forced:
        return f"this run was started with require_approval although runbook {runbook.name} does not require it" + (
            f" — {reason}" if reason else "")
    return ""


def _evidence(detect: CheckResult, targets: list[str]) -> str:
    values = ", ".join(f"{v.host}={'no data' if v.value is None else f'{v.value:.4g}'}"
                       for v in detect.values if v.host in targets)
    why = "; ".join(f"{h}: {r}" for h, r in detect.reasons.items() if h in targets)  # an anomaly's reason
    return f"{detect.query} {detect.condition} → {values}" + (f" — {why}" if why else "")


def _diagnosis_summary(diagnosis: Diagnosis) -> str:
    lines = []
    for c in diagnosis.commands[:6]:
        first = (c.result.stdout or c.result.stderr or c.result.error or "").strip().splitlines()[:1]
        lines.append(f"{c.name} on {c.result.host}: {first[0][:120] if first else '(no output)'}")
    return "\n".join(lines)


def _planned_action(plan: "Plan", names: list[str]) -> str:
    """The exact action: the playbook with its variables and hosts, or the command line."""
    spec = plan.runbook.recover
    if spec.playbook:
        extra = " ".join(f"-e {k}={v!r}" for k, v in spec.vars.items())
        return f"ansible-playbook {spec.playbook} --limit {','.join(names)} {extra}".rstrip()
    return f"on {', '.join(names)}: {spec.command}"


async def _check_mode(plan: "Plan", targets: list[Host], ssh: "SSHSession") -> str:
    """Run the recovery in check mode (a dry run) so the card shows what it would do; the cost is one
    ansible-playbook run (a few seconds), small next to a human's decision time."""
    from medic.core.inventory import load_inventory
    from medic.settings import get_settings
    from medic.procedures.stages import recover

    try:
        result = await asyncio.to_thread(recover, plan, targets, dry_run=True, ssh=ssh,
                                         playbooks_dir=get_settings().playbooks_dir, inventory=load_inventory())
    except MedicError as exc:
        log.warning("check mode before approval failed: %s", exc)
        return f"check mode unavailable: {exc}"
    return "\n".join(f"{h.host}: {h.status} — {h.detail}" + (
        f" ({h.return_values['bytes_freed']} bytes)" if "bytes_freed" in h.return_values else "")
        for h in result.hosts)


async def approval_step(
    *,
    plan: "Plan",
    targets: list[Host],
    detect: CheckResult,
    diagnosis: Diagnosis,
    dry_run: bool,
    forced: bool,
    flow_run_id: str,
    timeline: Timeline,
    ssh: "SSHSession | None" = None,
    reason: str = "",
) -> ApprovalRecord:
    """The remediation flow's approval point: decide whether a human must agree, and ask.

    With `ssh` the recovery is first run in check mode, and its result is shown on the card.
    `reason` (why the run started) explains a forced approval — the flap guard writes it there."""
    policy = plan.runbook.approval
    if dry_run:
        return ApprovalRecord(required=False, decision=ApprovalDecision.NOT_NEEDED_DRY_RUN)
    if policy.policy == "none" and not forced:
        return ApprovalRecord(required=False, decision=ApprovalDecision.NOT_NEEDED)
    names = [h.name for h in targets]
    began = time.monotonic()
    preview = await _check_mode(plan, targets, ssh) if ssh is not None else None
    preview_s = time.monotonic() - began
    request = ApprovalRequest(
        title=f"{plan.runbook.name} on {', '.join(names)}",
        runbook=plan.runbook.name,
        targets=names,
        evidence=_evidence(detect, names),
        diagnosis=_diagnosis_summary(diagnosis),
        planned_action=_planned_action(plan, names),
        check_mode_result=preview,
        why=why_approval(plan.runbook, forced=forced, reason=reason),
        flow_run_id=flow_run_id,
    )
    record = await request_decision(request, policy, timeline=timeline)
    record.preview_s = preview_s
    return record
