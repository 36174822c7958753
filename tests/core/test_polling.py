"""medic.core.polling and medic.core.net: bounded retries and waits that say what they last saw."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from medic.core.net import free_port, wait_healthy
from medic.core.polling import backoff, retry, retry_async, wait_until, wait_until_async
from medic.errors import LabError, WaitTimeout


class _Answers:
    """Hands out the next value of a script each call (the last one forever), counting calls."""

    def __init__(self, *values: object) -> None:
        self.values, self.calls = list(values), 0

    def __call__(self) -> object:
        self.calls += 1
        value = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        if isinstance(value, BaseException):
            raise value
        return value

    async def async_call(self) -> object:
        return self()


def test_backoff_grows_to_its_cap() -> None:
    assert list(itertools.islice(backoff(0.5, factor=2.0, cap=5.0), 6)) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_stops_at_the_first_good_answer() -> None:
    answers = _Answers(503, 503, 200, 503)
    assert retry(answers, delays=(0, 0, 0, 0), retry_if=lambda status: status == 503) == 200
    assert answers.calls == 3


def test_retry_returns_the_last_answer_when_the_delays_run_out() -> None:
    answers = _Answers(503)
    assert retry(answers, delays=(0, 0), retry_if=lambda status: status == 503) == 503
    assert answers.calls == 3  # the first try and one per delay


def test_retry_async_retries_listed_exceptions_and_raises_the_last_one() -> None:
    flaky = _Answers(ConnectionError("first"), "ok")
    assert asyncio.run(retry_async(flaky.async_call, delays=(0,), retry_on=ConnectionError)) == "ok"
    broken = _Answers(ConnectionError("first"), ConnectionError("last"))
    with pytest.raises(ConnectionError, match="last"):
        asyncio.run(retry_async(broken.async_call, delays=(0, 0), retry_on=ConnectionError))
    assert broken.calls == 3


def test_other_exceptions_are_not_retried() -> None:
    wrong = _Answers(ValueError("bad input"), "never")
    with pytest.raises(ValueError, match="bad input"):
        retry(wrong, delays=itertools.repeat(0), retry_on=ConnectionError)
    assert wrong.calls == 1


def test_a_timeout_bounds_an_endless_schedule() -> None:
    answers = _Answers(False)
    assert retry(answers, delays=itertools.repeat(0.01), retry_if=lambda ok: not ok, timeout=0.2) is False
    assert answers.calls >= 2


def test_wait_until_returns_the_value_that_is_done() -> None:
    answers = _Answers(httpx.ConnectError("refused"), 503, 200)
    seen = wait_until(answers, what="a server", timeout=5, interval=0, done=lambda s: s == 200,
                      ignore=httpx.HTTPError)
    assert (seen, answers.calls) == (200, 3)


def test_wait_until_says_what_it_waited_for_and_last_saw() -> None:
    with pytest.raises(WaitTimeout, match=r"the queue draining: not within 0.1 s \(last seen: 3\)"):
        wait_until(_Answers(5, 4, 3), what="the queue draining", timeout=0.1, interval=0.01,
                   done=lambda n: n == 0)


def test_wait_until_reports_an_ignored_exception_and_raises_the_callers_error() -> None:
    with pytest.raises(LabError, match="last seen: ConnectError: refused"):
        asyncio.run(wait_until_async(_Answers(httpx.ConnectError("refused")).async_call, what="sshd", timeout=0.1,
                                     interval=0.01, ignore=httpx.HTTPError, error=LabError))


# ------------------------------------------------------------------------------------------- net


class _Health(BaseHTTPRequestHandler):
    statuses: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def health_server() -> Iterator[tuple[str, type[_Health]]]:
    handler = type("Health", (_Health,), {"statuses": [503, 503, 200]})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health", handler
    finally:
        server.shutdown()
        server.server_close()


def test_free_port_is_free_and_closed() -> None:
    port = free_port()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_wait_healthy_waits_through_unhealthy_answers(health_server: tuple[str, type[_Health]]) -> None:
    url, handler = health_server
    assert wait_healthy(url, what="the test server", timeout=10, interval=0.01) >= 0
    assert handler.statuses == [200]


def test_wait_healthy_names_the_last_answer_on_timeout(health_server: tuple[str, type[_Health]]) -> None:
    url, handler = health_server
    handler.statuses = [503]
    with pytest.raises(WaitTimeout, match=rf"the test server answering 200 at {url}: not within 0.3 s \(last seen: 503\)"):
        wait_healthy(url, what="the test server", timeout=0.3, interval=0.01)


def test_wait_healthy_stops_when_the_process_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        with pytest.raises(LabError, match="the server exited with code 3 before answering"):
            wait_healthy(f"http://127.0.0.1:{free_port()}/health", what="the server", timeout=30, proc=proc,
                         error=LabError)
    finally:
        proc.kill()
        proc.wait()
