"""Alertmanager through its API v2: silences (create, list, expire) and alerts (post).

Maintenance silences a host's alerts while it works on it, so a planned restart pages nobody. A
silence always carries an ``endsAt`` (it lapses on its own if medic dies mid-run) and medic expires
it explicitly as soon as the host is back. Silence ids are checked to be UUIDs before they go into
a URL path; matcher names must be Prometheus label names; values are JSON data, never syntax.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medic.core.net import tls_verifying_context
from medic.errors import AlertmanagerError, UnsafeValueError

__all__ = ["ActiveAlert", "AlertmanagerClient", "AlertmanagerError", "Matcher", "RaisedAlert", "Silence"]

log = logging.getLogger(__name__)

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
CREATED_BY = "medic"


class Matcher(BaseModel):
    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def api(self) -> dict[str, Any]:
        if not _LABEL_NAME.fullmatch(self.name):
            raise UnsafeValueError(f"silence matcher name {self.name!r} is not a label name; nothing was sent")
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex, "isEqual": self.is_equal}


class Silence(BaseModel):
    id: str
    matchers: list[Matcher]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    state: Literal["active", "pending", "expired"] | str = Field(description="Alertmanager's status.state")

    @property
    def active(self) -> bool:
        return self.state == "active"

    def matches(self, label: str, value: str) -> bool:
        return any(m.name == label and m.value == value and m.is_equal and not m.is_regex for m in self.matchers)


class RaisedAlert(BaseModel):
    """An alert medic raises itself (e.g. an anomaly detector's), as `POST /api/v2/alerts` takes it."""

    labels: dict[str, str] = Field(description="must include alertname; names are Prometheus label names")
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime
    ends_at: datetime = Field(description="it resolves on its own then unless raised again (medic died: no stale page)")
    generator_url: str = ""

    def api(self) -> dict[str, Any]:
        for name in (*self.labels, *self.annotations):
            if not _LABEL_NAME.fullmatch(name):
                raise UnsafeValueError(f"label/annotation name {name!r} is not a Prometheus label name")
        if "alertname" not in self.labels:
            raise AlertmanagerError("an alert needs an 'alertname' label")
        body: dict[str, Any] = {"labels": self.labels, "annotations": self.annotations,
                                "startsAt": self.starts_at.isoformat(), "endsAt": self.ends_at.isoformat()}
        if self.generator_url:
            body["generatorURL"] = self.generator_url
        return body


def _check_id(silence_id: str) -> str:
    try:
        return str(uuid.UUID(silence_id))
    except (ValueError, TypeError, AttributeError):
        raise UnsafeValueError(f"silence id {silence_id!r} is not a UUID; nothing was sent") from None


class ActiveAlert(BaseModel):
    """An alert Alertmanager holds as active (not silenced, not inhibited), as its API v2 gives it."""

    model_config = ConfigDict(extra="ignore")

    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=64)


