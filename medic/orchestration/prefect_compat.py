"""Every use of a private or undocumented Prefect name or behaviour in medic, in one place.

Pinned: prefect 3.8.8. Each function says which internal it touches, why medic needs it and what breaks if
an upgrade changes it; tests/orchestration/test_prefect_compat.py has one test per item, test_prefect_boundary.py
fails if any other module uses a private Prefect name. Upgrading Prefect = run those first.

    SlotTimeout, SlotAcquisitionError, slot_refusal()   prefect.concurrency._asyncio + its error texts
    forget_slot_services_of_other_apis()                the slot services' registry and their bound client
    stop_slot_service()                                 the same registry, and what keeps a stopped service alive
    telemetry_workers(), drain_telemetry()              EventsWorker._instances / QueueService._drain
    no_flow_heartbeats()                                flows.heartbeat_frequency=None (Python-only)
    share_tls_contexts()                                the TLS context each Prefect API client builds
    shared_sync_client(), engine_run_flow()             SyncClientContext, prefect.flow_engine.run_flow
    pause_for_input()                                   apause_flow_run with a float poll_interval
    pause_keyset(), run_input_model(), load_run_input() the "paused-<key>" keyset, run_input_subclass_from_type
    is_input_schema_race(), is_expired_pause()          resume-endpoint answers we interpret
    force_flow_run_state(), reset_concurrency_slots()   forced state changes; slot count reset vs. leases
    latest_lease_id()                                   ConcurrencyContext.cleanup_lease_ids (the slot's lease)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError
from prefect.concurrency.services import (
    ConcurrencySlotAcquisitionService,
    ConcurrencySlotAcquisitionWithLeaseService,
)
from prefect._internal.concurrency.threads import get_global_loop
from prefect.context import SettingsContext, SyncClientContext, get_settings_context
from prefect.events.worker import EventsWorker
from prefect.flow_engine import run_flow
from prefect.flow_runs import apause_flow_run
from prefect.input.run_input import Keyset, keyset_from_base_key, run_input_subclass_from_type
from prefect.logging.handlers import APILogWorker
from prefect.settings import Settings

__all__ = ["drain_telemetry", "engine_run_flow", "force_flow_run_state", "forget_slot_services_of_other_apis",
           "is_expired_pause", "is_input_schema_race", "load_run_input", "no_flow_heartbeats", "pause_for_input",
           "pause_keyset", "reset_concurrency_slots", "run_input_model", "share_tls_contexts",
           "shared_sync_client", "slot_refusal", "SlotAcquisitionError", "SlotTimeout", "stop_slot_service",
           "telemetry_workers"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# ------------------------------------------------------------------------------- concurrency slots

SlotTimeout = AcquireConcurrencySlotTimeoutError
"""`prefect.concurrency._asyncio.AcquireConcurrencySlotTimeoutError` (private module): raised by
`concurrency(..., timeout_seconds=N)` when no slot freed up in time. `locks.exclusive_slot` turns it into
"not acquired"; if it moves, the import here fails (every lock user fails at import, loudly)."""

SlotAcquisitionError = ConcurrencySlotAcquisitionError
"""`prefect.concurrency._asyncio.ConcurrencySlotAcquisitionError` (private module): every other refusal
of `concurrency(..., strict=True)`; `slot_refusal` tells the kinds apart by its text."""

_MISSING_LIMIT_TEXT = "must be created"  # "Concurrency limits [...] must be created before acquiring slots"
_BUSY_TEXT = "423"  # "Unable to acquire concurrency slots on [...]: 423 Locked" (max_retries=0)


def slot_refusal(exc: BaseException) -> Literal["missing", "busy"] | None:
    """Why `concurrency(name, strict=True, max_retries=0)` refused: the limit does not exist, or it is full.

    Prefect raises one exception class for both and says which only in the message ("... must be created
    before acquiring slots"; HTTP 423 Locked). If the texts change, both read as an unknown error: a second
    remediation of the same target would fail instead of reporting "already running".
    """
    text = str(exc)
    return "missing" if _MISSING_LIMIT_TEXT in text else "busy" if _BUSY_TEXT in text else None


async def reset_concurrency_slots(client: PrefectClient, name: str) -> None:
    """Set the global limit `name`'s occupied slot count to 0 (the holder that took it is gone).

    Undocumented behaviour relied on: a slot is a *lease* (300 s); resetting `active_slots` does not
    revoke it, and when the dead holder's lease lapses the server decrements the count again without
    going below 0. If a lapse could drive it negative, or the update ignored `active_slots`, an
    adopted run after a medic serve restart would find its own slot taken ("already running").
    """
    await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))


def forget_slot_services_of_other_apis(api_url: str) -> int:
    """Stop Prefect's slot-acquisition services bound to another API than `api_url`; how many stopped.

    Private: the services' registry `QueueService._instances`, each service's client (`_client`) bound to the
    API URL current when it started. A process that talks to a second Prefect later (a re-pointed CLI, one
    test session with two labs) would send every acquisition of the same limit name to the first, gone,
    server. A stopped service is dropped: the next acquisition starts one for the current API.
    """
    wanted = api_url.rstrip("/")
    stale = [
        s for s in list(ConcurrencySlotAcquisitionService._instances.values())
        if isinstance(s, (ConcurrencySlotAcquisitionService, ConcurrencySlotAcquisitionWithLeaseService))
        and getattr(s, "_client", None) is not None and str(s._client.api_url).rstrip("/") != wanted
    ]
    for service in stale:
        _stop_and_forget(service)
    return len(stale)


def stop_slot_service(name: str) -> bool:
    """Stop Prefect's acquisition services for the one limit `name`, if any; whether one was running.

    Private: `QueueService._instances`, keyed by `hash((service class, frozenset(names)))`: Prefect starts one
    service per set of limit names (a thread, a task on its global loop, an API client with a CA bundle and a
    connection) and never stops it — a long-lived medic serve kept one per (runbook, target) it remediated
    (+2 MB RSS and 1-2 fds each: the soak's slope, issue 12). `locks.exclusive_slot` calls this when a name's
    last holder in this process lets go; what is queued is still served, the next acquisition starts afresh.
    """
    names = frozenset([name])
    stopped = False
    for cls in (ConcurrencySlotAcquisitionWithLeaseService, ConcurrencySlotAcquisitionService):
        service = cls._instances.get(hash((cls, names)))
        if isinstance(service, cls) and getattr(service, "_done_event", None) is not None:
            _stop_and_forget(service)
            stopped = True
    return stopped


def _stop_and_forget(service: Any) -> None:
    """Drain a queue service and drop the two references Prefect keeps to every service it ever started:
    its `_at_exit` in CPython's `threading._threading_atexits` and its `drain` call in the global loop
    thread's `_on_shutdown` list (both private). Without this a stopped service — its client, CA bundle
    and queue — is kept until exit: a new one per remediation would be a leak of ~2.7 MB a run."""
    service._drain(at_exit=False)
    # threading keeps functools.partial(service._at_exit); the loop keeps Call(fn=service.drain).
    for calls, fn_of in ((threading._threading_atexits, lambda c: getattr(c, "func", None)),  # type: ignore[attr-defined]
                         (get_global_loop()._on_shutdown, lambda c: getattr(c, "fn", None))):
        for call in [c for c in list(calls) if getattr(fn_of(c), "__self__", None) is service]:
            with contextlib.suppress(ValueError):
                calls.remove(call)  # in place: another thread may append meanwhile


# -------------------------------------------------------------------------------------- telemetry


def telemetry_workers() -> list[EventsWorker | APILogWorker]:
    """The live events and API-log workers of this process.

    Private: `QueueService._instances`, the registry of every Prefect queue service, filtered: the public
    `EventsWorker.drain_all()` drains *all* services, including the slot and lease services a running flow needs.
    """
    return [w for w in list(EventsWorker._instances.values()) if isinstance(w, (EventsWorker, APILogWorker))]


def drain_telemetry(timeout: float) -> bool:
    """Send what the events/log workers hold and stop them; True if all were done within `timeout`.

    Private: `QueueService._drain(at_exit=False)` returns a concurrent future (the public `drain()` has no
    deadline). A stopped worker is dropped from the registry, so the next event starts one for the current
    API. If `_drain` changes, medic serve, the lab and the tests could hang at exit sending to a stopped server.
    """
    futures = [w._drain(at_exit=False) for w in telemetry_workers()]
    _done, pending = concurrent.futures.wait(futures, timeout=timeout)
    return not pending


# ----------------------------------------------------------------------------------- TLS contexts

class _SharedTLS:
    """`ssl` as `prefect.client.orchestration` sees it: `create_default_context(cafile=F)` made once per CA
    file (again if F changes on disk); any other call (the insecure path mutates its context) passes through."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    @staticmethod
    def create_default_context(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        cafile = kwargs.get("cafile")
        if args or set(kwargs) != {"cafile"} or not isinstance(cafile, str):
            return ssl.create_default_context(*args, **kwargs)
        return _made_once(("tls", cafile, os.stat(cafile).st_mtime), lambda: ssl.create_default_context(cafile=cafile))


def share_tls_contexts() -> None:
    """Let Prefect's API clients share one verifying TLS context per CA file (idempotent).

    Undocumented: `PrefectClient`/`SyncPrefectClient.__init__` call `ssl.create_default_context(cafile=…)` for
    every client, 25-30 ms of CPU each, and a run makes several (its engine's, its suspension observer's, its
    sync tasks'): 0.36 → 0.20 s from alert to first stage, measured. Prefect never changes that context
    after making it. If it stops calling it this way, runs start slower again, never less safely.
    """
    import prefect.client.orchestration as orchestration

    if not isinstance(orchestration.ssl, _SharedTLS):
        orchestration.ssl = _SharedTLS()  # type: ignore[assignment]


# ------------------------------------------------------------------------------------ running flows


@contextlib.contextmanager
def no_flow_heartbeats() -> Iterator[None]:
    """Flow-run heartbeats off for the block (a sync flow run then saves the ~1 s heartbeat join at exit).

    Undocumented: `flows.heartbeat_frequency` accepts None only from Python (the env var must be an int
    >= 30); the sync engine (`prefect.flow_engine._send_heartbeats`) skips its thread when it is None.
    If the setting is renamed, `copy_with_update` raises; if None stops meaning "off", sync runs
    get ~1 s slower again (bench/prefect_overhead.py shows it).
    """
    context = get_settings_context()
    quiet = _quiet_copy(context.settings)
    with SettingsContext(profile=context.profile, settings=quiet):
        yield


def _quiet_copy(settings: Settings) -> Settings:
    """`settings` with heartbeats off, built once per settings object (a pydantic-settings validation,
    ~50 ms, that `temporary_settings` would repeat for every run); a process has one per Prefect API."""
    return _made_once(("quiet", id(settings)), lambda: (settings, settings.copy_with_update(
        updates={"flows.heartbeat_frequency": None})))[1]  # the entry holds `settings`: its id stays its own


_made: dict[Any, Any] = {}
_made_lock = threading.Lock()


def _made_once(key: Any, make: Callable[[], T]) -> T:
    """What `make()` returns for `key`, made once (a few entries per process; cleared past 16)."""
    with _made_lock:
        if key not in _made:
            if len(_made) >= 16:
                _made.clear()
            _made[key] = make()
        return _made[key]


def shared_sync_client() -> contextlib.AbstractContextManager[Any]:
    """One sync Prefect client for everything the block runs (entered with `with`).

    Undocumented: `prefect.context.SyncClientContext.get_or_create()`. Without it every sync task of an async
    flow builds its own client. If it goes away, this raises at import, loudly.
    """
    return SyncClientContext.get_or_create()


def engine_run_flow(flow: Any, flow_run: FlowRun, parameters: dict[str, Any]) -> State | Awaitable[State]:
    """Execute an *existing* flow run of `flow` in this process; the final State (awaitable for async flows).

    Undocumented: `prefect.flow_engine.run_flow(flow, flow_run=, parameters=, return_type="state")`, the
    engine entry point `flow(...)` uses internally. medic needs it to run a run it created itself (under
    a deployment, Pending, so no runner also picks it up) at once, without a worker's 2-12 s poll. If its
    signature changes, every in-process run (medic serve, `medic run`) fails with a TypeError.
    """
    return run_flow(flow, flow_run=flow_run, parameters=parameters, return_type="state")  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- pause and resume

_PAUSED_STATE_NAME = "paused"  # Prefect names a pause's input keys after the state: "paused-<key>-…"


async def pause_for_input(model: type[BaseModel], *, timeout: int, poll_interval: float, key: str) -> Any:
    """Pause the current flow run until it is resumed with input of `model` (a RunInput class).

    Undocumented: `apause_flow_run(poll_interval=)` is typed `int` but sleeps with `anyio.sleep`, so a
    float works; medic polls every 0.2 s (click → continue ≈0.15 s instead of ≈0.6 s at 1 s). If a
    future version casts it to int, approvals get slower (bench/approval_latency.py), not wrong.
    """
    return await apause_flow_run(wait_for_input=model, timeout=timeout,
                                 poll_interval=poll_interval, key=key)  # type: ignore[arg-type]


def pause_keyset(key: str) -> Keyset:
    """The flow-run-input keys (`schema`, `response`, `description`) of a pause made with `key`.

    Undocumented naming: `keyset_from_paused_state` uses f"{state.name.lower()}-{pause_key}", i.e.
    "paused-<key>". medic reads the response under these keys when a resume lands between its own
    deadline and the flow's next poll. If the naming changes, such a last-moment approval is lost
    (read as "timed out") — the compat test compares this with where Prefect really stored the input.
    """
    return keyset_from_base_key(f"{_PAUSED_STATE_NAME}-{key}")


def run_input_model(model: type[M], *, description: str | None = None) -> type[BaseModel]:
    """The RunInput class Prefect makes from `model`, with `description` (Markdown) shown above the form.

    Undocumented: `prefect.input.run_input.run_input_subclass_from_type` (`pause_flow_run` calls it too; we
    call it first to attach the description). If it is renamed, every approval pause fails at import.
    """
    return run_input_subclass_from_type(model).with_initial_data(description=description)  # type: ignore[union-attr]


async def load_run_input(model: type[M], keyset: Keyset, flow_run_id: UUID) -> Any:
    """The input a resume stored under `keyset` for `flow_run_id`, as `model`'s RunInput class."""
    return await run_input_subclass_from_type(model).aload(keyset, flow_run_id=flow_run_id)  # type: ignore[union-attr]


_SCHEMA_RACE_TEXT = "schema not found"  # resume endpoint: "Run input schema not found."


def is_input_schema_race(result: OrchestrationResult[Any]) -> bool:
    """A resume refused only because the run is Paused but has not stored its input schema yet.

    Prefect's pause sets Paused first and saves the schema a moment later; a resume in between gets REJECT
    "Run input schema not found." (transient). If the text changes, such a click reads "rejected input".
    """
    reason = getattr(result.details, "reason", None) or ""
    return result.status is SetStateStatus.REJECT and _SCHEMA_RACE_TEXT in reason.lower()


def is_expired_pause(result: OrchestrationResult[Any]) -> bool:
    """A resume refused because the run's server-side pause timeout has passed.

    Undocumented: `HandleResumingPausedFlows` answers REJECT *with a Failed state*. If it answered
    otherwise, such a click would read "rejected input" instead of "timed out".
    """
    return (result.status is SetStateStatus.REJECT and result.state is not None
            and result.state.type is StateType.FAILED)


async def force_flow_run_state(client: PrefectClient, flow_run_id: UUID | str, state: State) -> None:
    """Set a flow run's state, skipping orchestration rules (`set_flow_run_state(..., force=True)`).

    Where the rules would refuse: Paused/Running → Pending to adopt a run after a medic serve restart,
    → Crashed for a run nobody executes any more, Paused → Running at medic's own approval deadline.
    Relied on: forcing bypasses *every* rule; else adopted runs cannot restart, orphans stay "Running".
    """
    await client.set_flow_run_state(flow_run_id, state, force=True)


def latest_lease_id() -> UUID | None:
    """The lease of the concurrency slot this flow run acquired last (None outside a run, or none yet).

    Private: `prefect.concurrency.context.ConcurrencyContext.cleanup_lease_ids`, where Prefect appends every
    lease it grants in a run (`concurrency()` does not expose it). A failover records it in its cluster hold
    so that `medic failover-ack` releases exactly the dead run's lease (`decrement-with-lease`) instead of
    resetting the count, which the dead lease's later lapse would decrement again — under a new holder.
    If it is renamed, the slot frees itself when the lease lapses (300 s): slower, never wrong.
    """
    from prefect.concurrency.context import ConcurrencyContext

    ctx = ConcurrencyContext.get()
    ids = getattr(ctx, "cleanup_lease_ids", None) if ctx is not None else None
    return ids[-1] if ids else None
