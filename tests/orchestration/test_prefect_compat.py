"""Every Prefect internal medic relies on (medic/orchestration/prefect_compat.py), checked for real.

One test per compat item, against the session lab's Prefect server where it is a behaviour. When one
fails after a Prefect upgrade, the item's docstring says what breaks in medic; fix the compat module,
not its callers. The last test proves no other module uses a private Prefect name.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import ssl
import uuid
import weakref

import prefect
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.concurrency.asyncio import concurrency
from prefect.events.worker import EventsWorker
from prefect.flow_runs import apause_flow_run
from prefect.settings import get_current_settings, temporary_settings
from prefect.states import Pending

from medic.core.polling import wait_until_async
from medic.orchestration import prefect_compat as compat
from medic.orchestration.locks import ensure_concurrency_limit, exclusive_slot
from medic.orchestration.pause import resume_with_input
from medic.orchestration.runs import _create_flow_run, run_flow_now
from medic.orchestration.telemetry import flush_prefect_telemetry
from medic_lab.state import LabState
from tests.orchestration.support import Decision, adder, events_of, forced_pause, start_paused, sync_adder
from tests.support.waits import wait_for



def test_prefect_is_the_pinned_version() -> None:
    """The compat items were checked against this version; an upgrade must run this file first."""
    assert prefect.__version__ == "3.8.8", f"prefect {prefect.__version__}: re-check every test in this file"


# ------------------------------------------------------------------------------- concurrency slots


def test_slot_errors_keep_their_classes_and_texts(lab: LabState) -> None:
    """A missing limit and a full one raise SlotAcquisitionError with the texts slot_refusal reads;
    a wait that runs out raises SlotTimeout."""
    missing, full = f"medic-compat-missing-{uuid.uuid4().hex[:6]}", f"medic-compat-full-{uuid.uuid4().hex[:6]}"

    async def refusal(name: str, **kwargs: object) -> BaseException:
        try:
            async with concurrency(name, occupy=1, strict=True, **kwargs):  # type: ignore[arg-type]
                pass
        except Exception as exc:  # noqa: BLE001 - the exception is what is under test
            return exc
        raise AssertionError(f"concurrency({name!r}) was granted")

    async def go():
        await ensure_concurrency_limit(full, 1)
        no_limit = await refusal(missing, max_retries=0)
        async with exclusive_slot(full) as held:
            assert held
            busy = await refusal(full, max_retries=0)
            late = await refusal(full, timeout_seconds=0.5)
        return no_limit, busy, late

    no_limit, busy, late = asyncio.run(go())
    assert isinstance(no_limit, compat.SlotAcquisitionError) and compat.slot_refusal(no_limit) == "missing", no_limit
    assert isinstance(busy, compat.SlotAcquisitionError) and compat.slot_refusal(busy) == "busy", busy
    assert isinstance(late, compat.SlotTimeout), repr(late)


def test_resetting_slots_frees_them_and_a_later_release_does_not_go_below_zero(lab: LabState) -> None:
    """What an adopted run relies on: the reset frees the slot a dead holder kept, and when that
    holder's lease ends (released here; lapsed in real life) the count stays at 0, not -1."""
    name = f"medic-compat-reset-{uuid.uuid4().hex[:6]}"

    async def active() -> int:
        async with get_client() as client:
            return (await client.read_global_concurrency_limit_by_name(name)).active_slots

    async def go():
        await ensure_concurrency_limit(name, 1)
        seen = []
        async with exclusive_slot(name) as dead_holder:
            seen.append((dead_holder, await active()))
            async with get_client() as client:
                await compat.reset_concurrency_slots(client, name)
            seen.append(await active())
            async with exclusive_slot(name) as adopted:
                seen.append((adopted, await active()))
            seen.append(await active())
        seen.append(await active())
        return seen

    assert asyncio.run(go()) == [(True, 1), 0, (True, 1), 0, 0]



def test_the_latest_lease_id_is_the_slot_just_taken_and_releasing_it_frees_the_slot(lab: LabState) -> None:
    """What `medic failover-ack` relies on: inside a flow run, the lease of the slot just acquired is
    found, and releasing that lease (as the ack does for a dead run) frees the slot exactly once — the
    holder's own release at exit finds no lease and leaves the count at 0."""
    name = f"medic-compat-lease-{uuid.uuid4().hex[:6]}"

    async def active() -> int:
        async with get_client() as client:
            return (await client.read_global_concurrency_limit_by_name(name)).active_slots

    @flow(name="compat-lease")
    async def holder() -> list:
        await ensure_concurrency_limit(name, 1)
        seen: list = [compat.latest_lease_id()]
        async with exclusive_slot(name) as got:
            lease = compat.latest_lease_id()
            seen += [got, lease is not None, await active()]
            async with get_client() as client:
                await client.release_concurrency_slots_with_lease(lease_id=lease)
            seen.append(await active())
        seen.append(await active())
        return seen

    assert compat.latest_lease_id() is None  # outside any run
    assert asyncio.run(holder()) == [None, True, True, 1, 0, 0]


