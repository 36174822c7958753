"""medic serve killed in the middle of a failover (issue 12): the run ends Crashed naming its step, no
playbook outlives it, the cluster stays held until a human acknowledges, never two primaries.

A real `medic serve` on a db lab of its own (2 nodes, asynchronous replication) executes a failover
started by an alert, approved as `medic approve` does. The promote step is held open for real: the
standby's startup (recovery) process is SIGSTOPped after the primary is killed, so `pg_ctl promote -w`
inside the pg-promote playbook waits — the diagnosis, which only reads, is not affected. medic serve
is then SIGKILLed (the OOM killer) or SIGTERMed (systemd stop) while ansible-playbook runs, and
started again. Every test checks the failover invariant (tests/support/pg_invariant.py) throughout.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flows.failover import failover as failover_flow
from medic.approval.answers import resume_proven
from medic.clients.postgres import direct_check
from medic.core.report import Outcome
from medic.orchestration.cluster_hold import read_hold
from medic.orchestration.locks import remediation_lock_name
from medic.orchestration.runs import run_flow_now
from medic.procedures.failover import read_route
from medic_lab import faults
from medic_lab.postgres import PgPorts, psql
from medic_lab.postgres_nodes import postgres_pids, route_only
from medic_lab.state import LabState
from tests.support.chaos import FINAL, post_alert
from tests.support.pg_approvals import APPROVE, payload
from tests.support.pg_cluster import cluster as pg_cluster, db_lab as pg_db_lab, restore_cluster, roles, seen_down
from tests.support.pg_invariant import failover_invariant
from tests.support.prefect_api import prefect_json
from tests.support.server import MedicServer, alert_payload, medic_server
from tests.support.waits import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

BASE_PORT = int(os.environ.get("MEDIC_TEST_DB_LAB_BASE_PORT", "27000"))


@pytest.fixture(scope="module")
def db_lab() -> Iterator[LabState]:
    with pg_db_lab(BASE_PORT, {"db": True}) as state:
        yield state


@pytest.fixture
def cluster(db_lab: LabState) -> Iterator[LabState]:
    """Healthy before and after, whatever the test did: a hold it left is acknowledged, and a standby it
    left promoted but unrouted gets the clients (what the human does), so the old node can rejoin."""
    restore_cluster(db_lab)
    yield db_lab
    hold = asyncio.run(read_hold(remediation_lock_name("postgres-failover", pg_cluster().name)))
    if hold is not None:
        ack(hold.cluster)
    if read_route(pg_cluster()).primary is None:  # left fenced: promote the standby by hand if need be, route it
        ports = PgPorts.of(db_lab)
        checks = {n: direct_check(f"127.0.0.1:{port}") for n, port in ports.nodes.items()}
        writable = [n for n, c in checks.items() if c.answered and c.in_recovery is False]
        if not writable:
            standby = next(n for n, c in checks.items() if c.answered)
            psql(db_lab.host(standby), "SELECT pg_promote()")
            writable = [standby]
        route_only(ports, writable[0])
    restore_cluster(db_lab)


def startup_process(lab: LabState, node: str) -> int:
    """The standby's startup (WAL replay) process: promotion completes only when it runs."""
    for pid in postgres_pids(lab.host(node))[1:]:
        try:
            if b"startup" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError(f"{node} has no startup process: is it a standby? pids {postgres_pids(lab.host(node))}")


