"""Faults the lab can inject into a host, and their fixes. Each one makes its alert fire for real.

The web hosts' faults are here (`FAULTS`, one line each in `medic lab break --help`); optional
components add their own (`LabComponent.faults`). A database host's postgres is `pg-primary-down`'s
to kill: `host-down` leaves it, and its `fix` does not restart it.
"""

from __future__ import annotations

import os
import signal
import time

from medic.errors import LabError
from medic_lab.components import Fault, active_components, registered
from medic_lab.daemons import start_service, start_sshd
from medic_lab.fault_record import recorded
from medic_lab.dependency_faults import HOST_FAULTS, LAB_FAULTS, LabFault, lab_fault, sshd_pid
from medic_lab.hosts import DATA_CAPACITY_BYTES, ensure_user
from medic_lab.processes import pid_in_file
from medic_lab.readiness import wait_for_sshd
from medic_lab.state import LabHost, LabState

JUNK_PREFIX = "junk-"
JUNK_AGE_SECONDS = 3 * 24 * 3600


def _service_pid(host: LabHost) -> int | None:
    """The host's own web service (not another host's that got its dead pid), if it runs."""
    return pid_in_file(host.root / "run" / "web.pid", mark=str(host.root / "bin" / "webapp.py"))


def _require_pid(host: LabHost) -> int:
    pid = _service_pid(host)
    if pid is None:
        raise LabError(f"the web service of {host.name} is not running; `medic lab fix service-down {host.name}` first")
    return pid


def _kill_service(host: LabHost, lab: LabState) -> str:
    pid = _service_pid(host)
    if pid is None:
        return f"web service of {host.name} was already down"
    os.kill(pid, signal.SIGKILL)
    return f"killed the web service of {host.name} (pid {pid})"


def _start_service(host: LabHost, lab: LabState) -> str:
    if _service_pid(host) is not None:
        return f"web service of {host.name} is already running"
    start_service(host, lab)
    return f"started the web service of {host.name}"


def _fill_disk(host: LabHost, lab: LabState) -> str:
    cache = host.data_dir / "cache"
    account = ensure_user(host.user)
    target = int(DATA_CAPACITY_BYTES * 0.95)
    used = sum(f.stat().st_size for f in host.data_dir.rglob("*") if f.is_file())
    chunk = 2 * 1024 * 1024
    old = time.time() - JUNK_AGE_SECONDS
    n = 0
    block = os.urandom(chunk)
    while used < target:
        n += 1
        path = cache / f"{JUNK_PREFIX}{n:04d}.tmp"
        while path.exists():
            n += 1
            path = cache / f"{JUNK_PREFIX}{n:04d}.tmp"
        path.write_bytes(block)
        os.chown(path, account.pw_uid, account.pw_gid)
        os.utime(path, (old, old))
        used += chunk
    return f"filled {host.name}'s data dir to {used / DATA_CAPACITY_BYTES:.0%} with {n} junk files in {cache}"


def _clean_disk(host: LabHost, lab: LabState) -> str:
    removed = 0
    for f in (host.data_dir / "cache").glob(f"{JUNK_PREFIX}*.tmp"):
        f.unlink()
        removed += 1
    return f"removed {removed} junk files from {host.name}"


def _make_slow(host: LabHost, lab: LabState) -> str:
    os.kill(_require_pid(host), signal.SIGUSR1)
    return f"the web service of {host.name} now answers in 0.6 s (degraded until restarted)"


def _make_fast(host: LabHost, lab: LabState) -> str:
    pid = _service_pid(host)
    if pid is None:
        return f"web service of {host.name} is not running; nothing to fix"
    os.kill(pid, signal.SIGUSR2)
    return f"the web service of {host.name} answers normally again"


def _start_leak(host: LabHost, lab: LabState) -> str:
    os.kill(_require_pid(host), signal.SIGRTMIN)
    return f"the web service of {host.name} now leaks ~1 MB of memory per second (until restarted)"


def _start_drift(host: LabHost, lab: LabState) -> str:
    os.kill(_require_pid(host), signal.SIGRTMIN + 1)
    return f"the web service of {host.name} now gets 2 ms slower every second, up to 0.15 s (until restarted)"


def _heal(host: LabHost, lab: LabState) -> str:
    pid = _service_pid(host)
    if pid is None:
        return f"web service of {host.name} is not running; nothing to fix"
    os.kill(pid, signal.SIGRTMIN + 2)
    return f"the web service of {host.name} no longer leaks or drifts"


