"""HAProxy's runtime API (the admin ``stats socket``): the one wrapper medic uses to move traffic.

Rolling maintenance drains a server before touching it and sets it ready afterwards; a failover
repoints a server at a new address. Both go through ``HAProxyRuntime``, which speaks the plain-text
runtime API over TCP (``stats socket ipv4@127.0.0.1:PORT level admin``), one connection per command.

Backend and server names are checked against the inventory name pattern before they are put into a
command line: the runtime API splits on spaces and ``;``, so free text could otherwise chain a
second command. Addresses must be IP literals, ports 1-65535.

Where the state comes from (HAProxy 2.6): ``show servers state <backend>`` gives the address, port,
operational state and admin-state bit field; ``show stat <backend> 4 -1`` gives the current sessions
(``scur``), the display status (UP, DOWN, DRAIN, MAINT, ...) and the last check status.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import socket
import time
from typing import Literal

from pydantic import BaseModel, Field

from medic.core.polling import retry
from medic.errors import LoadBalancerError, LoadBalancerNameError
from medic.core.inventory import NAME_PATTERN

__all__ = [
    "AdminState",
    "DrainWait",
    "HAProxyRuntime",
    "LoadBalancerError",
    "LoadBalancerNameError",
    "ServerState",
    "parse_address",
]

log = logging.getLogger(__name__)

AdminState = Literal["ready", "drain", "maint"]
OperationalState = Literal["stopped", "starting", "running", "stopping", "unknown"]

_OP_STATES: dict[str, OperationalState] = {"0": "stopped", "1": "starting", "2": "running", "3": "stopping"}
# srv_admin_state bits (include/haproxy/server-t.h): any MAINT bit wins over any DRAIN bit.
_ADMIN_MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_ADMIN_DRAIN_BITS = 0x08 | 0x10
_READ_LIMIT = 4 * 1024 * 1024
_REFUSALS = ("Can't find backend", "No such backend", "No such proxy", "Unknown command", "Permission denied")


class ServerState(BaseModel):
    """One server of a backend as HAProxy sees it right now."""

    backend: str
    name: str
    admin_state: AdminState = Field(description="what an operator set: ready, drain or maint")
    operational_state: OperationalState = Field(description="what health checks say: running, stopped, ...")
    status: str = Field(description="HAProxy's display status: UP, DOWN, DRAIN, MAINT, 'no check', ...")
    address: str
    port: int | None = None
    check_status: str = Field("", description="last health check, e.g. L7OK, L4CON, L7STS")
    current_sessions: int = 0
    weight: int | None = Field(None, description="the server's current (user) weight, 0-256")

    @property
    def up(self) -> bool:
        return self.operational_state == "running" and (self.status.split() or [""])[0] in ("UP", "DRAIN")


class DrainWait(BaseModel):
    """The end of a bounded wait for a server's sessions to finish."""

    backend: str
    server: str
    drained: bool
    sessions_left: int
    waited_s: float


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise LoadBalancerNameError(
            f"HAProxy {what} {value!r} is refused: names may only contain letters, digits, '.', '-' and '_' "
            f"(and start with a letter or digit); nothing was sent to HAProxy"
        )
    return value


def parse_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9081"`` → ``("127.0.0.1", 9081)``; a clear error for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise LoadBalancerError(f"HAProxy admin address {address!r} must look like 127.0.0.1:9081")
    return host.strip("[]"), int(port)


