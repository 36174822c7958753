"""The stages of a remediation — plan, detect, diagnose, recover, verify — as plain functions.

Prefect tasks in `flows/remediate.py` wrap these; keeping the logic here keeps it testable and the
flow file a readable picture of the procedure. Each stage takes and returns pydantic models.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from medic.clients.ansible import PlaybookResult, run_playbook
from medic.errors import PromQLError, RunbookError, UnknownTargetError
from medic.core.inventory import Host, Inventory
from medic.clients.prometheus import PrometheusClient, Series
from medic.core.report import (
    ActionStatus,
    CheckResult,
    CommandEvidence,
    Diagnosis,
    HostAction,
    HostValue,
    QueryEvidence,
    RecoveryResult,
)
from medic.core.runbook import Check, Runbook
from medic.procedures.anomaly import anomaly_check
from medic.clients.ssh import CommandResult, SSHSession
from medic.core.templates import placeholders, render_promql, render_shell

POLL_INTERVAL_S = 0.5
RECHECK_NO_DATA_S = 5.0
Sleep = Callable[[float], None]


class Plan(BaseModel):
    """A runbook bound to the inventory hosts it may act on."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    runbook: Runbook
    target: str
    hosts: list[Host]


def plan(runbook: Runbook, target: str | None, inventory: Inventory) -> Plan:
    """Resolve the target through the inventory only, and keep it within the runbook's group."""
    chosen = target or runbook.targets.default
    if not chosen:
        raise RunbookError(f"runbook {runbook.name!r} needs a target (a host or group of the inventory)",
                           file=str(runbook.source), field="targets.default", expected="--target HOST")
    hosts = inventory.resolve(chosen)
    if runbook.targets.within:
        allowed = {h.name for h in inventory.resolve(runbook.targets.within)}
        outside = [h.name for h in hosts if h.name not in allowed]
        if outside:
            raise UnknownTargetError(
                f"{chosen} ({', '.join(outside)} outside group {runbook.targets.within!r} of runbook {runbook.name})",
                sorted(allowed))
    return Plan(runbook=runbook, target=chosen, hosts=hosts)


# --- checking PromQL conditions ---------------------------------------------------------------


def _series_by_host(check: Check, hosts: list[Host], prom: PrometheusClient, hold: float) -> dict[str, list[Series]]:
    """Every series the check's query returns, grouped by host, over the last ``hold`` seconds."""
    now = time.time()

    def fetch(query: str) -> list[Series]:
        if hold <= 0:
            return [Series(labels=s.labels, points=[(s.timestamp, s.value)]) for s in prom.query(query)]
        return prom.query_range(query, start=now - hold, end=now, step=POLL_INTERVAL_S)

    grouped: dict[str, list[Series]] = {h.name: [] for h in hosts}
    if check.per_host:
        with ThreadPoolExecutor(max_workers=min(8, len(hosts) or 1)) as pool:
            results = pool.map(lambda h: fetch(render_promql(check.query, h)), hosts)
            for h, series in zip(hosts, results):
                grouped[h.name].extend(series)
    else:
        for s in fetch(render_promql(check.query, None)):
            name = s.labels.get(check.host_label)
            if name in grouped:
                grouped[name].append(s)
    return grouped


def _held(series: Series, check: Check, now: float) -> tuple[bool, float, float | None]:
    """(matches now, for how long, latest value) of one series."""
    if not series.points:
        return False, 0.0, None
    last_ts, last_value = series.points[-1]
    if not check.condition.holds(last_value):
        return False, 0.0, last_value
    since = last_ts
    for ts, value in reversed(series.points):
        if not check.condition.holds(value):
            break
        since = ts
    return True, max(0.0, now - since), last_value


def evaluate(check: Check, hosts: list[Host], prom: PrometheusClient, *, hold: float, every_series: bool) -> list[HostValue]:
    """Each host's value and whether the condition held for ``hold`` seconds.

    ``every_series``: for verify, all of a host's series must be healthy; for detect, one bad one counts.
    """
    now = time.time()
    values = []
    for host, series_list in _series_by_host(check, hosts, prom, hold).items():
        judged = [_held(s, check, now) for s in series_list]
        if not judged:
            values.append(HostValue(host=host, value=None, matches=False))
            continue
        pick = all if every_series else any
        matches = pick(j[0] for j in judged)
        held = min(j[1] for j in judged if j[0]) if matches else 0.0
        value = next((j[2] for j in judged if j[0] == matches), judged[0][2])
        values.append(HostValue(host=host, value=value, matches=matches, held_s=held))
    return values


