"""Canary upgrade with automatic rollback: one host first, then batches, every stage behind the same gates.

The canary is drained in HAProxy, upgraded (playbooks/install-version.yml), put back at a small
traffic weight and analysed; each later batch the same way at full weight. Gates (see
medic.procedures.upgrade_analysis): fixed thresholds on PromQL (5xx ratio, p95; rolls back after more
than `failure_limit` failed checks), a canary-vs-baseline comparison over the same seconds (one
significant regression rolls back), or both. A hard failure — a host DOWN in HAProxy, not scraped,
or not serving the new version — skips analysis and rolls back at once. Rolling back installs the
previous version on every touched host, restores weights and admin states, and the report says why.
Whoever starts a run, its parameters are validated first (UpgradeConfigError names the bad one).
"""

from __future__ import annotations

import asyncio
import logging
import time

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.states import State

from medic.clients.prometheus import PrometheusClient
from medic.core import audit
from medic.core.inventory import Host, load_inventory
from medic.core.progress import Timeline
from medic.core.report import Outcome, artifact_key, utcnow
from medic.errors import MedicError
from medic.orchestration import audit_store
from medic.orchestration.ending import final_state
from medic.orchestration.run_log import tell
from medic.procedures import upgrade as up
from medic.procedures.upgrade_analysis import Check, GateKind, GateSettings, baseline_check, hard_failure, safe, threshold_check
from medic.procedures.upgrade_report import UpgradeReport
from medic.settings import get_settings

STAGE = dict(cache_policy=NO_CACHE, persist_result=False)
SERVING_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 10.0


class RollBack(Exception):  # noqa: N818 - control flow inside this module only, never raised out of it
    """A gate said no: carries the check that decided."""

    def __init__(self, check: Check) -> None:
        super().__init__(check.reason)
        self.check = check


@task(name="drain", **STAGE)
def drain_task(steps: list[up.HostUpgrade]) -> None:
    up.drain(steps, timeout=DRAIN_TIMEOUT_S)


@task(name="install", timeout_seconds=300, **STAGE)
def install_task(steps: list[up.HostUpgrade], hosts: dict[str, Host], version: str) -> list[str]:
    return up.install(steps, hosts, version)


@task(name="rollback", timeout_seconds=300, **STAGE)
def rollback_task(steps: list[up.HostUpgrade], hosts: dict[str, Host], fallback: dict[str, str]) -> list[str]:
    return up.rollback(steps, hosts, fallback)


def _audit(report: UpgradeReport, kind: str, what: str, where: list[str], result: str, **kw: object) -> None:
    audit_store.record(audit.AuditRecord(kind=kind, flow_run_id=report.flow_run_id, runbook="upgrade",
                                         target=report.group, who="medic", what=what, where=", ".join(where),
                                         result=result, **kw), fail_closed=kind == "intent")


async def _analyse(report: UpgradeReport, prom: PrometheusClient, steps: list[up.HostUpgrade], baseline: list[str],
             interval: float, count: int, serving_since: float, timeline: Timeline) -> None:
    """`count` checks, one every `interval` s, hard failures polled every second in between; RollBack on a no."""
    g = report.gates
    lbs = {s.host: s.lb for s in steps}
    names = [s.host for s in steps]
    failed_thresholds = 0
    for i in range(1, count + 1):
        end = time.monotonic() + interval
        while (left := end - time.monotonic()) > 0:
            if (hard := hard_failure(prom, lbs, report.version)) is not None:
                raise RollBack(hard)
            await asyncio.sleep(min(1.0, left))  # the analysis' own cadence, not a synchronisation
        checks = []
        if g.gate in ("threshold", "both"):
            checks.append(safe(lambda: threshold_check(prom, names, g, interval), "threshold"))
        if g.gate in ("baseline", "both"):
            checks.append(safe(lambda: baseline_check(prom, names, baseline, g, since=serving_since), "baseline"))
        report.checks += checks
        for c in checks:
            tell(timeline, "analysis", f"{i}/{count} {c.gate}: {'pass' if c.passed else 'FAIL'} — {c.reason}",
                 level=logging.INFO if c.passed else logging.WARNING)
            if c.passed:
                continue
            if c.gate == "baseline":
                raise RollBack(c)
            failed_thresholds += 1
            if failed_thresholds > g.failure_limit:
                raise RollBack(c.model_copy(update={"reason": f"{c.reason} ({failed_thresholds} failed checks > "
                                                              f"failure limit {g.failure_limit})"}))


