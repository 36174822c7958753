"""Scheduled maintenance with rate control: rolling restart and data-dir cleanup of a group, in batches.

Like AWS SSM's rate control: a batch size (count or percentage) and an error budget (`max_errors`);
once more hosts than that have failed, no further batch starts. Each batch of a rolling restart is
silenced in Alertmanager, drained in HAProxy, restarted, health-checked and put back; whatever goes
wrong, the `finally` puts every drained server back and expires every silence, and the report says
what HAProxy shows for each host. Runs outside the maintenance window are skipped (or wait for it).
Whoever starts a run (schedule, UI, API), its parameters are validated first, and parameters outside
the reviewed ones ask for an approval (medic.procedures.maintenance_gate).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.states import State

from medic.procedures import rolling
from medic.clients.alertmanager import AlertmanagerClient
from medic.clients.ansible import run_playbook
from medic.errors import ConfigError, MedicError
from medic.core.inventory import Host, load_inventory
from medic.procedures.maintenance import WindowCheck, WindowDecision, check_window, parse_batch_size, split_batches
from medic.procedures import maintenance_gate as gate
from medic.procedures.maintenance_report import CleanupHost, CleanupStatus, MaintenanceReport
from medic.core.progress import Timeline
from medic.orchestration.run_log import tell
from medic.core.report import Outcome, artifact_key, utcnow
from medic.orchestration.ending import final_state
from medic.procedures.rolling import BatchResult, HostStatus, HostStep
from medic.settings import get_settings
from medic.clients.ssh import SSHSession

STAGE = dict(cache_policy=NO_CACHE, persist_result=False)
#: Silences end on their own this long after the batch's own budget, should medic die mid-run.
SILENCE_MARGIN = timedelta(minutes=10)


# ---------------------------------------------------------------------------------------- tasks


@task(name="window", **STAGE)
def window_task(ignore_window: bool) -> WindowCheck:
    s = get_settings()
    return check_window(s.maintenance_window, now=utcnow(), ignore_window=ignore_window,
                        outside=s.maintenance_outside_window, max_wait=timedelta(seconds=s.maintenance_max_wait_s))


@task(name="silence", **STAGE)
def silence_task(steps: list[HostStep], am: AlertmanagerClient, comment: str, duration: timedelta) -> None:
    rolling.silence(steps, am, comment=comment, duration=duration)


@task(name="drain", **STAGE)
def drain_task(steps: list[HostStep], timeout: float) -> None:
    rolling.drain(steps, timeout=timeout)


@task(name="restart", timeout_seconds=600, **STAGE)
def restart_task(steps: list[HostStep], hosts: dict[str, Host], ssh: SSHSession, timeout: float) -> None:
    rolling.restart(steps, hosts, ssh, timeout=timeout)


@task(name="health-check", **STAGE)
def health_task(steps: list[HostStep], hosts: dict[str, Host], ssh: SSHSession, timeout: float) -> None:
    rolling.health(steps, hosts, ssh, timeout=timeout)


@task(name="ready", **STAGE)
def ready_task(steps: list[HostStep], timeout: float) -> None:
    rolling.ready(steps, timeout=timeout)


@task(name="unsilence", **STAGE)
def unsilence_task(steps: list[HostStep], am: AlertmanagerClient) -> list[str]:
    return rolling.unsilence(steps, am)


@task(name="preview", **STAGE)
def preview_task(steps: list[HostStep], hosts: dict[str, Host], ssh: SSHSession) -> None:
    """Dry run: read the service and HAProxy state, change nothing."""
    results = ssh.fan_out([hosts[s.host] for s in steps], lambda h: rolling.render_shell("${servicectl} status", h),
                          timeout=10)
    rolling.describe_lb(steps)
    for s, r in zip(steps, results):
        s.status = HostStatus.WOULD_RESTART
        s.detail = (f"now: {(r.stdout or r.stderr).strip() or r.error}; would silence host={s.host}, "
                    + ("drain, " if s.lb else "")
                    + f"run `{rolling.render_shell(rolling.RESTART_COMMAND, hosts[s.host]).preview()}`, check /healthz"
                    + (", set ready" if s.lb else ""))


@task(name="cleanup-batch", timeout_seconds=900, **STAGE)
def cleanup_task(batch: list[Host], index: int, patterns: str, min_age: str, dry_run: bool) -> list[CleanupHost]:
    settings = get_settings()
    result = run_playbook(settings.playbooks_dir / "cleanup-data-dir.yml", hosts=batch, check=dry_run, timeout=300,
                          extravars={"cleanup_patterns": patterns, "cleanup_min_age": min_age})
    found = []
    for h in batch:
        r = result.hosts.get(h.name)
        values = r.return_values if r else {}
        deleted, freed = int(values.get("files_deleted", 0) or 0), int(values.get("bytes_freed", 0) or 0)
        if r is None or not r.succeeded:
            failed = [t for t in (r.tasks if r else []) if t.failed]
            status = CleanupStatus.UNREACHABLE if r and r.unreachable else CleanupStatus.FAILED
            detail = failed[-1].msg if failed else (result.error or "no result from the playbook")
            found.append(CleanupHost(host=h.name, batch=index, status=status, detail=detail))
        else:
            status = ((CleanupStatus.WOULD_CLEAN if dry_run else CleanupStatus.CLEANED) if deleted
                      else CleanupStatus.NOTHING_TO_DO)
            found.append(CleanupHost(host=h.name, batch=index, status=status, files_deleted=deleted,
                                     bytes_freed=0 if dry_run else freed,
                                     detail=f"would free {freed} bytes" if dry_run and deleted else ""))
    return found


# ---------------------------------------------------------------------------------------- shared


async def _window_allows(report: MaintenanceReport, ignore_window: bool, timeline: Timeline) -> bool:
    """Decide about the window (when told to wait, sleep until it opens); a skip is the report's outcome."""
    check = window_task(ignore_window)
    tell(timeline, "window", f"{check.reason} → {check.decision}")
    if check.decision is WindowDecision.WAIT and check.opens_at:
        await asyncio.sleep(max((check.opens_at - utcnow()).total_seconds(), 0))
        check = window_task(ignore_window)
        tell(timeline, "window", f"{check.reason} → {check.decision}")
    report.window = check
    if check.decision is not WindowDecision.RUN:
        report.outcome, report.summary = Outcome.SKIPPED, f"Nothing was done: {check.reason}."
    return check.decision is WindowDecision.RUN


