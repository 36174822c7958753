"""How medic runs Prefect flows fast, pauses them for approval and serialises remediations.

Measured on prefect 3.8.8 with a local SQLite server (see docs/prefect-runtime.md and
bench/prefect_overhead.py). Public surface:

    fast_run_settings()          context manager: flow-run heartbeats off (removes the ~1 s exit join
                                 of a *sync* flow's heartbeat thread)
    run_flow_now(flow, params)   run a flow in this process now, as a new run or as an existing run
                                 (e.g. one created for a deployment) -> FlowRunOutcome
    create_deployment_run(...)   create a run *of a deployment* that no runner will pick up (Pending),
                                 so this process can execute it at once and the UI still shows it
    start_deployment_run_now(..) both of the above, as an asyncio task of the calling process
    wait_for_approval(Model, …)  pause the current flow run for typed input; returns the input or None
                                 on timeout, and leaves the run Running (so it can end Completed)
    resume_with_input(id, data)  resume a paused run -> ResumeOutcome (accepted / rejected_input /
                                 already_resumed / not_paused / timed_out / not_found)
    ensure_concurrency_limit()   create or update a global concurrency limit
    exclusive_slot(name)         async context manager yielding True if this caller holds the one slot
    remediation_lock_name()      the limit name for one (runbook, target) pair
    point_prefect_at(url)        switch this process to another Prefect API (flushes first)
    flush_prefect_telemetry()    deliver queued Prefect events and logs now, before their server stops

Nothing here swallows a Prefect API failure: those become `medic.errors.PrefectError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import functools
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from enum import Enum
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from medic.errors import PrefectError

__all__ = [
    "FlowRunOutcome",
    "ResumeOutcome",
    "ResumeStatus",
    "create_deployment_run",
    "ensure_concurrency_limit",
    "exclusive_slot",
    "fast_run_settings",
    "remediation_lock_name",
    "resume_with_input",
    "run_flow_now",
    "start_deployment_run_now",
    "wait_for_approval",
]

M = TypeVar("M", bound=BaseModel)

# A flow run is created in a DEFERRED SQLite transaction (read, then insert). When the server's
# task-run recorder or event persister commits in between, SQLite answers "database is locked" at
# once, the server turns that into 503, and Prefect's client sleeps 2**n s (≈2 s) before retrying.
# We create runs ourselves with client retries off and retry quickly instead.
_CREATE_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.0, 1.0)
# A paused run keeps its server-side pause timeout this much longer than our own wait, so the flow
# always leaves Paused itself (to Running) and can still end Completed; see wait_for_approval.
_PAUSE_GRACE_SECONDS = 300


class FlowRunOutcome(BaseModel):
    """What became of one flow run executed by `run_flow_now`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    flow_run_id: UUID
    flow_run_name: str
    state_type: str  # COMPLETED, FAILED, CRASHED, CANCELLED, PAUSED ...
    state_name: str
    message: str | None
    result: Any = None  # the flow's return value when it completed, else None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.state_type == "COMPLETED"


class ResumeStatus(str, Enum):
    ACCEPTED = "accepted"
    REJECTED_INPUT = "rejected_input"  # the input does not match the pause's schema; still paused
    ALREADY_RESUMED = "already_resumed"  # it was paused earlier and is not any more
    NOT_PAUSED = "not_paused"  # it never paused
    TIMED_OUT = "timed_out"  # the pause timed out (Prefect has failed the run)
    NOT_FOUND = "not_found"


class ResumeOutcome(BaseModel):
    """The answer to one resume request, from the orchestration result (not just the HTTP code)."""

    model_config = ConfigDict(frozen=True)

    status: ResumeStatus
    reason: str = ""
    state_type: str | None = None  # the run's state after the request, when known

    @property
    def accepted(self) -> bool:
        return self.status is ResumeStatus.ACCEPTED


# --------------------------------------------------------------------------------------------- runs


