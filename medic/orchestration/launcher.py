"""Turn an alert (or `POST /runs`) into exactly one flow run per (runbook, target), recorded in Prefect.

Durable intake: `launch` returns only once the run exists in Prefect (created, or found by the
alert's idempotency key); if Prefect cannot record it within `record_deadline_s` it raises
`PrefectError`, and the webhook answers 503 so Alertmanager sends it again. Nothing is kept only in
memory: concurrent notifications for one (runbook, target) share the one creation in flight (an
asyncio Future), and what the launcher remembers afterwards is a cache of what Prefect holds.

Two modes (`MEDIC_EXECUTION`):
- embedded: the run is created Pending under its deployment (no runner polls for that) and executed
  at once in a thread of this process — a poll would start it 5-12 s late;
- workers: the run is created Scheduled in the deployment's work pool and `medic worker`s take it;
  whether a (runbook, target) still has a live run is asked of Prefect (`LiveRunCache`).
Every run is tagged `medic-serve:<instance>`, so two medic serve on one Prefect never take each
other's runs. The flap guard counts recent remediations that acted and, past K in a window, asks a
human instead (and says so in the run's reason). A remediation found by the key that *failed on an
error* (Prometheus down at detect: issue 12) did not handle the alert: the resend starts a new run. So
does one that found the remediation slot held (AlreadyRunning) once `busy_retry_s` have passed: its
holder may have died with its lease (Prefect keeps a lease ≤ 300 s), and a live holder is asked again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from medic.core.polling import backoff, retry_async
from medic.core.process_memory import release_after_run
from medic.core.report import Outcome
from medic.errors import PrefectError
from medic.orchestration.flap_guard import FlapGuard
from medic.orchestration.live_runs import (
    RUN_TAG,
    LiveRunCache,
    find_runs,
    instance_tag,
    key_tags,
    run_instance,
)
from medic.service.metrics import Metrics

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from medic.core.runbook import Runbook
    from medic.orchestration.flow_kinds import FlowChoice

__all__ = ["FlapGuard", "Launch", "LaunchStatus", "RUN_TAG", "RunLauncher", "refused_as_busy"]

log = logging.getLogger("medic.orchestration.launcher")
Key = tuple[str, str]
#: How many times one alert instance's resends may start a new run after runs that handled nothing
#: (failed on an error, or found the slot held); 5 × the default `busy_retry_s` outlasts a 300 s lease.
RETRIES_PER_ALERT = 5
_BUSY = Outcome.ALREADY_RUNNING.state_name  # the final state of a run that found the remediation slot held


class LaunchStatus(StrEnum):
    STARTED = "started"
    DUPLICATE = "duplicate"
    ALREADY_HANDLED = "already handled"
    ERROR = "error"  # not recorded in Prefect: the webhook answers 503 and Alertmanager retries


class Launch(BaseModel):
    status: LaunchStatus
    runbook: str
    target: str
    flow_run_id: str | None = None
    require_approval: bool = False
    detail: str = ""


class RunLauncher:
    def __init__(self, *, flow: Any, flap: FlapGuard, metrics: Metrics, instance: str,
                 execution: str = "embedded", max_concurrent: int = 16, record_deadline_s: float = 2.5,
                 live_ttl_s: float = 2.0, busy_retry_s: float = 75.0) -> None:
        self.flow = flow
        self.busy_retry_s = busy_retry_s
        self.flap = flap
        self.metrics = metrics
        self.instance = instance
        self.workers = execution == "workers"
        self.record_deadline_s = record_deadline_s
        self._executing: dict[Key, str | None] = {}  # embedded: runs this process executes now
        self._live = LiveRunCache(ttl_s=live_ttl_s)  # workers: live runs Prefect holds, cached
        self._inflight: dict[Key, asyncio.Future[Launch]] = {}
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._slots = threading.BoundedSemaphore(max_concurrent)  # rate control for storms

    def active(self) -> dict[Key, str | None]:
        """(runbook, target) → run: executing here (embedded) or last known live in Prefect (workers)."""
        if self.workers:
            return dict(self._live.cached())
        with self._lock:
            return dict(self._executing)

    async def launch(self, spec: "Runbook", target: str, *, reason: str, idempotency_key: str,
                     context: dict[str, Any] | None = None) -> Launch:
        """One alert: its run recorded in Prefect (STARTED), or the live one (DUPLICATE), or the run that
        already handled this alert instance (ALREADY_HANDLED); ERROR if Prefect could not record it."""
        return await self._once((spec.name, target), lambda: self._launch(spec, target, reason, idempotency_key, context))

    async def launch_manual(self, spec: "Runbook", target: str, *, dry_run: bool,
                            on_done: Callable[[Any], None] | None = None) -> Launch:
        """A run asked for by `medic run` through this server: same dedupe; no flap guard, no idempotency key.
        `on_done(outcome)` is called when an embedded run ends (workers mode: the caller follows Prefect)."""
        from medic.orchestration.flow_kinds import choose

        async def start() -> Launch:
            choice = choose(spec, target, reason="medic run (CLI via medic serve)", dry_run=dry_run)
            return await self._record((spec.name, target), choice, None, on_done=on_done, extra_tags=("manual",),
                                      record_flap=False)

        return await self._once((spec.name, target), start)

    async def _once(self, key: Key, start: Callable[[], Any]) -> Launch:
        """Run `start` for `key` unless a start is already in flight: then share its answer (as a duplicate).
        Registered before the first `await`, so a storm cannot race past it."""
        runbook, target = key
        inflight = self._inflight.get(key)
        if inflight is not None:
            try:
                first = await asyncio.shield(inflight)
            except Exception as exc:  # noqa: BLE001 - the same answer as the first one: not recorded
                return _not_recorded(key, exc)
            if first.status is LaunchStatus.ERROR:
                return first
            self.metrics.deduplicated.labels(runbook).inc()
            return first.model_copy(update={"status": LaunchStatus.DUPLICATE,
                                            "detail": first.detail or "a remediation is already running"})
        future: asyncio.Future[Launch] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            # One bound for all of it (live run?, flap guard, create): an answer Alertmanager can wait for.
            launch = await asyncio.wait_for(start(), self.record_deadline_s)
        except TimeoutError:
            log.warning("no run of %s on %s recorded in Prefect within %g s; answering 503", runbook, target,
                        self.record_deadline_s)
            launch = _not_recorded(key, PrefectError(
                f"Prefect did not record the run within {self.record_deadline_s:g} s (busy or slow); a creation "
                f"still in flight is found by the alert's idempotency key when it is sent again"))
        except Exception as exc:  # noqa: BLE001 - answered, with the reason, as not recorded
            log.warning("could not record a run of %s on %s in Prefect: %s", runbook, target, exc)
            launch = _not_recorded(key, exc)
        finally:
            self._inflight.pop(key, None)
        future.set_result(launch)
        return launch

    async def _launch(self, spec: "Runbook", target: str, reason: str, idempotency_key: str,
                      context: dict[str, Any] | None = None) -> Launch:
        from medic.orchestration.flow_kinds import choose

        key = (spec.name, target)
        live = await self._live_run(key)  # first: a storm's duplicates are answered without asking more
        if live is not None:
            self.metrics.deduplicated.labels(spec.name).inc()
            return Launch(status=LaunchStatus.DUPLICATE, runbook=spec.name, target=target, flow_run_id=live,
                          detail="a remediation is already running")
        tripped = spec.kind == "remediation" and await _maybe_async(self.flap.tripped, key)
        why = await _maybe_async(self.flap.explain, key) if tripped else ""
        if tripped:
            reason = f"{reason} — {why}"
        choice = choose(spec, target, reason=reason, require_approval=bool(tripped), context=context)
        return await self._record(key, choice, idempotency_key, detail=why)

    async def _live_run(self, key: Key) -> str | None:
        if self.workers:
            return await self._live.live_run(key)
        with self._lock:
            return self._executing.get(key) if key in self._executing else None

    async def _record(self, key: Key, choice: "FlowChoice", idempotency_key: str | None, *,
                      on_done: Callable[[Any], None] | None = None, extra_tags: tuple[str, ...] = (),
                      record_flap: bool = True, detail: str = "") -> Launch:
        """Create the run in Prefect (retried within the caller's bound), then execute it here (embedded)
        or leave it to the pool. No `await` after the execution starts: a cut-off answer never hides a run."""
        runbook, target = key
        run = await self._create(choice, idempotency_key, extra_tags)
        for _ in range(RETRIES_PER_ALERT):  # a remediation that died on an error or found the slot held handled nothing
            if idempotency_key is None or choice.kind != "remediation" or not (
                    _failed_on_an_error(run) or refused_as_busy(run, self.busy_retry_s)):
                break
            idempotency_key = f"{idempotency_key}:after:{run.id}"  # the resend's new run: found again by it
            run = await self._create(choice, idempotency_key, extra_tags)
        owner = run_instance(run)
        if (run.state is not None and run.state.type.value not in ("PENDING", "SCHEDULED")) or owner != self.instance:
            by = f" (medic serve {owner})" if owner != self.instance else ""
            busy = (f", which found another remediation on it: taken again {self.busy_retry_s:g} s after that run "
                    f"ended if it still fires") if run.state is not None and run.state.name == _BUSY else ""
            return Launch(status=LaunchStatus.ALREADY_HANDLED, runbook=runbook, target=target, flow_run_id=str(run.id),
                          detail=f"this alert was already handled by run {run.id}{by}{busy}")
        require_approval = bool(choice.parameters.get("require_approval"))
        if require_approval:
            self.metrics.flap_guard.labels(runbook).inc()
        if self.workers:
            self._live.remember(key, str(run.id))
        else:
            from medic.orchestration.flow_kinds import load_flow

            with self._lock:
                if key in self._executing:  # found by its key while this process executes it
                    return Launch(status=LaunchStatus.DUPLICATE, runbook=runbook, target=target,
                                  flow_run_id=self._executing[key], detail="a remediation is already running")
                self._executing[key] = str(run.id)
            self._execute(key, run, on_done, flow=load_flow(choice.entrypoint), record_flap=record_flap)
        return Launch(status=LaunchStatus.STARTED, runbook=runbook, target=target, flow_run_id=str(run.id),
                      require_approval=require_approval, detail=detail)

    async def _create(self, choice: "FlowChoice", idempotency_key: str | None, extra_tags: tuple[str, ...]) -> "FlowRun":
        """The run in Prefect, or PrefectError with the last reason (the caller bounds the whole launch).

        A creation cut off by the deadline may still land in Prefect: the resend finds it by its key."""
        from medic.orchestration.runs import create_deployment_run

        runbook, target = choice.parameters["runbook"], choice.parameters.get("target") or choice.parameters.get("primary")
        tags = [*key_tags(runbook, str(target)), instance_tag(self.instance), f"kind:{choice.kind}", *extra_tags]

        async def attempt() -> "FlowRun":
            return await create_deployment_run(choice.deployment, choice.parameters, idempotency_key=idempotency_key,
                                               tags=tags, scheduled=self.workers, context=choice.context)

        return await retry_async(attempt, delays=backoff(0.1, factor=2.0, cap=0.5), retry_on=PrefectError,
                                 timeout=self.record_deadline_s)

    def _release(self, key: Key) -> None:
        with self._lock:
            self._executing.pop(key, None)

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
                release_after_run()

        thread = threading.Thread(target=target, name=f"run-{run.id}", daemon=True)
        self._threads.add(thread)
        thread.start()

    async def withdraw(self, runbook: str, target: str, *, why: str) -> str | None:
        """The alert resolved: end the run of (runbook, target) that Prefect shows waiting for approval
        as 'no longer needed' — whichever process executes it."""
        from prefect.client.schemas.objects import StateType

        from medic.approval.answers import resume_proven
        from medic.approval.identity import alert_proof
        from medic.orchestration.pause import ResumeStatus
        from medic.settings import get_settings

        key = get_settings().approval_key  # a withdrawal is proven like an approval (issue 11)
        if key is None:
            return None  # unverifiable: the run stays paused until its timeout, nothing is changed
        withdrawn = None
        for run in await find_runs(key_tags(runbook, target), (StateType.PAUSED,), limit=5):
            outcome = await resume_proven(str(run.id), lambda pause_key, rid=str(run.id): {
                "decision": "withdraw", "approver": "alertmanager", "comment": why,
                "proof": alert_proof(key.get_secret_value(), run_id=rid, pause_key=pause_key)})
            if outcome.status is ResumeStatus.ACCEPTED:
                withdrawn = str(run.id)
        return withdrawn

    async def adopt_orphans(self) -> list[str]:
        """Re-execute the runs *this instance* left paused or running (embedded mode only; see orphans.py)."""
        from medic.orchestration.orphans import claim_orphans

        if self.workers:
            return []
        adopted: list[str] = []
        for run in await claim_orphans(self.instance):
            params = run.parameters or {}
            key = (str(params.get("runbook")), str(params.get("target")))
            with self._lock:
                self._executing[key] = str(run.id)
            self._execute(key, run)
            adopted.append(str(run.id))
        return adopted

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def still_running(self) -> list[str]:
        """Ids of the runs whose threads are still executing here (thread name `run-<id>`)."""
        return [t.name.removeprefix("run-") for t in list(self._threads) if t.is_alive() and t.name.startswith("run-")]


def _failed_on_an_error(run: "FlowRun") -> bool:
    """The run raised (a dependency down, a bug) instead of reaching an outcome of its own: Prefect's
    Failed with its exception message. A remediation re-checks before it acts, so running it again on
    the alert's resend is safe; an outcome (NotRecovered, Rejected, ...) is an answer and stays one."""
    state = run.state
    return (state is not None and state.type.value == "FAILED"
            and (state.message or "").startswith("Flow run encountered an exception"))


def refused_as_busy(run: "FlowRun", after_s: float, now: datetime | None = None) -> bool:
    """The run found the remediation slot held (AlreadyRunning) and ended at least `after_s` ago: the
    alert is still unhandled. Not sooner, so a storm of resends does not spend the retries while a
    dead holder's lease lapses."""
    state = run.state
    if state is None or state.name != _BUSY or state.timestamp is None:
        return False
    return ((now or datetime.now(timezone.utc)) - state.timestamp).total_seconds() >= after_s


def _not_recorded(key: Key, exc: BaseException) -> Launch:
    return Launch(status=LaunchStatus.ERROR, runbook=key[0], target=key[1],
                  detail=f"not recorded in Prefect, send it again: {str(exc)[:300]}")


async def _maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """The flap guard's answer, whether its implementation is sync (local) or async (asks Prefect)."""
    result = fn(*args)
    return await result if asyncio.iscoroutine(result) else result
