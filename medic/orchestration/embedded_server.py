"""A local Prefect server with SQLite: the embedded default of `medic serve` and the lab's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from medic.core.net import wait_healthy
from medic.errors import PrefectError


def server_command(port: int) -> list[str]:
    prefect = Path(sys.executable).parent / "prefect"
    return [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def server_env(home: Path, port: int) -> dict[str, str]:
    """Everything isolated under `home`: settings, SQLite database, logs."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        # Concurrency-slot leases on disk under `home`, not in the server's memory: a restarted server
        # still knows who holds a remediation slot, so the holder can release it (issue 12: in memory,
        # a slot held across a restart stayed taken for good).
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
    }


class EmbeddedPrefect:
    """Start `prefect server start` in its own session; stop it (and its children) on exit."""

    def __init__(self, home: Path, *, port: int) -> None:
        self.home, self.port = home, port
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "EmbeddedPrefect":
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(server_command(self.port), env={**os.environ, **server_env(self.home, self.port)},
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.home)
        log.close()
        try:
            wait_healthy(f"{self.api_url}/health", what="the Prefect server", timeout=120, proc=self.proc,
                         error=PrefectError)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass
