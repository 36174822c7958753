"""medic's worker type on Prefect's own work-pool machinery: a pool's runs execute in threads of one
long-lived process, with Prefect, the flows and their clients already imported.

Prefect's process worker starts a new Python per run (2.2-3.2 s from Scheduled to the flow's body on
this machine, docs/execution.md); `MedicWorker` is a `prefect.workers.base.BaseWorker` of type
"medic" whose `run()` executes the run with `medic.orchestration.runs.run_flow_now` in a thread and
event loop of its own (the flows' sync tasks block their loop). Everything else is BaseWorker's:
polling the pool (`get_and_submit_flow_runs`), Pending/Submitting proposals, the worker's labels on
each run (`prefect.worker.name`), `infrastructure_pid` (here `<worker>:<host>:<pid>`), heartbeats
(`sync_with_backend`) and the `limit` of runs at once.

    MedicWorker(pool, name=..., limit=..., heartbeat_s=...)   the worker class (`medic deploy` reads its template)
    serve_worker(settings, name=..., stop=...)                poll + heartbeat + janitor until `stop` is set;
                                                              then stop taking runs, let running ones finish
                                                              within `grace_s`, exit (the CLI: `medic worker`)

Isolation lost by running runs in threads: a run that corrupts the process or blocks forever
affects the worker's other runs; a worker that dies takes all its runs with it — the janitor of
any other worker (medic/orchestration/janitor.py) ends them and re-runs remediations once.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import anyio.abc
from prefect.client.schemas.objects import FlowRun
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult

from medic.core.polling import wait_until_async
from medic.core.process_memory import limit_malloc_arenas, release_after_run
from medic.errors import PrefectError, WaitTimeout
from medic.settings import Settings

__all__ = ["MedicWorker", "WORKER_TYPE", "default_worker_name", "serve_worker"]

log = logging.getLogger("medic.orchestration.worker")
WORKER_TYPE = "medic"


def default_worker_name() -> str:
    """medic-<host>-<pid>: a restarted worker is a new worker, so its predecessor's runs are orphans."""
    return f"medic-{socket.gethostname()}-{os.getpid()}"


class MedicJobConfiguration(BaseJobConfiguration):
    """Nothing to configure: runs execute in the worker's own process, not on new infrastructure."""


class MedicVariables(BaseVariables):
    """The pool's job variables (Prefect's base set: name, env, labels, command — unused by this worker)."""


class MedicWorkerResult(BaseWorkerResult):
    """What became of one run on this worker: status 0 unless executing it raised (then Prefect marks it Crashed)."""


class MedicWorker(BaseWorker[MedicJobConfiguration, MedicVariables, MedicWorkerResult]):
    type = WORKER_TYPE
    job_configuration = MedicJobConfiguration
    job_configuration_variables = MedicVariables
    _description = "Executes medic's flow runs in threads of one long-lived process (no process start per run)."

    def __init__(self, work_pool_name: str, *, name: str | None = None, limit: int = 8,
                 heartbeat_s: float = 5.0) -> None:
        # BaseWorker types the heartbeat as int seconds (it is sent to the server as such).
        super().__init__(work_pool_name, name=name or default_worker_name(), prefetch_seconds=0,
                         create_pool_if_not_found=True, limit=limit,
                         heartbeat_interval_seconds=max(1, math.ceil(heartbeat_s)))
        self.identity = f"{self.name}:{socket.gethostname()}:{os.getpid()}"
        self.started_at = datetime.datetime.now(datetime.timezone.utc)
        self.executing: dict[UUID, str] = {}  # flow run id -> name, while its thread runs
        self._flows: dict[str, Any] = {}

    async def run(self, flow_run: FlowRun, configuration: MedicJobConfiguration,
                  task_status: anyio.abc.TaskStatus[Any] | None = None) -> MedicWorkerResult:
        """Execute `flow_run` here and return when it has ended (BaseWorker's `limit` counts it until then)."""
        if task_status is not None:
            task_status.started(self.identity)  # BaseWorker records it as the run's infrastructure_pid
        self.executing[flow_run.id] = flow_run.name
        try:
            flow = await self._flow_of(flow_run)
            outcome = await _in_own_thread(flow_run, flow)
            self.get_flow_run_logger(flow_run).info(
                "worker %s: run ended %s (%s)", self.name, outcome.state_name, outcome.message)
            return MedicWorkerResult(identifier=self.identity, status_code=0)
        except Exception as exc:  # noqa: BLE001 - BaseWorker proposes Crashed for a non-zero status
            self.get_flow_run_logger(flow_run).exception("worker %s could not execute the run: %s", self.name, exc)
            return MedicWorkerResult(identifier=self.identity, status_code=1)
        finally:
            self.executing.pop(flow_run.id, None)

    def warm_up(self, entrypoints: list[str]) -> None:
        """Import these flows now (with Prefect, paramiko, ansible-runner …, ~3 s) rather than at the first run."""
        from medic.orchestration.deployments import load_flow

        for entrypoint in entrypoints:
            self._flows.setdefault(entrypoint, load_flow(entrypoint))

    async def _flow_of(self, flow_run: FlowRun) -> Any:
        """The flow object of the run's deployment entrypoint (imported once per worker process)."""
        from medic.orchestration.deployments import load_flow

        if flow_run.deployment_id is None:
            raise PrefectError(f"flow run {flow_run.id} has no deployment: a medic worker only runs deployment runs")
        deployment = await self.client.read_deployment(flow_run.deployment_id)
        entrypoint = deployment.entrypoint or ""
        if entrypoint not in self._flows:
            self._flows[entrypoint] = load_flow(entrypoint)
        return self._flows[entrypoint]

    def taken_here(self, run: FlowRun) -> bool:
        """Whether this worker process took `run` (else a run labelled with our name is a previous life's)."""
        if run.id in self.executing:
            return True
        stamp = run.state.timestamp if run.state is not None else None
        return stamp is not None and stamp >= self.started_at