class HAProxyRuntime:
    """Client of one HAProxy's runtime API. Cheap to create; every call opens its own connection."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- reading ---------------------------------------------------------------------------------

    def servers(self, backend: str) -> list[ServerState]:
        """Every server of ``backend``, in configuration order."""
        _check_name(backend, "backend")
        state_lines = self._lines(self.command(f"show servers state {backend}"), backend)
        # `show stat` by proxy id: a frontend may share the backend's name.
        stats = self._stats(backend, state_lines[0].split()[0]) if state_lines else {}
        found: list[ServerState] = []
        for line in state_lines:
            f = line.split()
            if len(f) < 19 or f[1] != backend:
                continue
            name, admin_bits = f[3], int(f[6])
            stat = stats.get(name, {})
            found.append(ServerState(
                backend=backend,
                name=name,
                admin_state=_admin_state(admin_bits),
                operational_state=_OP_STATES.get(f[5], "unknown"),
                status=stat.get("status", ""),
                address=f[4],
                port=int(f[18]) if f[18].isdigit() else None,
                check_status=stat.get("check_status", ""),
                current_sessions=int(stat.get("scur") or 0),
                weight=int(f[7]) if f[7].isdigit() else None,
            ))
        return found

    def server(self, backend: str, server: str) -> ServerState:
        """One server; LoadBalancerError naming the known ones when it does not exist."""
        _check_name(server, "server")
        servers = self.servers(backend)
        for s in servers:
            if s.name == server:
                return s
        raise LoadBalancerError(
            f"HAProxy at {self.address} has no server {server!r} in backend {backend!r} "
            f"(servers: {', '.join(s.name for s in servers) or 'none'})"
        )

    # -- changing --------------------------------------------------------------------------------

    def set_state(self, backend: str, server: str, state: AdminState) -> None:
        """Set a server's admin state: ``ready`` takes traffic, ``drain`` only finishes what it has,
        ``maint`` takes nothing (and is not health-checked)."""
        if state not in ("ready", "drain", "maint"):
            raise LoadBalancerError(f"unknown HAProxy server state {state!r}: use ready, drain or maint")
        target = f"{_check_name(backend, 'backend')}/{_check_name(server, 'server')}"
        reply = self.command(f"set server {target} state {state}").strip()
        if reply:
            raise LoadBalancerError(f"HAProxy at {self.address} refused to set {target} to {state}: {reply}")
        log.info("haproxy %s: %s → %s", self.address, target, state)

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        """Set a server's weight (0-256): its share of new requests against the others' weights."""
        target = f"{_check_name(backend, 'backend')}/{_check_name(server, 'server')}"
        if not isinstance(weight, int) or not 0 <= weight <= 256:
            raise LoadBalancerNameError(f"HAProxy weight {weight!r} is refused: give 0-256; nothing was sent")
        reply = self.command(f"set weight {target} {weight}").strip()
        if reply:
            raise LoadBalancerError(f"HAProxy at {self.address} refused weight {weight} for {target}: {reply}")
        log.info("haproxy %s: %s weight → %d", self.address, target, weight)

    def set_address(self, backend: str, server: str, addr: str, port: int) -> None:
        """Point a server at another address and port (e.g. a promoted database primary)."""
        target = f"{_check_name(backend, 'backend')}/{_check_name(server, 'server')}"
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            raise LoadBalancerNameError(
                f"HAProxy server address {addr!r} is refused: give an IP address; nothing was sent") from None
        if not isinstance(port, int) or not 0 < port < 65536:
            raise LoadBalancerNameError(f"HAProxy server port {port!r} is refused: give 1-65535; nothing was sent")
        reply = self.command(f"set server {target} addr {ip} port {port}").strip()
        if reply and not reply.startswith(("IP changed", "no need to change", "port changed")):
            raise LoadBalancerError(f"HAProxy at {self.address} refused to move {target} to {ip}:{port}: {reply}")
        log.info("haproxy %s: %s → %s:%d (%s)", self.address, target, ip, port, reply or "ok")

    def wait_drained(self, backend: str, server: str, timeout: float, *, poll: float = 0.1) -> DrainWait:
        """Wait (at most ``timeout`` s) until the server has no current sessions.

        A server that still has sessions at the deadline is a result (``drained=False``), not an
        error: the caller decides whether to cut them.
        """
        began = time.monotonic()
        sessions = retry(lambda: self.server(backend, server).current_sessions, delays=itertools.repeat(poll),
                         retry_if=lambda left: left != 0, timeout=timeout)
        return DrainWait(backend=backend, server=server, drained=sessions == 0, sessions_left=sessions,
                         waited_s=round(time.monotonic() - began, 3))

    # -- wire ------------------------------------------------------------------------------------

    def command(self, line: str) -> str:
        """Send one runtime-API command, return HAProxy's whole reply (the socket closes after it)."""
        if "\n" in line or ";" in line:
            raise LoadBalancerNameError(f"refusing HAProxy command with a line break or ';': {line!r}")
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                sock.sendall(line.encode() + b"\n")
                chunks, size = [], 0
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > _READ_LIMIT:
                        raise LoadBalancerError(f"HAProxy at {self.address}: reply to {line!r} is over 4 MiB")
        except OSError as exc:
            raise LoadBalancerError(
                f"cannot reach HAProxy's runtime API at {self.address} ({exc.strerror or exc}); is HAProxy "
                f"running with `stats socket ipv4@{self.address} level admin`?"
            ) from exc
        return b"".join(chunks).decode(errors="replace")

    def _lines(self, reply: str, backend: str, *, keep_header: bool = False) -> list[str]:
        """The reply's data lines; LoadBalancerError with HAProxy's words when it refused."""
        text = reply.strip()
        if text.startswith(_REFUSALS):
            raise LoadBalancerError(f"HAProxy at {self.address}: {text.splitlines()[0]} (backend {backend!r})")
        return [ln for ln in text.splitlines()
                if ln.strip() and (keep_header or not ln.startswith("#")) and ln.strip() != "1"]

    def _stats(self, backend: str, proxy_id: str) -> dict[str, dict[str, str]]:
        """``show stat`` rows of the backend's servers, by server name."""
        if not proxy_id.isdigit():
            raise LoadBalancerError(f"HAProxy at {self.address}: unexpected `show servers state` id {proxy_id!r}")
        lines = self._lines(self.command(f"show stat {proxy_id} 4 -1"), backend, keep_header=True)
        if not lines or not lines[0].startswith("# "):
            raise LoadBalancerError(f"HAProxy at {self.address}: unexpected `show stat` reply: {reply[:200]!r}")
        header = lines[0][2:].split(",")
        rows = (dict(zip(header, ln.split(","))) for ln in lines[1:])
        return {r["svname"]: r for r in rows if r.get("pxname") == backend}


def _admin_state(bits: int) -> AdminState:
    if bits & _ADMIN_MAINT_BITS:
        return "maint"
    if bits & _ADMIN_DRAIN_BITS:
        return "drain"
    return "ready"
