"""SSH fan-out with paramiko: host-key checking always on, real timeouts, bounded concurrency.

This is the only module that imports paramiko. A command that fails on a host — non-zero exit,
refused connection, wrong host key, timeout — is a ``CommandResult`` with a short human ``error``,
never an exception, so one dead host never stops a fan-out. Exceptions are kept for medic's own
faults (a missing key or known_hosts file).

Why the command is wrapped: paramiko's ``exec_command(timeout=)`` only bounds reads and the remote
process keeps running after the channel closes (no pty, so no SIGHUP). Every command therefore runs
as ``exec timeout --signal=KILL N sh -c '<command>'``: coreutils ``timeout`` puts the command in its
own process group and kills the whole group at the deadline, so ``sleep 30; touch x`` really stops.
A plain string is a fixed script (medic's own text), passed through untouched: quoted once for that
``sh -c``. A ``ShellCommand`` (a rendered runbook command) is sent as ``sh -c SCRIPT medic VALUE…``
with every word ``shlex.quote``d: the remote shell parses the line once and its values arrive as
``sh -c``'s positional parameters — data, never script text.
"""

from __future__ import annotations

import logging
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko

from medic.errors import ConfigError
from medic.core.inventory import Host
from medic.core.results import CommandResult
from medic.core.templates import ShellCommand
from medic.settings import get_settings

__all__ = ["CommandResult", "SSHSession", "OUTPUT_LIMIT"]

log = logging.getLogger(__name__)

#: Bytes kept of stdout and of stderr per command; the rest is read (so the command can finish) and dropped.
OUTPUT_LIMIT = 64 * 1024
#: How long after the remote `timeout` should have fired the client gives up waiting and closes the channel.
GRACE_S = 2.0

Script = str | ShellCommand
Command = Script | Callable[[Host], Script]


class _UnknownHostKey(paramiko.SSHException):
    """The host is not in known_hosts (raised by our RejectPolicy, kept distinct for the message)."""


