"""Running Prefect flows in this process, at once (no worker poll), as plain or deployment runs.

Measured on prefect 3.8.8 with a local SQLite server (docs/prefect-runtime.md, bench/prefect_overhead.py):

    fast_run_settings()          flow-run heartbeats off (removes the ~1 s exit join of a *sync* flow)
    run_flow_now(flow, params)   run a flow now, as a new run or an existing one -> FlowRunOutcome
    create_deployment_run(...)   a run *of a deployment* that no runner picks up (Pending), so this
                                 process can execute it at once and the UI still lists it there;
                                 or Scheduled (`scheduled=True`), for the work pool's workers
    start_deployment_run_now(..) both, as an asyncio task of the calling process

A failed flow is an outcome, not an exception; a Prefect API failure is a `medic.errors.PrefectError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentFlowRunCreate, FlowRunCreate
from prefect.client.schemas.objects import FlowRun, FlowRunPolicy
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings
from prefect.states import Pending, to_state_create
from pydantic import BaseModel, ConfigDict

from medic.errors import PrefectError
from medic.orchestration.api import post_with_fast_retry
from medic.orchestration.prefect_compat import (
    engine_run_flow,
    no_flow_heartbeats,
    share_tls_contexts,
    shared_sync_client,
)

__all__ = ["FlowRunOutcome", "create_deployment_run", "fast_run_settings", "resolve_deployments", "run_flow_now",
           "start_deployment_run_now"]

R = TypeVar("R")


class FlowRunOutcome(BaseModel):
    """What became of one flow run executed by `run_flow_now`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    flow_run_id: UUID
    flow_run_name: str
    state_type: str  # COMPLETED, FAILED, CRASHED, CANCELLED, PAUSED ...
    state_name: str
    message: str | None
    result: Any = None  # the flow's return value when it completed (or failed with a report), else None
    seconds: float
    error: BaseException | None = None  # what a flow that failed without a report raised (e.g. a MedicError)

    @property
    def ok(self) -> bool:
        return self.state_type == "COMPLETED"


@contextlib.contextmanager
def fast_run_settings() -> Iterator[None]:
    """Prefect settings for low-overhead runs, for the block it wraps.

    A sync flow run starts a heartbeat thread that sleeps in 1 s steps and is joined at exit, so every
    sync run pays up to ~1 s; heartbeats only feed zombie-run automations, which medic does not use.
    """
    with no_flow_heartbeats():
        yield


async def _create_flow_run(flow: Any, parameters: dict[str, Any], tags: list[str] | None) -> FlowRun:
    """A new Pending run of `flow` (not of a deployment), created with the fast 503 retry."""
    what = f"a run of flow {flow.name!r}"
    flow_id = (await post_with_fast_retry(what, "/flows/", {"name": flow.name}))["id"]
    create = FlowRunCreate(
        flow_id=flow_id,
        flow_version=flow.version,
        parameters=flow.serialize_parameters(parameters),
        tags=list(tags or []),
        state=to_state_create(Pending()),
        empirical_policy=FlowRunPolicy(retries=flow.retries, retry_delay=int(flow.retry_delay_seconds or 0)),
    )
    data = await post_with_fast_retry(what, "/flow_runs/", create.model_dump(mode="json", exclude_unset=True))
    run = FlowRun.model_validate(data)
    run.parameters = parameters  # keep Python objects, as prefect's client does
    return run


def _in_copied_context(fn: Callable[[], R]) -> Callable[[], R]:
    """`fn` bound to a copy of the caller's context vars (settings, client), for a worker thread."""
    ctx = contextvars.copy_context()
    return lambda: ctx.run(fn)


