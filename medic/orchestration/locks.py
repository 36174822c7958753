"""One remediation per (runbook, target) at a time, across processes: Prefect global concurrency limits.

    remediation_lock_name(runbook, target)   the limit name for one (runbook, target) pair
    ensure_concurrency_limit(name, limit)    create or update a global concurrency limit
    exclusive_slot(name)                     async context manager yielding True if we hold the slot

Measured: acquire + release ≈0.07 s; a refused attempt ≈0.03 s (docs/prefect-runtime.md).
A Prefect that does not answer (restarting) is asked again for `outage_wait_s`: a run's one chance at
its slot should not end in Failed because Prefect restarted that second (soak, issue 12).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from medic.core.polling import backoff, retry_async
from medic.errors import PrefectError
from medic.orchestration.prefect_compat import (
    SlotAcquisitionError,
    SlotTimeout,
    forget_slot_services_of_other_apis,
    slot_refusal,
    stop_slot_service,
)

__all__ = ["ensure_concurrency_limit", "exclusive_slot", "remediation_lock_name"]

T = TypeVar("T")
_LIMIT_NAME_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_KNOWN_LIMITS: set[tuple[str | None, str, int]] = set()
# Holders (and would-be holders) of each limit name in this process, across its threads and loops: the
# last one out stops Prefect's per-name acquisition service (a thread and a client per name otherwise).
_USERS: Counter[str] = Counter()
_USERS_LOCK = threading.Lock()


def remediation_lock_name(runbook: str, target: str) -> str:
    """The global-concurrency-limit name guarding remediations of `runbook` on `target`."""
    parts = [_LIMIT_NAME_UNSAFE.sub("-", p.lower()).strip("-") for p in (runbook, target)]
    if not all(parts):
        raise PrefectError(f"cannot build a lock name from runbook={runbook!r} target={target!r}")
    return f"medic-remediate-{parts[0]}-{parts[1]}"


class _NoAnswer(PrefectError):
    """Prefect did not answer (refused, reset, timed out): maybe a restart, worth asking again."""


async def _through_outage(attempt: Callable[[], Awaitable[T]], outage_wait_s: float) -> T:
    """`attempt()`, asked again (0.5 s, growing to 5 s) while it raises _NoAnswer, for up to `outage_wait_s`."""
    return await retry_async(attempt, delays=backoff(0.5, factor=1.5, cap=5.0), retry_on=(_NoAnswer,),
                             timeout=outage_wait_s)


def _missing(name: str) -> str:
    return f"concurrency limit {name!r} does not exist; call ensure_concurrency_limit() first"


async def ensure_concurrency_limit(name: str, limit: int = 1, *, outage_wait_s: float = 0.0) -> None:
    """Create the global concurrency limit `name` with `limit` slots, or update its limit; a Prefect
    that does not answer is asked again for up to `outage_wait_s`.

    Remembered per process: a long-lived medic serve pays the API round trips once per name.
    """
    # Per API: a process may talk to more than one Prefect in its life (tests, a re-pointed CLI).
    key = (get_current_settings().api.url, name, limit)
    if key in _KNOWN_LIMITS:
        return
    if limit < 0:
        raise PrefectError(f"concurrency limit {name!r}: limit must be >= 0, got {limit}")
    try:
        await _through_outage(lambda: _set_limit(name, limit), outage_wait_s)
    except PrefectError:
        raise
    except Exception as exc:  # noqa: BLE001 - any client failure is "Prefect cannot answer"
        raise PrefectError(f"cannot create or update concurrency limit {name!r}: {exc}") from exc
    _KNOWN_LIMITS.add(key)


async def _set_limit(name: str, limit: int) -> None:
    """One try at making `name` a `limit`-slot active limit; _NoAnswer when Prefect cannot be reached."""
    try:
        async with get_client() as client:
            try:
                current = await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
                    return
                except ObjectAlreadyExists:  # created concurrently
                    current = await client.read_global_concurrency_limit_by_name(name)
            if current.limit != limit or not current.active:
                await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit, active=True))
    except httpx.TransportError as exc:
        raise _NoAnswer(f"cannot create or update concurrency limit {name!r}: {type(exc).__name__}: {exc}; "
                        "check that the Prefect API answers") from exc


async def _visibly_full(name: str) -> bool:
    """Whether the limit has no free slot right now (one read, ~30 ms); raises if it does not exist."""
    try:
        async with get_client() as client:
            current = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound as exc:
        raise PrefectError(_missing(name)) from exc
    except Exception:  # noqa: BLE001 - no answer: the acquisition (which waits out an outage) decides
        return False
    return bool(current.active and current.active_slots >= current.limit)


@contextlib.asynccontextmanager
async def exclusive_slot(name: str, *, wait_seconds: float = 0.0, outage_wait_s: float = 0.0) -> AsyncIterator[bool]:
    """Hold one slot of the existing global limit `name`; yield whether we got it.

    `wait_seconds=0` asks once (~30 ms) and yields False at once when another holder has it, so a
    second remediation of the same (runbook, target) can report "already in progress" instead of
    queueing. The limit must exist (`ensure_concurrency_limit`); a missing limit is a PrefectError,
    not a silent "no limit". The slot is leased (300 s, renewed while held) and released on exit.
    An acquisition Prefect does not answer is asked again for up to `outage_wait_s`, then PrefectError.
    """
    # Cheap pre-check: a refused acquisition makes Prefect log an ERROR line, so skip the attempt
    # when the limit is visibly full. The acquisition below stays the source of truth.
    if wait_seconds <= 0 and await _visibly_full(name):
        yield False
        return
    api_url = get_current_settings().api.url
    if api_url:  # Prefect's acquisition service keeps the API it started with; we may have moved on
        forget_slot_services_of_other_apis(api_url)
    with _USERS_LOCK:
        _USERS[name] += 1
    try:
        async with _held(name, wait_seconds, outage_wait_s) as got:
            yield got
    finally:
        with _USERS_LOCK:
            _USERS[name] -= 1
            if _USERS[name] <= 0:
                del _USERS[name]
                stop_slot_service(name)  # under the lock: a new user starts a fresh service after this


async def _enter(name: str, wait_seconds: float) -> Any | None:
    """One acquisition through Prefect's strict `concurrency()`: the entered holder, or None when refused."""
    kwargs: dict[str, Any] = {"max_retries": 0} if wait_seconds <= 0 else {"timeout_seconds": wait_seconds}
    holder = concurrency(name, occupy=1, strict=True, **kwargs)
    try:
        await holder.__aenter__()
    except SlotTimeout:
        return None
    except SlotAcquisitionError as exc:
        refusal = slot_refusal(exc)
        if refusal == "missing":
            raise PrefectError(_missing(name)) from exc
        if refusal == "busy":  # full, and not allowed to wait
            return None
        cause = f" — {type(exc.__cause__).__name__}: {exc.__cause__}" if exc.__cause__ is not None else ""
        raise _NoAnswer(f"cannot acquire concurrency slot {name!r}: {exc}{cause}") from exc
    return holder


@contextlib.asynccontextmanager
async def _held(name: str, wait_seconds: float, outage_wait_s: float) -> AsyncIterator[bool]:
    """One slot of `name`, refusals turned into False, an unanswered acquisition asked again."""
    try:
        holder = await _through_outage(lambda: _enter(name, wait_seconds), outage_wait_s)
    except _NoAnswer as exc:
        waited = f" for {outage_wait_s:g} s" if outage_wait_s > 0 else ""
        raise PrefectError(f"{exc}; Prefect did not answer{waited}: check that the Prefect API answers "
                           "(a restart in progress?)") from exc
    if holder is None:
        yield False
        return
    try:
        yield True
    except BaseException as exc:
        if not await holder.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await holder.__aexit__(None, None, None)
