"""Rules of scheduled maintenance: the maintenance window and the batch size (SSM-style rate control).

The window is a setting (``MEDIC_MAINTENANCE_WINDOW``, UTC) so that the schedule in prefect.yaml and
the rule "only at night, only at weekends" are kept apart: a scheduled run that fires outside the
window is skipped (or waits for it, ``MEDIC_MAINTENANCE_OUTSIDE_WINDOW=wait``); a manual run may pass
``ignore_window=True``. Syntax, one or more windows separated by ``;``::

    Sat,Sun 02:00-04:00        Saturday and Sunday, 02:00 to 04:00 UTC
    Mon-Fri 22:00-02:00        weeknights; a window that ends before it starts ends the next day
    03:00-03:30                every day
    (empty)                    always allowed

The batch size is a count (``"2"``) or a share of the group (``"25%"``, rounded up, at least 1 host).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, time, timedelta, timezone
from enum import StrEnum
from typing import Literal, TypeVar

from pydantic import BaseModel, Field

from medic.errors import MaintenanceConfigError

__all__ = [
    "MaintenanceConfigError",
    "MaintenanceWindow",
    "WindowCheck",
    "WindowDecision",
    "WindowSpan",
    "check_window",
    "parse_batch_size",
    "parse_window",
    "split_batches",
]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^(?:(?P<days>[A-Za-z,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$")
_EXAMPLE = "e.g. 'Sat,Sun 02:00-04:00', 'Mon-Fri 22:00-02:00' or '03:00-03:30' (UTC)"
T = TypeVar("T")


class WindowSpan(BaseModel):
    """One window: on these weekdays (0 = Monday), from start for `length`."""

    days: frozenset[int]
    start: time
    length: timedelta

    def opening(self, day: datetime) -> datetime | None:
        """When this span opens on `day`'s date, if it opens that day."""
        if day.weekday() not in self.days:
            return None
        return datetime.combine(day.date(), self.start, tzinfo=timezone.utc)


class MaintenanceWindow(BaseModel):
    text: str
    spans: list[WindowSpan]

    def contains(self, now: datetime) -> bool:
        return self.open_until(now) is not None

    def open_until(self, now: datetime) -> datetime | None:
        """When the window that holds `now` closes; None when `now` is outside every window."""
        now = now.astimezone(timezone.utc)
        for span in self.spans:
            for back in (0, 1):  # a span that opened yesterday may still be open
                opened = span.opening(now - timedelta(days=back))
                if opened is not None and opened <= now < opened + span.length:
                    return opened + span.length
        return None

    def next_open(self, now: datetime) -> datetime:
        """`now` if the window is open, else the next time it opens."""
        now = now.astimezone(timezone.utc)
        if self.contains(now):
            return now
        openings = [o for span in self.spans for d in range(8)
                    if (o := span.opening(now + timedelta(days=d))) is not None and o > now]
        return min(openings)


def _days(text: str | None, whole: str) -> frozenset[int]:
    if not text:
        return frozenset(range(7))
    found: set[int] = set()
    for part in text.lower().split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(e[:3] not in DAYS or len(e) < 3 for e in ends):
            raise MaintenanceConfigError(
                f"maintenance window {whole!r}: {part!r} is not a day or day range (Mon..Sun, e.g. 'Sat,Sun' "
                f"or 'Mon-Fri'); {_EXAMPLE}")
        first, last = DAYS.index(ends[0][:3]), DAYS.index(ends[-1][:3])
        found.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(found)


def _clock(text: str, whole: str) -> time:
    hours, minutes = (int(x) for x in text.split(":"))
    if hours > 23 or minutes > 59:
        raise MaintenanceConfigError(f"maintenance window {whole!r}: {text} is not a time of day (00:00-23:59)")
    return time(hours, minutes)


def parse_window(text: str) -> MaintenanceWindow | None:
    """The window a setting describes; None for an empty setting (always allowed)."""
    if not text or not text.strip():
        return None
    spans = []
    for part in (p.strip() for p in text.split(";")):
        match = _SPAN.fullmatch(part)
        if not match:
            raise MaintenanceConfigError(
                f"maintenance window {text!r}: cannot read {part!r}; expected [DAYS ]HH:MM-HH:MM, {_EXAMPLE}")
        start, end = _clock(match["start"], text), _clock(match["end"], text)
        length = (datetime.combine(datetime.min, end) - datetime.combine(datetime.min, start)) % timedelta(days=1)
        if not length:
            raise MaintenanceConfigError(f"maintenance window {text!r}: {part!r} starts and ends at the same time")
        spans.append(WindowSpan(days=_days(match["days"], text), start=start, length=length))
    return MaintenanceWindow(text=text.strip(), spans=spans)


class WindowDecision(StrEnum):
    """Run now, wait until the window opens, or skip this run."""

    RUN = "run"
    WAIT = "wait"
    SKIP = "skip"


class WindowCheck(BaseModel):
    """What the window says about running now."""

    decision: WindowDecision
    window: str = Field("", description="the window's text; empty = always allowed")
    opens_at: datetime | None = None
    reason: str


def check_window(window_text: str, *, now: datetime, ignore_window: bool, outside: Literal["skip", "wait"],
                 max_wait: timedelta) -> WindowCheck:
    """Run now, wait until `opens_at`, or skip — and say why."""
    window = parse_window(window_text)
    if window is None:
        return WindowCheck(decision=WindowDecision.RUN, reason="no maintenance window configured: always allowed")
    if ignore_window:
        return WindowCheck(decision=WindowDecision.RUN, window=window.text, reason=f"window {window.text!r} ignored on request")
    if window.contains(now):
        return WindowCheck(decision=WindowDecision.RUN, window=window.text, reason=f"inside the window {window.text!r}")
    opens = window.next_open(now)
    when = opens.strftime("%a %Y-%m-%d %H:%M UTC")
    if outside == "wait" and opens - now <= max_wait:
        return WindowCheck(decision=WindowDecision.WAIT, window=window.text, opens_at=opens,
                           reason=f"outside the window {window.text!r}: waiting until it opens {when}")
    extra = f" (more than the {max_wait} wait allowed)" if outside == "wait" else ""
    return WindowCheck(decision=WindowDecision.SKIP, window=window.text, opens_at=opens,
                       reason=f"outside the maintenance window {window.text!r}; it opens {when}{extra}")


def parse_batch_size(text: str, total: int) -> int:
    """Hosts per batch for a group of `total` hosts: ``"2"`` → 2, ``"25%"`` of 6 → 2 (rounded up)."""
    raw = str(text).strip()
    percent = raw.endswith("%")
    number = raw.removesuffix("%").strip()
    if not number.isdigit() or int(number) < 1 or (percent and int(number) > 100):
        raise MaintenanceConfigError(
            f"batch size {text!r} is not a count of hosts (e.g. '2') or a percentage of the group "
            f"from 1% to 100% (e.g. '25%')")
    size = math.ceil(total * int(number) / 100) if percent else int(number)
    return max(1, min(size, max(total, 1)))


def split_batches(items: list[T], size: int) -> list[list[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
