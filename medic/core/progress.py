"""The run's timeline, and live progress for whoever watches (the CLI's live view, logs).

Stages call `Timeline.note(...)`; every entry is kept for the report and sent to the listeners
registered in this process, so `medic run` can show each stage as it happens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from medic.core.report import TimelineEntry, utcnow

log = logging.getLogger("medic.run")
Listener = Callable[[TimelineEntry, bool], None]  # (entry, recorded): False for a passing announcement
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> Callable[[], None]:
    """Register a listener; returns a function that removes it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


class Timeline:
    def __init__(self) -> None:
        self.entries: list[TimelineEntry] = []

    def note(self, stage: str, message: str) -> TimelineEntry:
        entry = TimelineEntry(at=utcnow(), stage=stage, message=message)
        self.entries.append(entry)
        log.info("%s: %s", stage, message)
        _tell(entry, recorded=True)
        return entry

    def announce(self, stage: str, message: str) -> None:
        """Say what is happening now (shown live, not kept in the report)."""
        _tell(TimelineEntry(at=utcnow(), stage=stage, message=message), recorded=False)


def _tell(entry: TimelineEntry, *, recorded: bool) -> None:
    for listener in list(_listeners):
        listener(entry, recorded)
