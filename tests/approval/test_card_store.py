"""The approval-card store in Prefect: a Variable per run, changes serialised by a Prefect slot.

Against the session lab's real Prefect server; concurrent writers in separate processes are in
tests/orchestration/test_shared_state.py.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from prefect.concurrency.sync import concurrency

from medic.approval.card_store import CARD_LOCK, CardRecord, CardStore, card_variable
from medic.clients.slack import ApprovalCard, Decision
from medic.errors import PrefectError
from medic_lab.state import LabState
from tests.support.prefect_api import prefect_json


def card(run_id: str, *, diagnosis: str = "nginx: stopped", check: str | None = None) -> ApprovalCard:
    return ApprovalCard(title="nginx down on web-1", runbook="service-down", targets=["web-1"],
                        detect_query='up{job="web"} == 0', detect_value="0", diagnosis_summary=diagnosis,
                        planned_action="ansible-playbook restart-service.yml --limit web-1", check_mode_result=check,
                        flow_run_id=run_id, flow_run_url="http://127.0.0.1/runs/x",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=5))


def test_a_card_is_a_prefect_variable_that_changes_and_reads_back(lab: LabState) -> None:
    store, run_id = CardStore(), str(uuid.uuid4())
    assert store.get(run_id) is None
    assert store.change(run_id, lambda found: found) is None, "an edit that returns None stores nothing"
    stored = store.change(run_id, lambda _: CardRecord(flow_run_id=run_id, channel="C1", ts="1.2", card=card(run_id)))
    assert store.get(run_id) == stored
    store.change(run_id, lambda r: r.model_copy(update={"decision": Decision.APPROVED, "decided_by": ["U0ALICE"]}))
    again = store.get(run_id)
    assert again is not None and again.decision is Decision.APPROVED and not again.waiting
    variable = prefect_json(lab.prefect_api_url, "GET", f"/variables/name/{card_variable(run_id)}")
    assert variable["name"] == f"medic-card-{run_id}" and variable["value"]["decided_by"] == ["U0ALICE"]


def test_a_card_too_long_for_a_variable_is_stored_with_its_longest_texts_shortened(lab: LabState) -> None:
    store, run_id = CardStore(), str(uuid.uuid4())
    long = card(run_id, diagnosis="é" * 3000, check="x" * 3000)  # non-ASCII: counted in bytes by Prefect
    store.change(run_id, lambda _: CardRecord(flow_run_id=run_id, card=long))
    stored = store.get(run_id)
    assert stored is not None and stored.card.title == long.title and stored.card.planned_action == long.planned_action
    for text in (stored.card.diagnosis_summary, stored.card.check_mode_result or ""):
        assert len(text) < 3000
    assert stored.card.check_mode_result.endswith("…(shortened)") or stored.card.diagnosis_summary.endswith("…(shortened)")


def test_a_change_waits_for_the_slot_and_gives_up_saying_so(lab: LabState) -> None:
    store, run_id = CardStore(wait_s=1.0), str(uuid.uuid4())
    store.change(run_id, lambda _: CardRecord(flow_run_id=run_id, card=card(run_id)))  # creates the limit too
    with concurrency(CARD_LOCK, occupy=1, strict=True, lease_duration=60):  # another writer holds the mutex
        with pytest.raises(PrefectError, match="slot of .medic-approval-cards. was not free within 1 s"):
            store.change(run_id, lambda r: r.model_copy(update={"consumed": 99}))
        assert store.get(run_id).consumed == 0, "reads take no lock; the refused change wrote nothing"
    assert store.change(run_id, lambda r: r.model_copy(update={"consumed": 1})).consumed == 1