async def run_flow_now(
    flow: Any,
    parameters: Mapping[str, Any] | None = None,
    *,
    flow_run: FlowRun | None = None,
    tags: list[str] | None = None,
) -> FlowRunOutcome:
    """Run `flow` in this process now and return what became of it (never raises for a failed flow).

    Creates the flow run itself unless `flow_run` is given — e.g. one made by `create_deployment_run`.
    Async flows run on the caller's event loop; sync flows in a worker thread; both with
    `fast_run_settings()` and one shared sync client (each new client loads the CA bundle, ~30 ms).
    """
    share_tls_contexts()  # each Prefect client of the run would load the CA bundle again (~25 ms each)
    params = dict(parameters or {})
    started = time.perf_counter()
    if flow_run is None:
        flow_run = await _create_flow_run(flow, params, tags)
    if not params and flow_run.parameters:
        params = dict(flow_run.parameters)
    run = flow_run

    def run_sync() -> Any:
        with shared_sync_client():
            return engine_run_flow(flow, run, params)

    with fast_run_settings():
        if flow.isasync:
            with shared_sync_client():
                state = await engine_run_flow(flow, run, params)  # type: ignore[misc]
        else:
            state = await asyncio.to_thread(_in_copied_context(run_sync))
    result: Any = None
    error: BaseException | None = None
    if state.is_completed() or state.is_failed():
        # A flow may end Failed *with* a result (medic's report of what went wrong); keep it.
        result = await state.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            result, error = None, result
    return FlowRunOutcome(
        flow_run_id=run.id,
        flow_run_name=run.name,
        state_type=state.type.value,
        state_name=state.name or state.type.value.title(),
        message=state.message,
        result=result,
        seconds=time.perf_counter() - started,
        error=error,
    )


_DEPLOYMENT_IDS: dict[tuple[str | None, str], str] = {}


async def _deployment_id(deployment_name: str, *, fresh: bool = False) -> str:
    """The id of deployment `flow/deployment`, remembered per API: each look-up is a client set-up
    and a round trip (~0.1 s) that an alert would otherwise pay before its run exists."""
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
        except Exception as exc:  # noqa: BLE001 - any client failure is "Prefect cannot answer"
            raise PrefectError(f"cannot read deployment {deployment_name!r}: {exc}") from exc
    _DEPLOYMENT_IDS[key] = str(deployment.id)
    return _DEPLOYMENT_IDS[key]


async def resolve_deployments(deployment_names: list[str]) -> list[str]:
    """Look up (and remember) these deployments' ids ahead of the first alert; the names not found."""
    missing = []
    for name in deployment_names:
        try:
            await _deployment_id(name, fresh=True)
        except PrefectError:
            missing.append(name)
    return missing


async def create_deployment_run(
    deployment_name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    tags: list[str] | None = None,
    scheduled: bool = False,
    context: Mapping[str, Any] | None = None,
) -> FlowRun:
    """Create a run of deployment `"flow-name/deployment-name"` and return it (or the run that
    already has `idempotency_key`: Prefect answers with it instead of creating a second one).

    Pending (the default) means no `serve()`/worker polling the deployment will start it too; the
    caller executes it with `run_flow_now(flow, flow_run=run)`. `scheduled=True` leaves it in
    Prefect's default state, Scheduled now, for the workers of the deployment's pool to take.
    The UI lists it under the deployment either way.
    """
    create = DeploymentFlowRunCreate(
        parameters=dict(parameters or {}),
        tags=list(tags or []),
        idempotency_key=idempotency_key,
    )
    if context:  # e.g. the alert's times, read back by the run (medic.core.timeline.ALERT_CONTEXT_KEY)
        create.context = dict(context)
    if not scheduled:
        create.state = to_state_create(Pending())
    body = create.model_dump(mode="json", exclude_unset=True)
    what = f"a run of deployment {deployment_name!r}"
    deployment_id = await _deployment_id(deployment_name)
    try:
        data = await post_with_fast_retry(what, f"/deployments/{deployment_id}/create_flow_run", body)
    except PrefectError as exc:
        if exc.status != 404:
            raise
        # re-deployed since we looked it up (a new id): look again, once
        deployment_id = await _deployment_id(deployment_name, fresh=True)
        data = await post_with_fast_retry(what, f"/deployments/{deployment_id}/create_flow_run", body)
    return FlowRun.model_validate(data)


async def start_deployment_run_now(
    flow: Any,
    deployment_name: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
) -> tuple[FlowRun, asyncio.Task[FlowRunOutcome]]:
    """Create a deployment run and start executing it as an asyncio task of this process.

    Returns `(flow_run, task)` as soon as the run exists (the HTTP handler can answer with its id);
    await the task for the `FlowRunOutcome`. Keep a reference to the task until it is done.
    """
    run = await create_deployment_run(deployment_name, parameters, idempotency_key=idempotency_key)
    task = asyncio.create_task(run_flow_now(flow, flow_run=run), name=f"flow-run-{run.id}")
    return run, task