def test_slot_services_bound_to_another_prefect_are_stopped_and_the_next_slot_uses_the_current_one(lab: LabState) -> None:
    name = f"medic-compat-moved-{uuid.uuid4().hex[:6]}"

    def slot_services() -> list:
        return [s for s in EventsWorker._instances.values()
                if type(s).__name__.startswith("ConcurrencySlotAcquisition")]

    async def hold(while_held=lambda: None) -> tuple[bool, object]:
        await ensure_concurrency_limit(name, 1)
        async with exclusive_slot(name) as got:
            return got, while_held()

    def forget_while_held() -> tuple[list, int, bool, int, bool]:
        bound_here = slot_services()
        kept = compat.forget_slot_services_of_other_apis(lab.prefect_api_url)
        still_there = all(s in EventsWorker._instances.values() for s in bound_here)
        # As seen by a process that now talks to another Prefect: the services of this one are stale.
        stale = compat.forget_slot_services_of_other_apis("http://127.0.0.1:9/api")
        gone = not any(s in EventsWorker._instances.values() for s in bound_here)
        return bound_here, kept, still_there, stale, gone

    got, (bound_here, kept, still_there, stale, gone) = asyncio.run(hold(forget_while_held))
    assert got is True
    assert bound_here, "holding a slot started no acquisition service"
    assert kept == 0 and still_there, "stopped a service of this API"
    assert stale == len(bound_here) and gone, "stale service still registered"
    assert asyncio.run(hold())[0] is True, "a slot after the services were forgotten was not acquired"


def test_the_slot_service_of_one_limit_name_is_stopped_and_the_next_acquisition_starts_a_new_one(lab: LabState) -> None:
    name = f"medic-compat-stop-{uuid.uuid4().hex[:6]}"

    def services_of_name() -> list:
        return [s for s in EventsWorker._instances.values() if type(s).__name__.startswith("ConcurrencySlotAcquisition")
                and getattr(s, "concurrency_limit_names", None) == [name]]

    async def hold() -> tuple[bool, list, bool]:
        await ensure_concurrency_limit(name, 1)
        async with exclusive_slot(name) as got:
            held = services_of_name()
        return got, held, compat.stop_slot_service(name)

    got, held, stopped_again = asyncio.run(hold())
    assert got is True and len(held) == 1, f"expected one acquisition service for {name}, saw {held}"
    assert services_of_name() == [], "the service of a name nobody holds is still registered"
    assert stopped_again is False, "stop_slot_service found a service exclusive_slot had already stopped"
    # Nothing keeps the stopped service (its client, CA bundle, queue) alive: Prefect's atexit hook and
    # its global loop's shutdown list are cleared too — else one service per remediation is a leak.
    gone = weakref.ref(held[0])
    del held

    def alive() -> bool:
        gc.collect()
        return gone() is not None

    wait_for(alive, what="the stopped slot service to be garbage-collected", timeout=10, done=lambda a: not a)
    assert asyncio.run(hold())[0] is True, "no slot after the name's service was stopped"


# -------------------------------------------------------------------------------------- telemetry


def test_telemetry_workers_are_found_and_drained_and_other_services_are_left_alone(lab: LabState) -> None:
    assert isinstance(EventsWorker._instances, dict)
    assert "at_exit" in inspect.signature(EventsWorker._drain).parameters
    name = f"medic-compat-services-{uuid.uuid4().hex[:6]}"

    async def go():
        await ensure_concurrency_limit(name, 1)
        async with exclusive_slot(name):  # Prefect's slot-acquisition service lives while the slot is held
            outcome = await run_flow_now(adder, {"x": 2})  # queues events
            workers = compat.telemetry_workers()
            others = [s for s in EventsWorker._instances.values() if s not in workers]
            drained = await asyncio.to_thread(compat.drain_telemetry, 30)
            kept = all(s in EventsWorker._instances.values() for s in others)
            return outcome, workers, others, drained, compat.telemetry_workers(), kept

    outcome, workers, others, drained, left, kept = asyncio.run(go())
    assert workers, "a flow run queued events but no events worker was found"
    assert others, "expected Prefect's concurrency services in the shared registry"
    assert drained is True
    assert not left
    assert kept, "drained a non-telemetry service"
    assert "prefect.flow-run.Completed" in events_of(lab.prefect_api_url, outcome.flow_run_id,
                                                     until="prefect.flow-run.Completed")