def processes(needle: str) -> list[str]:
    """Live (non-zombie) processes whose command line contains `needle`."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmdline and state != "Z" and int(entry) != os.getpid():
            found.append(f"{entry} {cmdline[:200]}")
    return found


def processes_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120] or "?"
    except OSError:
        return "gone"


def run_state(lab: LabState, run_id: str) -> dict:
    return prefect_json(lab.prefect_api_url, "GET", f"/flow_runs/{run_id}")["state"]


def task_states(lab: LabState, run_id: str) -> dict[str, str]:
    """Task name (detect, fence, promote, …) → state name, for one flow run."""
    tasks = prefect_json(lab.prefect_api_url, "POST", "/task_runs/filter",
                         json={"flow_runs": {"id": {"any_": [run_id]}}})
    return {t["name"].rsplit("-", 1)[0]: (t.get("state") or {}).get("name", "none") for t in tasks}


def tasks_in_order(lab: LabState, run_id: str) -> list[tuple[str, str]]:
    """(task name, state name) of every task run of the flow run, in the order they started."""
    tasks = prefect_json(lab.prefect_api_url, "POST", "/task_runs/filter",
                         json={"flow_runs": {"id": {"any_": [run_id]}}, "sort": "EXPECTED_START_TIME_ASC"})
    return [(t["name"].rsplit("-", 1)[0], (t.get("state") or {}).get("name", "none")) for t in tasks]


def promoting(lab: LabState, run_id: str, standby: str) -> None:
    """Until the run's promote step is inside `pg_ctl promote` on the standby (held: its replay is stopped)."""
    data_dir = str(lab.host(standby).root / "pgdata")
    wait_for(lambda: (task_states(lab, run_id), [p for p in processes("promote") if "pg_ctl" in p and data_dir in p]),
             what=f"the promote step to be waiting in `pg_ctl promote` on {standby}", timeout=180,
             done=lambda seen: seen[0].get("promote") == "Running" and bool(seen[1]))


def card_at_risk(lab: LabState, run_id: str) -> int | None:
    """The WAL bytes at risk the run's approval card showed the human (None: no figure on it)."""
    stored = prefect_json(lab.prefect_api_url, "POST", f"/flow_runs/{run_id}/input/filter",
                          json={"prefix": "paused-", "limit": 50})
    found = [int(m) for row in stored for m in re.findall(r"potential data loss: (\d+) bytes", row["value"])]
    return found[-1] if found else None


def approve(run_id: str) -> None:
    outcome = asyncio.run(resume_proven(run_id, lambda key: payload(APPROVE, run_id, key)))
    assert outcome.status.value == "accepted", outcome


def start_failover(lab: LabState, server: MedicServer, primary: str) -> str:
    """The alert Alertmanager sends for a dead primary; medic serve starts the failover; approved."""
    answer = post_alert(server, alert_payload("PostgresPrimaryDown", primary, extra_labels={"job": "postgres"},
                                              fingerprint=f"chaos-failover-{uuid.uuid4().hex[:8]}"))
    assert answer["result"] == "started", answer
    run_id = answer["flow_run_id"]
    paused = wait_for(lambda: run_state(lab, run_id), what=f"run {run_id} to ask for approval", timeout=180,
                      done=lambda s: s["type"] in ("PAUSED", *FINAL), ignore=httpx.HTTPError)
    assert paused["type"] == "PAUSED", (paused, server.logs()[-3000:])
    approve(run_id)
    return run_id


def ack(cluster_name: str) -> str:
    said = subprocess.run([sys.executable, "-m", "medic", "failover-ack", cluster_name, "--reason",
                           "chaos test: checked the nodes, promoted standby routed by hand"],
                          capture_output=True, text=True, timeout=120)
    assert said.returncode == 0, said.stderr
    return said.stdout


#: Where medic serve is stopped: (how the step is held open, the step the Crashed run must name).
#: - promote: the standby's replay is SIGSTOPped, so `pg_ctl promote -w` inside the playbook waits;
#: - before-promote: the fence done, the standby's sshd hangs (sshd-hang) once the fence starts, so the
#:   promote playbook never reaches the standby — fenced, nothing promoted (the issue's "no primary");
#: - verify: promoted and routed, the new primary's exporter is down, so the verify step waits for
#:   Prometheus to see it as primary.
CASES = [("promote", signal.SIGKILL), ("promote", signal.SIGTERM), ("before-promote", signal.SIGKILL),
         ("verify", signal.SIGKILL)]


