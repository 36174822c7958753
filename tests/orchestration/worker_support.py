"""Real `medic deploy` and `medic worker` processes against the session lab's Prefect, for the worker and
janitor tests: a runbooks dir with a *gated* runbook (service-down whose diagnosis waits for a file the
test creates), the pool deployed, workers started on demand and always killed at teardown.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from medic.core.paths import RUNBOOKS_DIR
from medic.core.polling import retry
from medic.orchestration.runs import create_deployment_run
from medic_lab.state import LabState
from tests.support.waits import wait_for

MEDIC = str(Path(sys.executable).parent / "medic")
POOL = "medic-test"
GATED = "gated-service-down"
GATE_FILE = "gate-open"
DEAD_AFTER_S = 8


def gated_runbook() -> dict[str, Any]:
    """service-down whose recovery waits until `<host_dir>/gate-open` exists, then starts the service:
    a run is held mid-remediation (detected, diagnosed, recovering) for as long as the test wants."""
    spec = yaml.safe_load((RUNBOOKS_DIR / "service-down.yaml").read_text())
    spec["name"], spec["trigger"] = GATED, {"alertname": "GatedServiceDown"}
    spec["recover"] = {"command": f"while [ ! -e ${{host_dir}}/{GATE_FILE} ]; do sleep 0.2; done; $servicectl start",
                       "timeout": "300s"}
    return spec


class Pool:
    """The deployed pool and the environment every medic process of the test uses."""

    def __init__(self, lab: LabState, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        runbooks = tmp / "runbooks"
        shutil.copytree(RUNBOOKS_DIR, runbooks)
        (runbooks / f"{GATED}.yaml").write_text(yaml.safe_dump(gated_runbook(), sort_keys=False))
        self.env = {**os.environ, "MEDIC_RUNBOOKS_DIR": str(runbooks), "MEDIC_WORK_POOL": POOL,
                    "MEDIC_WORKER_POLL_S": "0.25", "MEDIC_WORKER_HEARTBEAT_S": "1",
                    "MEDIC_WORKER_DEAD_AFTER_S": str(DEAD_AFTER_S), "MEDIC_SSH_COMMAND_TIMEOUT": "300",
                    "PREFECT_API_URL": lab.prefect_api_url}

    def deploy(self) -> str:
        done = subprocess.run([MEDIC, "deploy", "--no-schedules"], env=self.env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, f"medic deploy exited {done.returncode}: {done.stderr[-2000:]}"
        return done.stdout

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call to the lab's Prefect; SQLite-busy answers (503) are asked again for up to 10 s."""
        answer = retry(lambda: httpx.request(method, f"{self.lab.prefect_api_url}{path}", timeout=30, **kwargs),
                       delays=itertools.repeat(0.2), timeout=10, retry_if=lambda r: r.status_code == 503)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def run(self, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/flow_runs/{run_id}")

    def runs_tagged(self, tag: str) -> list[dict[str, Any]]:
        return self.api("POST", "/flow_runs/filter", json={"flow_runs": {"tags": {"all_": [tag]}},
                                                            "sort": "START_TIME_ASC", "limit": 50, "offset": 0})

    def create_run(self, runbook: str, target: str, *, tags: list[str]) -> str:
        """A Scheduled run of the runbook's deployment, as medic serve creates it in workers mode."""
        run = asyncio.run(create_deployment_run(f"remediate/{runbook}", {"runbook": runbook, "target": target},
                                                tags=tags, scheduled=True))
        return str(run.id)

    def final(self, run_id: str, *, timeout: float = 180) -> dict[str, Any]:
        return wait_for(lambda: self.run(run_id), what=f"run {run_id} to end", timeout=timeout, interval=0.5,
                        done=lambda r: r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"))

    def in_stage(self, run_id: str, stage: str, *, timeout: float = 120) -> dict[str, Any]:
        """The run, once its task `stage` is Running on a worker."""
        def look() -> list[Any]:
            return self.api("POST", "/task_runs/filter", json={
                "flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"name": {"like_": stage}},
                "limit": 5, "offset": 0})
        wait_for(look, what=f"run {run_id} to be in stage {stage}", timeout=timeout, interval=0.3,
                 done=lambda tasks: any(t["state"] and t["state"]["type"] == "RUNNING" for t in tasks))
        return self.run(run_id)

    def open_gate(self, host: str) -> None:
        (self.lab.host(host).root / GATE_FILE).touch()

    def close_gate(self, host: str) -> None:
        (self.lab.host(host).root / GATE_FILE).unlink(missing_ok=True)


class Workers:
    """`medic worker --name NAME` subprocesses; all killed (and their gates opened) at teardown."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = self.pool.tmp / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([MEDIC, "worker", "--name", name, "--grace", "120"], env=self.pool.env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc

        def ready() -> str:
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited {proc.returncode}: {log.read_text()[-2000:]}")
            return log.read_text()
        wait_for(ready, what=f"worker {name} to be ready", timeout=90, done=lambda text: "ready in pool" in text,
                 interval=0.3)
        return proc

    def log(self, name: str) -> str:
        return (self.pool.tmp / f"{name}.log").read_text()

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def pool(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Pool:
    deployed = Pool(lab, tmp_path_factory.mktemp("pool"))
    deployed.deploy()
    return deployed


@pytest.fixture
def workers(pool: Pool, lab: LabState) -> Iterator[Workers]:
    started = Workers(pool)
    try:
        yield started
    finally:
        started.stop_all()
        for host in lab.hosts:  # a gated run left behind must not block a later test
            if host.group == "web":
                pool.open_gate(host.name)
