"""The janitor against real processes: `kill -9` the worker executing a run mid-remediation; the run
reaches Crashed, exactly one rerun repairs the host on a surviving worker (two janitors race for it),
and a run of any other kind is Crashed and never re-run."""

from __future__ import annotations

import time

from medic.orchestration.audit_store import read_records
from medic_lab.state import LabState
from tests.support.flows import metric
from tests.support.lab_health import Inject, broken, seen  # noqa: F401 (fixtures)
from tests.support.waits import wait_for
from tests.orchestration.worker_support import (  # noqa: F401 (fixtures)
    DEAD_AFTER_S, GATED, Pool, Workers, pool, workers,
)

CRASHED_WITHIN_S = 120  # the bound of the wait, not a timing claim: the seconds measured are printed


def _held_on_a_worker(lab: LabState, pool: Pool, workers: Workers, host: str, kind: str) -> tuple[str, str]:
    """A gated run of `kind` on broken `host`, held in its recover stage; (run id, the worker executing it)."""
    pool.close_gate(host)
    seen(lab, "service-down", host)
    run_id = pool.create_run(GATED, host, tags=["medic-serve", f"kind:{kind}", f"target:{host}"])
    run = pool.in_stage(run_id, "recover")
    return run_id, run["labels"]["prefect.worker.name"]


def _crashed(pool: Pool, run_id: str) -> tuple[dict, float]:
    began = time.monotonic()
    run = wait_for(lambda: pool.run(run_id), what=f"run {run_id} to be Crashed by a janitor",
                   timeout=CRASHED_WITHIN_S, interval=0.5, done=lambda r: r["state"]["type"] != "RUNNING")
    return run, time.monotonic() - began


def test_a_killed_workers_remediation_is_crashed_and_rerun_exactly_once(lab: LabState, pool: Pool, workers: Workers,
                                                                       broken: Inject) -> None:
    for name in ("jn-a", "jn-b", "jn-c"):
        workers.start(name)
    broken("service-down", "web-4")
    run_id, victim = _held_on_a_worker(lab, pool, workers, "web-4", "remediation")
    workers.kill(victim)  # kill -9, mid-recover: the repair command waits at the gate on web-4
    pool.open_gate("web-4")
    run, seconds = _crashed(pool, run_id)
    print(f"\nkilled worker {victim}: run Crashed {seconds:.1f} s after the kill "
          f"(dead after {DEAD_AFTER_S} s without heartbeat, heartbeat 1 s)")
    assert run["state"]["type"] == "CRASHED", run["state"]
    assert f"interrupted on dead worker {victim}" in run["state"]["message"]

    reruns = wait_for(lambda: pool.runs_tagged(f"rerun-of:{run_id}"), what=f"the rerun of {run_id}", timeout=60)
    rerun = pool.final(reruns[0]["id"])
    assert rerun["labels"]["prefect.worker.name"] in {"jn-a", "jn-b", "jn-c"} - {victim}
    assert rerun["parameters"] == run["parameters"] and "kind:remediation" in rerun["tags"]
    assert len(pool.runs_tagged(f"rerun-of:{run_id}")) == 1, "two janitors raced: still exactly one rerun"
    # The dead worker's remote command outlived it (sshd does not end a command whose client vanished):
    # it went through the gate and started the service. The rerun re-checks first, finds web-4 healthy
    # and changes nothing — the repair was applied once, not twice.
    assert (rerun["state"]["type"], rerun["state"]["name"]) == ("COMPLETED", "NotNeeded"), rerun["state"]["message"]
    assert metric(lab, 'up{job="web",host="web-4"}')[0][1] == 1

    # the audit log in Prefect: the dead run announced its action (intent) but never reported one; the
    # rerun did not act; exactly one janitor decided the rerun
    dead = read_records(flow_run_id=run_id)
    assert [r.kind for r in dead if r.kind in ("intent", "action")] == ["intent"]
    assert [r.what for r in dead if r.kind == "decision"] == ["re-run after dead worker"]
    assert [r for r in read_records(flow_run_id=rerun["id"]) if r.kind in ("intent", "action")] == []


def test_a_killed_workers_failover_kind_run_is_crashed_and_never_rerun(lab: LabState, pool: Pool, workers: Workers,
                                                                      broken: Inject) -> None:
    for name in ("jn-d", "jn-e"):
        workers.start(name)
    broken("service-down", "web-5")
    run_id, victim = _held_on_a_worker(lab, pool, workers, "web-5", "failover")
    workers.kill(victim)
    run, seconds = _crashed(pool, run_id)
    print(f"\nkilled worker {victim}: failover-kind run Crashed {seconds:.1f} s after the kill")
    assert run["state"]["type"] == "CRASHED", run["state"]
    assert f"interrupted on dead worker {victim}" in run["state"]["message"]
    assert "a human must check the cluster before starting it again" in run["state"]["message"]
    # the janitor's decision is its audit record (written after the crash, instead of a rerun)
    records = wait_for(lambda: [r for r in read_records(flow_run_id=run_id) if r.kind == "escalation"],
                       what=f"the janitor's escalation record for {run_id}", timeout=30)
    assert [r.what for r in records] == ["interrupted on dead worker, not re-run"]
    assert pool.runs_tagged(f"rerun-of:{run_id}") == []
    assert metric(lab, 'up{job="web",host="web-5"}')[0][1] == 0, "nothing repaired web-5 behind a human's back"