async def _approve(report: UpgradeReport, canary: str, timeline: Timeline) -> Check | None:
    """Ask medic's approval gate before going past the canary; a failed Check when not approved."""
    from medic.approval.gate import ApprovalRequest, request_decision
    from medic.core.report import ApprovalDecision
    from medic.core.runbook import Approval

    passed = "; ".join(c.reason for c in report.checks[-2:])
    request = ApprovalRequest(title=f"upgrade of {report.group} to {report.version}: canary {canary} passed",
                              runbook="upgrade", targets=[h.host for h in report.hosts],
                              evidence=f"canary analysis → {passed}",
                              planned_action=f"install {report.version} on the rest of {report.group} in batches of "
                                             f"{report.batch_size}, each analysed the same way",
                              why="the upgrade asks for a human before going past the canary",
                              flow_run_id=report.flow_run_id or "")
    record = await request_decision(request, Approval(policy="required", timeout=900), timeline=timeline)
    if record.decision is ApprovalDecision.APPROVED:
        return None
    return Check(gate="hard", passed=False, reason=f"not approved past the canary ({record.decision})")


@flow(name="upgrade", flow_run_name="upgrade of {group} to {version}", persist_result=False, log_prints=False)
async def upgrade(
    group: str = "web",
    version: str = "v2",
    canary_weight: int = 10,
    batch_size: str = "50%",
    gate: GateKind = "both",
    analysis_interval: float = 5.0,
    analysis_count: int = 3,
    failure_limit: int = 1,
    max_error_ratio: float = 0.01,
    max_p95_s: float = 0.025,
    alpha: float = 0.01,
    min_effect: float = 0.2,
    approve_canary: bool = False,
    reason: str = "manual run",
) -> State:
    """Upgrade the web service of a group: a canary first, then batches; roll back on any failed gate.

    Args:
        group: Inventory group (or host list) to upgrade; hosts outside it are never touched.
        version: Package version to install (a directory of the inventory's medic_package_repo), e.g. v2.
        canary_weight: The canary's traffic weight while analysed, in % of its normal HAProxy weight (1-100).
        batch_size: Hosts per batch after the canary: a count like "2" or a share like "50%" (rounded up).
        gate: threshold (fixed PromQL limits), baseline (canary vs old-version hosts, statistical) or both.
        analysis_interval: Seconds between two checks of a stage (also the threshold gate's query window).
        analysis_count: Checks per stage that must pass before the next stage starts.
        failure_limit: Threshold gate: failed checks tolerated per stage; one more rolls back (0: the first).
        max_error_ratio: Threshold gate: highest 5xx ratio of the upgraded hosts (0.01 = 1 %).
        max_p95_s: Threshold gate: highest p95 latency of the upgraded hosts, in seconds.
        alpha: Baseline gate: significance level of its Mann–Whitney (latency) and binomial (5xx) tests.
        min_effect: Baseline gate: smallest latency regression that counts (0.2 = 20 % slower than the baseline).
        approve_canary: Ask a human (Slack / Prefect UI / medic approve) before going past the canary.
        reason: Why this run started (ticket, person) — shown in the report and audit log.
    """
    timeline = Timeline()
    settings = GateSettings(gate=gate, max_error_ratio=max_error_ratio, max_p95_s=max_p95_s,
                            failure_limit=failure_limit, alpha=alpha, min_effect=min_effect)
    hosts = up.check_upgrade(load_inventory(), group=group, version=version, batch_size=batch_size, gate=gate,
                             settings=settings, canary_weight=canary_weight, analysis_interval=analysis_interval,
                             analysis_count=analysis_count)
    now = utcnow()
    report = UpgradeReport(group=group, version=version, reason=reason, gates=settings, canary_weight=canary_weight,
                           batch_size=batch_size, outcome=Outcome.FAILED, summary="", started_at=now, finished_at=now,
                           flow_run_id=str(get_run_context().flow_run.id))
    by_name = {h.name: h for h in hosts}
    with PrometheusClient(get_settings().prometheus_url) as prom:
        before = up.versions_serving(prom, list(by_name))
        stages = up.plan_stages(hosts, before, version, batch_size)
        if not stages:
            report.outcome, report.summary = Outcome.NOT_NEEDED, f"Every host of {group} already serves {version}."
            return await _finish(report, timeline)
        tell(timeline, "plan", f"{len(hosts)} host(s) of {group} now serve "
                               + ", ".join(f"{n} {v}" for n, v in sorted(before.items()))
                               + f"; canary {stages[0][0].name} at {canary_weight} %, then {len(stages) - 1} batch(es); "
                                 f"gate {gate}")
        try:
            await _run_stages(report, prom, stages, by_name, before, analysis_interval, analysis_count,
                              approve_canary, timeline)
        except RollBack as no:
            await _roll_back(report, prom, by_name, before, no.check, timeline)
        except MedicError as exc:
            await _roll_back(report, prom, by_name, before, Check(gate="hard", passed=False, reason=f"error: {exc}"),
                             timeline)
    return await _finish(report, timeline)