@pytest.mark.parametrize(("where", "sig"), CASES, ids=[f"{w}-{s.name.lower()}" for w, s in CASES])
def test_medic_serve_stopped_mid_failover(cluster: LabState, tmp_path: Path, where: str, sig: signal.Signals) -> None:
    """Nothing lost: the run ends Crashed naming its step (SIGTERM: on the way out; SIGKILL: when medic serve
    starts again) and is not replayed by the new life; no ansible-playbook or ssh of the stopped medic serve
    is left once it is back; the cluster stays held — a new failover is refused, nothing looked at — until
    `medic failover-ack`, which is audited and then lets the slot go; two writable primaries are never
    seen, and every write a client got acknowledged is on the primary routed afterwards, or the approval
    card the human approved showed WAL at risk (asynchronous replication; the crashed run left no report)."""
    primary, standby = roles()
    name = pg_cluster().name
    lock = remediation_lock_name("postgres-failover", name)
    state_dir = tmp_path / "serve"
    step = "verify" if where == "verify" else "promote"
    stopped: list[int] = []
    try:
        with failover_invariant(cluster) as watch:
            watch.flowing()
            faults.break_host(cluster, "pg-primary-down", primary)
            seen_down(cluster, primary)
            if where == "promote":
                startup = startup_process(cluster, standby)
                os.kill(startup, signal.SIGSTOP)
                stopped.append(startup)
            if where == "verify":
                faults.break_host(cluster, "pg-exporter-down", standby)
            with medic_server(state_dir) as server:
                run_id = start_failover(cluster, server, primary)
                if where == "before-promote":
                    wait_for(lambda: task_states(cluster, run_id), what=f"run {run_id} to start fencing",
                             timeout=120, done=lambda t: "fence" in t)
                    faults.break_host(cluster, "sshd-hang", standby)
                    wait_for(lambda: (task_states(cluster, run_id), processes("pg-promote.yml")),
                             what="the promote playbook to be stuck connecting", timeout=120,
                             done=lambda seen: seen[0].get("promote") == "Running" and bool(seen[1]))
                elif where == "promote":
                    promoting(cluster, run_id, standby)
                else:
                    wait_for(lambda: task_states(cluster, run_id), what=f"run {run_id} to verify", timeout=120,
                             done=lambda t: t.get("verify") == "Running")
                assert asyncio.run(read_hold(lock)).step == step
                serve_pid = server.proc.pid
                os.kill(serve_pid, sig)
                code = server.proc.wait(timeout=60)
                log = server.logs()
            assert code in (0, -sig), (code, log[-2000:])
            after_stop = run_state(cluster, run_id)
            if sig is signal.SIGTERM:  # marked on the way out, naming the step
                assert after_stop["type"] == "CRASHED" and f"{step} step" in after_stop["message"], after_stop
            else:  # nobody was left to say anything
                assert after_stop["type"] == "RUNNING", after_stop
            with medic_server(state_dir):  # same state dir, same instance: it claims its orphans
                ended = wait_for(lambda: run_state(cluster, run_id), what=f"run {run_id} to be ended", timeout=60,
                                 done=lambda s: s["type"] in FINAL)
                assert ended["type"] == "CRASHED" and f"{step} step" in ended["message"], ended
                assert "not replayed" in ended["message"], ended
                left = wait_for(lambda: processes(f"medic-ansible-{serve_pid}-"), timeout=30,
                                what=f"no process of the stopped medic serve's playbooks (pid {serve_pid} now: "
                                     f"{processes_of(serve_pid)})", done=lambda found: not found)
                assert left == []
                # the cluster is held: a new failover (in-process, as `medic run` would) is refused
                refused = asyncio.run(run_flow_now(failover_flow, {"reason": "second try before the ack"}))
                assert refused.result.outcome is Outcome.REFUSED, refused.result.summary
                assert run_id in refused.result.summary and f"'{step}' step" in refused.result.summary
                assert refused.result.fence is None and refused.result.detection is None  # nothing looked at or done
                assert run_state(cluster, run_id)["type"] == "CRASHED"  # not replayed by the new life
                assert active_slots(cluster, lock) == 1  # the dead run's lease still holds the slot
            # the human: finishes what the run left (promotion, routing), then acknowledges
            if where == "promote":
                os.kill(stopped.pop(), signal.SIGCONT)  # the promotion pg_ctl signalled completes
            if where == "before-promote":
                faults.fix_host(cluster, "sshd-hang", standby)
                assert psql(cluster.host(standby), "SELECT pg_is_in_recovery()") == "t"  # nothing promoted it
                psql(cluster.host(standby), "SELECT pg_promote()")
            address = f"127.0.0.1:{PgPorts.of(cluster).nodes[standby]}"
            wait_for(lambda: direct_check(address), what=f"{standby} to answer as a primary", timeout=60,
                     done=lambda c: c.answered and c.in_recovery is False)
            route_only(PgPorts.of(cluster), standby)
            watch.card_at_risk = card_at_risk(cluster, run_id)  # the crashed run left no report: what it told the human
            watch.flowing(node=standby)
        said = ack(name)
        assert "released" in said and run_id in said and f"'{step}' step" in said, said
        assert active_slots(cluster, lock) == 0  # the dead run's lease released with the ack
        assert "not held" in ack(name)  # once is enough
        records = prefect_json(cluster.prefect_api_url, "POST", "/artifacts/filter", json={
            "artifacts": {"key": {"any_": ["medic-audit-decision"]}}, "sort": "CREATED_DESC", "limit": 20})
        assert any("acknowledge interrupted failover" in (r.get("description") or "") and run_id in json_of(r)
                   for r in records), records[:3]
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        faults.fix_host(cluster, "sshd-hang", standby)