# ------------------------------------------------------------------------------------ running flows


def test_no_flow_heartbeats_stops_the_heartbeat_of_a_sync_run(lab: LabState) -> None:
    """A sync run emits a heartbeat event at start by default; under no_flow_heartbeats it emits none."""
    assert get_current_settings().flows.heartbeat_frequency is not None
    with compat.no_flow_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None
        quiet = sync_adder(1, return_state=True)
    loud = sync_adder(1, return_state=True)
    flush_prefect_telemetry()
    # Events are stored in the order sent: once the later run's heartbeat is in, the quiet run's are too.
    assert "prefect.flow-run.heartbeat" in events_of(lab.prefect_api_url, loud.state_details.flow_run_id,
                                                     until="prefect.flow-run.heartbeat")
    quiet_events = events_of(lab.prefect_api_url, quiet.state_details.flow_run_id, until="prefect.flow-run.Completed")
    assert "prefect.flow-run.heartbeat" not in quiet_events, quiet_events


def test_no_flow_heartbeats_builds_its_settings_once_per_settings_object() -> None:
    """The copy without heartbeats is made once (a pydantic-settings validation, ~50 ms) and reused by
    every later run; other settings (another Prefect) get their own copy, with their own values."""
    with compat.no_flow_heartbeats():
        first = get_current_settings()
    with compat.no_flow_heartbeats():
        again = get_current_settings()
    assert again is first and first.flows.heartbeat_frequency is None
    with temporary_settings(updates={"api.url": "http://127.0.0.1:9/api"}):
        with compat.no_flow_heartbeats():
            other = get_current_settings()
    assert other is not first and str(other.api.url) == "http://127.0.0.1:9/api"
    assert other.flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency is not None  # outside the block: as before


def _tls_context_of(client: object) -> ssl.SSLContext:
    return client._client._transport._pool._ssl_context  # type: ignore[attr-defined]  # httpx -> httpcore


def test_share_tls_contexts_gives_every_prefect_client_one_verifying_context() -> None:
    """Prefect builds a TLS context per API client (a CA-bundle load, 25-30 ms); once shared, clients made
    one after another, sync or async, hold the same one — still verifying certificates and host names."""
    compat.share_tls_contexts()
    compat.share_tls_contexts()  # idempotent
    first, second, sync = get_client(), get_client(), get_client(sync_client=True)
    shared = _tls_context_of(first)
    assert _tls_context_of(second) is shared and _tls_context_of(sync) is shared
    assert shared.verify_mode is ssl.CERT_REQUIRED and shared.check_hostname
    assert shared.cert_store_stats()["x509_ca"] > 0, "the CA bundle was not loaded into the shared context"


def test_share_tls_contexts_leaves_the_insecure_setting_its_own_context() -> None:
    """PREFECT_API_TLS_INSECURE_SKIP_VERIFY makes Prefect switch verification off on the context it made:
    that one must never be the shared one, or every later client would stop verifying."""
    compat.share_tls_contexts()
    with temporary_settings(updates={"api.tls_insecure_skip_verify": True}):
        insecure = _tls_context_of(get_client())
    verifying = _tls_context_of(get_client())
    assert insecure.verify_mode is ssl.CERT_NONE
    assert insecure is not verifying and verifying.verify_mode is ssl.CERT_REQUIRED and verifying.check_hostname


def test_shared_sync_client_is_shared_within_the_block(lab: LabState) -> None:
    with compat.shared_sync_client() as outer, compat.shared_sync_client() as inner:
        assert inner.client is outer.client


def test_engine_run_flow_executes_the_given_run_and_returns_its_state(lab: LabState) -> None:
    """`prefect.flow_engine.run_flow(flow, flow_run=, parameters=, return_type="state")` runs *our* run."""

    async def go():
        run = await _create_flow_run(adder, {"x": 4}, None)
        state = await compat.engine_run_flow(adder, run, {"x": 4})  # type: ignore[misc]
        async with get_client() as client:
            stored = await client.read_flow_run(run.id)
        return run, state, await state.result(), stored

    run, state, value, stored = asyncio.run(go())
    assert state.is_completed() and state.state_details.flow_run_id == run.id
    assert stored.state is not None and stored.state.is_completed()
    assert value == 9


# ---------------------------------------------------------------------------------- pause and resume


