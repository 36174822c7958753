"""Bounded retrying and waiting: the one way medic (and its lab, tests and benches) tries again.

Every loop that waits for something has a bound and, when the bound runs out, either hands back the
last answer (the caller decides what it means) or raises `WaitTimeout` naming what it waited for and
what it last saw. Nothing here sleeps to synchronise: it sleeps *between looks* at a condition.

    retry_async(attempt, retry_if=..., retry_on=..., delays=..., timeout=...)  -> the last result
    retry(...)                                                                 the same, blocking
    wait_until(check, what=..., timeout=..., done=...)       -> the first value that is done, else raises
    wait_until_async(...)                                                      the same, async
    backoff(first, factor=..., cap=...)                      delays growing geometrically up to `cap`

`delays` is any iterable of seconds (a tuple for a fixed count, `itertools.repeat(0.05)` or
`backoff(...)` with a `timeout`); the last attempt lands at the deadline, never after it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

from medic.errors import MedicError, WaitTimeout

__all__ = ["ExcTypes", "backoff", "retry", "retry_async", "wait_until", "wait_until_async"]

T = TypeVar("T")
ExcTypes = type[BaseException] | tuple[type[BaseException], ...]


def backoff(first: float, *, factor: float = 2.0, cap: float = 5.0) -> Iterator[float]:
    """first, first·factor, … capped at `cap`, forever (bound it with a `timeout` or `islice`)."""
    delay = first
    while True:
        yield min(delay, cap)
        delay *= factor


def _sleeps(delays: Iterable[float], timeout: float | None) -> Iterator[float]:
    """The pauses between attempts: from `delays`, shortened so the last attempt is at the deadline."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for delay in delays:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            delay = min(delay, left)
        yield max(delay, 0.0)


async def retry_async(
    attempt: Callable[[], Awaitable[T]],
    *,
    delays: Iterable[float],
    retry_if: Callable[[T], bool] = lambda _: False,
    retry_on: ExcTypes = (),
    timeout: float | None = None,
) -> T:
    """Await `attempt()` until `retry_if(result)` is false; return that result, or the last one.

    An exception of a `retry_on` type is retried too; when the delays (or `timeout`) run out it is
    raised. Other exceptions go straight through: they are not "try again later".
    """
    sleeps = _sleeps(delays, timeout)
    while True:
        try:
            result = await attempt()
        except retry_on:
            pause = next(sleeps, None)
            if pause is None:
                raise
            await asyncio.sleep(pause)
            continue
        if not retry_if(result):
            return result
        pause = next(sleeps, None)
        if pause is None:
            return result
        await asyncio.sleep(pause)


def retry(
    attempt: Callable[[], T],
    *,
    delays: Iterable[float],
    retry_if: Callable[[T], bool] = lambda _: False,
    retry_on: ExcTypes = (),
    timeout: float | None = None,
) -> T:
    """`retry_async` for blocking code (lab start-up, tests, benches)."""
    sleeps = _sleeps(delays, timeout)
    while True:
        try:
            result = attempt()
        except retry_on:
            pause = next(sleeps, None)
            if pause is None:
                raise
            time.sleep(pause)
            continue
        if not retry_if(result):
            return result
        pause = next(sleeps, None)
        if pause is None:
            return result
        time.sleep(pause)


class _Seen:
    """What a wait saw last: a value or the exception a look raised (kept for the timeout message)."""

    def __init__(self) -> None:
        self.value: Any = "nothing yet"

    def describe(self) -> str:
        if isinstance(self.value, BaseException):
            return f"{type(self.value).__name__}: {self.value}"[:300]
        return repr(self.value)[:300]


def _timeout(error: type[MedicError], what: str, timeout: float, seen: _Seen) -> MedicError:
    return error(f"{what}: not within {timeout:g} s (last seen: {seen.describe()})")


def wait_until(
    check: Callable[[], T],
    *,
    what: str,
    timeout: float,
    interval: float = 0.1,
    done: Callable[[T], bool] = bool,
    ignore: ExcTypes = (),
    error: type[MedicError] = WaitTimeout,
) -> T:
    """Call `check()` every `interval` s until `done(value)`; return that value.

    Exceptions of the `ignore` types count as "not yet" (and are reported as last seen); any other
    exception ends the wait at once — raise one from `check` to give up early (e.g. the process you
    wait for has exited). On timeout raises `error` (default `WaitTimeout`) saying `what` and the
    last value seen.
    """
    seen = _Seen()

    def look() -> bool:
        try:
            seen.value = check()
        except ignore as exc:
            seen.value = exc
            return False
        return done(seen.value)

    if retry(look, delays=itertools.repeat(interval), retry_if=lambda ok: not ok, timeout=timeout):
        return seen.value
    raise _timeout(error, what, timeout, seen)


async def wait_until_async(
    check: Callable[[], Awaitable[T]],
    *,
    what: str,
    timeout: float,
    interval: float = 0.1,
    done: Callable[[T], bool] = bool,
    ignore: ExcTypes = (),
    error: type[MedicError] = WaitTimeout,
) -> T:
    """`wait_until` for a check that must be awaited."""
    seen = _Seen()

    async def look() -> bool:
        try:
            seen.value = await check()
        except ignore as exc:
            seen.value = exc
            return False
        return done(seen.value)

    if await retry_async(look, delays=itertools.repeat(interval), retry_if=lambda ok: not ok, timeout=timeout):
        return seen.value
    raise _timeout(error, what, timeout, seen)
