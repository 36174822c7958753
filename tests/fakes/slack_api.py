"""A small local fake of Slack's Web API, because Slack is the one far side a test cannot reach.

It is a real HTTP server on 127.0.0.1 (ephemeral port) that speaks the documented wire format of the
methods medic uses, so the real ``slack_sdk.WebClient`` — retries, encodings, error handling —
runs unchanged against it::

    with FakeSlack() as slack:
        notifier = SlackNotifier(token=slack.token, base_url=slack.base_url)
        notifier.post("#ops", "hello")
        assert slack.calls("chat.postMessage")[0].args["text"] == "hello"

Blocks are checked with slack_sdk's own Block Kit models, so a block over Slack's limits gets
``invalid_blocks`` here as it would from Slack.

Outages come from the lab: ``FakeSlack(control_file=...)`` reads that file (written by `medic lab
break slack-slow|slack-down`, `medic_lab.slack_faults.slack_control`) on every request, so a fault
injected from any process — the CLI, a test's `inject` — reaches this in-process server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

log = logging.getLogger(__name__)

DEFAULT_TOKEN = "xoxb-medic-test-token"
BOT_USER_ID = "U0MEDICBOT"
_MAX_BLOCKS = 50
_JSON_ENCODED_ARGS = ("blocks", "attachments", "metadata")


@dataclass(frozen=True)
class Call:
    """One HTTP request the fake answered (failed and retried attempts included)."""

    method: str
    args: dict[str, Any]
    status: int
    response: dict[str, Any]
    began: float = 0.0  # time.time() when the request arrived, and when its answer was sent
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))


@dataclass
class _Fault:
    status: int
    retry_after: int | None


@dataclass
class _State:
    token: str
    lock: threading.Condition = field(default_factory=threading.Condition)
    calls: list[Call] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    usergroups: dict[str, list[str]] = field(default_factory=dict)
    next_ts: int = 100
    control_file: Path | None = None
    in_flight: dict[int, tuple[str, dict[str, Any], float]] = field(default_factory=dict)

    def new_ts(self) -> str:
        """Unique, increasing ts like Slack's: "1700000000.000100", "1700000000.000101", …"""
        ts = f"1700000000.{self.next_ts:06d}"
        self.next_ts += 1
        return ts


class FakeSlack:
    """The fake server; a context manager. ``base_url`` ends in "/" as ``WebClient`` requires."""

    def __init__(self, *, token: str = DEFAULT_TOKEN, control_file: Path | None = None) -> None:
        self.token = token
        self._state = _State(token=token, control_file=control_file)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self._state))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-slack", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/api/"

    def __enter__(self) -> FakeSlack:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail_next(self, n: int, *, status: int = 429, retry_after: int | None = 1) -> None:
        """Answer the next ``n`` requests with ``status`` (429 carries ``Retry-After``)."""
        with self._state.lock:
            fault = _Fault(status, retry_after if status == 429 else None)
            self._state.faults.extend([fault] * n)

    def clear_faults(self) -> None:
        """Answer normally again (the faults `fail_next` queued and not yet served are dropped)."""
        with self._state.lock:
            self._state.faults.clear()

    def set_usergroup(self, usergroup: str, users: list[str]) -> None:
        """Define a user group's members, as ``usergroups.users.list`` will answer them."""
        with self._state.lock:
            self._state.usergroups[usergroup] = list(users)

    def in_flight(self) -> list[tuple[str, dict[str, Any], float]]:
        """Requests being answered right now (held by a slack-slow fault): (method, args, arrival time)."""
        with self._state.lock:
            return list(self._state.in_flight.values())

    def calls(self, method: str | None = None) -> list[Call]:
        """Every request so far (of ``method``, if given), in arrival order."""
        with self._state.lock:
            return [c for c in self._state.calls if method is None or c.method == method]

    def wait_for(
        self, method: str, predicate: Callable[[Call], bool] | None = None, *, timeout: float = 5.0
    ) -> Call:
        """The first successful ``method`` call matching ``predicate``, waiting up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._state.lock:
            while True:
                for call in self._state.calls:
                    if call.method == method and call.ok and (predicate is None or predicate(call)):
                        return call
                left = deadline - time.monotonic()
                if left <= 0 or not self._state.lock.wait(left):
                    raise AssertionError(f"no successful {method} matched within {timeout}s: {self.calls()}")

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        """A message as it stands now (after any chat.update)."""
        with self._state.lock:
            return dict(self._state.messages[(channel, ts)])


def _handler_for(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            began = time.time()
            method = self.path.split("?")[0].removeprefix("/api/")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            args = _parse_args(self.headers.get("Content-Type", ""), body)
            outage = _lab_outage(state.control_file)
            if outage.get("delay_s"):  # slack-slow: hold the answer, not the lock (other requests go on)
                with state.lock:
                    state.in_flight[id(self)] = (method, args, began)
                    state.lock.notify_all()
                time.sleep(float(outage["delay_s"]))  # not a synchronisation: the fault itself, Slack answering late
                with state.lock:
                    state.in_flight.pop(id(self), None)
            with state.lock:
                fault = state.faults.pop(0) if state.faults else None
                if outage.get("status"):  # slack-down: Slack's outage page for every method
                    fault = _Fault(int(outage["status"]), None)
                if fault is not None:
                    error = "ratelimited" if fault.status == 429 else "fatal_error"
                    status, response = fault.status, {"ok": False, "error": error}
                elif self.headers.get("Authorization") != f"Bearer {state.token}":
                    status, response = 200, {"ok": False, "error": "invalid_auth"}
                else:
                    status, response = _answer(state, method, args)
                state.calls.append(Call(method=method, args=args, status=status, response=response, began=began,
                                        ended=time.time()))  # `ended`: the answer goes out right after this
                state.lock.notify_all()
            self._send(status, response, retry_after=fault.retry_after if fault else None)

        def _send(self, status: int, response: dict[str, Any], *, retry_after: int | None) -> None:
            data = json.dumps(response).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            log.debug("fake slack: " + format, *args)

    return Handler


def _lab_outage(control_file: Path | None) -> dict[str, Any]:
    """The lab's Slack fault now: {"delay_s": N} (slack-slow), {"status": 503} (slack-down), or {}."""
    if control_file is None:
        return {}
    try:
        return json.loads(control_file.read_text())
    except (OSError, ValueError):  # no fault (the file is absent), or being replaced this instant
        return {}


