"""medic.orchestration.locks: global concurrency limits on the session lab's real Prefect server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect.client.orchestration import get_client

from medic.errors import PrefectError
from medic.orchestration.locks import ensure_concurrency_limit, exclusive_slot, remediation_lock_name
from medic_lab.state import LabState
from tests.support.waits import wait_for


def test_remediation_lock_name() -> None:
    assert remediation_lock_name("Disk Full", "web-1.lab") == "medic-remediate-disk-full-web-1.lab"
    with pytest.raises(PrefectError, match="cannot build a lock name"):
        remediation_lock_name("disk", "///")


def test_exclusive_slot_one_holder_at_a_time(lab: LabState) -> None:
    name = remediation_lock_name("service-down", f"web-{uuid.uuid4().hex[:6]}")

    async def go():
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


def test_exclusive_slot_refused_attempt_under_race(lab: LabState) -> None:
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


def test_exclusive_slot_missing_limit_is_an_error(lab: LabState) -> None:
    async def go():
        async with exclusive_slot(f"medic-missing-{uuid.uuid4().hex[:6]}"):
            pass

    with pytest.raises(PrefectError, match="does not exist; call ensure_concurrency_limit"):
        asyncio.run(go())


def test_negative_limit_is_refused_before_asking_prefect() -> None:
    with pytest.raises(PrefectError, match="limit must be >= 0, got -1"):
        asyncio.run(ensure_concurrency_limit("medic-test-negative", -1))


def test_slots_of_many_targets_leave_no_thread_per_target_behind(lab: LabState) -> None:
    """Prefect starts an acquisition service (thread + API client) per limit name and keeps it: medic
    stops it when the name's last holder lets go, so a long-lived medic serve does not grow per target."""
    import threading

    names = [remediation_lock_name("service-down", f"web-{uuid.uuid4().hex[:6]}") for _ in range(12)]

    def slot_threads() -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith("ConcurrencySlotAcquisition"))

    async def go() -> list[bool]:
        got = []
        for name in names:
            await ensure_concurrency_limit(name, 1)
            async with exclusive_slot(name) as held:
                got.append(held)
        return got

    before = slot_threads()
    assert asyncio.run(go()) == [True] * len(names)
    # A stopped service ends its thread on Prefect's loop a moment later; without the stop all 12 stay.
    wait_for(slot_threads, what=f"the slot-acquisition threads of {len(names)} released limits to end "
             f"(there were {before} before)", timeout=10, done=lambda n: n <= before)
