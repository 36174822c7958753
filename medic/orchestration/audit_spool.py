"""Audit records Prefect could not take after the fact, kept on this machine until it can.

A record of something already done (`fail_closed=False`: an action's result, a forwarded click) is
retried ~30 s. Prefect can be down longer (a restart, an outage): the soak saw a repair whose only
record was an ERROR line. So such a record goes to `<state dir>/audit-spool.jsonl` (0600, one JSON
line per record, the whole line written or nothing, fsync'ed) and is sent, oldest first, before the
next record this machine writes — `medic audit` sends what waits too, and says so. Records are
scrubbed of secrets before they reach the spool, as before they reach Prefect. Each record has a
unique id and the reader keeps one per id, so a record sent twice (a lost answer) reads back once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from medic.core.audit import AuditRecord
from medic.errors import MedicError, StateDiskError

__all__ = ["SPOOL_NAME", "keep", "pending", "replay"]

log = logging.getLogger("medic.orchestration.audit_spool")
SPOOL_NAME = "audit-spool.jsonl"
_lock = threading.Lock()  # one replay or append at a time in this process


def _path(state_dir: Path) -> Path:
    return state_dir / SPOOL_NAME


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def keep(entry: AuditRecord, state_dir: Path) -> Path:
    """Append `entry` to the spool (created 0600), whole and on disk before returning. Raises
    StateDiskError (the disk refused it) — then the ERROR log line is the only copy."""
    path = _path(state_dir)
    line = entry.model_dump_json().encode() + b"\n"
    with _lock:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                try:
                    _write_all(fd, line)
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, size)  # no partial line left behind
                    raise
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateDiskError(f"cannot keep the audit record in {path}: {exc}") from exc
    return path


def pending(state_dir: Path) -> list[AuditRecord]:
    """The records waiting in the spool, oldest first (an unreadable line is logged and skipped)."""
    try:
        lines = _path(state_dir).read_text().splitlines()
    except FileNotFoundError:
        return []
    waiting = []
    for n, line in enumerate(lines, 1):
        try:
            waiting.append(AuditRecord.model_validate_json(line))
        except ValidationError as exc:
            log.warning("%s line %d is not an audit record; skipped: %s", _path(state_dir), n, exc)
    return waiting


def replay(send: Callable[[AuditRecord], None], state_dir: Path) -> int:
    """Send the spooled records, oldest first, until one fails (MedicError: Prefect still down); keep
    the unsent ones. Returns how many were sent."""
    path = _path(state_dir)
    if not path.exists():
        return 0
    with _lock:
        waiting = pending(state_dir)
        sent = 0
        for entry in waiting:
            try:
                send(entry)
            except MedicError as exc:
                log.warning("%d spooled audit record(s) still wait for Prefect: %s", len(waiting) - sent, exc)
                break
            sent += 1
        rest = waiting[sent:]
        if rest:
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, b"".join(e.model_dump_json().encode() + b"\n" for e in rest))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        else:
            path.unlink(missing_ok=True)
    if sent:
        log.warning("sent %d audit record(s) kept on disk while Prefect was unreachable", sent)
    return sent
