"""Reap what the lab starts, in whichever process started it (pytest, `medic lab up`, the demo).

PID 1 in this container never reaps: a lab daemon that is killed — by a fault, by a failover fence
over SSH, by `medic lab down` — stays a zombie, its /proc/<pid> still there, until its parent waits
for it. A daemon thread waits for two kinds of processes, never blocking (WNOHANG):

- the lab's own children (`processes.spawn`): `Popen.poll()`, which is `waitpid(pid, WNOHANG)`;
- daemons started *on* a lab host (`servicectl start` over SSH, `pgctl start` → pg_ctl) detach and
  are orphaned. This process becomes a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so orphans of
  its descendants come to it instead of to PID 1; it reaps those that exited, ran as a lab user and
  are in a session of their own. Never anything else: a child that `subprocess.run` or pexpect is
  waiting for elsewhere in this process must keep its exit status (runuser, ssh, ansible run as root
  or in our session).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import subprocess
import threading
import time

LAB_USER_PREFIX = "mlab-"
PR_SET_CHILD_SUBREAPER = 36
#: How often the thread looks; a zombie lives at most this long (a poll interval, not a sync point).
INTERVAL_S = 0.1


def stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


class Reaper:
    """Waits for the lab's children and for orphaned lab-host daemons; started on first `adopt`."""

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subreaper = False
        self._lab_uids: set[int] = set()

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._children[proc.pid] = proc
            if self._thread is None or not self._thread.is_alive():
                self._subreaper = _become_subreaper()
                self._thread = threading.Thread(target=self._run, name="medic-lab-reaper", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self.reap_once()
            time.sleep(INTERVAL_S)

    def reap_once(self) -> list[int]:
        """One round; returns the pids reaped."""
        with self._lock:
            children = list(self._children.items())
        reaped = [pid for pid, proc in children if proc.poll() is not None]
        if reaped:
            with self._lock:
                for pid in reaped:
                    self._children.pop(pid, None)
        if self._subreaper and _has_waitable_child():
            reaped += self._reap_orphans({pid for pid, _ in children})
        return reaped

    def _reap_orphans(self, ours: set[int]) -> list[int]:
        me, my_session = os.getpid(), os.getsid(0)
        reaped = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in ours:
                continue
            pid = int(entry)
            fields = stat_fields(pid)
            if not fields or fields[0] != b"Z" or int(fields[1]) != me or int(fields[3]) == my_session:
                continue
            try:
                uid = os.stat(f"/proc/{pid}").st_uid
            except OSError:
                continue
            if not self._is_lab_user(uid):
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
            except ChildProcessError:
                pass
        return reaped

    def _is_lab_user(self, uid: int) -> bool:
        if uid in self._lab_uids:
            return True
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            return False
        if name.startswith(LAB_USER_PREFIX):
            self._lab_uids.add(uid)
            return True
        return False


def _become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _has_waitable_child() -> bool:
    """Some child has exited (peeked with WNOWAIT: its status stays for whoever waits for it)."""
    try:
        return os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


#: The one reaper of this process.
REAPER = Reaper()