def point_prefect_at(api_url: str) -> None:
    """Use this Prefect API from now on, in this process and its children.

    Prefect captures its settings from the environment when `prefect.context` is first imported;
    an environment change after that is ignored unless its global settings context is refreshed.
    """
    import sys

    if "prefect.context" in sys.modules:
        flush_prefect_telemetry()
    os.environ["PREFECT_API_URL"] = api_url
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def flush_prefect_telemetry(timeout: float = 10.0) -> bool:
    """Deliver the events and logs Prefect has queued, and stop its workers; True if all went out.

    Prefect sends them from background workers that are drained at interpreter exit without a
    deadline. Its events worker is shared by every API URL and keeps the URL it started with; once
    that server is gone each queued event costs ~50 s of reconnects (measured), so a process that
    outlives or switches its Prefect server would hang for hours at exit. Call this while the
    server still answers: before stopping it, and before pointing the process at another one.
    The next event or log starts a fresh worker for the current URL.
    """
    import sys

    if "prefect.events.worker" not in sys.modules and "prefect.logging.handlers" not in sys.modules:
        return True
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    # Not `EventsWorker.drain_all()`: the instance registry is shared by every Prefect queue service,
    # so that would also stop the concurrency-slot and lease services a running flow relies on.
    workers = [w for w in list(EventsWorker._instances.values()) if isinstance(w, (EventsWorker, APILogWorker))]
    futures = [w._drain(at_exit=False) for w in workers]
    _done, pending = concurrent.futures.wait(futures, timeout=timeout)
    return not pending


@contextlib.contextmanager
def fast_run_settings() -> Iterator[None]:
    """Prefect settings for low-overhead runs, for the block it wraps.

    A sync flow run starts a heartbeat thread (`flows.heartbeat_frequency`, default 180 s) that sleeps
    in 1 s steps and joins it on exit (`prefect.flow_engine._send_heartbeats`, join timeout 2 s), so
    every sync run pays up to ~1 s at exit. The setting only accepts None from Python (the env var
    must parse as an int >= 30), hence this context manager. Async runs do not join the thread.
    Heartbeats only matter for zombie-run automations, which medic does not use.
    """
    from prefect.settings import temporary_settings

    with temporary_settings(updates={"flows.heartbeat_frequency": None}):
        yield


