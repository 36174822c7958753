"""The guard in front of every route of medic serve (ASGI middleware), before any handler runs.

In this order, each refusal answered at once with the reason in a JSON body:

1. rate limit per client (429 + Retry-After) — the client is the credential's name when one checks
   out, else the peer address; a token bucket (MEDIC_INTAKE_RATE_PER_S, MEDIC_INTAKE_BURST);
2. credentials on `/alertmanager`, `/runs` and `/healthz?verbose=1` (401; `medic.service.credentials`);
   logged with the reason, never with what was offered;
3. content type: JSON only on `/alertmanager` and `/runs` (415 — a browser form or a `text/plain` post
   from a web page cannot start anything), Slack's form encoding only on `/slack/actions`;
4. body size (413): a Content-Length over the limit is refused before a byte of body is read; other
   bodies (chunked too) are counted while read and refused as soon as they pass the limit.
The handler then gets the body from memory (at most the limit) and the client's name in
`scope["medic.client"]` (None without a credential).

Default rate, 100/s with a burst of 1000, from Alertmanager's traffic: it sends one request per
aggregation group per `group_interval` (5 min by default) plus one when a group resolves; 1000 groups
turning up at once (a storm) arrive within a moment as 1000 requests — within the burst — and even a
storm kept up at 100 notifications/s for 10 s never runs the bucket dry. A client past that is broken
or hostile, and Retry-After tells a well-behaved one when to try again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medic.service.credentials import NOT_CONFIGURED, Credentials
from medic.service.intake import MAX_BODY_BYTES

__all__ = ["MAX_BODY_BYTES", "IntakeGuard", "TokenBuckets"]

log = logging.getLogger("medic.service.guard")

JSON = "application/json"
SLACK_FORM = "application/x-www-form-urlencoded"
#: route → the one content type it accepts; these (but not Slack, which signs) also need a credential
PROTECTED = {"/alertmanager": JSON, "/runs": JSON}
CONTENT_TYPES = {**PROTECTED, "/slack/actions": SLACK_FORM}


class TokenBuckets:
    """One token bucket per client: `burst` requests at once, refilled at `rate` per second."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.clock, self.max_clients = rate, float(burst), clock, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client → (tokens, when counted)

    def take(self, client: str) -> float:
        """0.0 when `client` may go ahead (one token taken), else the seconds until it may."""
        now = self.clock()
        tokens, then = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            self._prune()
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self) -> None:
        """Keep memory bounded: forget clients whose bucket is full again (as if never seen)."""
        if len(self._buckets) <= self.max_clients:
            return
        now = self.clock()
        for client, (tokens, then) in list(self._buckets.items()):
            if tokens + (now - then) * self.rate >= self.burst:
                del self._buckets[client]
        while len(self._buckets) > self.max_clients:  # all busy: drop the longest known
            del self._buckets[next(iter(self._buckets))]


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class BodyTooLarge(Exception):
    """Internal: the body passed the limit while being read."""


class IntakeGuard:
    """ASGI middleware: rate limit, credentials, content type and body size, before any handler."""

    def __init__(self, app: ASGIApp, *, credentials: Credentials, limiter: TokenBuckets,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.credentials, self.limiter, self.max_body = app, credentials, limiter, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path, method = scope["path"], scope["method"]
        peer = scope["client"][0] if scope.get("client") else "?"
        client, why = self.credentials.identify(headers.get("authorization"))
        scope["medic.client"] = client

        wait = self.limiter.take(client or f"peer {peer}")
        if wait > 0:
            log.warning("rate-limited %s %s from %s (%s)", method, path, peer, client or "no credential")
            retry_after = str(max(1, math.ceil(wait)))
            await _refuse(scope, receive, send, 429, f"too many requests from {client or peer}: the limit is "
                          f"{self.limiter.rate:g}/s with bursts of {self.limiter.burst:g}; retry after "
                          f"{retry_after} s", {"retry-after": retry_after})
            return

        verbose_health = path == "/healthz" and _asks_verbose(scope)
        if (path in PROTECTED or verbose_health) and client is None:
            reason = NOT_CONFIGURED if not self.credentials.configured else (
                f"{why}: send `Authorization: Bearer <token>` or HTTP basic auth as configured in "
                f"MEDIC_INTAKE_TOKEN / MEDIC_INTAKE_BASIC_AUTH")
            log.warning("refused %s %s from %s: %s", method, path, peer,
                        "no intake credential configured" if not self.credentials.configured else why)
            await _refuse(scope, receive, send, 401, reason, {"www-authenticate": 'Bearer realm="medic"'})
            return

        wanted = CONTENT_TYPES.get(path)
        if wanted is not None and method == "POST" and _media_type(headers.get("content-type")) != wanted:
            got = (headers.get("content-type") or "no content type")[:100]
            await _refuse(scope, receive, send, 415, f"expected {wanted}, got {got}")
            return

        length = headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > self.max_body:  # refused before a byte of the body is read
            await _refuse(scope, receive, send, 413, f"payload of {length} bytes is over the "
                          f"{self.max_body}-byte limit")
            return
        try:
            body, more = await self._read_body(receive)
        except BodyTooLarge:
            await _refuse(scope, receive, send, 413, f"payload is over the {self.max_body}-byte limit "
                          f"(stopped reading there)")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False} if more is None else more
            return await receive()  # after the body: disconnect notices, for streaming answers

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> tuple[bytes, Message | None]:
        """The whole body, refusing (BodyTooLarge) as soon as it passes the limit; a disconnect is kept
        as the message to hand on."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _asks_verbose(scope: Scope) -> bool:
    query = scope.get("query_string", b"").decode("latin-1")
    return any(part.split("=", 1)[0] == "verbose" and part.split("=", 1)[-1] not in ("0", "false", "")
               for part in query.split("&") if part)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, reason: str,
                  headers: dict[str, str] | None = None) -> None:
    """Answer `status` with the reason and close the connection: an unread body is never read."""
    response = JSONResponse({"error": reason}, status_code=status, headers={"connection": "close", **(headers or {})})
    await response(scope, receive, send)


def describe_client(scope: dict[str, Any]) -> str | None:
    """The credential's client name the guard found for this request (None: no credential)."""
    client = scope.get("medic.client")
    return client if isinstance(client, str) else None
