"""The tests' one way to wait: `medic.core.polling.wait_until`, failing the test with what it last saw.

A test never sleeps to let something happen: it looks at the thing it needs (a run's state, a metric,
a process) every `interval` seconds until it is there, and after `timeout` seconds fails with an
AssertionError naming what it waited for and the last value it saw. Make `check` return what you
look at (not a bare bool), so that the failure shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from medic.core.polling import ExcTypes, wait_until
from medic.errors import WaitTimeout

T = TypeVar("T")

__all__ = ["wait_for", "wait_for_no_problems"]


def wait_for(check: Callable[[], T], *, what: str, timeout: float, done: Callable[[T], bool] = bool,
             interval: float = 0.2, ignore: ExcTypes = ()) -> T:
    """The first value of `check()` that is `done`; else AssertionError with the last one seen."""
    try:
        return wait_until(check, what=what, timeout=timeout, done=done, interval=interval, ignore=ignore)
    except WaitTimeout as exc:
        raise AssertionError(str(exc)) from None


def wait_for_no_problems(problems: Callable[[], list[str]], *, what: str, timeout: float,
                         interval: float = 0.2, ignore: ExcTypes = ()) -> None:
    """Until `problems()` lists none (a health check that says what is still wrong)."""
    wait_for(problems, what=what, timeout=timeout, done=lambda found: not found, interval=interval, ignore=ignore)
