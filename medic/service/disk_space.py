"""Refuse to start runs up front while medic's own disk is (nearly) full.

What `medic serve` writes on its machine: its state dir (`MEDIC_STATE_DIR`: its log, and the embedded
Prefect's SQLite database when it runs one) and the run dirs of Ansible (under TMPDIR). A full disk
does not fail every write at once — SQLite reuses the pages its WAL already holds, so a flow run can
still be recorded — but the run then fails halfway: a run dir cannot be made, a state change or an
audit record is refused. So below `MIN_FREE_BYTES` free on either, an alert that would start a run
is answered 503 naming the path (Alertmanager sends it again) and a `/runs` request is refused; the
resend once space has returned starts the run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from medic.settings import Settings

__all__ = ["MIN_FREE_BYTES", "low_disk_space"]

MIN_FREE_BYTES = 32 * 1024 * 1024  # a run's dirs, logs and records take a few MiB; a margin beyond that


def _free_bytes(path: Path) -> int:
    """Free bytes on the file system of `path` (its nearest existing parent, if it is not made yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def low_disk_space(settings: Settings) -> str | None:
    """Why no run should start now (which disk is short, how much is free), or None when there is room."""
    places = [("state dir (MEDIC_STATE_DIR)", settings.state_dir), ("run dirs (TMPDIR)", Path(tempfile.gettempdir()))]
    for what, path in places:
        if path is None:
            continue
        free = _free_bytes(Path(path))
        if free < MIN_FREE_BYTES:
            return (f"medic's disk is full: its {what} {path} has {free // 1024} KiB free (needs "
                    f"{MIN_FREE_BYTES // 2**20} MiB to start a run it can record); free space there — "
                    f"the alert is taken when it is sent again")
    return None
