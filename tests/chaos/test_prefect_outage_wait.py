"""A run waits out a Prefect outage at the steps it cannot skip: taking its remediation slot (the limit
made first) and reading its approval card (`MEDIC_PREFECT_OUTAGE_WAIT_S`).

Why: in the 30-minute soak 7 runs met a 30 s prefect-down there and ended Failed; the sweep's next run
then repaired, but asked the human a second time. Nothing lost here means: calls started while Prefect
is down wait, and once it is back the slot is taken, the limit exists and the card is read — while the
same calls without the wait fail within seconds naming what they could not do.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from medic.approval.card_store import CardRecord, CardStore
from medic.errors import PrefectError
from medic.orchestration.locks import ensure_concurrency_limit, exclusive_slot
from medic.orchestration.prefect_rest import patient
from medic_lab import faults
from medic_lab.state import LabState
from tests.support.chaos import Inject
from tests.support.prefect_api import prefect_json, prefect_request

pytestmark = pytest.mark.chaos

WAIT_S = 120.0


@pytest.fixture
def limit_names(lab: LabState) -> Iterator[list[str]]:
    """Fresh limit names; every limit made under them is deleted at teardown."""
    names = [f"medic-remediate-outage-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    yield names
    for name in names:
        prefect_request(lab.prefect_api_url, "DELETE", f"/v2/concurrency_limits/{name}")


async def take(name: str, outage_wait_s: float) -> bool:
    async with exclusive_slot(name, outage_wait_s=outage_wait_s) as got:
        return got


async def read_card_as_a_run_does(run_id: str) -> CardRecord | None:
    """As `request_decision` does: the patience set in the run's task, the read in a worker thread."""
    with patient(WAIT_S):
        return await asyncio.to_thread(CardStore().get, run_id)


def test_the_slot_the_limit_and_the_card_wait_for_prefect_to_come_back(
        lab: LabState, limit_names: list[str], inject: Inject) -> None:
    # (limit_names before inject: its teardown deletes the limits after inject's has fixed Prefect)
    if not lab.with_prefect:
        pytest.skip("this session's lab runs without Prefect")
    held, made_later, impatient = limit_names
    for name in (held, impatient):
        asyncio.run(ensure_concurrency_limit(name, 1))
    run_id = str(uuid.uuid4())  # a run with no card yet: the read answers None
    inject("prefect-down")
    with ThreadPoolExecutor(3) as pool:
        slot = pool.submit(asyncio.run, take(held, WAIT_S))
        card = pool.submit(asyncio.run, read_card_as_a_run_does(run_id))
        limit = pool.submit(asyncio.run, ensure_concurrency_limit(made_later, 1, outage_wait_s=WAIT_S))
        # without the wait: a clear failure, within seconds
        with pytest.raises(PrefectError, match=r"cannot read approval card .* unreachable after 5 s"):
            CardStore().get(run_id)
        with pytest.raises(PrefectError, match=rf"cannot acquire concurrency slot '{impatient}'.*"
                                               r"check that the Prefect API answers"):
            asyncio.run(take(impatient, 0))
        waiting = {"slot": slot.done(), "card": card.done(), "limit": limit.done()}
        assert not any(waiting.values()), f"gave up while Prefect was down: {waiting}"
        assert faults.fix_host(lab, "prefect-down").startswith("started ")
        assert slot.result(timeout=WAIT_S + 30) is True
        assert card.result(timeout=WAIT_S + 30) is None
        limit.result(timeout=WAIT_S + 30)
    made = prefect_json(lab.prefect_api_url, "GET", f"/v2/concurrency_limits/{made_later}")
    assert made["limit"] == 1 and made["active"], made
    slots = prefect_json(lab.prefect_api_url, "GET", f"/v2/concurrency_limits/{held}")["active_slots"]
    assert slots == 0, f"the slot taken after the outage was not given back: {slots} active"
