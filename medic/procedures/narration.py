"""What each remediation stage found and decided, as one readable line.

These lines are the run's story in the Prefect UI (its logs), in the incident report's timeline, in
the Slack thread and in `medic run`'s live view — one text for all of them, built here from the
stage results (pure functions, no I/O), so a reader of any one of them learns the same thing:
what was looked at, what it showed, and what medic does next.
"""

from __future__ import annotations

from medic.core.report import CheckResult, Diagnosis, HostAction, RecoveryResult
from medic.core.runbook import Detect, Verify

MAX_VALUES = 8
MAX_OUTPUT = 80


def values(check: CheckResult, hosts: list[str] | None = None) -> str:
    """``web-1=0.95, web-2=no data`` for the hosts asked about (all when None), at most 8 shown."""
    shown = [f"{v.host}={'no data' if v.value is None else f'{v.value:.3g}'}"
             for v in check.values if hosts is None or v.host in hosts]
    return ", ".join(shown[:MAX_VALUES]) + (" …" if len(shown) > MAX_VALUES else "") or "no series"


def _rule(check: CheckResult, hold: float) -> str:
    return f"`{check.query}` {check.condition}" + (f" for {hold:g} s" if hold else "")


def detect_line(spec: Detect, found: CheckResult) -> str:
    """``web-2=0 for 3.1 s (rule …) → problem confirmed on web-2``, or why there is nothing to do."""
    if found.matching and found.reasons:  # an anomaly score: the detector's words say more than a number
        why = "; ".join(f"{h}: {found.reasons.get(h, '')}" for h in found.matching[:MAX_VALUES])
        return f"{why} ({_rule(found, 0)}) → problem confirmed on {', '.join(found.matching)}"
    if found.matching:
        held = ", ".join(f"{v.host}={'no data' if v.value is None else f'{v.value:.3g}'} for {v.held_s:.1f} s"
                         for v in found.values if v.host in found.matching)
        return f"{held} ({_rule(found, spec.hold)}) → problem confirmed on {', '.join(found.matching)}"
    return (f"{_rule(found, spec.hold)} holds on no target ({values(found)}; watched {found.waited_s:.1f} s) "
            f"→ nothing to do")


def diagnosis_line(diagnosis: Diagnosis) -> str:
    """How much evidence, what failed, and the first line of each finding (details: the artifact)."""
    failed = [c for c in diagnosis.commands if not c.result.ok]
    facts = []
    for c in diagnosis.commands:
        out = (c.result.stdout or c.result.stderr or c.result.error or "").strip().splitlines()
        first = " ".join(out[0].split())[:MAX_OUTPUT] if out else "(no output)"  # tabs/columns → one space
        facts.append(f"{c.name} on {c.result.host}: {first}")
    for q in diagnosis.queries:
        shown = q.error or ", ".join(f"{v:.4g}" for _, v in q.samples[:3]) or "no data"
        facts.append(f"{q.name} = {shown}")
    head = (f"{len(diagnosis.commands)} command result(s), {len(diagnosis.queries)} query(ies) in "
            f"{diagnosis.duration_s:.1f} s" + (f", {len(failed)} command(s) failed" if failed else ""))
    return head + (" — " + "; ".join(facts[:4]) + (" …" if len(facts) > 4 else "") if facts else "")


def recheck_line(spec: Detect, found: CheckResult, hosts: list[str]) -> str:
    """After a human's decision, before acting: is the problem still there?"""
    still = [h for h in hosts if h in found.matching]
    if still:
        return f"{_rule(found, 0)} still holds on {', '.join(still)} ({values(found, hosts)}) → recovering"
    return f"{_rule(found, 0)} no longer holds ({values(found, hosts)}) → nothing to do, nothing changed"


def recovery_line(recovery: RecoveryResult) -> str:
    """``playbook restart-service.yml on web-2: web-2 changed, 1.8 s`` (+ what the playbook reported)."""
    def one(h: HostAction) -> str:
        reported = ", ".join(f"{k}={v}" for k, v in h.return_values.items() if k != "action")
        return (f"{h.host} {h.status}" + (f" ({reported})" if reported else "")
                + (f": {h.detail[:MAX_OUTPUT]}" if h.failed else ""))

    tail = (" — stopped early: too many hosts failed" if recovery.stopped_early else "")
    mode = " in check mode (nothing changed)" if recovery.check_mode else ""
    return (f"{recovery.action}{mode}: {', '.join(one(h) for h in recovery.hosts)}, "
            f"{recovery.duration_s:.1f} s{tail}")


def verify_line(spec: Verify, found: CheckResult, hosts: list[str]) -> str:
    """Healthy again (→ recovered), or still not after the timeout (→ not recovered)."""
    if found.timed_out:
        return (f"{_rule(found, spec.hold)} not reached within {spec.timeout:g} s ({values(found, hosts)}) "
                f"→ not recovered")
    return (f"{_rule(found, spec.hold)} holds on {', '.join(hosts)} after {found.waited_s:.1f} s "
            f"({values(found, hosts)}) → recovered")
