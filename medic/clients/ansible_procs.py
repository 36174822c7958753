"""Stop what an ansible-playbook run leaves behind when it is stopped: its workers and their ssh.

ansible-runner ends a run that timed out or was cancelled with SIGKILL to ansible-playbook's process
group. ansible-playbook's workers are not in that group: each calls ``setsid()`` (ansible
``executor/process/worker.py``) and only the parent, on SIGTERM/SIGINT, would have passed the signal
on. So a worker blocked on a remote command that never returns lives on with its ssh, holding the
connection and the remote command open, after medic has reported the step as timed out. Workers are
forks of ansible-playbook: their command line still names the run's private data dir, unique to the
run, which is how they are found here.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)


def _worker_groups(private_dir: Path) -> set[int]:
    """Process groups of live processes whose command line names this run's private dir."""
    needle = str(private_dir).encode()
    groups = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            groups.add(os.getpgid(int(entry)))
        except (OSError, ProcessLookupError):
            continue
    groups.discard(os.getpgrp())  # never our own group
    return groups


def stop_leftovers(private_dir: Path) -> int:
    """SIGKILL the process group of every process still naming the run's private dir; how many groups."""
    groups = _worker_groups(private_dir)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    if groups:
        log.warning("ansible: stopped %d leftover ansible-playbook worker group(s) of %s", len(groups), private_dir)
    return len(groups)
