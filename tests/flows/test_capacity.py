"""The capacity flow against the real lab: open-loop load through HAProxy, p95 in Prometheus, instances
started/stopped over SSH and set ready/maint in HAProxy, every change audited in Prefect.

`one_instance` starts each test with web-1 alone taking traffic and, pass or fail, puts every web
host back (service running, server ready and UP in HAProxy): the lab as the session started it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medic.clients.alertmanager import AlertmanagerClient
from medic.clients.haproxy import HAProxyRuntime
from medic.clients.ssh import SSHSession
from medic.core.inventory import load_inventory
from medic.core.polling import wait_until
from medic.orchestration.audit_store import read_records
from medic.orchestration.runs import FlowRunOutcome, run_flow_now
from medic.procedures.capacity_loop import CapacityRun
from medic.procedures.capacity_pool import SILENCE_COMMENT, Pool
from medic_lab.state import LabState

LOADGEN = Path(__file__).resolve().parents[2] / "lab" / "loadgen.py"


def _servers(lab: LabState) -> dict[str, str]:
    return {s.name: s.admin_state for s in HAProxyRuntime("127.0.0.1", lab.ports.haproxy_admin).servers("web")}


def _silenced(am: AlertmanagerClient) -> set[str]:
    return {m.value for s in am.silences(created_by="medic", state="active") if s.comment == SILENCE_COMMENT
            for m in s.matchers}


@pytest.fixture
def one_instance(lab: LabState) -> Iterator[Pool]:
    with SSHSession() as ssh, AlertmanagerClient(lab.alertmanager_url) as am:
        pool = Pool(load_inventory().resolve("web"), ssh, alertmanager=am)
        try:
            for host, change in pool.plan(1):
                assert pool.apply(host, change).ok
            assert pool.active() == ["web-1"]
            assert _silenced(am) == {h.name for h in pool.hosts} - {"web-1"}, "stopped on purpose: silenced"
            yield pool
        finally:
            steps = [pool.apply(host, change) for host, change in pool.plan(len(pool.hosts))]
            runtime = HAProxyRuntime("127.0.0.1", lab.ports.haproxy_admin)
            wait_until(lambda: runtime.servers("web"), what="every web server ready and UP again", timeout=15,
                       done=lambda servers: all(s.admin_state == "ready" and s.up for s in servers))
            assert all(s.ok for s in steps), steps
            assert _silenced(am) == set(), "every instance back: no silence of ours left"


@pytest.fixture
def load(lab: LabState, tmp_path: Path) -> Iterator[Any]:
    """Start lab/loadgen.py through HAProxy; stopped (and its summary read) at the end."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, duration: float) -> Path:
        out = tmp_path / f"load-{len(procs)}.json"
        procs.append(subprocess.Popen([sys.executable, str(LOADGEN), "--port", str(lab.ports.haproxy),
                                       "--duration", str(duration), "--out", str(out), *args]))
        return out

    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
        p.wait(timeout=30)


def _run(**params: Any) -> tuple[FlowRunOutcome, CapacityRun]:
    from flows.capacity import capacity

    outcome = asyncio.run(run_flow_now(capacity, params))
    assert isinstance(outcome.result, CapacityRun), f"no result: {outcome.state_name} {outcome.message} {outcome.error}"
    return outcome, outcome.result


def test_scales_up_under_a_step_load_and_audits_every_change(lab: LabState, one_instance: Pool, load) -> None:
    load("--profile", "step", "--low", "10", "--high", "60", "--rise-at", "3", "--fall-at", "60",
               duration=30)
    outcome, run = _run(group="web", controller="adaptive", target_p95_ms=250, period_s=1.5, duration_s=28,
                        max_instances=6, cooldown_s=6)
    assert outcome.state_type == "COMPLETED"
    assert run.started_with == 1 and run.ended_with > 1, [d.reason for d in run.decisions]
    assert sum(1 for s in _servers(lab).values() if s == "ready") == run.ended_with
    ups = [d for d in run.changes if d.change > 0]
    assert ups and all("p95" in d.reason and "> target 250 ms" in d.reason for d in ups)
    assert all(s.ok for s in run.steps), run.steps
    assert _silenced(one_instance.am) == {h.name for h in one_instance.hosts} - set(one_instance.active())
    records = read_records(flow_run_id=str(outcome.flow_run_id))
    intents = [r for r in records if r.kind == "intent"]
    actions = [r for r in records if r.kind == "action"]
    assert len(intents) == len(actions) == len(run.changes)
    assert {r.what for r in intents} == {f"capacity (adaptive): {d.current} → {d.desired} instances" for d in run.changes}
    assert all("add web-" in r.where and ": add ok" in r.result for r in actions if "→" in r.what)


def test_recommend_only_audits_and_touches_nothing(lab: LabState, one_instance: Pool, load) -> None:
    load("--profile", "noisy", "--rate", "60", "--noise", "0.1", duration=20)
    before = _servers(lab)
    outcome, run = _run(group="web", controller="adaptive", target_p95_ms=250, period_s=1.5, duration_s=16,
                        max_instances=6, recommend_only=True)
    assert outcome.state_type == "COMPLETED"
    assert run.changes, "60 req/s on one instance (25 at most) must call for more"
    assert run.steps == [] and run.ended_with == 1
    assert _servers(lab) == before
    records = read_records(flow_run_id=str(outcome.flow_run_id))
    assert [r.kind for r in records if r.kind in ("intent", "action")] == []
    decisions = [r for r in records if r.kind == "decision"]
    assert len(decisions) == len(run.changes)
    assert all(r.result == "recommend only: not applied" and "target 250 ms" in r.detail for r in decisions)
