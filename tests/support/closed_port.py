"""A port that stays closed for the whole test: bound by the test, never listened on.

`free_port()` (bound, then released) is not closed for long: another process can take it, and a port
from the ephemeral range can be picked as the *source* port of the very connection that dials it — on
loopback that connects the client to itself (TCP simultaneous open), and ssh then fails with "Broken
pipe" instead of "Connection refused" (seen once in CI). A socket kept bound without `listen()` makes
the kernel answer every connect with RST, and no one else can bind or auto-pick the port meanwhile.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])
