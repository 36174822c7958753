"""`medic lab up --with cluster`: Prefect on PostgreSQL behind auth, two workers as their own users and
machines, medic serve as intake; a real fault is repaired by a run one of the workers executes; `down`
leaves nothing. One cluster for the whole module (it takes ~30-60 s to start on 2 cores).

Its own lab on MEDIC_TEST_CLUSTER_LAB_BASE_PORT (default 28000; base..base+700), not the session lab.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medic.orchestration.api import prefect_auth_headers
from medic.settings import LAB_SETTINGS_FILE
from medic_lab import control, faults
from medic_lab.cluster import cluster_secret
from medic_lab.cluster_prefect import (APPROVAL_KEY, AUTH_KEY, SECRETS_FILE, api_status, auth_headers, read_secrets,
                                       ui_asks_for_auth)
from medic_lab.cluster_workers import INTAKE, MEDIC, POOL, WORKERS, intake_url, machine_dir, pool_workers, worker_user
from medic_lab.processes import find_lab_processes
from medic_lab.state import LabState
from tests.support.cluster import cluster_prefect
from tests.support.waits import wait_for

BASE_PORT = int(os.environ.get("MEDIC_TEST_CLUSTER_LAB_BASE_PORT", "28000"))
#: Alert (~3 s) + run picked up (poll ≤ 1 s) + diagnose/recover/verify on a loaded 2-core machine.
REPAIRED_WITHIN_S = 180


@pytest.fixture(scope="module")
def cluster() -> Iterator[LabState]:
    lab_dir = Path(tempfile.mkdtemp(prefix="medic-test-cluster-", dir="/tmp"))  # 0700, like a private checkout
    try:
        yield control.up(lab_dir, hosts=2, base_port=BASE_PORT, webhook_url="http://127.0.0.1:9/unused",
                         options={"cluster": True})
    finally:
        control.down(lab_dir)
        shutil.rmtree(lab_dir, ignore_errors=True)


def _pid(lab: LabState, name: str) -> int:
    return int((lab.lab_dir / "pids" / f"{name}.pid").read_text())


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _as(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=60)


def test_prefect_runs_on_postgres_behind_auth(cluster: LabState) -> None:
    assert (api_status(cluster, with_auth=False), api_status(cluster, with_auth=True)) == (401, 200)
    assert ui_asks_for_auth(cluster), "the UI must ask for the auth string"
    server = _environ(_pid(cluster, "prefect"))
    assert server["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:")
    secrets = cluster.lab_dir / SECRETS_FILE
    info = secrets.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, 0)
    auth = cluster_secret(cluster.lab_dir).get_secret_value()
    assert auth.startswith("medic:") and server["PREFECT_SERVER_API_AUTH_STRING"] == auth
    settings = (cluster.lab_dir / LAB_SETTINGS_FILE).read_text()
    assert cluster.prefect_api_url in settings and auth.split(":", 1)[1] not in settings


def test_prefects_own_client_and_medic_commands_find_the_cluster_with_its_secret(cluster: LabState) -> None:
    from prefect.client.orchestration import get_client

    async def pool_type() -> str:
        async with get_client() as client:
            return (await client.read_work_pool(POOL)).type

    count = f"{cluster.prefect_api_url}/flow_runs/count"
    assert httpx.post(count, json={}, headers=prefect_auth_headers(), timeout=5).status_code == 401
    with cluster_prefect(cluster):
        assert asyncio.run(pool_type()) == "medic"
        # medic's own raw httpx calls (intake health, metrics, fast-retry creates) send the same auth
        assert httpx.post(count, json={}, headers=prefect_auth_headers(), timeout=5).status_code == 200
    # A medic command finds the cluster through the lab's settings.json, and needs the secret for it.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MEDIC_"))}
    env["MEDIC_LAB_DIR"] = str(cluster.lab_dir)
    refused = subprocess.run([str(MEDIC), "deploy", "--no-schedules"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[-500:]
    env[AUTH_KEY] = cluster_secret(cluster.lab_dir).get_secret_value()
    done = subprocess.run([str(MEDIC), "deploy", "--no-schedules"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert env[AUTH_KEY] not in done.stdout + done.stderr


def test_both_workers_are_online_as_their_own_users_in_their_own_dirs(cluster: LabState) -> None:
    assert {n: s for n, s in pool_workers(cluster).items() if n in WORKERS} == {n: "ONLINE" for n in WORKERS}
    seen_users, seen_dirs = set(), set()
    for name in WORKERS:
        pid, machine, user = _pid(cluster, name), machine_dir(cluster, name), worker_user(name)
        assert pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name == user
        assert os.readlink(f"/proc/{pid}/cwd") == str(machine / "work")
        env = _environ(pid)
        assert env["MEDIC_EXECUTION"] == "workers" and env["PREFECT_API_URL"] == cluster.prefect_api_url
        assert env[AUTH_KEY] == cluster_secret(cluster.lab_dir).get_secret_value()
        assert env[APPROVAL_KEY] == _environ(_pid(cluster, INTAKE))[APPROVAL_KEY], "one approval key for all"
        assert env["MEDIC_STATE_DIR"] == str(machine / "state") and env["PREFECT_HOME"] == str(machine / "prefect")
        seen_users.add(user)
        seen_dirs.add(env["MEDIC_STATE_DIR"])
        key = machine / "ssh" / "id_ed25519"
        info = key.stat()
        assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == pwd.getpwnam(user).pw_gid
        host = cluster.hosts[0]
        # Its own key, known_hosts and inventory get it onto a lab host, host-key checking on ...
        login = _as(user, "ssh", "-i", str(key), "-o", f"UserKnownHostsFile={machine / 'ssh' / 'known_hosts'}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(host.ssh_port),
                    f"{host.user}@127.0.0.1", "true")
        assert login.returncode == 0, login.stderr
        # ... and nobody else can read that key: not the other worker, not the lab's client key either.
        other = worker_user(next(n for n in WORKERS if n != name))
        assert _as(other, "cat", str(key)).returncode != 0
        assert _as(user, "cat", str(cluster.ssh_key)).returncode != 0
    assert len(seen_users) == len(seen_dirs) == len(WORKERS)


def test_lab_status_shows_each_worker_and_the_intake(cluster: LabState) -> None:
    rows = {r.name: r for r in control.status(cluster.lab_dir)}
    for name in WORKERS:
        assert rows[f"{name} worker"].up and "ONLINE" in rows[f"{name} worker"].detail
    assert rows["cluster intake"].up and rows["cluster prefect"].up
    assert rows["alertmanager"].detail.endswith(f"{intake_url(cluster)}/alertmanager")


def test_intake_is_medic_serve_executing_nothing(cluster: LabState) -> None:
    env = _environ(_pid(cluster, INTAKE))
    assert env["MEDIC_EXECUTION"] == "workers"
    assert httpx.get(f"{intake_url(cluster)}/healthz", timeout=5).status_code == 200
    config = (cluster.lab_dir / "alertmanager" / "alertmanager.yml").read_text()
    assert f"{intake_url(cluster)}/alertmanager" in config


def _runs_on(lab: LabState, host: str) -> list[dict]:
    answer = httpx.post(f"{lab.prefect_api_url}/flow_runs/filter", headers=auth_headers(lab), timeout=5,
                        json={"flow_runs": {"tags": {"all_": [f"target:{host}"]}}, "limit": 50})
    answer.raise_for_status()
    return answer.json()


def _web_up(lab: LabState, host: str) -> bool:
    port = next(h.service_port for h in lab.hosts if h.name == host)
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_real_fault_is_repaired_by_a_run_a_worker_executes(cluster: LabState) -> None:
    """The whole path on real processes: Prometheus → Alertmanager → intake (creates a Scheduled run in
    the pool, executes nothing) → one of the workers picks it up and repairs the host."""
    host = cluster.hosts[0].name
    try:
        faults.break_host(cluster, "service-down", host)
        runs = wait_for(lambda: {r["id"]: (r["state_type"], r["state"]["message"] if r["state"] else None)
                                 for r in _runs_on(cluster, host)},
                        what=f"a Completed run on {host} (alert → intake → worker; runs: id → state, message)",
                        timeout=REPAIRED_WITHIN_S, done=lambda seen: any(s == "COMPLETED" for s, _ in seen.values()),
                        interval=1.0, ignore=httpx.HTTPError)
        run = next(r for r in _runs_on(cluster, host) if runs.get(r["id"], ("",))[0] == "COMPLETED")
        assert _web_up(cluster, host), f"{host} still down after {run['id']} completed"
        assert run["work_pool_name"] == POOL, "the run must be a deployment run of the work pool"
        assert any(name in str(run.get("infrastructure_pid")) for name in WORKERS), (
            f"run {run['id']} was not executed by a cluster worker (infrastructure_pid "
            f"{run.get('infrastructure_pid')!r})")
    finally:
        faults.fix_host(cluster, "service-down", host)


def test_the_secrets_are_in_no_file_but_the_secret_store(cluster: LabState) -> None:
    """After everything above ran: logs, configs, the workers' machines, settings.json — none holds them."""
    found = [value.get_secret_value().split(":", 1)[-1] for value in read_secrets(cluster.lab_dir).values()]
    leaks = [str(path) for root in (cluster.lab_dir, cluster.public_dir) for path in root.rglob("*")
             if path.is_file() and not path.is_symlink() and path != cluster.lab_dir / SECRETS_FILE
             and path.stat().st_size < 50_000_000 and any(v.encode() in path.read_bytes() for v in found)]
    assert leaks == []


def test_down_leaves_no_process(cluster: LabState) -> None:
    """Last in the module: stops the cluster (the fixture's own `down` then finds nothing)."""
    assert control.down(cluster.lab_dir) > 0
    assert find_lab_processes(cluster.lab_dir) == []
    assert not cluster.public_dir.exists(), "PostgreSQL's data and the workers' machines are removed too"
    users = {worker_user(n) for n in WORKERS} | {"mlab-cluster-pg"}
    left = [e for e in os.listdir("/proc") if e.isdigit() and _owner_and_cwd(e)[0] in users
            and _owner_and_cwd(e)[1].startswith((str(cluster.lab_dir), str(cluster.public_dir)))]
    assert left == [], f"processes of the cluster's users still running in this lab: {left}"


def _owner_and_cwd(pid: str) -> tuple[str, str]:
    """(user, working dir) of a process; ("", "") once it is gone (other labs' processes may be there)."""
    try:
        return pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name, os.readlink(f"/proc/{pid}/cwd")
    except (OSError, KeyError):
        return "", ""