def _over_budget(failures: int, max_errors: int) -> bool:
    return failures > max_errors


async def _finish(report: MaintenanceReport, timeline: Timeline) -> State:
    """The outcome line goes to the timeline, the run's log, the artifact and the final state's message."""
    tell(timeline, "report", f"{report.outcome.state_name}: {report.summary}",
         level=logging.INFO if report.outcome.success else logging.WARNING)
    report.timeline = timeline.entries
    report.finished_at = utcnow()
    await create_markdown_artifact(key=artifact_key("maintenance", report.action, report.group),
                                   markdown=report.to_markdown(),
                                   description=f"{report.action} of {report.group}: {report.outcome.value}")
    return final_state(report.outcome, report.summary, report)


def _start(action: str, group: str, batch_size: str, max_errors: int, dry_run: bool, reason: str) -> MaintenanceReport:
    if max_errors < 0:
        raise ConfigError(f"max_errors must be 0 or more, got {max_errors}")
    now = utcnow()
    return MaintenanceReport(action=action, group=group, batch_size=batch_size, max_errors=max_errors,
                             dry_run=dry_run, reason=reason, outcome=Outcome.FAILED, summary="",
                             started_at=now, finished_at=now, flow_run_id=str(get_run_context().flow_run.id))


async def _gate(report: MaintenanceReport, flow_obj: object, flow_name: str, asked: dict, timeline: Timeline) -> bool:
    """Parameters outside the reviewed ones (prefect.yaml's deployment, else the flow's defaults) need
    an approval through medic's gate; a dry run changes nothing and asks nobody. True: go on."""
    from prefect.runtime import deployment

    inventory = load_inventory()
    reviewed = gate.reviewed_parameters(gate.flow_defaults(flow_obj), flow_name, deployment.name)
    found = gate.deviations(inventory, asked, reviewed)
    if not found or report.dry_run:
        return True
    targets = [h.name for h in inventory.resolve(report.group)]
    return await gate.approve_deviations(report, found, targets=targets, timeline=timeline)


def _plan(group: str, batch_size: str) -> tuple[list[Host], list[list[Host]]]:
    hosts = load_inventory().resolve(group)
    return hosts, split_batches(hosts, parse_batch_size(batch_size, len(hosts)))


# ---------------------------------------------------------------------------------------- flows


