"""The tests' Prefect helper (tests/support/prefect_api.py) asks again while Prefect is busy, and
otherwise says what it asked and what came back: a local HTTP server scripted to answer 503 first."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.support.closed_port import closed_port  # noqa: F401  (a fixture: a port held closed)
from tests.support.prefect_api import prefect_json, prefect_request


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers the statuses in `script` in turn (the last one for ever), counting the calls."""
    script: list[int] = []
    calls: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = self.script[min(len(self.calls), len(self.script) - 1)]
        self.calls.append(self.path)
        body = b'{"id": "run-1"}' if status == 200 else b'{"detail": "database is locked"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[Scripted]]]:
    handler = type("Handler", (Scripted,), {"script": [], "calls": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api", handler
    finally:
        server.shutdown()
        server.server_close()


def test_busy_answers_are_asked_again_until_one_succeeds(scripted: tuple[str, type[Scripted]]) -> None:
    api, handler = scripted
    handler.script = [503, 503, 429, 200]
    assert prefect_json(api, "POST", "/flow_runs/", json={"flow_id": "f"}) == {"id": "run-1"}
    assert handler.calls == ["/api/flow_runs/"] * 4


def test_an_error_answer_fails_naming_the_call_and_the_answer(scripted: tuple[str, type[Scripted]]) -> None:
    api, handler = scripted
    handler.script = [422]
    with pytest.raises(AssertionError, match=r"POST .*/api/flow_runs/: Prefect answered 422: .*database is locked"):
        prefect_json(api, "POST", "/flow_runs/", json={})
    assert len(handler.calls) == 1  # not a busy answer: asked once
    handler.script, handler.calls[:] = [503], []
    assert prefect_request(api, "POST", "/x", retry_for=0.5).status_code == 503  # still busy: the last answer
    assert len(handler.calls) >= 2


def test_an_unreachable_prefect_raises_a_transport_error_naming_the_url(closed_port: int) -> None:
    with pytest.raises(httpx.TransportError, match=rf"GET http://127.0.0.1:{closed_port}/api/flow_runs/1: "
                                                   r"Prefect unreachable for 0.5 s"):
        prefect_request(f"http://127.0.0.1:{closed_port}/api", "GET", "/flow_runs/1", retry_for=0.5)