def _kill_host(host: LabHost, lab: LabState) -> str:
    """The machine is gone: no sshd, no web service (a database host's postgres: `pg-primary-down`)."""
    said = [_kill_service(host, lab)] if host.group == "web" else []
    pid = sshd_pid(host)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        said.append(f"killed sshd of {host.name} (pid {pid})")
    return "; ".join(said)


def _revive_host(host: LabHost, lab: LabState) -> str:
    said = []
    if sshd_pid(host) is None:
        start_sshd(host, lab)
        wait_for_sshd(lab, timeout=10, hosts=[host])
        said.append(f"started sshd of {host.name}")
    if host.group == "web":
        said.append(_start_service(host, lab))
    return "; ".join(said)


WONT_START_MARK = "# medic lab fault wont-start"


def _break_config(host: LabHost, lab: LabState) -> str:
    env = host.root / "etc" / "service.env"
    text = env.read_text()
    if WONT_START_MARK in text:
        return f"{host.name}'s service config was already broken"
    env.write_text(f"{text}{WONT_START_MARK}\nSERVICE_PORT=not-a-port\n")
    return f"{host.name}'s service config now names an invalid port: `servicectl start` fails until fixed"


def _fix_config(host: LabHost, lab: LabState) -> str:
    env = host.root / "etc" / "service.env"
    text = env.read_text()
    said = "config was already fine"
    if WONT_START_MARK in text:
        env.write_text(text.split(WONT_START_MARK, 1)[0])
        said = "restored the service config"
    return f"{host.name}: {said}; {_start_service(host, lab)}"


FAULTS: list[Fault] = [
    Fault("service-down", "SIGKILL the web service (a crash: its pidfile stays behind, stale)",
          _kill_service, _start_service),
    Fault("disk-full", "old junk files in data/cache push the data dir past 90 % of its capacity",
          _fill_disk, _clean_disk),
    Fault("slow", "the web service answers every request in 0.6 s until it is restarted",
          _make_slow, _make_fast),
    Fault("leak", "the web service leaks ~1 MB/s of memory until restarted (no threshold rule catches it)",
          _start_leak, _heal),
    Fault("drift", "the web service gets 2 ms slower every second, up to 0.15 s, until restarted "
          "(stays under HighLatency's 0.25 s)", _start_drift, _heal),
    Fault("host-down", "the host dies: its sshd (and web service) killed, unreachable over SSH",
          _kill_host, _revive_host),
    Fault("wont-start", "its config names an invalid port: `servicectl start` fails, the running one serves on",
          _break_config, _fix_config),
]


def catalog() -> list[Fault | LabFault]:
    """Every fault the lab knows, whether or not its component runs (for help texts)."""
    return [*FAULTS, *HOST_FAULTS, *LAB_FAULTS, *(f for c in registered() for f in c.faults())]


def all_faults(lab: LabState) -> dict[str, Fault]:
    """The faults this lab can inject: the web hosts' and those of its running components."""
    return {f.name: f for f in [*FAULTS, *HOST_FAULTS, *(f for c in active_components(lab) for f in c.faults())]}


def _resolve(lab: LabState, fault: str, host_name: str | None) -> tuple[Fault, LabHost]:
    known = all_faults(lab)
    if fault not in known:
        raise LabError(f"unknown fault {fault!r} (known: {', '.join([*known, *(f.name for f in LAB_FAULTS)])})")
    if not host_name:
        raise LabError(f"{fault} is a fault of one host: name it, e.g. `medic lab break {fault} {lab.hosts[0].name}`")
    host = lab.host(host_name)
    if host is None:
        raise LabError(f"unknown host {host_name!r} (lab hosts: {', '.join(h.name for h in lab.hosts)})")
    return known[fault], host


def break_host(lab: LabState, fault: str, host_name: str | None = None) -> str:
    if (whole_lab := lab_fault(fault, host_name)) is not None:
        return recorded(lab, "break", fault, None, lambda: whole_lab.inject(lab))
    chosen, host = _resolve(lab, fault, host_name)
    return recorded(lab, "break", fault, host.name, lambda: chosen.inject(host, lab))  # the injector's record


def fix_host(lab: LabState, fault: str, host_name: str | None = None) -> str:
    if (whole_lab := lab_fault(fault, host_name)) is not None:
        return recorded(lab, "fix", fault, None, lambda: whole_lab.repair(lab))
    chosen, host = _resolve(lab, fault, host_name)
    return recorded(lab, "fix", fault, host.name, lambda: chosen.repair(host, lab))
