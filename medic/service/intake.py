"""Alertmanager webhook intake: validate the payload, map each alert to runbooks and an inventory host.

Alertmanager's webhook format version 4. Nothing here starts a run: it only says, per alert, what
should happen (start, ignore and why), so the HTTP handler can answer at once with a reason for each.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medic.clients.alertmanager import ActiveAlert
from medic.errors import IntakeRefused, InventoryError, UnsafeValueError
from medic.core.inventory import Inventory
from medic.core.runbook import Runbook

MAX_BODY_BYTES = 1024 * 1024
MAX_ALERTS = 5000


class AMAlert(ActiveAlert):
    """One alert of a webhook: the fields Alertmanager's API gives an alert, plus its status."""

    status: Literal["firing", "resolved"]


class AMWebhook(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: str
    groupKey: str = ""
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[AMAlert] = Field(max_length=MAX_ALERTS)


class Action(StrEnum):
    START = "start"
    RESOLVED = "resolved"
    UNKNOWN_ALERT = "no runbook"
    UNKNOWN_HOST = "unknown host"
    NO_HOST_LABEL = "no host label"


class AlertDecision(BaseModel):
    """What medic makes of one alert (one per matching runbook)."""

    fingerprint: str
    alertname: str
    status: Literal["firing", "resolved"]
    action: Action
    runbook: str | None = None
    target: str | None = None
    detail: str = ""


def parse_webhook(body: bytes, content_type: str | None) -> AMWebhook:
    """Validate the request body; raise IntakeRefused (4xx + reason) for anything unusable."""
    if len(body) > MAX_BODY_BYTES:
        raise IntakeRefused(413, f"payload of {len(body)} bytes is over the {MAX_BODY_BYTES}-byte limit")
    # application/json only (parameters such as charset allowed): a browser form or a web page's
    # `text/plain` post must not reach a handler (the guard refuses them first; this holds without it).
    if (content_type or "").split(";", 1)[0].strip().lower() != "application/json":
        raise IntakeRefused(415, f"expected application/json, got {content_type or 'no content type'}")
    try:
        payload = AMWebhook.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        kind = "not JSON" if first["type"] == "json_invalid" else f"{where}: {first['msg']}"
        raise IntakeRefused(400, f"not an Alertmanager webhook payload ({kind})") from None
    if payload.version != "4":
        raise IntakeRefused(422, f"unsupported webhook version {payload.version!r}; medic speaks version 4")
    return payload


def _matches(runbook: Runbook, labels: dict[str, str]) -> bool:
    trigger = runbook.trigger
    return (trigger is not None and labels.get("alertname") == trigger.alertname
            and all(labels.get(k) == v for k, v in trigger.matchers.items()))


def decide(payload: AMWebhook, runbooks: dict[str, Runbook], inventory: Inventory) -> list[AlertDecision]:
    """For every alert: the runbooks it triggers and the inventory host it names, or why not."""
    decisions: list[AlertDecision] = []
    for alert in payload.alerts:
        name = alert.labels.get("alertname", "")
        base = dict(fingerprint=alert.fingerprint, alertname=name, status=alert.status)
        matched = [rb for rb in runbooks.values() if _matches(rb, alert.labels)]
        if not matched:
            decisions.append(AlertDecision(**base, action=Action.UNKNOWN_ALERT,
                                           detail=f"no runbook is triggered by alert {name!r}"))
            continue
        for rb in matched:
            label = rb.targets.from_label
            value = alert.labels.get(label)
            if not value:
                decisions.append(AlertDecision(**base, action=Action.NO_HOST_LABEL, runbook=rb.name,
                                               detail=f"alert has no {label!r} label naming the host"))
                continue
            try:
                host = inventory.host(value)
                if rb.targets.within and host.name not in {h.name for h in inventory.resolve(rb.targets.within)}:
                    raise InventoryError(f"{host.name} is outside group {rb.targets.within!r}")
            except (InventoryError, UnsafeValueError) as exc:
                decisions.append(AlertDecision(**base, action=Action.UNKNOWN_HOST, runbook=rb.name,
                                               detail=str(exc)[:300]))
                continue
            action = Action.START if alert.status == "firing" else Action.RESOLVED
            decisions.append(AlertDecision(**base, action=action, runbook=rb.name, target=host.name))
    return decisions