class _RejectUnknown(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising a distinguishable exception. Never auto-adds a key."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname)


def _endpoint(host: Host) -> str:
    """The name known_hosts uses for the host (`[addr]:port` off port 22)."""
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


def remote_command(command: Script, timeout: float) -> str:
    """The command line actually sent: the command under coreutils `timeout`, killed with its children;
    each argv word quoted once, so a ShellCommand's values are positional parameters of its ``sh -c``."""
    seconds = f"{max(timeout, 0.1):g}"
    argv = command.argv() if isinstance(command, ShellCommand) else ["sh", "-c", command]
    return f"exec timeout --signal=KILL {seconds} " + " ".join(shlex.quote(word) for word in argv)


class _Output:
    """One stream, capped: keeps the first `limit` bytes, counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit, self.data, self.dropped = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        self.data += chunk[: max(room, 0)]
        self.dropped += max(len(chunk) - max(room, 0), 0)

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


class SSHSession:
    """One SSH connection per host, reused for every command of a run. Use as a context manager.

    Limits: ``max_parallel`` hosts at once in a fan-out (a thread each), ``max_per_host`` channels at
    once on one connection (sshd refuses more than its MaxSessions).
    """

    def __init__(
        self,
        *,
        connect_timeout: float | None = None,
        command_timeout: float | None = None,
        max_parallel: int | None = None,
        max_per_host: int | None = None,
        output_limit: int = OUTPUT_LIMIT,
    ) -> None:
        self._settings = get_settings()
        self.connect_timeout = connect_timeout or self._settings.ssh_connect_timeout
        self.command_timeout = command_timeout or self._settings.ssh_command_timeout
        self.max_parallel = max_parallel or self._settings.ssh_max_parallel
        self.max_per_host = max_per_host or self._settings.ssh_max_per_host
        self.output_limit = output_limit
        self._clients: dict[tuple, paramiko.SSHClient] = {}
        self._host_locks: dict[tuple, threading.Lock] = {}
        self._slots: dict[tuple, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self._keys: dict[Path, paramiko.PKey] = {}

    def __enter__(self) -> "SSHSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection of this session."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    # -- public ----------------------------------------------------------------------------------

    def run(self, host: Host, command: Script, *, timeout: float | None = None) -> CommandResult:
        """Run one already-rendered command on one host; any failure is in the result."""
        key_file, known_hosts = self._credentials(host)
        with self._slot(self._slots, host, self.max_per_host):
            return self._run(host, command, timeout or self.command_timeout, key_file, known_hosts)

    def fan_out(
        self,
        hosts: list[Host],
        command: Command,
        *,
        timeout: float | None = None,
        max_parallel: int | None = None,
        max_per_host: int | None = None,
    ) -> list[CommandResult]:
        """Run a command (or one rendered per host) on many hosts at once; results in host order."""
        if not hosts:
            return []
        # A configuration fault or a value refused while rendering stops the fan-out before anything runs.
        for host in hosts:
            self._credentials(host)
        commands = [command(host) if callable(command) else command for host in hosts]
        call_slots: dict[tuple, threading.BoundedSemaphore] = {}
        per_host = min(max_per_host or self.max_per_host, self.max_per_host)

        def one(host: Host, rendered: Script) -> CommandResult:
            with self._slot(call_slots, host, per_host):
                return self.run(host, rendered, timeout=timeout)

        workers = min(max_parallel or self.max_parallel, len(hosts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medic-ssh") as pool:
            return list(pool.map(one, hosts, commands))

    def is_connected(self, host: Host) -> bool:
        """True when this session holds a live connection to the host (it will be reused)."""
        client = self._clients.get(self._key(host))
        transport = client.get_transport() if client else None
        return bool(transport and transport.is_active())

    # -- connections -----------------------------------------------------------------------------

    @staticmethod
    def _key(host: Host) -> tuple:
        return (host.name, host.address, host.port, host.user, host.key_file, host.known_hosts)

    def _slot(self, table: dict[tuple, threading.BoundedSemaphore], host: Host, size: int):
        with self._lock:
            return table.setdefault(self._key(host), threading.BoundedSemaphore(size))

    def _credentials(self, host: Host) -> tuple[Path, Path]:
        key_file = host.key_file or self._settings.ssh_key
        known_hosts = host.known_hosts or self._settings.known_hosts
        if key_file is None or not Path(key_file).is_file():
            raise ConfigError(
                f"SSH key for {host.name} not found ({key_file or 'none configured'}): set "
                f"ansible_ssh_private_key_file in the inventory or MEDIC_SSH_KEY, or start the lab"
            )
        if known_hosts is None or not Path(known_hosts).is_file():
            raise ConfigError(
                f"known_hosts for {host.name} not found ({known_hosts or 'none configured'}): host-key "
                f"checking cannot be turned off; set medic_known_hosts in the inventory or MEDIC_KNOWN_HOSTS"
            )
        return Path(key_file), Path(known_hosts)

    def _pkey(self, path: Path) -> paramiko.PKey:
        with self._lock:
            if path not in self._keys:
                self._keys[path] = paramiko.PKey.from_path(path)
            return self._keys[path]

    def _client(self, host: Host, key_file: Path, known_hosts: Path) -> paramiko.SSHClient:
        """The session's connection to the host, opened on first use and reopened if it died."""
        key = self._key(host)
        with self._lock:
            host_lock = self._host_locks.setdefault(key, threading.Lock())
        with host_lock:
            client = self._clients.get(key)
            if client is not None and (t := client.get_transport()) is not None and t.is_active():
                return client
            if client is not None:
                client.close()
            client = paramiko.SSHClient()
            client.load_host_keys(str(known_hosts))
            client.set_missing_host_key_policy(_RejectUnknown())
            try:
                client.connect(
                    host.address,
                    port=host.port,
                    username=host.user,
                    pkey=self._pkey(key_file),
                    timeout=self.connect_timeout,
                    banner_timeout=self.connect_timeout,
                    auth_timeout=self.connect_timeout,
                    channel_timeout=self.connect_timeout,
                    allow_agent=False,
                    look_for_keys=False,
                )
            except BaseException:
                client.close()
                raise
            with self._lock:
                self._clients[key] = client
            return client

    # -- one command -----------------------------------------------------------------------------

    def _run(self, host: Host, command: Script, timeout: float, key_file: Path, known_hosts: Path) -> CommandResult:
        started = time.monotonic()
        result = CommandResult(host=host.name, command=str(command))
        try:
            client = self._client(host, key_file, known_hosts)
            channel = client.get_transport().open_session(timeout=self.connect_timeout)
        except Exception as exc:  # noqa: BLE001 - every connection failure becomes this host's result
            result.error, result.unreachable = _connect_error(exc, host, known_hosts, self.connect_timeout), True
            log.warning("ssh %s: %s", host.name, result.error)
        else:
            with channel:
                self._exchange(channel, command, timeout, result)
        result.duration_s = round(time.monotonic() - started, 4)
        log.debug("ssh %s: %r → exit %s in %.3f s", host.name, result.command, result.exit_code, result.duration_s)
        return result

    def _exchange(self, channel: paramiko.Channel, command: Script, timeout: float, result: CommandResult) -> None:
        """Send the command, read both streams until exit or deadline, fill in the result."""
        out, err = _Output(self.output_limit), _Output(self.output_limit)
        started = time.monotonic()
        deadline = started + timeout + GRACE_S
        channel.exec_command(remote_command(command, timeout))
        channel.shutdown_write()  # no stdin: a command that reads it sees EOF, not a hang
        wake = channel.fileno()
        while True:
            while channel.recv_ready():
                out.add(channel.recv(32768))
            while channel.recv_stderr_ready():
                err.add(channel.recv_stderr(32768))
            remaining = deadline - time.monotonic()
            if channel.eof_received:
                if channel.status_event.wait(max(remaining, 0)):
                    break
            elif remaining > 0:
                select.select([wake], [], [], remaining)
                continue
            channel.close()  # deadline passed without an exit: stop waiting; `timeout` kills remotely
            break
        elapsed = time.monotonic() - started
        status = channel.exit_status if channel.status_event.is_set() else -1
        result.stdout, result.stderr = out.text(), err.text()
        result.truncated = bool(out.dropped or err.dropped)
        if status >= 0:
            result.exit_code = status
        elif elapsed >= timeout:
            result.timed_out = True
            result.error = f"timed out after {timeout:g} s — command stopped"
        else:
            result.error = "killed by a signal before it finished"


def _connect_error(exc: Exception, host: Host, known_hosts: Path, timeout: float) -> str:
    """A short human reason for a failed connection."""
    where = _endpoint(host)
    if isinstance(exc, paramiko.BadHostKeyException):
        return f"host key mismatch for {where} — refusing to connect (known_hosts: {known_hosts})"
    if isinstance(exc, _UnknownHostKey):
        return f"unknown host key for {where}: not in {known_hosts} — refusing to connect"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"auth failed for {host.user}@{where}: key not accepted"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
        return "unreachable: connection refused"
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"unreachable: no answer within {timeout:g} s"
    if isinstance(exc, paramiko.ChannelException):
        return f"channel refused by {where}: {exc.text} (too many sessions? lower max_per_host)"
    if isinstance(exc, paramiko.SSHException) and str(exc) in ("No existing session", "Error reading SSH protocol banner"):
        # A SIGSTOPped sshd accepts (the kernel does) and never speaks: paramiko either times out on the
        # banner, or its start_client returns on its timeout without raising and the next step says so.
        return f"unreachable: no SSH answer within {timeout:g} s (port open, no handshake: the host hangs?)"
    if isinstance(exc, paramiko.SSHException):
        return f"unreachable: {exc}"
    if isinstance(exc, OSError):
        return f"unreachable: {exc.strerror or exc}"
    return f"unreachable: {type(exc).__name__}: {exc}"
