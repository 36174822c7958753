"""Faults of medic's own dependencies: the monitoring stack, Prefect, a host's sshd, a playbook's command.

The target faults (`faults.FAULTS`) break what medic repairs; these break what medic *works with*, to
show it keeps its promises on its worst day (issue 12). Two kinds:

- `LAB_FAULTS` need no host (`medic lab break prometheus-down`): a daemon of the lab stops, or restarts.
  A stopped daemon's command line is recorded under ``<lab>/faults/`` so that `fix` starts it again
  exactly as `up` did (same port, same data), from any process.
- `HOST_FAULTS` take a host like the target faults (`medic lab break sshd-hang web-2`).

`faults.break_host` / `faults.fix_host` dispatch to both; `faults.catalog()` lists both.

The fake Slack's faults (slack-slow, slack-down) live in `medic_lab.slack_faults`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medic.core.net import wait_healthy
from medic.core.polling import wait_until
from medic.errors import LabError
from medic_lab.components import Fault
from medic_lab.hosts import ensure_user
from medic_lab.processes import pid_in_file, spawn, spawned_pid
from medic_lab.reaper import stat_fields
from medic_lab.slack_faults import SLACK_DELAY_S, SLACK_DOWN_STATUS, slack_back, slack_down, slack_slow
from medic_lab.state import LabHost, LabState

#: How long a stopped daemon gets to exit, and a started one to answer.
STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class LabFault:
    """A fault of the lab as a whole (no host): same one-line summary as `Fault`, actions take the lab."""

    name: str
    summary: str  # one line, for `medic lab break --help`
    inject: Callable[[LabState], str]
    repair: Callable[[LabState], str]


# --- lab daemons: stop, remember how they ran, start again --------------------------------------------


def _record(lab: LabState, name: str) -> Path:
    return lab.lab_dir / "faults" / f"{name}.json"


def _stop_daemon(lab: LabState, name: str) -> str:
    """SIGTERM the daemon's process group (spawned in its own session) and wait until it has exited."""
    pid = spawned_pid(lab.lab_dir, name)
    if pid is None:
        return f"{name} was already down"
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    record = _record(lab, name)
    record.parent.mkdir(mode=0o700, exist_ok=True)
    record.write_text(json.dumps({"argv": argv, "cwd": os.readlink(f"/proc/{pid}/cwd")}))
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    wait_until(lambda: _group_members(pid), what=f"{name} (process group {pid}) to exit after SIGTERM",
               timeout=STOP_TIMEOUT_S, done=lambda left: not left, error=LabError)
    return f"stopped {name} (pid {pid})"


def _group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies count as gone)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(int(entry))) is not None:
            if int(fields[2]) == pgid and fields[0] != b"Z":
                found.append(int(entry))
    return found


def _start_daemon(lab: LabState, name: str, ready_url: str, *, env: dict[str, str] | None = None) -> str:
    if spawned_pid(lab.lab_dir, name) is not None:
        return f"{name} is already running"
    record = _record(lab, name)
    if not record.is_file():
        raise LabError(f"{name} is down but the lab has no record of how it ran ({record}); "
                       f"restart the lab: `medic lab down && medic lab up`")
    saved = json.loads(record.read_text())
    proc = spawn(name, saved["argv"], lab_dir=lab.lab_dir, env=env, cwd=Path(saved["cwd"]))
    waited = wait_healthy(ready_url, what=name, timeout=START_TIMEOUT_S, proc=proc, error=LabError)
    record.unlink()
    return f"started {name} again (pid {proc.pid}, ready in {waited:.1f} s)"


def _prefect_env(lab: LabState) -> dict[str, str]:
    if not lab.with_prefect or lab.options.get("cluster"):
        raise LabError("the Prefect faults need the lab's own SQLite Prefect server (`medic lab up` without "
                       "--no-prefect and without --with cluster)")
    from medic.orchestration.embedded_server import server_env

    return server_env(lab.lab_dir / "prefect", lab.ports.prefect)


def _prefect_down(lab: LabState) -> str:
    _prefect_env(lab)
    return _stop_daemon(lab, "prefect")


def _prefect_up(lab: LabState) -> str:
    return _start_daemon(lab, "prefect", f"{lab.prefect_api_url}/health", env=_prefect_env(lab))


def _prefect_restart(lab: LabState) -> str:
    return f"{_prefect_down(lab)}; {_prefect_up(lab)} on the same port and database"


