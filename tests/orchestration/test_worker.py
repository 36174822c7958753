"""`medic deploy` and `medic worker` for real: the pool and its deployments in the lab's Prefect, a
remediation of a broken lab host executed by a worker process, and SIGTERM letting a run finish."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from medic_lab.state import LabState
from tests.support.flows import answer_pause, metric
from tests.support.lab_health import Inject, broken, seen  # noqa: F401 (fixtures)
from tests.orchestration.worker_support import MEDIC, GATED, POOL, Pool, Workers, pool, workers  # noqa: F401 (fixtures)
from tests.support.closed_port import closed_port  # noqa: F401  (a fixture: a port held closed)


def test_worker_and_deploy_exit_5_naming_prefect_when_it_is_unreachable(tmp_path: Path, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/api"  # nothing listens there
    env = {**os.environ, "PREFECT_API_URL": url, "MEDIC_LAB_DIR": str(tmp_path)}
    env.pop("MEDIC_PREFECT_API_URL", None)
    for command in (["worker", "--name", "nobody"], ["deploy"]):
        done = subprocess.run([MEDIC, *command], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 5, (command, done.stderr[-1000:])
        assert "unreachable" in done.stderr and "PREFECT_API_URL" in done.stderr, done.stderr


def test_deploy_is_idempotent_with_typed_forms_in_the_pool(pool: Pool) -> None:
    before = {d["name"]: d for d in pool.api("POST", "/deployments/filter", json={"limit": 100, "offset": 0})}
    out = pool.deploy()  # a second time: updates, never duplicates
    after = {d["name"]: d for d in pool.api("POST", "/deployments/filter", json={"limit": 100, "offset": 0})}
    assert f"work pool {POOL!r} (type medic)" in out
    assert {name: d["id"] for name, d in after.items()} == {name: d["id"] for name, d in before.items()}
    for name in ("service-down", "postgres-failover", GATED, "anomaly-watch"):
        assert after[name]["work_pool_name"] == POOL, name
        assert after[name]["schedules"] == [], "--no-schedules deploys none"
    schema = after[GATED]["parameter_openapi_schema"]
    assert schema["properties"]["dry_run"]["type"] == "boolean" and "runbook" in schema["required"]
    assert after[GATED]["parameters"] == {"runbook": GATED}
    assert pool.api("GET", f"/work_pools/{POOL}")["type"] == "medic"


def test_a_remediation_executes_on_a_worker_and_recovers_the_host(lab: LabState, pool: Pool, workers: Workers,
                                                                  broken: Inject) -> None:
    workers.start("wk-a")
    broken("service-down", "web-2")
    seen(lab, "service-down", "web-2")
    run_id = pool.create_run("service-down", "web-2", tags=["kind:remediation"])
    run = pool.final(run_id)
    assert (run["state"]["type"], run["state"]["name"]) == ("COMPLETED", "Recovered"), run["state"]["message"]
    assert run["labels"]["prefect.worker.name"] == "wk-a"
    assert run["infrastructure_pid"].startswith("wk-a:"), run["infrastructure_pid"]
    assert metric(lab, 'up{job="web",host="web-2"}')[0][1] == 1


def test_sigterm_stops_taking_runs_and_lets_the_running_one_finish(lab: LabState, pool: Pool, workers: Workers,
                                                                   broken: Inject) -> None:
    proc = workers.start("wk-b")
    pool.close_gate("web-3")
    broken("service-down", "web-3")
    seen(lab, "service-down", "web-3")
    run_id = pool.create_run(GATED, "web-3", tags=["kind:remediation"])
    pool.in_stage(run_id, "recover")  # held at the gate, on wk-b
    proc.send_signal(signal.SIGTERM)
    pool.open_gate("web-3")
    assert proc.wait(timeout=150) == 0, workers.log("wk-b")[-2000:]
    run = pool.run(run_id)
    assert (run["state"]["type"], run["state"]["name"]) == ("COMPLETED", "Recovered"), run["state"]["message"]
    assert "stopping: no new runs; waiting up to 120 s for 1 running" in workers.log("wk-b")


def test_an_approval_waits_on_its_worker_and_the_resume_continues_it_there(lab: LabState, pool: Pool,
                                                                           workers: Workers, broken: Inject) -> None:
    """The pause is in-process (`pause_flow_run` without reschedule): the run stays on the worker that
    took it, the resume (any process, here the test) moves it back to Running and that thread goes on."""
    workers.start("wk-c")
    broken("disk-full", "web-1")
    seen(lab, "disk-full", "web-1")
    run_id = pool.create_run("disk-full", "web-1", tags=["kind:remediation"])
    status = asyncio.run(answer_pause(run_id, {"decision": "approve", "approver": "alice"},
                                      timeout=120))
    assert status == "accepted"
    run = pool.final(run_id)
    assert (run["state"]["type"], run["state"]["name"]) == ("COMPLETED", "Recovered"), run["state"]["message"]
    assert run["labels"]["prefect.worker.name"] == "wk-c"
    assert "Resuming flow run execution" in workers.log("wk-c")