def test_pause_takes_a_fractional_poll_interval() -> None:
    parameters = inspect.signature(apause_flow_run).parameters
    assert {"wait_for_input", "timeout", "poll_interval", "key"} <= set(parameters)
    source = inspect.getsource(apause_flow_run)
    assert "anyio.sleep" in source and "int(poll_interval" not in source


def test_the_pause_keyset_is_where_prefect_stores_the_input(lab: LabState) -> None:
    key = f"approval-{uuid.uuid4().hex[:6]}"

    async def go():
        run, task = await start_paused(60, key=key, description="why we ask")
        async with get_client() as client:
            paused = await client.read_flow_run(run.id)
            description = await client.read_flow_run_input(run.id, compat.pause_keyset(key)["description"])
            assert (await resume_with_input(run.id, {"approved": True, "by": "alice"})).accepted
            response = await client.read_flow_run_input(run.id, compat.pause_keyset(key)["response"])
        loaded = await compat.load_run_input(Decision, compat.pause_keyset(key), run.id)
        return paused, description, response, loaded, await task

    paused, description, response, loaded, outcome = asyncio.run(go())
    assert paused.state is not None and paused.state.state_details.run_input_keyset == compat.pause_keyset(key)
    assert json.loads(description) == "why we ask"
    assert '"alice"' in response
    assert (loaded.approved, loaded.by) == (True, "alice")
    assert outcome.result == "approved=True by=alice"


def test_run_input_model_is_a_run_input_with_the_description() -> None:
    from prefect.input import RunInput

    made = compat.run_input_model(Decision, description="evidence, plan, deadline")
    assert issubclass(made, RunInput) and set(made.model_fields) >= {"approved", "by"}
    assert made._description == "evidence, plan, deadline"  # what asave() stores as the description


def test_a_resume_before_the_schema_is_stored_is_refused_with_the_text_we_match(lab: LabState) -> None:
    async def go():
        run = await forced_pause(f"approval-{uuid.uuid4().hex[:6]}")
        async with get_client() as client:
            return await client.resume_flow_run(run.id, run_input={"approved": True, "by": "alice"})

    result = asyncio.run(go())
    assert result.status is SetStateStatus.REJECT, result
    assert compat.is_input_schema_race(result), result.details
    assert not compat.is_expired_pause(result)


def test_a_resume_after_the_pause_expired_is_refused_with_a_failed_state(lab: LabState) -> None:
    async def go():
        run = await forced_pause("approval", with_keyset=False, timeout_s=-60)
        async with get_client() as client:
            return await client.resume_flow_run(run.id, run_input={})

    result = asyncio.run(go())
    assert compat.is_expired_pause(result), result
    assert not compat.is_input_schema_race(result)


def test_forcing_a_state_bypasses_the_rule_that_refuses_it(lab: LabState) -> None:
    """Paused → Pending (how a restart adopts a run) is refused by orchestration, and taken when forced."""

    async def go():
        run = await forced_pause(f"approval-{uuid.uuid4().hex[:6]}")
        async with get_client() as client:
            refused = await client.set_flow_run_state(run.id, Pending(message="adopt"))
            await compat.force_flow_run_state(client, run.id, Pending(message="adopt"))
            after = await client.read_flow_run(run.id)
        return refused, after

    refused, after = asyncio.run(go())
    assert refused.status is not SetStateStatus.ACCEPT, refused
    assert after.state is not None and after.state.is_pending()


def test_a_pause_key_used_before_returns_at_once_without_the_input(lab: LabState) -> None:
    """Why medic's approval step pauses under fresh keys after a restart (medic/approval/gate.py):
    Prefect treats a seen key as "already resumed" and returns at once, without waiting or any input."""
    name = f"pauses-twice-{uuid.uuid4().hex[:6]}"

    @flow(name=name)
    async def pauses_twice() -> list[object]:
        return [await compat.pause_for_input(compat.run_input_model(Decision), timeout=60, poll_interval=0.2,
                                             key="same") for _ in range(2)]

    async def paused_runs() -> list[FlowRun]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
                sort=FlowRunSort.ID_DESC, limit=5)  # both explicit: the client sends null, the server 422s
        return [r for r in runs if r.state and r.state.state_details.run_input_keyset]

    async def go():
        running = asyncio.create_task(run_flow_now(pauses_twice))
        try:
            runs = await wait_until_async(paused_runs, what=f"{name} paused for input", timeout=30, interval=0.05)
        except BaseException:
            running.cancel()
            raise
        assert (await resume_with_input(runs[0].id, {"approved": True, "by": "alice"})).accepted
        return await running

    outcome = asyncio.run(go())
    first, second = outcome.result
    assert first is not None and first.by == "alice"
    assert second is None, "the second pause under the same key should have returned at once, without input"
