"""Where each approval card is and how its wait ended, kept in Prefect so every process can reach it.

Three parties touch a card, maybe on three machines: the flow (posts it, counts the inputs it takes,
marks it decided) on whichever worker runs it, the Slack endpoint of medic serve (updates it when a
click finds the run no longer waiting), and a re-executed flow after a restart (finds and reuses
its card). So a card is a Prefect Variable, `medic-card-<flow run id>`, whose value is the
`CardRecord` as a JSON object — the Prefect UI's Variables page shows it.

Changes are read-modify-write, so two writers must not interleave: every `change` holds the one
slot of the global concurrency limit `medic-approval-cards` (`medic.orchestration.mutex`, shared by
every machine) while it reads, edits and writes. A holder killed mid-change blocks the others until
its lease lapses (≤ 60 s); `change` waits at most `wait_s` (30 s) for the slot, then raises
PrefectError. Reads take no lock: a variable write is one transaction.

A variable holds at most 5,000 characters of JSON (Prefect's limit): a card whose texts are longer
is stored with its longest texts shortened (Slack shows at most 3,000 per section anyway).
Cards are not deleted when their run ends (a late click still finds "already decided"); delete old
ones in the UI or with `prefect variable delete` — medic only reads the card of a live run.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel, ValidationError

from medic.clients.slack import ApprovalCard, Decision
from medic.errors import PrefectError
from medic.orchestration.mutex import prefect_mutex
from medic.orchestration.prefect_rest import call

__all__ = ["CARD_LOCK", "CardRecord", "CardStore", "card_variable"]

log = logging.getLogger("medic.approval.card_store")
CARD_LOCK = "medic-approval-cards"
_VARIABLE_MAX = 4900  # prefect.types.MAX_VARIABLE_VALUE_LENGTH (5000 bytes of compact JSON), less a margin
_SHORTENED = " …(shortened)"
_CLIPPABLE = ("check_mode_result", "diagnosis_summary", "detect_value", "planned_action", "detect_query", "title")
_NAME_UNSAFE = re.compile(r"[^a-z0-9_-]+")


class CardRecord(BaseModel):
    """The approval card of one flow run: where it is in Slack, what it shows, how the wait ended."""

    flow_run_id: str
    channel: str | None = None
    ts: str | None = None
    card: ApprovalCard
    consumed: int = 0  # inputs the flow has taken from its pauses; the endpoint waits for this to grow
    decision: Decision | None = None
    decided_by: list[str] = []
    decided_at: datetime | None = None
    note: str | None = None

    @property
    def waiting(self) -> bool:
        return self.decision is None


def card_variable(flow_run_id: str) -> str:
    """The Prefect Variable name of a run's card."""
    return "medic-card-" + _NAME_UNSAFE.sub("-", flow_run_id.lower())


def _fit(record: CardRecord) -> dict:
    """The record as JSON, its longest card texts shortened until it fits a variable."""
    value = record.model_dump(mode="json")
    while (excess := len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()) - _VARIABLE_MAX) > 0:
        card = value["card"]
        name = max(_CLIPPABLE, key=lambda f: len(card.get(f) or ""))
        text = card.get(name) or ""
        if len(text) <= 40:
            raise PrefectError(f"approval card of run {record.flow_run_id} does not fit a Prefect variable "
                               f"({excess} characters too many even with its texts shortened)")
        # A JSON-escaped character can take up to 6 characters: cut generously, then measure again.
        keep = max(20, len(text) - excess - len(_SHORTENED) - 16)
        card[name] = text[:keep] + _SHORTENED
    return value


class CardStore:
    """Approval cards in Prefect Variables; `change` serialised across machines by one Prefect slot."""

    def __init__(self, *, wait_s: float = 30.0) -> None:
        self.wait_s = wait_s

    def get(self, flow_run_id: str) -> CardRecord | None:
        """The stored card of a run; None when there is none (or it is unreadable: logged)."""
        name = card_variable(flow_run_id)
        try:
            found = call("GET", f"/variables/name/{name}", what=f"read approval card {name}")
        except PrefectError as exc:
            if exc.status == 404:
                return None
            raise
        try:
            return CardRecord.model_validate(found["value"])
        except (ValidationError, TypeError, KeyError):
            log.warning("approval card variable %s is not a card record; ignoring it", name)
            return None

    def _put(self, record: CardRecord) -> None:
        name, value = card_variable(record.flow_run_id), _fit(record)
        try:
            call("PATCH", f"/variables/name/{name}", json={"value": value}, what=f"update approval card {name}")
        except PrefectError as exc:
            if exc.status != 404:
                raise
            call("POST", "/variables/", json={"name": name, "value": value, "tags": ["medic-card"]},
                 what=f"store approval card {name}")

    def change(self, flow_run_id: str, edit: Callable[[CardRecord | None], CardRecord | None]) -> CardRecord | None:
        """Apply `edit` to the stored record (None when there is none) and store what it returns,
        with no other change of any card in between, on any machine."""
        with prefect_mutex(CARD_LOCK, wait_s=self.wait_s):
            record = edit(self.get(flow_run_id))
            if record is not None:
                self._put(record)
            return record
