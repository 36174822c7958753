"""Start remediation runs for alerts at once, exactly one per (runbook, target) at a time.

Why in-process: a deployment run picked up by polling starts 5-12 s late; here the run is created
under its deployment (so the Prefect UI shows it there) in state Pending, which no runner polls
for, and executed immediately in a thread of medic serve. Dedupe is an in-memory reservation taken
before the first `await`, so an alert storm cannot race it; the flow also holds a Prefect
concurrency slot, so a `medic run` elsewhere cannot collide with it either. The flap guard
remembers recent remediations on disk — runs that really acted, not alerts that found nothing to do —
and, past K in a window, asks a human instead (and says so in the run's reason).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from enum import StrEnum
from pathlib import Path
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from typing import TYPE_CHECKING

from medic.core.polling import backoff, retry_async
from medic.core.report import RemediationReport
from medic.errors import PrefectError
from medic.service.metrics import Metrics

if TYPE_CHECKING:
    from medic.orchestration.flow_kinds import FlowChoice
    from medic.core.runbook import Runbook

log = logging.getLogger("medic.orchestration.launcher")
RUN_TAG = "medic-serve"
Key = tuple[str, str]


class LaunchStatus(StrEnum):
    STARTED = "started"
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    ALREADY_HANDLED = "already handled"
    ERROR = "error"


class Launch(BaseModel):
    status: LaunchStatus
    runbook: str
    target: str
    flow_run_id: str | None = None
    require_approval: bool = False
    detail: str = ""


class FlapGuard:
    """How often each (runbook, target) was remediated recently; survives restarts (JSON on disk).

    Only runs that acted count (`acted`): a run that found the target healthy, a dry run, a rejected
    or timed-out approval changed nothing, so a storm of false alerts never makes the next real
    incident wait for a human.
    """

    def __init__(self, path: Path, *, max_runs: int, window_s: float) -> None:
        self.path, self.max_runs, self.window_s = path, max_runs, window_s
        self._lock = threading.Lock()
        self._history: dict[str, list[float]] = {}
        if path.is_file():
            try:
                self._history = {k: list(map(float, v)) for k, v in json.loads(path.read_text()).items()}
            except (ValueError, AttributeError):
                log.warning("flap guard history %s is unreadable; starting empty", path)

    @staticmethod
    def _name(key: Key) -> str:
        return f"{key[0]}/{key[1]}"

    def recent(self, key: Key, now: float | None = None) -> int:
        now = now or time.time()
        with self._lock:
            return sum(1 for t in self._history.get(self._name(key), []) if now - t <= self.window_s)

    def tripped(self, key: Key) -> bool:
        return self.recent(key) >= self.max_runs

    @staticmethod
    def acted(result: object) -> bool:
        """Whether a finished run was a remediation: its recovery really ran (not in check mode)."""
        return isinstance(result, RemediationReport) and result.recovery is not None and not result.recovery.check_mode

    def explain(self, key: Key) -> str:
        """Why the guard asks a human — carried in the run's `reason`, so its logs, card and report say so."""
        return (f"flap guard: {key[0]} on {key[1]} was remediated {self.recent(key)} time(s) within the last "
                f"{self.window_s:g} s (limit {self.max_runs}), so a human decides before it acts again")

    def record(self, key: Key, at: float | None = None) -> None:
        now = at or time.time()
        with self._lock:
            kept = [t for t in self._history.get(self._name(key), []) if now - t <= self.window_s]
            self._history[self._name(key)] = [*kept, now]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._history))
            tmp.replace(self.path)