def _enough(v: HostValue, hold: float) -> bool:
    return v.matches and v.held_s >= hold - POLL_INTERVAL_S


def detect(p: Plan, prom: PrometheusClient, *, sleep: Sleep = time.sleep) -> CheckResult:
    """Confirm the problem: the condition must hold for `for` on at least one target.

    Metrics lag by a scrape, so a target that looks healthy is watched for `settle` seconds before
    the answer is "not needed"; one that just turned bad is watched until it has held long enough.
    """
    spec, began = p.runbook.detect, time.monotonic()
    if spec.anomaly is not None:  # a score over the history: nothing to wait for
        return anomaly_check(spec, p.hosts, prom)[0]
    while True:
        values = evaluate(spec, p.hosts, prom, hold=spec.hold, every_series=False)
        matching = [v.host for v in values if _enough(v, spec.hold)]
        pending = [v.host for v in values if v.matches and v.host not in matching]
        elapsed = time.monotonic() - began
        wait_more = (pending and elapsed < spec.settle + spec.hold) or (not matching and not pending and elapsed < spec.settle)
        if not wait_more:
            return CheckResult(query=spec.query, condition=str(spec.condition), values=values, matching=matching,
                               waited_s=elapsed)
        sleep(POLL_INTERVAL_S)


def recheck(p: Plan, hosts: list[Host], prom: PrometheusClient, *, sleep: Sleep = time.sleep) -> CheckResult:
    """After a human's decision (minutes may have passed): is the problem still there? A look at the
    current values — no `for` — so a problem fixed meanwhile is not "fixed" again.

    No data is not evidence that the problem is gone: a Prometheus that has just restarted may have
    written staleness markers at its shutdown and not scraped since, and every series looks absent for
    a scrape or two. A host without data is asked again for up to `settle` (at least
    RECHECK_NO_DATA_S); only then does it count as not matching."""
    spec, began = p.runbook.detect, time.monotonic()
    if spec.anomaly is not None:
        return anomaly_check(spec, hosts, prom)[0]
    while True:
        values = evaluate(spec, hosts, prom, hold=0, every_series=False)
        if all(v.value is not None for v in values) or time.monotonic() - began >= max(spec.settle, RECHECK_NO_DATA_S):
            break
        sleep(POLL_INTERVAL_S)
    return CheckResult(query=spec.query, condition=str(spec.condition), values=values,
                       matching=[v.host for v in values if v.matches], waited_s=time.monotonic() - began)


def verify(p: Plan, hosts: list[Host], prom: PrometheusClient, *, sleep: Sleep = time.sleep) -> CheckResult:
    """Wait until every repaired host is healthy for `for` seconds, or the timeout passes."""
    spec, began = p.runbook.verify, time.monotonic()
    while True:
        values = evaluate(spec, hosts, prom, hold=spec.hold, every_series=True)
        healthy = [v.host for v in values if _enough(v, spec.hold)]
        elapsed = time.monotonic() - began
        done = len(healthy) == len(hosts)
        if done or elapsed >= spec.timeout:
            return CheckResult(query=spec.query, condition=str(spec.condition), values=values, matching=healthy,
                               waited_s=elapsed, timed_out=not done)
        sleep(POLL_INTERVAL_S)


# --- diagnose ---------------------------------------------------------------------------------


def _query_evidence(name: str, query: str, prom: PrometheusClient) -> QueryEvidence:
    try:
        samples = [(s.labels, s.value) for s in prom.query(query)]
        return QueryEvidence(name=name, query=query, samples=samples)
    except PromQLError as exc:
        return QueryEvidence(name=name, query=query, error=str(exc))


def diagnose(p: Plan, hosts: list[Host], ssh: SSHSession, prom: PrometheusClient) -> Diagnosis:
    """Gather evidence: every named command on every host and every query, all in parallel."""
    began = time.monotonic()
    spec = p.runbook.diagnose

    def run_command(i: int) -> list[CommandEvidence]:
        cmd = spec.commands[i]
        results = ssh.fan_out(hosts, lambda h: render_shell(cmd.run, h, where=f"diagnose command {cmd.name!r}"),
                              timeout=cmd.timeout)
        return [CommandEvidence(name=cmd.name, result=r) for r in results]

    queries: list[tuple[str, str]] = []
    for q in spec.queries:
        if "host" in placeholders(q.query):
            queries += [(f"{q.name} ({h.name})" if len(hosts) > 1 else q.name, render_promql(q.query, h)) for h in hosts]
        else:
            queries.append((q.name, render_promql(q.query, None)))
    with ThreadPoolExecutor(max_workers=8) as pool:
        command_futures = [pool.submit(run_command, i) for i in range(len(spec.commands))]
        query_futures = [pool.submit(_query_evidence, n, q, prom) for n, q in queries]
        commands = [e for f in command_futures for e in f.result()]
        evidence = [f.result() for f in query_futures]
    return Diagnosis(commands=commands, queries=evidence, duration_s=time.monotonic() - began)