def json_of(artifact: dict) -> str:
    data = artifact.get("data")
    return data if isinstance(data, str) else str(data)


def active_slots(lab: LabState, name: str) -> int | None:
    try:
        answer = httpx.get(f"{lab.prefect_api_url}/v2/concurrency_limits/{name}", timeout=2)
    except httpx.HTTPError:
        return None  # Prefect is restarting: nothing to read
    return int(answer.json()["active_slots"]) if answer.status_code == 200 else None


def test_prefect_restarted_after_fence_during_promote(cluster: LabState) -> None:
    """Nothing lost: the lab's Prefect server stops and starts again (same port, same database) after the
    fence, while the promote step runs. The run is not cancelled by a lost lease mid-step and ends
    Promoted; the cluster's slot is never seen held twice (sampled every 100 ms) and is given back at the
    end, with no hold left; the report lists exactly the steps that ran, each once; the invariant holds."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.pg_cluster import failover

    primary, standby = roles()
    lock = remediation_lock_name("postgres-failover", pg_cluster().name)
    slots: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            if (n := active_slots(cluster, lock)) is not None:
                slots.append(n)
            sampling.wait(0.1)

    stopped: list[int] = []
    try:
        with failover_invariant(cluster) as watch, ThreadPoolExecutor(max_workers=2) as pool:
            watch.flowing()
            faults.break_host(cluster, "pg-primary-down", primary)
            seen_down(cluster, primary)
            startup = startup_process(cluster, standby)
            os.kill(startup, signal.SIGSTOP)
            stopped.append(startup)
            sampler = pool.submit(sample)
            running = pool.submit(failover, [APPROVE], reason="prefect restart after fence")
            run_id = wait_for(lambda: prefect_json(cluster.prefect_api_url, "POST", "/flow_runs/filter", json={
                "flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}, "sort": "START_TIME_DESC", "limit": 1}),
                what="the failover run to start", timeout=120, done=bool)[0]["id"]
            promoting(cluster, run_id, standby)
            said = faults.break_host(cluster, "prefect-restart")
            os.kill(startup, signal.SIGCONT)
            stopped.clear()
            run, report = running.result(timeout=300)
            watch.report = report
            watch.flowing(node=standby)
            sampling.set()
            sampler.result(timeout=10)
    finally:
        sampling.set()
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert report.outcome is Outcome.PROMOTED, (said, report.summary)
    assert run.state_type == "COMPLETED" and run.state_name == "Promoted", (run.state_name, run.message)
    assert str(report.flow_run_id) == run_id
    # the steps that ran, as Prefect recorded them (diagnose twice: again after the approval, to compare)
    ran = tasks_in_order(cluster, run_id)
    assert [name for name, _ in ran] == ["detect", "diagnose", "recheck", "diagnose", "fence", "promote", "route",
                                         "verify"], ran
    assert all(state == "Completed" for _, state in ran), ran
    assert [s.stage for s in report.stages] == [name for name, _ in ran], report.stages
    assert slots and max(slots) == 1, f"slot samples: {sorted(set(slots))} ({len(slots)})"
    assert wait_for(lambda: active_slots(cluster, lock), what=f"{lock}'s slot to be given back", timeout=30,
                    done=lambda n: n == 0) == 0
    assert asyncio.run(read_hold(lock)) is None
