"""The fault injector's own record: every break and fix, when it took effect — the ground truth medic's
incident timelines are checked against.

Append-only JSON lines in `<lab dir>/faults.jsonl`, one per `break_host`/`fix_host` (whatever called
it: `medic lab break`, the demo, a test). `at` is the wall-clock time (UTC) the action returned — a
SIGKILL has taken effect by then — and `began` the time it was asked for; `said` is the injector's
own words ("… was already down" for a fix with nothing to do). `medic lab faults` prints it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ValidationError

from medic_lab.state import LabState

__all__ = ["FaultEvent", "RECORD_FILE", "read_record", "recorded", "render_record"]

RECORD_FILE = "faults.jsonl"


class FaultEvent(BaseModel):
    at: datetime
    began: datetime
    fault: str
    host: str | None = None
    action: Literal["break", "fix"]
    said: str = ""


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def recorded(lab: LabState, action: Literal["break", "fix"], fault: str, host: str | None,
             act: Callable[[], str]) -> str:
    """Do `act` and append what it did, and when, to the lab's record (also when it fails: not recorded)."""
    began = time.time()
    said = act()
    event = FaultEvent(at=_utc(time.time()), began=_utc(began), fault=fault, host=host, action=action, said=said)
    line = (event.model_dump_json() + "\n").encode()
    fd = os.open(lab.lab_dir / RECORD_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write per line under O_APPEND: concurrent injectors never interleave
    finally:
        os.close(fd)
    return said


def read_record(lab: LabState, *, since: datetime | None = None) -> list[FaultEvent]:
    """Every recorded event (since `since`), oldest first; an unreadable line is skipped."""
    path = lab.lab_dir / RECORD_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            event = FaultEvent.model_validate_json(line)
        except ValidationError:
            continue
        if since is None or event.at >= since:
            events.append(event)
    return events


def render_record(events: list[FaultEvent]) -> str:
    if not events:
        return "no faults recorded"
    return "\n".join(f"{e.at.isoformat(timespec='milliseconds')}  {e.action:<5}  {e.fault:<16}  {e.host or '(lab)':<8}  "
                     f"{e.said}" for e in events)