async def _in_own_thread(flow_run: FlowRun, flow: Any) -> Any:
    """`run_flow_now(flow, flow_run=...)` in a daemon thread with its own event loop; await its outcome.

    Daemon: a worker stopping after its grace period must not wait for a run that will not end."""
    from medic.orchestration.runs import run_flow_now

    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def hand_over(setter: Callable[[Any], None], value: Any) -> None:
        if not done.done():
            setter(value)

    def target() -> None:
        try:
            result: Any = asyncio.run(run_flow_now(flow, flow_run=flow_run))
            setter, value = done.set_result, result
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            setter, value = done.set_exception, exc
        try:
            loop.call_soon_threadsafe(hand_over, setter, value)
        except RuntimeError:  # the worker's loop is gone (stopped after its grace period)
            pass
        release_after_run()

    threading.Thread(target=target, name=f"run-{flow_run.id}", daemon=True).start()
    return await asyncio.shield(done)


async def _every(seconds: float, what: str, work: Callable[[], Awaitable[Any]]) -> None:
    """Call `work` every `seconds`; a failure is logged and tried again next time (Prefect may be restarting)."""
    while True:
        try:
            await work()
        except Exception as exc:  # noqa: BLE001 - a loop of a long-lived worker must survive API hiccups
            log.warning("%s failed: %s", what, exc)
        await asyncio.sleep(seconds)


async def _check_prefect(settings: Settings) -> None:
    """Prefect answers, or PrefectError (exit 5) naming where it was looked for."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise PrefectError("PREFECT_API_URL is not set; point it (or MEDIC_PREFECT_API_URL) at the Prefect API (…/api)")
    async with get_client() as client:
        failure = await client.api_healthcheck()
    if failure is not None:
        raise PrefectError(f"Prefect API at {url} is unreachable: {failure}; start it or fix PREFECT_API_URL")


async def serve_worker(settings: Settings, *, name: str | None = None, stop: asyncio.Event,
                       grace_s: float = 60.0, ready: Callable[[MedicWorker], None] | None = None) -> int:
    """Run one worker of `settings.work_pool` until `stop` is set; return the exit code.

    On stop it takes no more runs but keeps heartbeating (so no janitor ends its runs) while the runs
    it executes finish, for up to `grace_s`; runs still going then are left to another worker's
    janitor, and the process exits without waiting for them (their threads are daemons).
    """
    from medic.orchestration.janitor import Janitor

    await _check_prefect(settings)
    limit_malloc_arenas()  # before the first run's thread
    worker = MedicWorker(settings.work_pool, name=name or settings.worker_name, limit=settings.worker_max_runs,
                         heartbeat_s=settings.worker_heartbeat_s)
    from medic.orchestration.deployments import load_specs

    worker.warm_up(sorted({spec.entrypoint for spec in load_specs()}))
    janitor = Janitor(settings.work_pool, dead_after_s=settings.worker_dead_after_s, worker=worker)
    async with worker:
        heartbeat = asyncio.create_task(_every(settings.worker_heartbeat_s, "worker heartbeat", worker.sync_with_backend))
        polling = asyncio.create_task(_every(settings.worker_poll_s, "polling the pool", worker.get_and_submit_flow_runs))
        sweeping = asyncio.create_task(_every(janitor.interval_s, "janitor sweep", janitor.sweep))
        log.info("medic worker %s polls pool %r every %g s (at most %d runs at once)", worker.name,
                 settings.work_pool, settings.worker_poll_s, settings.worker_max_runs)
        if ready is not None:
            ready(worker)
        await stop.wait()
        polling.cancel()
        log.info("medic worker %s stopping: no new runs; waiting up to %g s for %d running", worker.name,
                 grace_s, len(worker.executing))
        try:
            await wait_until_async(lambda: _none_running(worker), what=f"worker {worker.name}'s runs to end",
                                   timeout=grace_s, interval=0.2)
        except WaitTimeout:
            left = ", ".join(f"{run_id} ({run_name})" for run_id, run_name in worker.executing.items())
            log.error("medic worker %s: runs still going after %g s, left to another worker's janitor: %s",
                      worker.name, grace_s, left)
            os._exit(1)  # the runs task group would wait for them forever; their threads cannot be stopped
        for task in (heartbeat, sweeping):
            task.cancel()
    return 0


async def _none_running(worker: MedicWorker) -> bool:
    """No run executing or being submitted: BaseWorker holds a `limiter` token for each from poll to end."""
    return not worker.executing and worker.limiter.borrowed_tokens == 0
