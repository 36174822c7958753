"""Start lab daemons detached, reap them, and find every one of them again to stop them.

Every process the lab starts carries the environment marker ``MEDIC_LAB_OWNER=<lab dir>``; processes
started on a host over SSH (which resets the environment) run as a lab user with the lab dir or the
lab's public dir in their command line. `down` scans /proc for both, so it leaves nothing behind even
when `up` crashed before it could record a pid. What is started here is reaped by `reaper.REAPER`.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from medic_lab.reaper import LAB_USER_PREFIX, REAPER, stat_fields
from medic_lab.state import public_dir_for

LAB_MARK_ENV = "MEDIC_LAB_OWNER"


class LabProcess(BaseModel):
    pid: int
    user: str
    command: str


def spawn(
    name: str,
    argv: list[str],
    *,
    lab_dir: Path,
    env: dict[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session, output to ``<lab>/logs/<name>.log``, pid recorded, reaped here."""
    logs = lab_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {}), LAB_MARK_ENV: str(lab_dir)}
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=full_env,
            cwd=cwd,
            user=user,
            group=pwd.getpwnam(user).pw_gid if user else None,
            extra_groups=[] if user else None,
        )
    REAPER.adopt(proc)
    pids = lab_dir / "pids"
    pids.mkdir(exist_ok=True)
    (pids / f"{name}.pid").write_text(str(proc.pid))
    return proc


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _ancestors() -> set[int]:
    """This process and its parents: never kill the caller."""
    seen, pid = set(), os.getpid()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        fields = stat_fields(pid)
        pid = int(fields[1]) if fields else 0
    return seen


def find_lab_processes(lab_dir: Path) -> list[LabProcess]:
    """Every live process that belongs to this lab (see module docstring for the rule)."""
    mark = f"{LAB_MARK_ENV}={lab_dir}".encode()
    # sshd and ssh's ControlMaster rewrite their argv into one title ("sshd: /usr/sbin/sshd -f
    # <public>/hosts/... [listener]") and lose their environment, so match the paths anywhere in it.
    dirs = b"|".join(re.escape(str(d).encode()) for d in (lab_dir, public_dir_for(lab_dir)))
    names_lab_dir = re.compile(rb"(^|[\s=:])(" + dirs + rb")(/|\s|$)")
    skip = _ancestors()
    found: list[LabProcess] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        pid = int(entry)
        cmdline = _read(f"/proc/{pid}/cmdline")
        if not cmdline:
            continue  # kernel thread or already gone
        args = cmdline.split(b"\0")
        names_lab = names_lab_dir.search(b" ".join(args)) is not None
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
            user = pwd.getpwuid(uid).pw_name
        except (OSError, KeyError):
            continue
        marked = mark in _read(f"/proc/{pid}/environ").split(b"\0")
        comm = _read(f"/proc/{pid}/comm").strip()
        ours = marked or (names_lab and (user.startswith(LAB_USER_PREFIX) or comm in (b"ssh", b"sshd")))
        if ours:
            found.append(LabProcess(pid=pid, user=user, command=b" ".join(args).decode(errors="replace")[:200]))
    return found


def stop_lab_processes(lab_dir: Path, *, grace: float = 3.0) -> int:
    """SIGTERM every lab process, SIGKILL what is left after ``grace`` seconds. Returns how many."""
    procs = find_lab_processes(lab_dir)
    for p in procs:
        _signal(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not any(alive(p.pid) for p in procs):
            break
        time.sleep(0.05)
    for p in find_lab_processes(lab_dir):
        _signal(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and find_lab_processes(lab_dir):
        time.sleep(0.05)
    shutil_pids = lab_dir / "pids"
    if shutil_pids.is_dir():
        for f in shutil_pids.iterdir():
            f.unlink(missing_ok=True)
    return len(procs)


def stop_process(pid: int, *, grace: float) -> int:
    """SIGTERM one process, SIGKILL it if it still runs after ``grace`` seconds. Returns 1 if it ran."""
    if not alive(pid):
        return 0
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        _signal(pid, signal.SIGKILL)
    return 1


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int) -> bool:
    """Alive and not a zombie (a killed process can stay a zombie until its parent reaps it)."""
    fields = stat_fields(pid)
    return bool(fields) and fields[0] != b"Z"


def process_gone(pid: int) -> bool:
    """The process no longer runs: no /proc/<pid>, or a zombie (exited; PID 1 here never reaps orphans)."""
    return not alive(pid)


def pid_in_file(pidfile: Path, *, mark: str) -> int | None:
    """The pid a pidfile names if that process is alive *and is the one the file is about*: `mark` (a
    path only that process has) is a whole word of its command line. Every lab host shares one pid
    namespace, and pids wrap at pid_max (32768 here) within a minute under load: a dead service's stale
    pid soon names another host's identical service (the soak saw web-1 "running" as another host's
    webapp). A word, not an argument: sshd rewrites its command line into one title string."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if not alive(pid):
        return None
    words = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
    return pid if f" {mark} " in f" {words} " else None


def spawned_pid(lab_dir: Path, name: str) -> int | None:
    """The pid of the daemon `spawn` started as `name` (`<lab>/pids/<name>.pid`), if it still runs: the
    process must carry this lab's mark and lead its own session, as `spawn` starts every daemon. A
    daemon that died on its own leaves its pid to be reused, and `medic lab break prometheus-down`
    must not SIGTERM whoever got it (`pid_in_file` is the same rule for the hosts' services)."""
    try:
        pid = int((lab_dir / "pids" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    fields = stat_fields(pid)
    if not fields or fields[0] == b"Z" or int(fields[3]) != pid:
        return None
    marked = f"{LAB_MARK_ENV}={lab_dir}".encode() in _read(f"/proc/{pid}/environ").split(b"\0")
    return pid if marked else None
