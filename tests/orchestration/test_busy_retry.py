"""When an alert whose run found the remediation slot held (AlreadyRunning) is taken again.

Pure decision on Prefect's own run and state objects; the end-to-end case (a dead holder's lease, the
resend starting the run that repairs) is tests/chaos/test_dead_slot_holder.py.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Completed, Failed, Running

from medic.orchestration.launcher import refused_as_busy

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)


def _run(state) -> FlowRun:  # noqa: ANN001 - a Prefect state
    return FlowRun(flow_id=uuid.uuid4(), state=state)


@pytest.mark.parametrize(("ended_s_ago", "expected"), [(0, False), (74.9, False), (75, True), (600, True)])
def test_an_already_running_run_is_retried_only_once_the_wait_has_passed(ended_s_ago: float, expected: bool) -> None:
    run = _run(Completed(name="AlreadyRunning", timestamp=NOW - timedelta(seconds=ended_s_ago)))
    assert refused_as_busy(run, 75, now=NOW) is expected


@pytest.mark.parametrize("state", [
    Completed(name="Recovered"), Completed(name="NotNeeded"), Failed(name="Rejected"), Failed(name="NotRecovered"),
    Running(), None])
def test_any_other_run_is_an_answer_not_a_busy_refusal(state) -> None:  # noqa: ANN001 - a Prefect state
    if state is not None:
        state = state.model_copy(update={"timestamp": NOW - timedelta(hours=1)})
    assert refused_as_busy(_run(state), 75, now=NOW) is False
