"""The audit log, kept in Prefect: one artifact per record, readable from any machine with Prefect access.

Why Prefect: a flow may run on any worker, a click arrives at medic serve, `medic audit` runs on a
laptop — a local file reaches none of the others. Prefect's database (SQLite in the embedded mode,
the cluster's PostgreSQL otherwise) is the one store they all reach.

Each record is an artifact with key `medic-audit-<kind>` (intent, action, decision, click,
escalation), so the Prefect UI's Artifacts page lists one collection per kind with its whole
history; a record of a flow run is also linked to that run (its Artifacts tab). The artifact is a
one-row table of the record's fields (the record as JSON, what `read_records` parses back) with a
readable one-line description. Reading is `POST /artifacts/filter`, newest first.

Append-only, here, means: medic only ever creates audit artifacts — it never updates or deletes one,
and a record carries a unique `id`, so a write retried after a lost answer is read back once.
Prefect's API itself can update (`PATCH /artifacts/{id}`) and delete (`DELETE /artifacts/{id}`)
artifacts: anyone holding the API's credentials (`PREFECT_API_AUTH_STRING`) or direct access to the
database can. Keep those to the operators who may also change Prefect itself; a site that needs a
tamper-evident log ships these artifacts (or the database's WAL) to write-once storage.

When Prefect cannot take a record: a record written *before* acting (`record(...)`, the default
`fail_closed=True`) is retried ~5 s and then raises `PrefectError` (a DependencyError), so the
caller does not act unaudited. A record of something already done, or after which nothing acts
(`fail_closed=False`: the result of an action, a click already forwarded, an escalation, a refusal)
is retried ~30 s, then kept on this machine (`medic.orchestration.audit_spool`, sent first by the
next record written here or by `medic audit`), logged at ERROR, and `False` is returned: what
happened cannot be undone, and the run's own report still holds it. While Prefect is down, the records
already written stay readable in its database: table `artifact`, `key LIKE 'medic-audit-%'`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from medic.core.audit import AuditKind, AuditRecord, format_record, scrubbed
from medic.errors import PrefectError, StateDiskError
from medic.orchestration import audit_spool
from medic.orchestration.prefect_rest import api_url, call
from medic.settings import Settings, get_settings

__all__ = ["KEY_PREFIX", "audit_key", "read_records", "record", "replay_spooled", "where"]

log = logging.getLogger("medic.orchestration.audit_store")
KEY_PREFIX = "medic-audit-"
BEFORE_ACTING_RETRY_S = 5.0
AFTER_ACTING_RETRY_S = 30.0
_PAGE = 200  # the server's largest page (PREFECT_SERVER_API_DEFAULT_LIMIT)
_OVERLAP = 10  # pages overlap: equal `created` times may come back in either order across two queries
_CLOCK_SLACK = timedelta(minutes=5)  # `at` is the writer's clock, `created` the server's


def audit_key(kind: AuditKind) -> str:
    """The artifact key of one kind of record."""
    return KEY_PREFIX + kind


def where() -> str:
    """Where the log is, for messages: the Prefect API and the artifact keys."""
    try:
        return f"Prefect at {api_url()} (artifacts {KEY_PREFIX}*)"
    except PrefectError:
        return "Prefect (PREFECT_API_URL is not set)"


def _run_uuid(flow_run_id: str | None) -> str | None:
    try:
        return str(uuid.UUID(flow_run_id)) if flow_run_id else None
    except ValueError:
        return None


def record(entry: AuditRecord, *, settings: Settings | None = None, fail_closed: bool = True) -> bool:
    """Append `entry` (scrubbed of secrets) to the log; True once Prefect has stored it.

    fail_closed (default): raises PrefectError when Prefect cannot take it, so nothing is done
    unaudited. Otherwise: retries longer, then logs the record at ERROR and returns False.
    """
    settings = settings or get_settings()
    clean = scrubbed(entry, settings)
    state_dir = settings.state_dir or Path(".")
    replay_spooled(state_dir)  # what waited for Prefect goes first: the log stays in order
    try:
        _send(clean, retry_for=BEFORE_ACTING_RETRY_S if fail_closed else AFTER_ACTING_RETRY_S)
    except PrefectError as exc:
        if fail_closed:
            raise PrefectError(f"{exc} — medic does not act unaudited, so nothing was changed; "
                               "start the run again once Prefect answers", status=exc.status) from exc
        try:
            kept = audit_spool.keep(clean, state_dir)
        except StateDiskError as disk:
            log.error("AUDIT RECORD NOT STORED (%s; %s) — keep this line, it is the only copy: %s",
                      exc, disk, clean.model_dump_json())
            return False
        log.error("audit record kept in %s until Prefect answers (%s): %s", kept, exc, format_record(clean))
        return False
    return True


def _send(clean: AuditRecord, *, retry_for: float) -> None:
    body = {"key": audit_key(clean.kind), "type": "table", "description": format_record(clean),
            "data": json.dumps([clean.model_dump(mode="json")]), "flow_run_id": _run_uuid(clean.flow_run_id)}
    call("POST", "/artifacts/", json=body, what=f"write the audit record ({clean.kind}: {clean.what})",
         retry_for=retry_for)


def replay_spooled(state_dir: Path) -> int:
    """Send the records this machine kept while Prefect was unreachable (one quick try each)."""
    return audit_spool.replay(lambda e: _send(e, retry_for=1.0), state_dir)


def _parse(artifact: dict[str, Any]) -> AuditRecord | None:
    try:
        rows = json.loads(artifact.get("data") or "null")
        return AuditRecord.model_validate(rows[0] if isinstance(rows, list) and rows else rows)
    except (ValueError, TypeError, ValidationError):
        log.warning("artifact %s (key %s) is not an audit record; skipped", artifact.get("id"), artifact.get("key"))
        return None


def _pages(artifact_filter: dict[str, Any]) -> Iterable[tuple[datetime, AuditRecord | None]]:
    """(server creation time, record) of every matching artifact, newest first, each artifact once."""
    seen: set[str] = set()
    offset = 0
    while True:
        page = call("POST", "/artifacts/filter", what="read the audit log",
                    json={"artifacts": artifact_filter, "sort": "CREATED_DESC", "limit": _PAGE, "offset": offset})
        for artifact in page:
            if artifact["id"] not in seen and (artifact.get("key") or "").startswith(KEY_PREFIX):
                seen.add(artifact["id"])
                yield datetime.fromisoformat(artifact["created"]), _parse(artifact)
        if len(page) < _PAGE:
            return
        offset += _PAGE - _OVERLAP


def read_records(*, flow_run_id: str | None = None, limit: int | None = None,
                 kinds: Iterable[AuditKind] | None = None, since: datetime | None = None) -> list[AuditRecord]:
    """The newest `limit` records (all when None or 0) — of one run, of some kinds, made at or after
    `since` — oldest first. Raises PrefectError when Prefect cannot answer."""
    artifact_filter: dict[str, Any] = {"key": {"any_": [audit_key(k) for k in kinds]} if kinds is not None
                                       else {"like_": KEY_PREFIX}}
    run = _run_uuid(flow_run_id)
    if run:
        artifact_filter["flow_run_id"] = {"any_": [run]}
    kept: list[AuditRecord] = []
    ids: set[str] = set()
    for created, entry in _pages(artifact_filter):
        if since is not None and created < since - _CLOCK_SLACK:
            break
        if entry is None or entry.id in ids or (since is not None and entry.at < since):
            continue
        if flow_run_id is not None and entry.flow_run_id != flow_run_id:
            continue
        ids.add(entry.id)
        kept.append(entry)
        if limit and len(kept) >= limit:
            break
    kept.reverse()
    return kept
