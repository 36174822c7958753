"""A stand-in for a SQLite-busy Prefect server: each POST gets the next status of a script (then 200).

It stands in for the one Prefect condition the lab cannot produce on demand ("database is locked");
what is under test with it is a retry (medic's own, or the tests' Prefect helper), not Prefect.

    with busy_prefect([503, 429]) as server:   # server.url: ".../api"; server.seen: requests answered
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from medic.core.net import free_port

__all__ = ["BusyServer", "busy_prefect"]


class BusyServer(ThreadingHTTPServer):
    """Answers each POST with the next status of `script` (then 200), counting them in `seen`."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.seen = list(script), 0
        super().__init__(("127.0.0.1", free_port()), _BusyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api"


class _BusyHandler(BaseHTTPRequestHandler):
    server: BusyServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen += 1
        status = self.server.script.pop(0) if self.server.script else 200
        body = json.dumps({"id": "f00d"} if status < 300 else {"detail": "database is locked"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@contextmanager
def busy_prefect(script: list[int]) -> Iterator[BusyServer]:
    server = BusyServer(script)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
