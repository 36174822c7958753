"""Faults of the lab's PostgreSQL cluster: a primary that dies or hangs, a lagging replica, a dead exporter."""

from __future__ import annotations

import os
import signal

from medic.core.polling import wait_until
from medic.errors import LabError
from medic_lab.components import Fault
from medic_lab.postgres_nodes import (exporter_pid, pgctl, postgres_pids, postmaster_pid, psql, require_db_host,
                                      run_as, start_exporter)
from medic_lab.reaper import stat_fields
from medic_lab.state import LabHost, LabState


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _kill_postgres(host: LabHost, lab: LabState) -> str:
    pids = postgres_pids(host)
    if not pids:
        return f"PostgreSQL on {host.name} was already down"
    _signal_all(pids, signal.SIGKILL)
    return f"killed PostgreSQL on {host.name} (postmaster {pids[0]} and {len(pids) - 1} children)"


def _start_postgres(host: LabHost, lab: LabState) -> str:
    require_db_host(host)
    _wait_until_reaped(host)
    said = run_as(host, str(pgctl(host)), "start")
    if said.returncode != 0:
        raise LabError(f"PostgreSQL on {host.name} did not start: {(said.stderr or said.stdout).strip()}")
    return said.stdout.strip()


def _wait_until_reaped(host: LabHost, *, timeout: float = 15) -> None:
    """A killed postmaster that is still a zombie keeps its pid "in use": pg_ctl and postgres then take
    the stale postmaster.pid for a running server and refuse to start. Wait until it is reaped — by
    this process's reaper, or by PID 1 when the lab was started by a process that has exited."""
    pm = postmaster_pid(host)
    if pm is None:
        return
    wait_until(lambda: "gone" if (fields := stat_fields(pm)) is None else f"state {fields[0].decode()}",
               what=f"the old postmaster of {host.name} (pid {pm}) to be reaped", timeout=timeout,
               done=lambda seen: seen == "gone" or seen != "state Z", error=LabError)


def _stop_postgres(host: LabHost, lab: LabState) -> str:
    pids = postgres_pids(host)
    if not pids:
        raise LabError(f"PostgreSQL on {host.name} is not running; nothing to hang")
    _signal_all(pids, signal.SIGSTOP)
    return f"SIGSTOPped PostgreSQL on {host.name} (postmaster {pids[0]} and {len(pids) - 1} children): alive, silent"


def _continue_postgres(host: LabHost, lab: LabState) -> str:
    pids = postgres_pids(host)
    if not pids:
        return f"PostgreSQL on {host.name} is not running (fenced or killed); nothing to continue"
    _signal_all(pids, signal.SIGCONT)
    return f"SIGCONTinued PostgreSQL on {host.name}"


def _pause_replay(host: LabHost, lab: LabState) -> str:
    psql(host, "SELECT pg_wal_replay_pause()")
    return f"paused WAL replay on {host.name}: it still receives WAL but falls behind"


def _resume_replay(host: LabHost, lab: LabState) -> str:
    if psql(host, "SELECT pg_is_in_recovery()") != "t":
        return f"{host.name} is not a standby any more; nothing to resume"
    psql(host, "SELECT pg_wal_replay_resume()")
    return f"resumed WAL replay on {host.name}"


def _kill_exporter(host: LabHost, lab: LabState) -> str:
    require_db_host(host)
    pid = exporter_pid(lab, host)
    if pid is None:
        return f"the postgres exporter of {host.name} was already down"
    os.kill(pid, signal.SIGKILL)
    return f"killed the postgres exporter of {host.name}: Prometheus sees a scrape failure, PostgreSQL is fine"


def _start_exporter(host: LabHost, lab: LabState) -> str:
    require_db_host(host)
    if exporter_pid(lab, host) is not None:
        return f"the postgres exporter of {host.name} is already running"
    start_exporter(lab, host)
    return f"started the postgres exporter of {host.name}"


def _block_fence(host: LabHost, lab: LabState) -> str:
    require_db_host(host)
    (host.root / "run" / "pg.fence-blocked").touch()
    return f"fencing {host.name} now fails (its pgctl fence cannot confirm the stop)"


def _unblock_fence(host: LabHost, lab: LabState) -> str:
    require_db_host(host)
    (host.root / "run" / "pg.fence-blocked").unlink(missing_ok=True)
    return f"fencing {host.name} works again"


FAULTS: list[Fault] = [
    Fault("pg-primary-down", "SIGKILL a node's postmaster and its children (the host stays up)",
          _kill_postgres, _start_postgres),
    Fault("pg-primary-hang", "SIGSTOP a node's postgres: alive, holding its port, answering nothing",
          _stop_postgres, _continue_postgres),
    Fault("pg-replica-lag", "pause WAL replay on a standby: it receives WAL but falls behind",
          _pause_replay, _resume_replay),
    Fault("pg-exporter-down", "kill a node's postgres exporter: a scrape failure, PostgreSQL is fine",
          _kill_exporter, _start_exporter),
    Fault("pg-fence-fails", "a node's fence (pgctl fence) cannot confirm the stop: what a failover must not ignore",
          _block_fence, _unblock_fence),
]