class AlertmanagerClient:
    """A small synchronous client of one Alertmanager. Use as a context manager."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url + "/api/v2", timeout=timeout, verify=tls_verifying_context())

    def __enter__(self) -> "AlertmanagerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def create_silence(self, matchers: list[Matcher], *, comment: str, duration: timedelta,
                       created_by: str = CREATED_BY) -> str:
        """Silence alerts matching every matcher from now for ``duration``; returns the silence id."""
        if not matchers:
            raise UnsafeValueError("a silence needs at least one matcher: refusing to silence every alert")
        if duration <= timedelta(0):
            raise AlertmanagerError(f"a silence must last a positive time, got {duration}")
        now = datetime.now(timezone.utc)
        body = {"matchers": [m.api() for m in matchers], "startsAt": now.isoformat(),
                "endsAt": (now + duration).isoformat(), "createdBy": created_by, "comment": comment}
        data = self._request("POST", "/silences", json=body, what="create a silence")
        silence_id = data.get("silenceID") if isinstance(data, dict) else None
        if not silence_id:
            raise AlertmanagerError(f"Alertmanager at {self.url} answered a new silence without an id: {data!r}")
        log.info("alertmanager: silenced %s until %s (%s)", _describe(matchers), body["endsAt"], silence_id)
        return silence_id

    def expire_silence(self, silence_id: str) -> None:
        """End a silence now. Expiring an already expired silence is fine (idempotent)."""
        sid = _check_id(silence_id)
        try:
            self._request("DELETE", f"/silence/{sid}", what=f"expire silence {sid}")
        except AlertmanagerError as exc:
            if "already expired" not in str(exc):
                raise
        log.info("alertmanager: expired silence %s", sid)

    def silences(self, *, label: str | None = None, value: str | None = None,
                 created_by: str | None = None, state: str | None = None) -> list[Silence]:
        """Silences, optionally those with an exact matcher ``label=value``, by creator, in a state."""
        found = [_silence(s) for s in self._request("GET", "/silences", what="list silences")]
        return [s for s in found
                if (label is None or s.matches(label, value or ""))
                and (created_by is None or s.created_by == created_by)
                and (state is None or s.state == state)]

    def post_alerts(self, alerts: list[RaisedAlert]) -> None:
        """Raise (or refresh) alerts; Alertmanager groups and routes them like Prometheus's own."""
        if alerts:
            self._request("POST", "/alerts", json=[a.api() for a in alerts], what=f"post {len(alerts)} alert(s)")
            log.info("alertmanager: raised %s", ", ".join(f"{a.labels.get('alertname')}/{a.labels.get('host', '')}"
                                                          for a in alerts))

    def active_alerts(self, *, receiver: str | None = None) -> list[ActiveAlert]:
        """Alerts firing now that Alertmanager would notify (not silenced, not inhibited), optionally only
        those routed to `receiver` (a regex, as the API takes it)."""
        query = {"active": "true", "silenced": "false", "inhibited": "false", "unprocessed": "false"}
        if receiver:
            query["receiver"] = receiver
        raw = self._request("GET", f"/alerts?{urlencode(query)}", what="list active alerts")
        try:
            return [ActiveAlert.model_validate(a) for a in raw or []]
        except ValidationError as exc:
            raise AlertmanagerError(f"Alertmanager at {self.url} answered alerts medic cannot read: "
                                    f"{exc.errors()[0]['msg']}") from None

    def _request(self, method: str, path: str, *, what: str, json: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise AlertmanagerError(f"cannot {what}: Alertmanager at {self.url} did not answer ({exc}); "
                                    f"is it running? (MEDIC_ALERTMANAGER_URL)") from exc
        if response.status_code >= 400:
            raise AlertmanagerError(f"Alertmanager at {self.url} refused to {what}: HTTP {response.status_code} "
                                    f"{response.text.strip()[:300]}")
        try:
            return response.json() if response.content else None
        except ValueError:
            raise AlertmanagerError(f"Alertmanager at {self.url} answered {what!r} with something that is not JSON: "
                                    f"{response.text.strip()[:120]!r}; is MEDIC_ALERTMANAGER_URL an Alertmanager?") from None


def _describe(matchers: list[Matcher]) -> str:
    return ",".join(f"{m.name}{'=' if m.is_equal else '!='}{'~' if m.is_regex else ''}{m.value}" for m in matchers)


def _silence(raw: dict[str, Any]) -> Silence:
    return Silence(
        id=raw["id"],
        matchers=[Matcher(name=m["name"], value=m["value"], is_regex=m.get("isRegex", False),
                          is_equal=m.get("isEqual", True)) for m in raw.get("matchers", [])],
        starts_at=raw["startsAt"], ends_at=raw["endsAt"], created_by=raw.get("createdBy", ""),
        comment=raw.get("comment", ""), state=raw.get("status", {}).get("state", "unknown"),
    )