class RunLauncher:
    def __init__(self, *, flow: Any, flap: FlapGuard, metrics: Metrics, max_concurrent: int = 16,
                 create_retry_s: float = 120.0) -> None:
        self.flow = flow
        self.flap = flap
        self.metrics = metrics
        self.create_retry_s = create_retry_s
        self._active: dict[Key, str | None] = {}
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._slots = threading.BoundedSemaphore(max_concurrent)  # rate control for storms
        self._background: set[asyncio.Task[None]] = set()

    def active(self) -> dict[Key, str | None]:
        with self._lock:
            return dict(self._active)

    async def launch(self, spec: "Runbook", target: str, *, reason: str, idempotency_key: str) -> Launch:
        from medic.orchestration.flow_kinds import choose

        runbook = spec.name
        key = (runbook, target)
        with self._lock:  # reserve before the first await: a storm cannot race past this
            if key in self._active:
                self.metrics.deduplicated.labels(runbook).inc()
                return Launch(status=LaunchStatus.DUPLICATE, runbook=runbook, target=target,
                              flow_run_id=self._active[key], detail="a remediation is already running")
            self._active[key] = None
        require_approval = self.flap.tripped(key) and spec.kind == "remediation"
        if require_approval:
            reason = f"{reason} — {self.flap.explain(key)}"
        choice = choose(spec, target, reason=reason, require_approval=require_approval)
        try:
            return await self._create_and_start(key, choice, idempotency_key)
        except PrefectError as exc:
            # Prefect is busy or briefly unreachable: keep the reservation and keep trying in the
            # background, so an acknowledged alert is never lost.
            log.warning("could not create the run for %s on %s yet (%s); retrying in the background", *key, exc)
            task = asyncio.create_task(self._retry_create(key, choice, idempotency_key))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return Launch(status=LaunchStatus.QUEUED, runbook=runbook, target=target, require_approval=require_approval,
                          detail=f"Prefect is busy ({str(exc)[:120]}); the run will start as soon as it can be created")
        except Exception as exc:  # noqa: BLE001 - answer the webhook with the reason, keep serving
            self._release(key)
            log.exception("could not start %s on %s", runbook, target)
            return Launch(status=LaunchStatus.ERROR, runbook=runbook, target=target, detail=str(exc)[:300])

    async def _create_and_start(self, key: Key, choice: "FlowChoice", idempotency_key: str | None,
                                *, on_done: Callable[[Any], None] | None = None, extra_tags: tuple[str, ...] = (),
                                record_flap: bool = True) -> Launch:
        from medic.orchestration.flow_kinds import load_flow
        from medic.orchestration.runs import create_deployment_run

        runbook, target = key
        params = choice.parameters
        run = await create_deployment_run(choice.deployment, params, idempotency_key=idempotency_key,
                                          tags=[RUN_TAG, f"runbook:{runbook}", f"target:{target}", f"kind:{choice.kind}",
                                                *extra_tags])
        if run.state is not None and run.state.type.value not in ("PENDING", "SCHEDULED"):
            self._release(key)
            return Launch(status=LaunchStatus.ALREADY_HANDLED, runbook=runbook, target=target,
                          flow_run_id=str(run.id), detail=f"this alert was already handled by run {run.id}")
        with self._lock:
            self._active[key] = str(run.id)
        require_approval = bool(params.get("require_approval"))
        if require_approval:
            self.metrics.flap_guard.labels(runbook).inc()
        self._execute(key, run, on_done, flow=load_flow(choice.entrypoint), record_flap=record_flap)
        detail = self.flap.explain(key) if require_approval else ""
        return Launch(status=LaunchStatus.STARTED, runbook=runbook, target=target, flow_run_id=str(run.id),
                      require_approval=require_approval, detail=detail)

    async def _retry_create(self, key: Key, choice: "FlowChoice", idempotency_key: str) -> None:
        delays = backoff(0.5, factor=2.0, cap=5.0)
        await asyncio.sleep(next(delays))  # the first attempt has just failed
        try:
            launch = await retry_async(lambda: self._create_and_start(key, choice, idempotency_key), delays=delays,
                                       retry_on=Exception, timeout=self.create_retry_s)
        except Exception as exc:  # noqa: BLE001 - tried until the deadline
            self._release(key)
            log.error("gave up creating the run for %s on %s after %.0f s: %s", *key, self.create_retry_s, exc)
            return
        log.info("queued run for %s on %s: %s %s", *key, launch.status.value, launch.flow_run_id)

    def _release(self, key: Key) -> None:
        with self._lock:
            self._active.pop(key, None)

    def _execute(self, key: Key | None, run: Any, on_done: Callable[[Any], None] | None = None, *,
                 flow: Any = None, record_flap: bool = True) -> None:
        """Run the flow in its own thread and event loop, so slow stages never block the HTTP server.
        A run that acted is counted by the flap guard once it has finished."""
        from medic.orchestration.runs import run_flow_now

        def target() -> None:
            self._slots.acquire()
            self.metrics.active.inc()
            outcome = None
            try:
                outcome = asyncio.run(run_flow_now(flow or self.flow, flow_run=run))
                if record_flap and key is not None and FlapGuard.acted(outcome.result):
                    self.flap.record(key)
                self.metrics.finished(outcome.result)
                log.info("run %s ended %s: %s", run.id, outcome.state_name, outcome.message)
            except Exception:  # noqa: BLE001 - a crashed run must not take the server down
                log.exception("flow run %s crashed", run.id)
            finally:
                self._slots.release()
                self.metrics.active.dec()
                if key is not None:
                    self._release(key)
                if on_done is not None:
                    on_done(outcome)
                self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=target, name=f"run-{run.id}", daemon=True)
        self._threads.add(thread)
        thread.start()

    async def launch_manual(self, spec: "Runbook", target: str, *, dry_run: bool,
                            on_done: Callable[[Any], None]) -> Launch:
        """A run asked for by `medic run` through this server: same dedupe; no flap guard, no idempotency key."""
        from medic.orchestration.flow_kinds import choose

        key = (spec.name, target)
        with self._lock:
            if key in self._active:
                return Launch(status=LaunchStatus.DUPLICATE, runbook=spec.name, target=target,
                              flow_run_id=self._active[key], detail="a remediation is already running")
            self._active[key] = None
        try:
            choice = choose(spec, target, reason="medic run (CLI via medic serve)", dry_run=dry_run)
            return await self._create_and_start(key, choice, None, on_done=on_done, extra_tags=("manual",),
                                                record_flap=False)
        except Exception as exc:  # noqa: BLE001 - the CLI gets the reason
            self._release(key)
            return Launch(status=LaunchStatus.ERROR, runbook=spec.name, target=target, detail=str(exc)[:300])

    async def withdraw(self, runbook: str, target: str, *, why: str) -> str | None:
        """The alert resolved: end a run still waiting for approval as 'no longer needed'."""
        from medic.orchestration.pause import ResumeStatus, resume_with_input

        run_id = self.active().get((runbook, target))
        if not run_id:
            return None
        outcome = await resume_with_input(run_id, {"decision": "withdraw", "approver": "alertmanager",
                                                   "comment": why, "via": "alert"})
        return run_id if outcome.status is ResumeStatus.ACCEPTED else None

    async def adopt_orphans(self) -> list[str]:
        """Re-execute our runs that a previous medic serve left paused or running (it is gone now).

        A remediation flow is safe to run again from the top: detect re-checks the problem, and the
        approval step pauses under a fresh key, so the card's buttons keep working after a restart.
        """
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
            FlowRunFilterTags,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort
        from prefect.states import Crashed, Pending

        from medic.orchestration.prefect_compat import force_flow_run_state

        adopted: list[str] = []
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[RUN_TAG]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.PAUSED, StateType.RUNNING, StateType.PENDING]))),
                sort=FlowRunSort.START_TIME_ASC, limit=200)
            for run in runs:
                if any(t.startswith("kind:") and t != "kind:remediation" for t in run.tags):
                    # A failover is not safe to replay from the top half-way through: say so, loudly.
                    await force_flow_run_state(client, run.id, Crashed(
                        message="medic serve restarted during this run; check the cluster, then start it again"))
                    log.error("run %s (%s) was interrupted by a medic serve restart; not replayed", run.id, run.name)
                    continue
                await force_flow_run_state(client, run.id, Pending(message="adopted after a medic serve restart"))
                fresh = await client.read_flow_run(run.id)
                params = fresh.parameters or {}
                key = (str(params.get("runbook")), str(params.get("target")))
                await _free_orphan_slot(client, *key)
                with self._lock:
                    self._active[key] = str(run.id)
                self._execute(key, fresh)
                adopted.append(str(run.id))
        return adopted

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


async def _free_orphan_slot(client: Any, runbook: str, target: str) -> None:
    """Give back the remediation slot an orphaned run still holds.

    The dead medic serve cannot release its lease (it lapses up to 300 s later), so the re-executed
    run would find its own slot taken and end "already running" instead of asking for approval again.
    The adopted run is the only rightful holder, so the slot count is reset before it starts. When the
    old lease lapses later, Prefect decrements the count again (not below 0): for the rest of the run a
    `medic run` elsewhere could then take the slot; medic serve's own dedupe still holds.
    """
    from prefect.exceptions import ObjectNotFound

    from medic.orchestration.locks import remediation_lock_name
    from medic.orchestration.prefect_compat import reset_concurrency_slots

    try:
        await reset_concurrency_slots(client, remediation_lock_name(runbook, target))
    except (ObjectNotFound, PrefectError) as exc:  # no lock yet / unusable names: nothing to free
        log.info("no remediation slot to free for %s on %s: %s", runbook, target, exc)