@flow(name="rolling-restart", flow_run_name="rolling restart of {group}", persist_result=False, log_prints=False)
async def rolling_restart(
    group: str = "web",
    batch_size: str = "1",
    max_errors: int = 0,
    dry_run: bool = False,
    ignore_window: bool = False,
    drain_timeout: float = 30.0,
    health_timeout: float = 30.0,
    reason: str = "manual run",
) -> State:
    """Restart the service on every host of a group, a batch at a time, without dropping traffic.

    Args:
        group: Inventory group (or single host) to restart; hosts outside it are never touched.
        batch_size: Hosts per batch: a count like "2" or a share of the group like "25%" (rounded up).
        max_errors: How many hosts may fail before no further batch starts (0: stop at the first failure).
        dry_run: Show the plan and the current state of every host and HAProxy server; change nothing.
        ignore_window: Run even outside the maintenance window (for manual runs; needs an approval).
        drain_timeout: Seconds to wait for a drained server's in-flight sessions to finish before restarting.
        health_timeout: Seconds a restarted host has to answer /healthz (and HAProxy to see it UP again).
        reason: Why this run started (schedule, ticket, person) — shown in the report.
    """
    settings = get_settings()
    timeline = Timeline()
    report = _start("rolling restart", group, batch_size, max_errors, dry_run, reason)
    gate.check_rolling(load_inventory(), group=group, max_errors=max_errors, drain_timeout=drain_timeout,
                       health_timeout=health_timeout)
    if not await _gate(report, rolling_restart, "rolling_restart", {"group": group, "ignore_window": ignore_window},
                       timeline):
        return await _finish(report, timeline)
    if not await _window_allows(report, ignore_window, timeline):
        return await _finish(report, timeline)
    hosts, batches = _plan(group, batch_size)
    by_name = {h.name: h for h in hosts}
    steps = [HostStep(host=h.name, batch=i, lb=rolling.lb_target(h, settings.haproxy_admin))
             for i, batch in enumerate(batches, 1) for h in batch]
    report.hosts = steps
    tell(timeline, "plan", f"{len(hosts)} host(s) of {group} in {len(batches)} batch(es) of ≤{len(batches[0])}; "
                           f"stop after more than {max_errors} failure(s)" + (" — dry run" if dry_run else ""))
    with SSHSession() as ssh, AlertmanagerClient(settings.alertmanager_url or "") as am:
        if dry_run:
            preview_task(steps, by_name, ssh)
            report.outcome = Outcome.DRY_RUN
            report.summary = (f"Dry run: would restart {len(hosts)} host(s) of {group} in {len(batches)} batch(es). "
                              f"Nothing was changed.")
            return await _finish(report, timeline)
        try:
            await _restart_batches(report, steps, by_name, ssh, am, drain_timeout, health_timeout, timeline)
        except MedicError as exc:
            report.outcome, report.summary = Outcome.FAILED, f"Failed: {exc}"
        finally:
            report.problems += rolling.restore(steps) + rolling.unsilence(steps, am)
            if report.outcome is Outcome.FAILED:
                rolling.describe_lb([s for s in steps if s.lb_before is not None])
    return await _finish(report, timeline)


async def _restart_batches(report: MaintenanceReport, steps: list[HostStep], hosts: dict[str, Host],
                           ssh: SSHSession, am: AlertmanagerClient, drain_timeout: float, health_timeout: float,
                           timeline: Timeline) -> None:
    run_id = report.flow_run_id
    batch_budget = timedelta(seconds=drain_timeout + health_timeout + 120)
    failures = 0
    indexes = sorted({s.batch for s in steps})
    for index in indexes:
        batch = [s for s in steps if s.batch == index]
        if _over_budget(failures, report.max_errors):
            for s in (s for s in steps if s.batch >= index):
                s.status, s.detail = HostStatus.NOT_STARTED, f"stopped: {failures} failure(s) > max_errors {report.max_errors}"
            report.outcome = Outcome.STOPPED
            tell(timeline, "batch", f"{failures} failure(s) > max_errors {report.max_errors} → batch {index} and "
                                    f"later not started", level=logging.WARNING)
            break
        names = ", ".join(s.host for s in batch)
        result = BatchResult(index=index, hosts=[s.host for s in batch])
        report.batches.append(result)
        began = time.monotonic()
        stages: list[tuple[str, Callable[[], object]]] = [
            ("silence", lambda: silence_task(batch, am, f"medic rolling restart of {report.group}, flow run {run_id}, "
                                                        f"batch {index}/{len(indexes)}", batch_budget)),
            ("drain", lambda: drain_task(batch, drain_timeout)),
            ("restart", lambda: restart_task(batch, hosts, ssh, 60.0)),
            ("health", lambda: health_task(batch, hosts, ssh, health_timeout)),
            ("ready", lambda: ready_task(batch, health_timeout)),
            ("unsilence", lambda: report.problems.extend(unsilence_task(batch, am))),
        ]
        for name, run in stages:
            timeline.announce(name, f"batch {index}: {names}")
            if name == "restart":
                tell(timeline, "restart", f"batch {index}/{len(indexes)}: {names} silenced and drained; restarting")
            t0 = time.monotonic()
            run()
            setattr(result.times, name, round(time.monotonic() - t0, 3))
        result.duration_s = round(time.monotonic() - began, 3)
        failures = sum(1 for s in steps if s.failed)
        tell(timeline, "batch", f"{index} of {len(indexes)}: " + "; ".join(f"{s.host} {s.status} ({s.lb_after})" for s in batch),
             level=logging.WARNING if any(s.failed for s in batch) else logging.INFO)
    else:
        report.outcome = Outcome.COMPLETED
    failed = [s for s in steps if s.failed]
    done = [s for s in steps if s.status is HostStatus.RESTARTED]
    untouched = [s for s in steps if s.status is HostStatus.NOT_STARTED]
    report.summary = (f"Restarted {len(done)}/{len(steps)} host(s) of {report.group}"
                      + (f"; failed: {', '.join(f'{s.host} (HAProxy: {s.lb_after})' for s in failed)}" if failed else "")
                      + (f"; not started: {', '.join(s.host for s in untouched)}" if untouched else "") + ".")


