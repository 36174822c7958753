"""medic.orchestration.telemetry: pointing this process at a Prefect API, and flushing what it owes one."""

from __future__ import annotations

import asyncio
import os

from prefect.settings import get_current_settings

from medic.core.net import free_port
from medic.orchestration.prefect_compat import telemetry_workers
from medic.orchestration.runs import run_flow_now
from medic.orchestration.telemetry import flush_prefect_telemetry, point_prefect_at
from medic_lab.state import LabState
from tests.orchestration.support import adder, events_of


def test_flush_delivers_queued_events_before_the_server_goes(lab: LabState) -> None:
    """Task-run events go out from a background worker; flushing sends them now and retires the worker.

    Without it a process whose Prefect server has stopped waits ~50 s per queued event at exit.
    """
    outcome = asyncio.run(run_flow_now(adder, {"x": 1}))
    assert flush_prefect_telemetry(timeout=30) is True
    assert not telemetry_workers(), "a drained worker must not be reused for the next API URL"
    assert "prefect.task-run.Completed" in events_of(lab.prefect_api_url, outcome.flow_run_id,
                                                     until="prefect.task-run.Completed")


def test_point_prefect_at_switches_this_process_and_its_children(lab: LabState) -> None:
    elsewhere = f"http://127.0.0.1:{free_port()}/api"
    try:
        point_prefect_at(elsewhere)
        assert (get_current_settings().api.url, os.environ["PREFECT_API_URL"]) == (elsewhere, elsewhere)
    finally:
        point_prefect_at(lab.prefect_api_url)
    assert get_current_settings().api.url == lab.prefect_api_url
