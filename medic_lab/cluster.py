"""`medic lab up --with cluster`: the production topology on one machine.

    PostgreSQL (mlab-cluster-pg) ◀── Prefect server, API auth on (one API process: no Redis needed)
                                        ▲            ▲                      ▲
    Alertmanager ──webhook──▶ medic serve (intake only)   medic worker cluster-w1 (mlab-cluster-w1)
                                                          medic worker cluster-w2 (mlab-cluster-w2)

In place of the lab's SQLite Prefect, on the same port (so settings.json's prefect_api_url is
unchanged): Prefect server on its own PostgreSQL (`cluster_prefect`), basic auth on for the API and
the UI. Then `medic deploy` (the work pool ``medic`` and every deployment in it), two `medic worker`s,
each as its own unix user with its own dirs and credentials (`cluster_workers`), and `medic serve`
with MEDIC_EXECUTION=workers on base+171, where Alertmanager's webhook points.

Order: Prefect (and its PostgreSQL) start first, in `start_prefect`; workers and the intake need a
Prefect that answers and the deployments, so `wait` starts them once Prefect is ready. Everything is
spawned through `processes.spawn`. The auth string lives only in ``<lab_dir>/cluster/secrets.env``
(`cluster_prefect.cluster_secret`); a shell gets it with ``set -a; . <lab_dir>/cluster/secrets.env``.
"""

from __future__ import annotations

import shutil
import time

import httpx

from medic.core.net import wait_healthy
from medic.core.polling import wait_until
from medic.errors import LabError
from medic_lab import cluster_prefect as prefect
from medic_lab import cluster_workers as workers
from medic_lab.components import ComponentStatus, LabComponent
from medic_lab.state import LabState

__all__ = ["Cluster", "cluster_secret", "client_env"]

cluster_secret = prefect.cluster_secret
client_env = prefect.client_env
#: Prefect on a fresh PostgreSQL runs its migrations at start: more than the lab's usual wait.
PREFECT_READY_S = 240.0
WORKERS_READY_S = 120.0


class Cluster(LabComponent):
    name = "cluster"

    def enabled(self, lab: LabState) -> bool:
        return bool(lab.options.get("cluster"))

    def ports(self, lab: LabState) -> list[tuple[str, int]]:
        p = prefect.ClusterPorts.of(lab)
        return [("cluster PostgreSQL (Prefect's database)", p.postgres), ("cluster intake (medic serve)", p.intake)]

    def start_prefect(self, lab: LabState) -> bool:
        began = time.monotonic()
        shutil.rmtree(prefect.private_dir(lab), ignore_errors=True)
        prefect.write_secrets(lab)
        prefect.init_postgres(lab)
        prefect.start_postgres(lab)
        prefect.start_prefect_server(lab)
        # Components are made afresh for each hook: what `wait` needs to know goes through a file.
        (prefect.private_dir(lab) / "prefect-started").write_text(f"{time.time()}\n")
        _timing(lab, f"PostgreSQL for Prefect initialised and ready in {time.monotonic() - began:.1f} s")
        return True

    def prepare(self, lab: LabState) -> None:
        if not lab.with_prefect:
            raise LabError("--with cluster brings its own Prefect server; drop --no-prefect")
        workers.lay_out_install(lab)
        for name in workers.WORKERS:
            workers.lay_out_machine(lab, name)
        lab.webhook_url = f"{workers.intake_url(lab)}/alertmanager"  # written into Alertmanager's config next

    def start(self, lab: LabState) -> None:
        for name in workers.WORKERS:
            workers.copy_config(lab, name)

    def wait(self, lab: LabState, *, timeout: float) -> None:
        wait_until(lambda: _prefect_health(lab), what=f"the cluster's Prefect server (on PostgreSQL) answering "
                   f"{lab.prefect_api_url}/health", timeout=PREFECT_READY_S, interval=0.25, done=lambda s: s == 200,
                   ignore=httpx.HTTPError, error=LabError)
        started = float((prefect.private_dir(lab) / "prefect-started").read_text())
        _timing(lab, f"Prefect server on PostgreSQL answering {time.time() - started:.1f} s after its start")
        began = time.monotonic()
        workers.deploy(lab)
        _timing(lab, f"`medic deploy` took {time.monotonic() - began:.1f} s")
        began = time.monotonic()
        workers.start_intake(lab)
        for name in workers.WORKERS:
            workers.start_worker(lab, name)
        workers.wait_workers_online(lab, timeout=WORKERS_READY_S)
        wait_healthy(f"{workers.intake_url(lab)}/healthz", what="the cluster's intake (medic serve)",
                     timeout=WORKERS_READY_S, error=LabError)
        _timing(lab, f"both workers ONLINE and the intake healthy {time.monotonic() - began:.1f} s after their start")

    def status(self, lab: LabState) -> list[ComponentStatus]:
        rows = [self._prefect_row(lab)]
        try:
            seen = workers.pool_workers(lab)
        except (httpx.HTTPError, LabError) as exc:
            seen = {}
            rows[0].detail += f"; pool {workers.POOL!r} unreadable: {exc}"
        for name in workers.WORKERS:
            pid = workers.recorded_pid(lab, name)
            pool = seen.get(name, "not in pool")
            rows.append(ComponentStatus(
                name=f"{name} worker", address=f"pool {workers.POOL}", up=pid is not None and pool == "ONLINE",
                detail=f"{'pid ' + str(pid) if pid else 'process down'}, {pool}, user {workers.worker_user(name)}, "
                       f"dir {workers.machine_dir(lab, name)}"))
        pid = workers.recorded_pid(lab, workers.INTAKE)
        rows.append(ComponentStatus(name="cluster intake", address=workers.intake_url(lab),
                                    up=pid is not None and _http_ok(f"{workers.intake_url(lab)}/healthz"),
                                    detail="medic serve, MEDIC_EXECUTION=workers"))
        return rows

    @staticmethod
    def _prefect_row(lab: LabState) -> ComponentStatus:
        address = f"postgres 127.0.0.1:{prefect.ClusterPorts.of(lab).postgres}"
        try:
            without, with_auth = prefect.api_status(lab, with_auth=False), prefect.api_status(lab, with_auth=True)
        except (httpx.HTTPError, LabError) as exc:
            return ComponentStatus(name="cluster prefect", address=address, up=False, detail=str(exc))
        return ComponentStatus(name="cluster prefect", address=address, up=(without, with_auth) == (401, 200),
                               detail=f"API auth on (without it: {without}, with it: {with_auth}); "
                                      f"secrets in {lab.lab_dir / prefect.SECRETS_FILE}")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _prefect_health(lab: LabState) -> int:
    """/health's status; stop waiting at once if the server exited (e.g. it cannot reach its database)."""
    if workers.recorded_pid(lab, "prefect") is None:
        raise LabError(f"the cluster's Prefect server exited while starting: {workers.log_tail(lab, 'prefect')}")
    return httpx.get(f"{lab.prefect_api_url}/health", timeout=2).status_code


def _timing(lab: LabState, line: str) -> None:
    """Start-up figures, kept in ``<lab_dir>/cluster/timings.txt`` (measured on every `up`)."""
    with open(prefect.private_dir(lab) / "timings.txt", "a") as f:
        f.write(line + "\n")