# --- recover ----------------------------------------------------------------------------------


def _playbook_actions(result: PlaybookResult, batch: list[Host], check: bool) -> list[HostAction]:
    actions = []
    for h in batch:
        r = result.hosts.get(h.name)
        if r is None:
            actions.append(HostAction(host=h.name, status=ActionStatus.FAILED, detail=result.error or f"no result (rc {result.rc})"))
            continue
        failed_task = next((t for t in r.tasks if t.failed), None)
        # Ansible reports nothing about tasks skipped in check mode, so a playbook states its plan
        # itself: medic_result.action = what it does (or would do); "none" = nothing to do.
        planned = str(r.return_values.get("action", "none"))
        would_run = [planned] if check and planned != "none" else []
        if r.unreachable:
            status = ActionStatus.UNREACHABLE
        elif r.failed:
            status = ActionStatus.FAILED
        elif r.changed or would_run:
            status = ActionStatus.WOULD_CHANGE if check else ActionStatus.CHANGED
        else:
            status = ActionStatus.OK
        if failed_task:
            detail = f"{failed_task.task}: {failed_task.msg}"
        elif would_run:
            detail = "would run: " + ", ".join(would_run)
        else:
            detail = ", ".join(t.task for t in r.tasks if t.changed) or "nothing to do (already in the desired state)"
        actions.append(HostAction(host=h.name, status=status, detail=detail, return_values=r.return_values))
    return actions


def _command_actions(results: list[CommandResult]) -> list[HostAction]:
    actions = []
    for r in results:
        if r.ok:
            actions.append(HostAction(host=r.host, status=ActionStatus.CHANGED, detail=(r.stdout or r.stderr).strip()[:300]))
        else:
            status = (ActionStatus.UNREACHABLE if r.exit_code is None and r.error and "unreachable" in r.error
                      else ActionStatus.FAILED)
            actions.append(HostAction(host=r.host, status=status,
                                      detail=r.error or f"exit {r.exit_code}: {(r.stderr or r.stdout).strip()[:300]}"))
    return actions


def recover(p: Plan, hosts: list[Host], *, dry_run: bool, ssh: SSHSession, playbooks_dir: Path,
            inventory: Inventory) -> RecoveryResult:
    """Repair in batches of `max_parallel`; stop before the next batch once errors exceed `max_errors`."""
    spec, limits = p.runbook.recover, p.runbook.limits
    began = time.monotonic()
    actions: list[HostAction] = []
    batches = [hosts[i:i + limits.max_parallel] for i in range(0, len(hosts), limits.max_parallel)]
    done = 0
    for batch in batches:
        if sum(1 for a in actions if a.failed) > limits.max_errors:
            actions += [HostAction(host=h.name, status=ActionStatus.SKIPPED,
                                   detail=f"not attempted: more than {limits.max_errors} host(s) failed")
                        for b in batches[done:] for h in b]
            break
        done += 1
        if spec.playbook:
            result = run_playbook(playbooks_dir / spec.playbook, hosts=batch, inventory=inventory.path,
                                  extravars=dict(spec.vars), check=dry_run, timeout=spec.timeout)
            actions += _playbook_actions(result, batch, dry_run)
        elif dry_run:
            actions += [HostAction(host=h.name, status=ActionStatus.WOULD_CHANGE,
                                   detail=f"would run: {render_shell(spec.command or '', h, where='recover command').preview()}")
                        for h in batch]
        else:
            command = spec.command or ""
            actions += _command_actions(ssh.fan_out(
                batch, lambda h: render_shell(command, h, where="recover command"), timeout=spec.timeout))
    return RecoveryResult(action=f"{spec.description} on {', '.join(h.name for h in hosts)}", check_mode=dry_run,
                          hosts=actions, batches=done, stopped_early=done < len(batches),
                          duration_s=time.monotonic() - began)