async def _post_with_fast_retry(what: str, path: str, body: dict[str, Any]) -> Any:
    """POST `body` to the Prefect API at `path`, retrying SQLite-busy 503s after 50 ms … 1 s.

    Prefect's own client waits 2**n s (≈2 s) before retrying a 503, and even with
    `PREFECT_CLIENT_MAX_RETRIES=0` it sleeps once before giving up (prefect/client/base.py), so the two
    run-creating POSTs are sent with a plain httpx client (same URL and credentials).
    """
    import base64

    import httpx
    from prefect.settings import get_current_settings

    api = get_current_settings().api
    if not api.url:
        raise PrefectError("PREFECT_API_URL is not set; point it at the Prefect server (…/api)")
    headers = {"Content-Type": "application/json"}
    if api.auth_string is not None:
        token = base64.b64encode(api.auth_string.get_secret_value().encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif api.key is not None:
        headers["Authorization"] = f"Bearer {api.key.get_secret_value()}"
    url = api.url.rstrip("/") + path
    async with httpx.AsyncClient(headers=headers, timeout=30, verify=_ssl_context()) as http:
        for delay in (*_CREATE_RETRY_DELAYS, None):
            try:
                response = await http.post(url, json=body)
            except httpx.HTTPError as exc:
                raise PrefectError(f"cannot create {what}: Prefect API at {api.url} unreachable: {exc}") from exc
            if response.status_code < 300:
                return response.json()
            if response.status_code not in (503, 429) or delay is None:
                raise PrefectError(
                    f"Prefect API refused to create {what}: {response.status_code} {response.text[:300]}",
                    status=response.status_code,
                )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One CA-bundle load per process (each load costs ~30 ms)."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


async def _create_flow_run(flow: Any, parameters: dict[str, Any], tags: list[str] | None) -> Any:
    from prefect.client.schemas.actions import FlowRunCreate
    from prefect.client.schemas.objects import FlowRun, FlowRunPolicy
    from prefect.states import Pending, to_state_create

    what = f"a run of flow {flow.name!r}"
    flow_id = (await _post_with_fast_retry(what, "/flows/", {"name": flow.name}))["id"]
    create = FlowRunCreate(
        flow_id=flow_id,
        flow_version=flow.version,
        parameters=flow.serialize_parameters(parameters),
        tags=list(tags or []),
        state=to_state_create(Pending()),
        empirical_policy=FlowRunPolicy(
            retries=flow.retries, retry_delay=int(flow.retry_delay_seconds or 0)
        ),
    )
    data = await _post_with_fast_retry(what, "/flow_runs/", create.model_dump(mode="json", exclude_unset=True))
    run = FlowRun.model_validate(data)
    run.parameters = parameters  # keep Python objects, as prefect's client does
    return run


async def run_flow_now(
    flow: Any,
    parameters: Mapping[str, Any] | None = None,
    *,
    flow_run: Any | None = None,
    tags: list[str] | None = None,
) -> FlowRunOutcome:
    """Run `flow` in this process now and return what became of it (never raises for a failed flow).

    Creates the flow run itself (fast retry on SQLite-busy 503s) unless `flow_run` is given — e.g.
    one made by `create_deployment_run` — then executes it with `prefect.flow_engine.run_flow`.
    Async flows run on the caller's event loop; sync flows run in a worker thread. Either way with
    `fast_run_settings()`.
    """
    from prefect.context import SyncClientContext
    from prefect.flow_engine import run_flow

    params = dict(parameters or {})
    started = time.perf_counter()
    if flow_run is None:
        flow_run = await _create_flow_run(flow, params, tags)
    if not params and flow_run.parameters:
        params = dict(flow_run.parameters)

    def run_sync() -> Any:
        # One sync client for the whole run: without it every sync task of an async flow builds its
        # own client, and each build loads the CA bundle (ssl load_verify_locations, ~30 ms).
        with SyncClientContext.get_or_create():
            return run_flow(flow, flow_run=flow_run, parameters=params, return_type="state")

    with fast_run_settings():
        if flow.isasync:
            with SyncClientContext.get_or_create():
                state = await run_flow(flow, flow_run=flow_run, parameters=params, return_type="state")
        else:
            state = await asyncio.to_thread(_copy_context_run(run_sync))
    result: Any = None
    if state.is_completed() or state.is_failed():
        # A flow may end Failed *with* a result (medic's report of what went wrong); keep it.
        result = await state.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            result = None
    return FlowRunOutcome(
        flow_run_id=flow_run.id,
        flow_run_name=flow_run.name,
        state_type=state.type.value,
        state_name=state.name or state.type.value.title(),
        message=state.message,
        result=result,
        seconds=time.perf_counter() - started,
    )


def _copy_context_run(fn: Any) -> Any:
    import contextvars

    ctx = contextvars.copy_context()
    return lambda *a, **kw: ctx.run(fn, *a, **kw)


async def create_deployment_run(
    deployment_name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tags: list[str] | None = None,
) -> Any:
    """Create a run of deployment `"flow-name/deployment-name"` in state Pending and return it.

    Pending (not Scheduled) means no `serve()`/worker polling the deployment will start it too; the
    caller executes it with `run_flow_now(flow, flow_run=run)`. The UI lists it under the deployment.
    An `idempotency_key` (e.g. the Alertmanager group key) returns the existing run instead of a new one.
    """
    from prefect.client.schemas.actions import DeploymentFlowRunCreate
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Pending, to_state_create

    create = DeploymentFlowRunCreate(
        parameters=dict(parameters or {}),
        state=to_state_create(Pending()),
        tags=list(tags or []),
        idempotency_key=idempotency_key,
    )
    body = create.model_dump(mode="json", exclude_unset=True)
    what = f"a run of deployment {deployment_name!r}"
    deployment_id = await _deployment_id(deployment_name)
    try:
        data = await _post_with_fast_retry(what, f"/deployments/{deployment_id}/create_flow_run", body)
    except PrefectError as exc:
        if exc.status != 404:
            raise
        # re-deployed since we looked it up (a new id): look again, once
        deployment_id = await _deployment_id(deployment_name, fresh=True)
        data = await _post_with_fast_retry(what, f"/deployments/{deployment_id}/create_flow_run", body)
    return FlowRun.model_validate(data)


_DEPLOYMENT_IDS: dict[tuple[str | None, str], str] = {}


async def _deployment_id(deployment_name: str, *, fresh: bool = False) -> str:
    """The id of deployment `flow/deployment`, remembered per API: each look-up is a client set-up
    and a round trip (~0.1 s) that an alert would otherwise pay before its run exists."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    key = (get_current_settings().api.url, deployment_name)
    if not fresh and key in _DEPLOYMENT_IDS:
        return _DEPLOYMENT_IDS[key]
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(deployment_name)
        except ObjectNotFound as exc:
            raise PrefectError(
                f"deployment {deployment_name!r} does not exist on the Prefect server; deploy it "
                "(`prefect deploy` from prefect.yaml) or check the name `flow-name/deployment-name`"
            ) from exc
        except Exception as exc:
            raise PrefectError(f"cannot read deployment {deployment_name!r}: {exc}") from exc
    _DEPLOYMENT_IDS[key] = str(deployment.id)
    return _DEPLOYMENT_IDS[key]


async def start_deployment_run_now(
    flow: Any,
    deployment_name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
) -> tuple[Any, asyncio.Task[FlowRunOutcome]]:
    """Create a deployment run and start executing it as an asyncio task of this process.

    Returns `(flow_run, task)` as soon as the run exists (the HTTP handler can answer with its id);
    await the task for the `FlowRunOutcome`. Keep a reference to the task until it is done.
    """
    run = await create_deployment_run(deployment_name, parameters, idempotency_key=idempotency_key)
    task = asyncio.create_task(run_flow_now(flow, flow_run=run), name=f"flow-run-{run.id}")
    return run, task


# ----------------------------------------------------------------------------------------- approval


async def wait_for_approval(
    model: type[M],
    *,
    timeout: float,
    poll_interval: float = 0.2,
    key: str = "approval",
) -> M | None:
    """Pause the current (async) flow run until someone resumes it with input matching `model`.

    Returns the validated input, or None if nobody answered within `timeout` seconds. Unlike a bare
    `pause_flow_run(timeout=...)`, a timeout does not doom the run: the server-side pause timeout
    is set `_PAUSE_GRACE_SECONDS` longer than ours, and on our timeout the flow moves itself back to
    Running, so it can finish Completed ("approval timed out" is the flow's own result). A resume
    that arrives after that gets `ResumeStatus.ALREADY_RESUMED`, never a Failed run.
    `poll_interval` is how often the paused flow reads its state: click-to-continue latency is
    about poll_interval/2 + 0.1 s.
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.flow_runs import apause_flow_run
    from prefect.input.run_input import keyset_from_base_key, run_input_subclass_from_type
    from prefect.states import Running

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise PrefectError("wait_for_approval() must be called inside a flow run (not a task)")
    flow_run_id = context.flow_run.id
    try:
        async with asyncio.timeout(timeout):
            value = await apause_flow_run(
                wait_for_input=model,
                timeout=int(timeout) + _PAUSE_GRACE_SECONDS,
                poll_interval=poll_interval,  # type: ignore[arg-type]  # float works (anyio.sleep)
                key=key,
            )
            return _as_model(model, value)
    except TimeoutError:
        pass
    # Our own deadline: either a resume landed in the last poll gap, or we leave Paused ourselves.
    keyset = keyset_from_base_key(f"paused-{key}")
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_running():
            value = await run_input_subclass_from_type(model).aload(keyset, flow_run_id=flow_run_id)
            return _as_model(model, value)
        await client.set_flow_run_state(
            flow_run_id, Running(message=f"approval timed out after {timeout:g} s"), force=True
        )
    return None


def _as_model(model: type[M], value: Any) -> M:
    if isinstance(value, model):
        return value
    if isinstance(value, BaseModel):
        return model.model_validate(value.model_dump())
    return model.model_validate(value)


_PAUSE_RACE_RETRIES = 40  # × ~50 ms


async def resume_with_input(flow_run_id: UUID | str, payload: Mapping[str, Any] | None) -> ResumeOutcome:
    """Resume a paused flow run with `payload` as its input and say what the server decided.

    The resume endpoint answers 200/201 for every decision; the decision is the orchestration
    status: ACCEPT → accepted; REJECT → the input failed the pause's schema (run stays Paused) or,
    with a Failed state, the pause had timed out; ABORT → the run is not paused.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = UUID(str(flow_run_id))
    except ValueError:
        return ResumeOutcome(status=ResumeStatus.NOT_FOUND, reason=f"not a flow run id: {flow_run_id!r}")
    try:
        async with get_client() as client:
            try:
                await client.read_flow_run(run_id)
            except ObjectNotFound:
                return ResumeOutcome(status=ResumeStatus.NOT_FOUND, reason=f"no flow run {run_id}")
            # While a run is entering its pause, the server can briefly refuse a valid resume: Paused
            # is set a moment before the input schema is stored ("schema not found"), or the read
            # says "not paused" while the run's last state is already Paused. Both are transient.
            for _ in range(_PAUSE_RACE_RETRIES):
                result = await client.resume_flow_run(run_id, run_input=dict(payload or {}))
                reason = getattr(result.details, "reason", None) or ""
                if result.status is SetStateStatus.ACCEPT:
                    return ResumeOutcome(status=ResumeStatus.ACCEPTED,
                                         state_type=result.state.type.value if result.state else None)
                if result.status is SetStateStatus.REJECT:
                    if "schema not found" in reason:
                        await asyncio.sleep(0.05)
                        continue
                    state_type = result.state.type.value if result.state else None
                    if result.state is not None and result.state.type is StateType.FAILED:
                        return ResumeOutcome(status=ResumeStatus.TIMED_OUT, reason=reason, state_type=state_type)
                    return ResumeOutcome(status=ResumeStatus.REJECTED_INPUT, reason=reason, state_type=state_type)
                # ABORT: not paused. Was it paused before, or is it pausing right now?
                states = await client.read_flow_run_states(run_id)
                current = states[-1].type if states else None
                if current is StateType.PAUSED:
                    await asyncio.sleep(0.05)
                    continue
                if any(s.type is StateType.PAUSED for s in states):
                    return ResumeOutcome(status=ResumeStatus.ALREADY_RESUMED, reason=reason,
                                         state_type=current.value if current else None)
                return ResumeOutcome(status=ResumeStatus.NOT_PAUSED, reason=reason,
                                     state_type=current.value if current else None)
            return ResumeOutcome(status=ResumeStatus.NOT_PAUSED, state_type="PAUSED",
                                 reason="the run was still entering its pause (Paused, input schema not stored yet); try again")
    except PrefectError:
        raise
    except Exception as exc:
        raise PrefectError(f"cannot resume flow run {run_id} through the Prefect API: {exc}") from exc


# -------------------------------------------------------------------------------------- concurrency

_LIMIT_NAME_UNSAFE = re.compile(r"[^a-z0-9._-]+")


def remediation_lock_name(runbook: str, target: str) -> str:
    """The global-concurrency-limit name guarding remediations of `runbook` on `target`."""
    parts = [_LIMIT_NAME_UNSAFE.sub("-", p.lower()).strip("-") for p in (runbook, target)]
    if not all(parts):
        raise PrefectError(f"cannot build a lock name from runbook={runbook!r} target={target!r}")
    return f"medic-remediate-{parts[0]}-{parts[1]}"


_KNOWN_LIMITS: set[tuple[str, int]] = set()


async def ensure_concurrency_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit `name` with `limit` slots, or update its limit.

    Remembered per process: a long-lived medic serve pays the API round trips once per name.
    """
    if (name, limit) in _KNOWN_LIMITS:
        return
    await _ensure_concurrency_limit(name, limit)
    _KNOWN_LIMITS.add((name, limit))


async def _ensure_concurrency_limit(name: str, limit: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if limit < 0:
        raise PrefectError(f"concurrency limit {name!r}: limit must be >= 0, got {limit}")
    try:
        async with get_client() as client:
            try:
                current = await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    await client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=limit)
                    )
                    return
                except ObjectAlreadyExists:  # created concurrently
                    current = await client.read_global_concurrency_limit_by_name(name)
            if current.limit != limit or not current.active:
                await client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
                )
    except Exception as exc:
        raise PrefectError(f"cannot create or update concurrency limit {name!r}: {exc}") from exc


