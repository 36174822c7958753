"""medic.orchestration.runtime against a real, temporary Prefect server (started once for this module)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel, Field

from medic.errors import PrefectError
from medic.orchestration.runtime import (
    flush_prefect_telemetry,
    point_prefect_at,
    ResumeStatus,
    create_deployment_run,
    ensure_concurrency_limit,
    exclusive_slot,
    remediation_lock_name,
    resume_with_input,
    run_flow_now,
    start_deployment_run_now,
    wait_for_approval,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """A fresh Prefect server with its own PREFECT_HOME; always stopped, even when tests fail."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    home = Path(tempfile.mkdtemp(prefix="medic-prefect-test-"))
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": url}
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    previous = os.environ.get("PREFECT_API_URL")
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}: {(home / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prefect server did not answer /health within 90 s")
            time.sleep(0.3)
        point_prefect_at(url)
        yield url
    finally:
        flush_prefect_telemetry()  # while this server answers; switching back would too, popping not
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            point_prefect_at(previous)  # back to the session lab's Prefect
        try:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


class Decision(BaseModel):
    approved: bool = Field(description="Run the recovery step?")
    by: str = Field(description="Who decided")


def _flows():
    from prefect import flow, task

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    async def adder(x: int) -> int:
        return double(x) + 1

    @flow
    def sync_adder(x: int) -> int:
        return double(x) + 1

    @flow
    async def broken() -> None:
        raise RuntimeError("remediation blew up")

    @flow
    async def needs_approval(timeout: float) -> str:
        decision = await wait_for_approval(Decision, timeout=timeout, poll_interval=0.2)
        if decision is None:
            return "approval timed out"
        return f"approved={decision.approved} by={decision.by}"

    return adder, sync_adder, broken, needs_approval


async def _wait_paused(flow_run_id: uuid.UUID) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for _ in range(300):
            run = await client.read_flow_run(flow_run_id)
            if run.state and run.state.is_paused() and run.state.state_details.run_input_keyset:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"flow run {flow_run_id} never paused")


async def _start_paused(flow, timeout: float):
    from medic.orchestration.runtime import _create_flow_run

    run = await _create_flow_run(flow, {"timeout": timeout}, None)
    task = asyncio.create_task(run_flow_now(flow, {"timeout": timeout}, flow_run=run))
    await _wait_paused(run.id)
    return run, task


# ------------------------------------------------------------------------------------------ runs


def test_run_flow_now_async_and_sync_flows(prefect_api: str) -> None:
    adder, sync_adder, _, _ = _flows()

    async def go():
        return await run_flow_now(adder, {"x": 20}), await run_flow_now(sync_adder, {"x": 3})

    a, s = asyncio.run(go())
    assert (a.state_type, a.result, a.ok) == ("COMPLETED", 41, True)
    assert (s.state_type, s.result) == ("COMPLETED", 7)


def test_flush_delivers_queued_events_before_the_server_goes(prefect_api: str) -> None:
    """Task-run events go out from a background worker; flushing sends them now and retires the worker.

    Without it a process whose Prefect server has stopped waits ~50 s per queued event at exit.
    """
    from prefect.events.worker import EventsWorker

    adder, _, _, _ = _flows()
    outcome = asyncio.run(run_flow_now(adder, {"x": 1}))
    assert flush_prefect_telemetry(timeout=30) is True
    live = [w for w in EventsWorker._instances.values() if isinstance(w, EventsWorker)]
    assert not live, "a drained worker must not be reused for the next API URL"
    body = {"filter": {"related": {"id": [f"prefect.flow-run.{outcome.flow_run_id}"]},
                       "event": {"prefix": ["prefect.task-run."]}}, "limit": 50}
    deadline = time.monotonic() + 30  # the server persists received events in batches
    while True:
        events = httpx.post(f"{prefect_api}/events/filter", json=body, timeout=10).json()["events"]
        if "prefect.task-run.Completed" in {e["event"] for e in events} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "prefect.task-run.Completed" in {e["event"] for e in events}, events


def test_failed_flow_is_an_outcome_not_an_exception(prefect_api: str) -> None:
    _, _, broken, _ = _flows()
    outcome = asyncio.run(run_flow_now(broken))
    assert outcome.state_type == "FAILED"
    assert not outcome.ok and outcome.result is None
    assert "remediation blew up" in (outcome.message or "")


def test_deployment_run_starts_in_process_and_belongs_to_deployment(prefect_api: str) -> None:
    adder, _, _, _ = _flows()

    async def go():
        deployment = await adder.ato_deployment(name="medic-test")
        deployment_id = await deployment.aapply()
        run, task = await start_deployment_run_now(adder, "adder/medic-test", {"x": 1}, idempotency_key="k-1")
        outcome = await task
        again = await create_deployment_run("adder/medic-test", {"x": 1}, idempotency_key="k-1")
        return deployment_id, run, outcome, again

    deployment_id, run, outcome, again = asyncio.run(go())
    assert run.deployment_id == deployment_id
    assert outcome.flow_run_id == run.id
    assert (outcome.state_type, outcome.result) == ("COMPLETED", 3)
    assert again.id == run.id  # same idempotency key → the same run, not a second remediation


def test_a_redeployed_deployment_is_looked_up_again(prefect_api: str) -> None:
    """Deployment ids are remembered; one that was deleted and deployed again (a new id) still gets runs."""
    adder, _, _, _ = _flows()

    async def go():
        from prefect.client.orchestration import get_client

        first_id = await (await adder.ato_deployment(name="medic-redeploy")).aapply()
        first = await create_deployment_run("adder/medic-redeploy", {"x": 1})
        async with get_client() as client:
            await client.delete_deployment(first_id)
        second_id = await (await adder.ato_deployment(name="medic-redeploy")).aapply()
        second = await create_deployment_run("adder/medic-redeploy", {"x": 2})
        return first_id, first, second_id, second

    first_id, first, second_id, second = asyncio.run(go())
    assert first_id != second_id
    assert first.deployment_id == first_id and second.deployment_id == second_id


def test_unknown_deployment_is_a_prefect_error(prefect_api: str) -> None:
    with pytest.raises(PrefectError, match="deployment 'adder/nope' does not exist"):
        asyncio.run(create_deployment_run("adder/nope"))


# -------------------------------------------------------------------------------------- approval


def test_resume_outcomes_bad_good_second(prefect_api: str) -> None:
    _, _, _, needs_approval = _flows()

    async def go():
        from prefect.client.orchestration import get_client

        run, task = await _start_paused(needs_approval, 60)
        async with get_client() as client:
            schema = await client.read_flow_run_input(run.id, "paused-approval-schema")
        bad = await resume_with_input(run.id, {"approved": "maybe", "by": "mallory"})
        missing = await resume_with_input(run.id, {})
        good = await resume_with_input(run.id, {"approved": True, "by": "alice"})
        second = await resume_with_input(run.id, {"approved": False, "by": "bob"})
        return schema, bad, missing, good, second, await task

    schema, bad, missing, good, second, outcome = asyncio.run(go())
    assert '"approved"' in schema and "Run the recovery step?" in schema  # what the UI form renders
    assert bad.status is ResumeStatus.REJECTED_INPUT and "approved" in bad.reason
    assert missing.status is ResumeStatus.REJECTED_INPUT and "required" in missing.reason
    assert good.status is ResumeStatus.ACCEPTED and good.accepted
    assert second.status is ResumeStatus.ALREADY_RESUMED
    assert (outcome.state_type, outcome.result) == ("COMPLETED", "approved=True by=alice")


def test_approval_timeout_ends_completed_and_late_click_is_refused(prefect_api: str) -> None:
    _, _, _, needs_approval = _flows()

    async def go():
        run, task = await _start_paused(needs_approval, 1.5)
        outcome = await task
        late = await resume_with_input(run.id, {"approved": True, "by": "late"})
        return outcome, late

    outcome, late = asyncio.run(go())
    assert (outcome.state_type, outcome.result) == ("COMPLETED", "approval timed out")
    assert late.status is ResumeStatus.ALREADY_RESUMED
    assert late.state_type == "COMPLETED"


def test_resume_not_paused_and_not_found(prefect_api: str) -> None:
    adder, _, _, _ = _flows()

    async def go():
        done = await run_flow_now(adder, {"x": 1})
        return (
            await resume_with_input(done.flow_run_id, {"approved": True, "by": "x"}),
            await resume_with_input(uuid.uuid4(), {"approved": True, "by": "x"}),
            await resume_with_input("not-a-uuid", None),
        )

    not_paused, missing, garbage = asyncio.run(go())
    assert not_paused.status is ResumeStatus.NOT_PAUSED and not_paused.state_type == "COMPLETED"
    assert missing.status is ResumeStatus.NOT_FOUND
    assert garbage.status is ResumeStatus.NOT_FOUND


# ----------------------------------------------------------------------------------- concurrency


def test_remediation_lock_name() -> None:
    assert remediation_lock_name("Disk Full", "web-1.lab") == "medic-remediate-disk-full-web-1.lab"
    with pytest.raises(PrefectError, match="cannot build a lock name"):
        remediation_lock_name("disk", "///")


def test_exclusive_slot_one_holder_at_a_time(prefect_api: str) -> None:
    name = remediation_lock_name("service-down", f"web-{uuid.uuid4().hex[:6]}")

    async def go():
        from prefect.client.orchestration import get_client

        await ensure_concurrency_limit(name, 1)
        await ensure_concurrency_limit(name, 1)  # idempotent
        seen = []
        async with exclusive_slot(name) as first:
            seen.append(first)
            async with exclusive_slot(name) as second:
                seen.append(second)
        async with exclusive_slot(name) as after_release:
            seen.append(after_release)
        await ensure_concurrency_limit(name, 2)
        async with exclusive_slot(name) as a, exclusive_slot(name) as b:
            seen += [a, b]
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(name)
        return seen, limit

    seen, limit = asyncio.run(go())
    assert seen == [True, False, True, True, True]
    assert limit.limit == 2 and limit.active_slots == 0


def test_exclusive_slot_refused_attempt_under_race(prefect_api: str) -> None:
    """Two concurrent attempts (no pre-check shortcut possible for both): exactly one wins."""
    name = f"medic-test-race-{uuid.uuid4().hex[:6]}"

    async def attempt(results: list[bool], both_answered: asyncio.Event) -> None:
        async with exclusive_slot(name) as got:
            results.append(got)
            if len(results) == 2:
                both_answered.set()
            # The winner holds its slot until the other attempt has its answer (a fixed sleep let a
            # slow second attempt arrive after the release and win too).
            await asyncio.wait_for(both_answered.wait(), timeout=60)

    async def go():
        await ensure_concurrency_limit(name, 1)
        results: list[bool] = []
        both_answered = asyncio.Event()
        await asyncio.gather(attempt(results, both_answered), attempt(results, both_answered))
        return sorted(results)

    assert asyncio.run(go()) == [False, True]


def test_exclusive_slot_missing_limit_is_an_error(prefect_api: str) -> None:
    async def go():
        async with exclusive_slot(f"medic-missing-{uuid.uuid4().hex[:6]}"):
            pass

    with pytest.raises(PrefectError, match="does not exist; call ensure_concurrency_limit"):
        asyncio.run(go())
