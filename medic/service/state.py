"""The services one medic serve process holds, typed and built in one place.

Every endpoint (alert intake, `/runs`, the Slack endpoint, Socket Mode) reads what it needs from one
`ServiceState` — named fields, not a bag of services — and the state is built by `build_state`
alone. Dependencies point one way: `app` → endpoints → `state` → the services (`clicks`,
`socket_mode`, the launcher); nothing here imports an endpoint or the app.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slack_sdk.socket_mode import SocketModeClient
from starlette.requests import Request

from medic.core.inventory import Inventory, load_inventory
from medic.core.runbook import Runbook, load_runbooks
from medic.orchestration.flap_guard import FlapGuard
from medic.orchestration.launcher import RunLauncher
from medic.service.clicks import ClickHandler
from medic.service.metrics import Metrics
from medic.service.socket_mode import start_socket_mode
from medic.settings import Settings

__all__ = ["ServiceState", "build_state", "instance_name", "service_state"]


@dataclass
class ServiceState:
    """What medic serve's endpoints share: its settings, runbooks, run launcher, metrics, click handler."""

    settings: Settings
    runbooks: dict[str, Runbook]
    launcher: RunLauncher
    metrics: Metrics
    clicks: ClickHandler  # the one handler of Approve / Reject clicks (HTTP endpoint and Socket Mode)
    socket_mode: SocketModeClient | None = None  # open while clicks arrive over Slack's websocket
    _inventory: Inventory | None = field(default=None, repr=False)
    _inventory_mtime: float = field(default=0.0, repr=False)

    def inventory(self) -> Inventory:
        """The inventory, re-read when its file changes (a lab restart regenerates it)."""
        path = self.settings.inventory or Path("/nonexistent")
        mtime = path.stat().st_mtime if path.exists() else 0.0
        if self._inventory is None or mtime != self._inventory_mtime:
            self._inventory = load_inventory(path)
            self._inventory_mtime = mtime
        return self._inventory

    def close(self) -> None:
        """Stop taking clicks over Socket Mode (the HTTP server stops on its own)."""
        if self.socket_mode is not None:
            self.socket_mode.close()
            self.socket_mode = None


def build_state(settings: Settings, flow: Any) -> ServiceState:
    """Every service of a medic serve process; call it on the event loop that will serve (Socket Mode
    hands its clicks to that loop)."""
    metrics = Metrics()
    flap = FlapGuard.from_settings(settings)
    launcher = RunLauncher(flow=flow, flap=flap, metrics=metrics, instance=instance_name(settings),
                           execution=settings.execution, max_concurrent=settings.max_concurrent_runs,
                           busy_retry_s=settings.already_running_retry_s)
    runbooks = load_runbooks(settings.runbooks_dir)
    # Workers mode: a worker executes the run, and the workers' janitor ends the runs of a dead one.
    clicks = ClickHandler(settings=settings, runbooks=runbooks,
                          is_executing=(lambda run_id: True) if settings.execution == "workers"
                          else (lambda run_id: run_id in launcher.active().values()))
    socket_mode = None
    if settings.slack_socket_mode:  # clicks over Slack's websocket, into the same handler
        socket_mode = start_socket_mode(settings, clicks, asyncio.get_running_loop())
    return ServiceState(settings=settings, runbooks=runbooks, launcher=launcher, metrics=metrics,
                        clicks=clicks, socket_mode=socket_mode)


def instance_name(settings: Settings) -> str:
    """This medic serve's name, carried by its runs as the tag `medic-serve:<name>`."""
    return settings.instance or f"medic-{socket.gethostname()}"


def service_state(request: Request) -> ServiceState:
    """The state of the app that received `request` (set by `medic.service.app.create_app`)."""
    state: ServiceState = request.app.state.medic
    return state