# --- the state disk fills up ----------------------------------------------------------------------------
#
# What medic and its Prefect keep on disk in the lab: the lab's Prefect home (`<lab>/prefect`: the SQLite
# database holding runs, audit records, approval cards, the flap guard's history; concurrency leases),
# medic serve's state dir (its log; `<lab>/medic` by default) and the run dirs of Ansible (under TMPDIR).
# `state_disk(lab)` puts the first on a small tmpfs mounted at `<lab>/state-disk` (Prefect is stopped,
# its home moved there, `<lab>/prefect` left as a symlink to it, and Prefect started again on the same
# port and database), with `medic/` and `tmp/` beside it for a medic serve to use as MEDIC_STATE_DIR
# and TMPDIR. A tmpfs suits SQLite (POSIX locks, mmap for the WAL index) and fails a write with ENOSPC
# like a full disk. `medic lab down` unmounts it (`unmount_state_disk`).

STATE_DISK = "state-disk"
#: The tmpfs's size while not full: room for the rest of a long test session's runs (a tmpfs takes
#: memory only for what it holds). The fault shrinks it to what it holds plus a little, then fills that.
STATE_DISK_ROOM_BYTES = 2 * 1024**3
FULL_MARGIN_BYTES = 4 * 1024**2
FILLER = "filler.state-disk-full"


def state_disk(lab: LabState) -> Path:
    """The lab's state disk, mounted first if it is not (the lab's own SQLite Prefect moves onto it)."""
    mount = lab.lab_dir / STATE_DISK
    if os.path.ismount(mount):
        return mount
    _prefect_env(lab)  # refuses a lab without its own SQLite Prefect: there is no state disk to move
    home = lab.lab_dir / "prefect"
    if home.is_symlink():
        raise LabError(f"{home} is a symlink but {mount} is not mounted: restart the lab "
                       f"(`medic lab down && medic lab up`)")
    used = sum(f.stat().st_size for f in home.rglob("*") if f.is_file())
    _stop_daemon(lab, "prefect")
    mount.mkdir(mode=0o700, exist_ok=True)
    _run(["mount", "-t", "tmpfs", "-o", f"size={used * 2 + STATE_DISK_ROOM_BYTES},mode=0700", "medic-lab-state",
          str(mount)])
    shutil.copytree(home, mount / "prefect", symlinks=True)
    shutil.rmtree(home)
    home.symlink_to(mount / "prefect")
    for d in ("medic", "tmp"):
        (mount / d).mkdir(mode=0o700)
    _prefect_up(lab)
    return mount


def unmount_state_disk(lab_dir: Path) -> None:
    """Unmount the lab's state disk if it is mounted (its processes are stopped: `medic lab down`)."""
    mount = lab_dir / STATE_DISK
    if os.path.ismount(mount):
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            _run(["umount", "--lazy", str(mount)])  # still busy: detach now, freed when the last user goes
    if (lab_dir / "prefect").is_symlink():
        (lab_dir / "prefect").unlink()
    if mount.is_dir():
        mount.rmdir()


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()[:300]}; "
                       f"the state-disk fault needs root and a kernel with tmpfs")


def _fill_state_disk(lab: LabState) -> str:
    """Shrink the tmpfs to what it holds plus a few MiB, then fill those: writes fail with ENOSPC."""
    mount = state_disk(lab)
    _run(["mount", "-o", f"remount,size={shutil.disk_usage(mount).used + FULL_MARGIN_BYTES}", str(mount)])
    block = b"\0" * (256 * 1024)
    written = 0
    with open(mount / FILLER, "ab", buffering=0) as out:  # unbuffered: nothing left to flush at close
        try:
            while True:  # bounded by the tmpfs size
                written += out.write(block) or 0
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    free = shutil.disk_usage(mount).free
    return f"filled the state disk {mount} ({written // 1024} KiB more; {free} bytes free)"


def _free_state_disk(lab: LabState) -> str:
    mount = lab.lab_dir / STATE_DISK
    filler = mount / FILLER
    if not filler.exists():
        return "the state disk was not full"
    size = filler.stat().st_size
    filler.unlink()
    _run(["mount", "-o", f"remount,size={shutil.disk_usage(mount).used * 2 + STATE_DISK_ROOM_BYTES}", str(mount)])
    return f"freed {size // 1024} KiB on the state disk {mount}, and gave it its room back"


LAB_FAULTS: list[LabFault] = [
    LabFault("prometheus-down", "Prometheus stops: detect and verify queries are refused",
             lambda lab: _stop_daemon(lab, "prometheus"),
             lambda lab: _start_daemon(lab, "prometheus", f"{lab.prometheus_url}/-/ready")),
    LabFault("alertmanager-down", "Alertmanager stops: no alert reaches medic, silences cannot be set",
             lambda lab: _stop_daemon(lab, "alertmanager"),
             lambda lab: _start_daemon(lab, "alertmanager", f"{lab.alertmanager_url}/-/ready")),
    LabFault("prefect-down", "the lab's Prefect server stops (runs cannot report, pauses cannot resume)",
             _prefect_down, _prefect_up),
    LabFault("prefect-restart", "the lab's Prefect server stops and starts again on the same port and database",
             _prefect_restart, _prefect_up),
    LabFault("slack-slow", f"the fake Slack answers every Web API call after N s (MEDIC_LAB_SLACK_DELAY_S, "
             f"default {SLACK_DELAY_S:g})", slack_slow, slack_back),
    LabFault("slack-down", f"the fake Slack answers every Web API call with HTTP {SLACK_DOWN_STATUS}",
             slack_down, slack_back),
    LabFault("state-disk-full", "the state disk (a tmpfs under the lab: Prefect's SQLite, medic's state, run "
             "dirs) fills up", _fill_state_disk, _free_state_disk),
]


