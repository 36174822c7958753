"""medic.orchestration.runs (and api) against the session lab's real Prefect server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from medic.errors import PrefectError
from medic.orchestration.api import CREATE_RETRY_DELAYS, post_with_fast_retry
from medic.orchestration.runs import create_deployment_run, run_flow_now, start_deployment_run_now
from medic_lab.state import LabState
from tests.orchestration.support import adder, broken, sync_adder
from tests.support.busy_prefect import BusyServer, busy_prefect
from tests.support.closed_port import closed_port  # noqa: F401  (a fixture: a port held closed)


def test_run_flow_now_async_and_sync_flows(lab: LabState) -> None:
    async def go():
        return await run_flow_now(adder, {"x": 20}), await run_flow_now(sync_adder, {"x": 3})

    a, s = asyncio.run(go())
    assert (a.state_type, a.result, a.ok) == ("COMPLETED", 41, True)
    assert (s.state_type, s.result) == ("COMPLETED", 7)


def test_failed_flow_is_an_outcome_not_an_exception(lab: LabState) -> None:
    outcome = asyncio.run(run_flow_now(broken))
    assert outcome.state_type == "FAILED"
    assert not outcome.ok and outcome.result is None
    assert "remediation blew up" in (outcome.message or "")


def test_deployment_run_starts_in_process_and_belongs_to_deployment(lab: LabState) -> None:
    async def go():
        deployment_id = await (await adder.ato_deployment(name="medic-test")).aapply()
        run, task = await start_deployment_run_now(adder, "adder/medic-test", {"x": 1}, idempotency_key="k-1")
        outcome = await task
        again = await create_deployment_run("adder/medic-test", {"x": 1}, idempotency_key="k-1")
        return deployment_id, run, outcome, again

    deployment_id, run, outcome, again = asyncio.run(go())
    assert run.deployment_id == deployment_id
    assert outcome.flow_run_id == run.id
    assert (outcome.state_type, outcome.result) == ("COMPLETED", 3)
    assert again.id == run.id  # same idempotency key → the same run, not a second remediation


def test_a_redeployed_deployment_is_looked_up_again(lab: LabState) -> None:
    """Deployment ids are remembered; one that was deleted and deployed again (a new id) still gets runs."""

    async def go():
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


def test_unknown_deployment_is_a_prefect_error(lab: LabState) -> None:
    with pytest.raises(PrefectError, match="deployment 'adder/nope' does not exist"):
        asyncio.run(create_deployment_run("adder/nope"))


# --------------------------------------------------------------- the fast retry on a busy (503) server


@pytest.fixture
def busy_server(request: pytest.FixtureRequest) -> Iterator[BusyServer]:
    with busy_prefect(request.param) as server, temporary_settings(updates={PREFECT_API_URL: server.url}):
        yield server


@pytest.mark.parametrize("busy_server", [[503, 429, 503]], indirect=True)
def test_busy_answers_are_retried_until_the_server_takes_the_request(busy_server: BusyServer) -> None:
    assert asyncio.run(post_with_fast_retry("a run", "/flow_runs/", {})) == {"id": "f00d"}
    assert busy_server.seen == 4


@pytest.mark.parametrize("busy_server", [[503] * (len(CREATE_RETRY_DELAYS) + 1)], indirect=True)
def test_a_server_busy_past_every_retry_is_a_prefect_error_with_its_status(busy_server: BusyServer) -> None:
    with pytest.raises(PrefectError, match="refused to create a run: 503.*still busy") as caught:
        asyncio.run(post_with_fast_retry("a run", "/flow_runs/", {}))
    assert caught.value.status == 503
    assert busy_server.seen == len(CREATE_RETRY_DELAYS) + 1


@pytest.mark.parametrize("busy_server", [[422]], indirect=True)
def test_a_refusal_is_not_retried(busy_server: BusyServer) -> None:
    with pytest.raises(PrefectError, match="refused to create a run: 422") as caught:
        asyncio.run(post_with_fast_retry("a run", "/flow_runs/", {}))
    assert caught.value.status == 422 and busy_server.seen == 1


def test_an_unreachable_api_is_a_prefect_error_naming_it(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with pytest.raises(PrefectError, match=f"cannot create a run: Prefect API at {url} unreachable"):
            asyncio.run(post_with_fast_retry("a run", "/flow_runs/", {}))