async def _run_stages(report: UpgradeReport, prom: PrometheusClient, stages: list[list[Host]], by_name: dict[str, Host],
                      before: dict[str, str], interval: float, count: int, approve_canary: bool,
                      timeline: Timeline) -> None:
    version = report.version
    for index, stage in enumerate(stages):
        steps = up.records(stage, index)
        report.hosts += steps
        names = [s.host for s in steps]
        label = "canary" if index == 0 else f"batch {index}/{len(stages) - 1}"
        _audit(report, "intent", f"install {version} ({label})", names, "about to act")
        drain_task(steps)
        problems = install_task(steps, by_name, version)
        _audit(report, "action", f"playbook {up.PLAYBOOK} version={version} ({label})", names,
               "failed: " + "; ".join(problems) if problems else "installed")
        if problems:
            raise RollBack(Check(gate="hard", passed=False, reason="install failed: " + "; ".join(problems)))
        up.serve(steps, weight_pct=report.canary_weight if index == 0 else 100)
        missing = up.wait_serving(steps, prom, version, timeout=SERVING_TIMEOUT_S)
        if missing:
            raise RollBack(Check(gate="hard", passed=False, reason=f"{label} not serving within "
                                                                   f"{SERVING_TIMEOUT_S:g} s: {missing}"))
        if index == 0:
            report.canary_serving_at = utcnow()
        tell(timeline, label, f"{', '.join(names)} serve {version}"
             + (f" at {report.canary_weight} % weight" if index == 0 else "") + f"; analysing {count}×{interval:g} s")
        # Baseline: every other host of the group over the same seconds — the old version, and for later
        # batches the hosts already verified on the new one too (the last batch has no old host left).
        baseline = [n for n in by_name if n not in names]
        await _analyse(report, prom, steps, baseline, interval, count, time.time(), timeline)
        if index == 0:
            up.serve(steps)  # the canary back to its full weight
            if approve_canary and len(stages) > 1 and (no := await _approve(report, names[0], timeline)):
                raise RollBack(no)
    report.outcome = Outcome.COMPLETED
    report.summary = f"Upgraded {len(report.hosts)} host(s) of {report.group} to {version}; every gate passed."


async def _roll_back(report: UpgradeReport, prom: PrometheusClient, by_name: dict[str, Host], before: dict[str, str],
                     why: Check, timeline: Timeline) -> None:
    report.failure_seen_at, report.rolled_back, report.rollback_reason = why.at, True, why.reason
    if why not in report.checks:
        report.checks.append(why)
    touched = [s for s in report.hosts if s.touched]
    names = [s.host for s in touched]
    tell(timeline, "rollback", f"{why.gate} gate said no: {why.reason} → restoring the previous version on "
                               f"{', '.join(names)}", level=logging.WARNING)
    _audit(report, "intent", "rollback to the previous version", names, "about to act", detail=why.reason)
    report.problems += rollback_task(report.hosts, by_name, before)
    back = {s.host: s.previous or before.get(s.host, "") for s in touched}
    waits = [up.wait_serving([s], prom, back[s.host], timeout=SERVING_TIMEOUT_S) for s in touched]
    report.problems += [w for w in waits if w]
    report.rollback_done_at = utcnow()
    _audit(report, "action", f"playbook {up.PLAYBOOK} (rollback)", names,
           "rolled back" if not report.problems else "; ".join(report.problems)[:500], detail=why.reason)
    report.outcome = Outcome.FAILED
    report.summary = (f"Rolled back {', '.join(f'{n} to {v}' for n, v in back.items())}: {why.reason}."
                      + (f" Problems: {'; '.join(report.problems)}" if report.problems else ""))


async def _finish(report: UpgradeReport, timeline: Timeline) -> State:
    tell(timeline, "report", f"{report.outcome.state_name}: {report.summary}",
         level=logging.INFO if report.outcome.success else logging.WARNING)
    report.timeline = timeline.entries
    report.finished_at = utcnow()
    await create_markdown_artifact(key=artifact_key("upgrade", report.group, report.version),
                                   markdown=report.to_markdown(),
                                   description=f"upgrade of {report.group} to {report.version}: "
                                               + ("rolled back" if report.rolled_back else report.outcome.value))
    return final_state(report.outcome, report.summary, report)