def _parse_args(content_type: str, body: bytes) -> dict[str, Any]:
    """Arguments as slack_sdk sends them: a JSON body, or form fields with JSON-encoded blocks."""
    if content_type.startswith("application/json"):
        return json.loads(body or b"{}")
    args: dict[str, Any] = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    for key in _JSON_ENCODED_ARGS:
        if isinstance(args.get(key), str):
            args[key] = json.loads(args[key])
    return args


def _answer(state: _State, method: str, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Slack's answer to one authenticated call; ``state.lock`` is held."""
    if method == "auth.test":
        return 200, {"ok": True, "url": "https://medic-test.slack.com/", "team": "medic-test",
                     "user": "medic", "team_id": "T0MEDIC", "user_id": BOT_USER_ID, "bot_id": "B0MEDIC"}
    if method == "usergroups.users.list":
        users = state.usergroups.get(args.get("usergroup", ""))
        if users is None:
            return 200, {"ok": False, "error": "no_such_subteam"}
        return 200, {"ok": True, "users": list(users)}
    if method not in ("chat.postMessage", "chat.update", "chat.postEphemeral"):
        return 404, {"ok": False, "error": "unknown_method"}
    channel = args.get("channel")
    if not channel:
        return 200, {"ok": False, "error": "channel_not_found"}
    if not args.get("text") and not args.get("blocks"):
        return 200, {"ok": False, "error": "no_text"}
    if error := block_kit_errors(args.get("blocks")):
        return 200, {"ok": False, "error": "invalid_blocks", "errors": [error]}
    if method == "chat.postEphemeral":
        if not args.get("user"):
            return 200, {"ok": False, "error": "user_not_in_channel"}
        return 200, {"ok": True, "message_ts": state.new_ts()}
    content = {k: args[k] for k in ("text", "blocks", "thread_ts") if k in args}
    if method == "chat.update":
        message = state.messages.get((channel, args.get("ts", "")))
        if message is None:
            return 200, {"ok": False, "error": "message_not_found"}
        message.update(content, edited={"user": BOT_USER_ID, "ts": state.new_ts()})
        return 200, {"ok": True, "channel": channel, "ts": message["ts"], "text": message.get("text", ""),
                     "message": dict(message)}
    ts = state.new_ts()
    message = {"type": "message", "user": BOT_USER_ID, "bot_id": "B0MEDIC", "ts": ts, **content}
    state.messages[(channel, ts)] = message
    return 200, {"ok": True, "channel": channel, "ts": ts, "message": dict(message)}


def block_kit_errors(blocks: Any) -> str | None:
    """Why Slack would answer ``invalid_blocks`` (slack_sdk's Block Kit models check the limits), or None."""
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > _MAX_BLOCKS:
        return f"blocks must be a list of at most {_MAX_BLOCKS} blocks"
    for i, raw in enumerate(blocks):
        block = Block.parse(raw) if isinstance(raw, dict) else None
        if block is None:
            return f"[{i}] unknown block: {raw!r:.80}"
        try:
            block.to_dict()
        except SlackObjectFormationError as e:
            return f"[{i}] {e}"
    return None


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A running fake for one test; import this name into a test module to use it."""
    with FakeSlack() as slack:
        yield slack
