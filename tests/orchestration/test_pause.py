"""medic.orchestration.pause: a real paused flow run on the session lab's Prefect, resumed for real."""

from __future__ import annotations

import asyncio
import json
import uuid

from prefect.client.orchestration import get_client

from medic.orchestration.pause import ResumeStatus, resume_with_input
from medic.orchestration.runs import run_flow_now
from medic_lab.state import LabState
from tests.orchestration.support import adder, forced_pause, start_paused
from medic.core.polling import wait_until_async


def test_resume_outcomes_bad_good_second(lab: LabState) -> None:
    async def go():
        run, task = await start_paused(60)
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


def test_the_description_is_shown_above_the_resume_form(lab: LabState) -> None:
    async def go():
        run, task = await start_paused(60, key="described", description="**Restart** nginx on web-1?")
        async def read() -> str:
            async with get_client() as client:
                return await client.read_flow_run_input(run.id, "paused-described-description")

        # Prefect stores the description beside the pause; on a loaded server it can land a moment after
        # the run shows Paused: ask until it is there (bounded), then resume.
        shown = await wait_until_async(read, what="the pause's description to be stored", timeout=30,
                                       interval=0.2, ignore=Exception)
        await resume_with_input(run.id, {"approved": False, "by": "alice"})
        return shown, await task

    shown, outcome = asyncio.run(go())
    assert json.loads(shown) == "**Restart** nginx on web-1?"  # stored as JSON
    assert outcome.result == "approved=False by=alice"


def test_approval_timeout_ends_completed_and_late_click_is_refused(lab: LabState) -> None:
    async def go():
        run, task = await start_paused(1.5)
        outcome = await task
        late = await resume_with_input(run.id, {"approved": True, "by": "late"})
        return outcome, late

    outcome, late = asyncio.run(go())
    assert (outcome.state_type, outcome.result) == ("COMPLETED", "approval timed out")
    assert late.status is ResumeStatus.ALREADY_RESUMED
    assert late.state_type == "COMPLETED"


def test_resume_not_paused_and_not_found(lab: LabState) -> None:
    async def go():
        done = await run_flow_now(adder, {"x": 1})
        return (
            await resume_with_input(done.flow_run_id, {"approved": True, "by": "x"}),
            await resume_with_input(uuid.uuid4(), {"approved": True, "by": "x"}),
            await resume_with_input("not-a-uuid", None),
        )

    not_paused, missing, garbage = asyncio.run(go())
    assert not_paused.status is ResumeStatus.NOT_PAUSED and not_paused.state_type == "COMPLETED"
    assert missing.status is ResumeStatus.NOT_FOUND and "no flow run" in missing.reason
    assert garbage.status is ResumeStatus.NOT_FOUND and "not a flow run id" in garbage.reason


def test_a_run_that_never_finished_entering_its_pause_is_not_paused_try_again(lab: LabState) -> None:
    """Paused, but its input schema never stored (the pausing process died in between): the resume is
    retried for a bounded while, then answered "not paused … try again", never "rejected input"."""

    async def go():
        run = await forced_pause(f"approval-{uuid.uuid4().hex[:6]}")
        return await resume_with_input(run.id, {"approved": True, "by": "alice"})

    outcome = asyncio.run(go())
    assert outcome.status is ResumeStatus.NOT_PAUSED and outcome.state_type == "PAUSED"
    assert "still entering its pause" in outcome.reason


def test_a_resume_after_the_server_side_pause_timeout_is_timed_out(lab: LabState) -> None:
    async def go():
        run = await forced_pause("approval", with_keyset=False, timeout_s=-60)
        return await resume_with_input(run.id, {"approved": True, "by": "alice"})

    outcome = asyncio.run(go())
    assert outcome.status is ResumeStatus.TIMED_OUT and outcome.state_type == "FAILED"
    assert "timed out" in outcome.reason
