"""medic serve's HTTP app on a real socket, in this process: uvicorn in a thread, stopped afterwards.

For tests of what happens on the wire (credentials, content types, body limits, TLS) without the cost
of a medic serve subprocess and its Prefect Runner: the app, its guard and uvicorn are the real ones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medic.core.net import free_port
from tests.support.waits import wait_for

__all__ = ["BodyCounter", "serve_app"]


class BodyCounter:
    """ASGI wrapper outside the guard: counts the request-body bytes the app pulled from uvicorn."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.read: list[int] = []  # per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        index = len(self.read)
        self.read.append(0)

        async def counting() -> Message:
            message = await receive()
            self.read[index] += len(message.get("body", b""))
            return message

        await self.app(scope, counting, send)


@contextmanager
def serve_app(app: ASGIApp, **uvicorn_options: Any) -> Iterator[str]:
    """Serve `app` on a free loopback port; yields its base URL (https when TLS options are given)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            access_log=False, **uvicorn_options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), what=f"uvicorn on port {port} to start",
                 timeout=30, interval=0.05)
        assert thread.is_alive(), f"uvicorn on port {port} exited at start (see the log above)"
        yield f"{'https' if 'ssl_certfile' in uvicorn_options else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