# --- a host's sshd hangs ------------------------------------------------------------------------------


def sshd_pid(host: LabHost) -> int | None:
    """The host's own sshd listener if it runs (not whatever process got a dead one's pid)."""
    return pid_in_file(host.root / "sshd" / "sshd.pid", mark=str(host.root / "sshd" / "sshd_config"))


def _sshd_tree(host: LabHost) -> list[int]:
    """The host's sshd listener and every process under it (its sessions and their commands)."""
    root = sshd_pid(host)
    if root is None:
        return []
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(int(entry))) is not None and fields[0] != b"Z":
            parents[int(entry)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return sorted(tree)


def _signal_tree(host: LabHost, sig: signal.Signals) -> list[int]:
    pids = _sshd_tree(host)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def _hang_sshd(host: LabHost, lab: LabState) -> str:
    pids = _signal_tree(host, signal.SIGSTOP)
    if not pids:
        raise LabError(f"sshd of {host.name} is not running; `medic lab fix host-down {host.name}` first")
    return f"SIGSTOPped sshd of {host.name} and its sessions ({len(pids)} processes): connects hang, no banner"


def _continue_sshd(host: LabHost, lab: LabState) -> str:
    pids = _signal_tree(host, signal.SIGCONT)
    return f"SIGCONTinued sshd of {host.name} ({len(pids)} processes)" if pids else (
        f"sshd of {host.name} is not running; nothing to continue")


# --- a playbook's remote command never returns ------------------------------------------------------------

HANG_MARKER = "playbook-hang"
#: servicectl while the fault is on: every action but `status` waits for the marker to go, then runs.
HANGING_SERVICECTL = """#!/bin/sh
# medic lab fault playbook-hang: `medic lab fix playbook-hang HOST` removes the marker and this wrapper.
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" != status ]; then
  while [ -e "$HERE/../run/%s" ]; do sleep 0.2; done
fi
[ -x "$HERE/servicectl.real" ] && exec "$HERE/servicectl.real" "$@"
exec "$HERE/servicectl" "$@"  # fixed while waiting: the real one is back in place
""" % HANG_MARKER


def _hang_playbook(host: LabHost, lab: LabState) -> str:
    bin_dir = host.root / "bin"
    marker = host.root / "run" / HANG_MARKER
    if not (bin_dir / "servicectl.real").exists():
        shutil.copy2(bin_dir / "servicectl", bin_dir / "servicectl.real")
        wrapper = bin_dir / "servicectl.hang"
        wrapper.write_text(HANGING_SERVICECTL)
        wrapper.chmod(0o755)
        wrapper.replace(bin_dir / "servicectl")
    marker.touch()
    account = ensure_user(host.user)
    os.chown(marker, account.pw_uid, account.pw_gid)
    return f"`servicectl start|stop|restart` on {host.name} now blocks until fixed (`status` still answers)"


def _release_playbook(host: LabHost, lab: LabState) -> str:
    bin_dir = host.root / "bin"
    (host.root / "run" / HANG_MARKER).unlink(missing_ok=True)
    if not (bin_dir / "servicectl.real").exists():
        return f"servicectl on {host.name} was not hanging"
    (bin_dir / "servicectl.real").replace(bin_dir / "servicectl")
    return f"servicectl on {host.name} answers again (blocked callers go on)"


HOST_FAULTS: list[Fault] = [
    Fault("sshd-hang", "SIGSTOP the host's sshd and its sessions: TCP connects, SSH never answers",
          _hang_sshd, _continue_sshd),
    Fault("playbook-hang", "`servicectl start|stop|restart` never returns (a playbook step hangs on it)",
          _hang_playbook, _release_playbook),
]


def lab_fault(name: str, host_name: str | None) -> LabFault | None:
    """The host-less fault of that name (refusing a host for it), or None if it is not one."""
    chosen = next((f for f in LAB_FAULTS if f.name == name), None)
    if chosen is not None and host_name:
        raise LabError(f"{name} is a fault of the whole lab and takes no HOST: `medic lab break {name}`")
    return chosen
