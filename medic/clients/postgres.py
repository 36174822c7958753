"""A small PostgreSQL client for the failover checks: node state and LSNs over SSH, direct checks.

Why `psql` and not a driver: every database host has `psql` next to the server, so the checks run
*on the host* over medic's SSH session (host-key checked, time-bounded, like every other command),
and the direct checks and endpoint writes run the local `psql` with `PGCONNECT_TIMEOUT`. No driver
joins the lock file, and a hung (SIGSTOPped) server costs a bounded timeout, never a stuck thread.

Nothing here interpolates free text into SQL or a shell: the SQL is constant, the only values are
inventory paths and ports, quoted with `shlex`. The lab uses `trust` on 127.0.0.1 (no password
exists to leak); a production setup would give libpq a `PGPASSFILE`, never a password argument.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from enum import StrEnum

from pydantic import BaseModel, Field

from medic.errors import PostgresError
from medic.core.inventory import Host
from medic.clients.ssh import CommandResult, SSHSession

__all__ = ["DirectCheck", "NodeState", "PostgresError", "direct_check", "format_lsn", "node_state",
           "parse_lsn", "wal_end", "write_through"]

log = logging.getLogger(__name__)

class ProcessState(StrEnum):
    """The postmaster as `pg_ctl status` (via servicectl) sees it."""

    RUNNING = "running"
    STOPPED = "stopped"
    HUNG = "hung"
    UNKNOWN = "unknown"


_STATUS_CODES = {0: ProcessState.RUNNING, 3: ProcessState.STOPPED, 4: ProcessState.HUNG}
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_SEP = "--medic--"

#: One row that says what a node is and where its WAL stands (constant SQL, no parameters).
NODE_SQL = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END, "
    "pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), "
    "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, "
    "(SELECT status FROM pg_stat_wal_receiver LIMIT 1), "
    "(SELECT sender_port FROM pg_stat_wal_receiver LIMIT 1), "
    "current_setting('medic.replication_mode', true)"
)


def parse_lsn(text: str | None) -> int | None:
    """'0/30079A0' → 50362784 (bytes since 0/0); None for empty."""
    if not text:
        return None
    m = _LSN.match(text.strip())
    if not m:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(value: int | None) -> str:
    return "—" if value is None else f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class NodeState(BaseModel):
    """One node as seen from its own host over SSH."""

    host: str
    ssh_reachable: bool
    process: ProcessState = ProcessState.UNKNOWN
    status_line: str = ""
    answered: bool = Field(False, description="the server answered a query")
    in_recovery: bool | None = None
    current_lsn: int | None = Field(None, description="primary: WAL write position")
    received_lsn: int | None = Field(None, description="standby: WAL received and flushed")
    replayed_lsn: int | None = None
    replay_paused: bool = False
    receiver_status: str | None = Field(None, description="standby: 'streaming' when connected to a primary")
    sender_port: int | None = Field(None, description="standby: the port of the primary it streams from")
    replication_mode: str | None = Field(None, description="the cluster's chosen mode: sync or async")
    error: str | None = None


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _pgctl(host: Host) -> str:
    path = host.vars.get("medic_pgctl")
    if not path:
        raise PostgresError(f"inventory host {host.name} has no medic_pgctl: is it a PostgreSQL host (group db)?")
    return _q(path)


def node_state(ssh: SSHSession, host: Host, *, timeout: float = 8.0) -> NodeState:
    """Process state (running/stopped/hung) and, when it answers, role and LSNs — one SSH command."""
    pgctl = _pgctl(host)
    command = (f"{pgctl} status; echo {_SEP}$?; "
               f"PGCONNECT_TIMEOUT=2 timeout 4 {pgctl} psql -At -F '|' -c {_q(NODE_SQL)}")
    r = ssh.run(host, command, timeout=timeout)
    state = NodeState(host=host.name, ssh_reachable=not r.unreachable)
    if r.unreachable:
        state.error = r.error
        return state
    status_part, _, rest = r.stdout.partition(_SEP)
    code_text, _, row = rest.partition("\n")
    state.status_line = status_part.strip()
    state.process = _STATUS_CODES.get(int(code_text) if code_text.strip().isdigit() else -1, ProcessState.UNKNOWN)
    fields = row.strip().split("|")
    if len(fields) == 8 and fields[0] in ("t", "f"):
        state.answered = True
        state.in_recovery = fields[0] == "t"
        state.current_lsn, state.received_lsn, state.replayed_lsn = (parse_lsn(f) for f in fields[1:4])
        state.replay_paused = fields[4] == "t"
        state.receiver_status = fields[5] or None
        state.sender_port = int(fields[6]) if fields[6].isdigit() else None
        state.replication_mode = fields[7] or None
    else:
        state.error = (r.stderr or r.error or "no answer").strip()[-300:]
    return state


_WALDUMP_END = re.compile(r"invalid record length at ([0-9A-F]+/[0-9A-F]+)")
_WALDUMP_REC = re.compile(r"len \(rec/tot\):\s*\d+/\s*(\d+).*?lsn: ([0-9A-F]+/[0-9A-F]+)")


def wal_end(ssh: SSHSession, host: Host, *, timeout: float = 15.0) -> tuple[int | None, CommandResult]:
    """The end of the valid WAL in a *stopped* node's data dir: every write it ever acknowledged.

    Reads from the last checkpoint's REDO point with pg_waldump; its "invalid record length at X" is
    where the WAL ends (else the last record's start + length, 8-byte aligned).
    """
    data = host.vars.get("medic_pg_data")
    bindir = host.vars.get("medic_pg_bin")
    if not data or not bindir:
        raise PostgresError(f"inventory host {host.name} has no medic_pg_data/medic_pg_bin")
    command = (f"redo=$({_q(bindir + '/pg_controldata')} {_q(data)} | sed -n 's/^Latest checkpoint.s REDO location: *//p'); "
               f"{_q(bindir + '/pg_waldump')} -p {_q(data + '/pg_wal')} -s \"$redo\" 2>&1 | tail -n 2")
    r = ssh.run(host, command, timeout=timeout)
    if not r.ok and not r.stdout:
        return None, r
    if m := _WALDUMP_END.search(r.stdout):
        return parse_lsn(m.group(1)), r
    records = _WALDUMP_REC.findall(r.stdout)
    if records:
        total, lsn = records[-1]
        end = (parse_lsn(lsn) or 0) + int(total)
        return (end + 7) // 8 * 8, r
    return None, r


# --- direct checks from medic's own machine -----------------------------------------------------


class DirectCheck(BaseModel):
    """Did the server at this address answer a query, and as what."""

    address: str
    answered: bool
    in_recovery: bool | None = None
    server_port: int | None = None
    detail: str = ""
    seconds: float = 0.0


def _psql_binary() -> str:
    found = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    if not os.path.exists(found):
        raise PostgresError("psql is not installed on medic's machine; install the postgresql-client package")
    return found


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PostgresError(f"PostgreSQL address {address!r} must look like 127.0.0.1:5432")
    return host, int(port)


def run_sql(address: str, sql: str, *, timeout: float = 3.0, user: str = "postgres",
            database: str = "postgres") -> subprocess.CompletedProcess[str]:
    """Run constant SQL at an address with the local psql, bounded by `timeout` (connect included)."""
    host, port = _split(address)
    env = {**os.environ, "PGCONNECT_TIMEOUT": str(max(1, int(timeout))), "PGAPPNAME": "medic"}
    argv = [_psql_binary(), "-X", "-q", "-At", "-F", "|", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(port),
            "-U", user, "-d", database, "-c", sql]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 1, env=env)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, returncode=-1, stdout="", stderr=f"no answer within {timeout:g} s")


def direct_check(address: str, *, timeout: float = 3.0) -> DirectCheck:
    """Ask the server itself (not its exporter) whether it is there: a query, with a hard timeout."""
    began = time.monotonic()
    r = run_sql(address, "SELECT pg_is_in_recovery(), inet_server_port()", timeout=timeout)
    seconds = round(time.monotonic() - began, 3)
    fields = r.stdout.strip().split("|")
    if r.returncode == 0 and len(fields) == 2:
        return DirectCheck(address=address, answered=True, in_recovery=fields[0] == "t",
                           server_port=int(fields[1]), detail="answered", seconds=seconds)
    return DirectCheck(address=address, answered=False, detail=(r.stderr or r.stdout).strip()[-300:], seconds=seconds)


class WriteCheck(BaseModel):
    """A write through the client endpoint: did it commit, and on which node."""

    endpoint: str
    ok: bool
    server_port: int | None = None
    detail: str = ""


WRITE_CHECK_SQL = (
    "CREATE TABLE IF NOT EXISTS medic_failover_checks (at timestamptz PRIMARY KEY DEFAULT clock_timestamp()); "
    "INSERT INTO medic_failover_checks DEFAULT VALUES RETURNING inet_server_port()"
)


def write_through(endpoint: str, *, timeout: float = 5.0) -> WriteCheck:
    """Commit one row through the endpoint (what a client does); the answer names the node that took it."""
    r = run_sql(endpoint, WRITE_CHECK_SQL, timeout=timeout)
    port = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode == 0 and port.isdigit():
        return WriteCheck(endpoint=endpoint, ok=True, server_port=int(port), detail=f"committed on port {port}")
    return WriteCheck(endpoint=endpoint, ok=False, detail=(r.stderr or r.stdout).strip()[-300:] or "no answer")