@flow(name="maintenance-cleanup", flow_run_name="cleanup of {group}", persist_result=False, log_prints=False)
async def cleanup(
    group: str = "web",
    patterns: str = "*.tmp,*.log.[0-9]*",
    min_age: str = "1d",
    batch_size: str = "25%",
    max_errors: int = 0,
    dry_run: bool = False,
    ignore_window: bool = False,
    reason: str = "manual run",
) -> State:
    """Delete old junk from the data dir of every host of a group, a batch at a time; report bytes freed.

    Args:
        group: Inventory group (or single host) to clean; hosts outside it are never touched.
        patterns: Comma-separated file name globs that count as junk (e.g. "*.tmp,*.log.[0-9]*"); no '/' or
            '..'. Patterns the deployment does not list need an approval (shown on the request).
        min_age: Only files older than this are deleted (1d, 12h, 30m; 5m to 365d); shorter than the
            deployment's needs an approval.
        batch_size: Hosts per batch: a count like "2" or a share of the group like "25%" (rounded up).
        max_errors: How many hosts may fail before no further batch starts.
        dry_run: Find the junk and report what would be deleted; delete nothing (Ansible check mode).
        ignore_window: Run even outside the maintenance window (for manual runs; needs an approval).
        reason: Why this run started (schedule, ticket, person) — shown in the report.
    """
    timeline = Timeline()
    report = _start("cleanup", group, batch_size, max_errors, dry_run, reason)
    gate.check_cleanup(load_inventory(), group=group, patterns=patterns, min_age=min_age, max_errors=max_errors)
    asked = {"group": group, "patterns": patterns, "min_age": min_age, "ignore_window": ignore_window}
    if not await _gate(report, cleanup, "cleanup", asked, timeline):
        return await _finish(report, timeline)
    if not await _window_allows(report, ignore_window, timeline):
        return await _finish(report, timeline)
    hosts, batches = _plan(group, batch_size)
    tell(timeline, "plan", f"{len(hosts)} host(s) of {group} in {len(batches)} batch(es) of ≤{len(batches[0])}: "
                           f"delete {patterns} older than {min_age} in the data dir; stop after more than "
                           f"{max_errors} failure(s)" + (" — dry run (check mode)" if dry_run else ""))
    report.outcome = Outcome.DRY_RUN if dry_run else Outcome.COMPLETED
    for index, batch in enumerate(batches, 1):
        failures = sum(1 for c in report.cleaned if c.failed)
        if _over_budget(failures, max_errors):
            report.cleaned += [CleanupHost(host=h.name, batch=i, status=CleanupStatus.NOT_STARTED,
                                           detail=f"stopped: {failures} failure(s) > max_errors {max_errors}")
                               for i, b in enumerate(batches[index - 1:], index) for h in b]
            report.outcome = Outcome.STOPPED
            tell(timeline, "batch", f"{failures} failure(s) > max_errors {max_errors} → batch {index} and later "
                                    f"not started", level=logging.WARNING)
            break
        t0 = time.monotonic()
        report.cleaned += cleanup_task(batch, index, patterns, min_age, dry_run)
        report.batches.append(BatchResult(index=index, hosts=[h.name for h in batch],
                                          duration_s=round(time.monotonic() - t0, 3)))
        tell(timeline, "batch", f"{index} of {len(batches)}: " + "; ".join(
            f"{c.host} {c.status}" + (f", {c.bytes_freed} bytes freed" if c.bytes_freed else "") + (f" ({c.detail})" if c.detail else "")
            for c in report.cleaned if c.batch == index))
    freed = sum(c.bytes_freed for c in report.cleaned)
    failed = [c.host for c in report.cleaned if c.failed]
    report.summary = ((f"Dry run: would delete {sum(c.files_deleted for c in report.cleaned)} file(s); nothing changed"
                       if dry_run else f"Freed {freed} bytes on {sum(1 for c in report.cleaned if c.bytes_freed)} "
                                       f"host(s) of {group}")
                      + (f"; failed: {', '.join(failed)}" if failed else "") + ".")
    return await _finish(report, timeline)
