"""A real HTTP receiver for Alertmanager webhooks, recording every notification it gets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Notification = dict[str, Any]


class WebhookReceiver:
    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.notifications.append(json.loads(body))
                    receiver._lock.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alertmanager"

    def wait_for(self, predicate: Callable[[Notification], bool], timeout: float) -> Notification:
        """The first notification matching `predicate`, waiting up to `timeout` s for it to arrive.

        Fails the test (AssertionError) on timeout, listing the alerts of every notification received."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for n in self.notifications:
                    if predicate(n):
                        return n
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [[(a["labels"].get("alertname"), a["labels"].get("host"), a["status"])
                             for a in n.get("alerts", [])] for n in self.notifications]
                    raise AssertionError(f"no matching notification within {timeout:g} s at {self.url}; "
                                         f"received {len(seen)}: {seen}")
                self._lock.wait(remaining)


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    thread = threading.Thread(target=receiver._server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver._server.shutdown()
        receiver._server.server_close()


def alert_in(n: Notification, *, alertname: str, host: str, status: str) -> bool:
    return any(
        a["labels"].get("alertname") == alertname and a["labels"].get("host") == host and a["status"] == status
        for a in n.get("alerts", [])
    )