@contextlib.asynccontextmanager
async def exclusive_slot(name: str, *, wait_seconds: float = 0.0) -> AsyncIterator[bool]:
    """Hold one slot of the existing global limit `name`; yield whether we got it.

    `wait_seconds=0` asks once (~30 ms) and yields False at once when another holder has it, so a
    second remediation of the same (runbook, target) can report "already in progress" instead of
    queueing. The limit must exist (`ensure_concurrency_limit`); a missing limit is a PrefectError,
    not a silent "no limit". The slot is leased (300 s, renewed while held) and released on exit.
    """
    from prefect.concurrency._asyncio import (
        AcquireConcurrencySlotTimeoutError,
        ConcurrencySlotAcquisitionError,
    )
    from prefect.concurrency.asyncio import concurrency

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    # Cheap pre-check: a refused acquisition makes Prefect log an ERROR line, so skip the attempt
    # when the limit is visibly full. The acquisition below stays the source of truth.
    if wait_seconds <= 0:
        try:
            async with get_client() as client:
                current = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound as exc:
            raise PrefectError(
                f"concurrency limit {name!r} does not exist; call ensure_concurrency_limit() first"
            ) from exc
        except Exception as exc:
            raise PrefectError(f"cannot read concurrency limit {name!r}: {exc}") from exc
        if current.active and current.active_slots >= current.limit:
            yield False
            return
    kwargs: dict[str, Any] = (
        {"max_retries": 0} if wait_seconds <= 0 else {"timeout_seconds": wait_seconds}
    )
    holder = concurrency(name, occupy=1, strict=True, **kwargs)
    try:
        await holder.__aenter__()
    except AcquireConcurrencySlotTimeoutError:
        yield False
        return
    except ConcurrencySlotAcquisitionError as exc:
        if "must be created" in str(exc):
            raise PrefectError(
                f"concurrency limit {name!r} does not exist; call ensure_concurrency_limit() first"
            ) from exc
        if "423" in str(exc):  # busy and not allowed to retry
            yield False
            return
        raise PrefectError(f"cannot acquire concurrency slot {name!r}: {exc}") from exc
    try:
        yield True
    except BaseException as exc:
        if not await holder.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await holder.__aexit__(None, None, None)
