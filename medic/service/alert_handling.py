"""One alert, whichever way it reached medic (Alertmanager's webhook or the alert sweep): start or find
its run, end a resolved alert's approval wait, or say why not — and log the answer, one line per alert.

The idempotency key is the alert instance: (runbook, target, fingerprint, startsAt). The same alert sent
again (a resend, a retry after a 503, the sweep finding it still firing) is answered by the run Prefect
already holds for that key; the same labels firing again later have a new startsAt, so a new run.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from medic.core.timeline import ALERT_CONTEXT_KEY, AlertReceipt
from medic.errors import MedicError
from medic.orchestration.launcher import LaunchStatus
from medic.service.disk_space import low_disk_space
from medic.service.intake import Action, AlertDecision, AMWebhook
from medic.service.state import ServiceState

__all__ = ["handle_alert"]

log = logging.getLogger("medic.service.alerts")


async def handle_alert(state: ServiceState, payload: AMWebhook, d: AlertDecision, received: datetime,
                       *, via: str = "webhook") -> dict[str, Any]:
    """One alert of `payload`: the answer for it (the decision plus `result`, `flow_run_id`, `detail`)."""
    entry = d.model_dump(mode="json", exclude_none=True)
    if d.action is Action.START and d.runbook and d.target and (short := low_disk_space(state.settings)):
        entry.update(result=LaunchStatus.ERROR.value, detail=short)  # refused up front: answered 503
        _count(state, via, LaunchStatus.ERROR.value)
        log.warning("alert %s on %s (%s) not taken: %s", d.alertname, d.target, via, short)
        return entry
    if d.action is Action.START and d.runbook and d.target:
        launch = await state.launcher.launch(
            state.runbooks[d.runbook], d.target, reason=f"alert {d.alertname} ({d.fingerprint})",
            idempotency_key=f"{d.runbook}:{d.target}:{d.fingerprint}:{_starts_at(payload, d.fingerprint)}",
            context=_alert_context(payload, d, received))
        entry.update(result=launch.status.value, flow_run_id=launch.flow_run_id, detail=launch.detail or d.detail)
        _count(state, via, launch.status.value)
        level = logging.WARNING if launch.status is LaunchStatus.ERROR else logging.INFO
        log.log(level, "alert %s on %s (%s, %s): %s %s%s", d.alertname, d.target, via, d.fingerprint,
                launch.status.value, launch.flow_run_id or "", f" — {launch.detail}" if launch.detail else "")
    elif d.action is Action.RESOLVED and d.runbook and d.target:
        try:
            withdrawn = await state.launcher.withdraw(d.runbook, d.target, why=f"alert {d.alertname} resolved")
        except MedicError as exc:  # cannot tell whether a run waits: have Alertmanager send it again
            entry.update(result=LaunchStatus.ERROR.value, detail=f"could not look for a waiting run: {exc}")
            log.warning("alert %s on %s resolved (%s): %s", d.alertname, d.target, via, entry["detail"])
            return entry
        entry.update(result="resolved", detail=f"ended approval wait of run {withdrawn}" if withdrawn else "recorded")
        _count(state, via, "resolved")
        log.info("alert %s on %s resolved (%s): %s", d.alertname, d.target, via, entry["detail"])
    else:
        log.info("alert %s (%s, %s): %s", d.alertname, via, d.fingerprint, d.detail)
        _count(state, via, d.action.value)
    return entry


def _count(state: ServiceState, via: str, action: str) -> None:
    """Alerts received (webhook) and alerts the sweep found (`medic_alert_sweep_total`) are counted apart."""
    (state.metrics.alerts if via == "webhook" else state.metrics.swept).labels(action).inc()


def _alert_context(payload: AMWebhook, d: AlertDecision, received: datetime) -> dict[str, Any]:
    """The alert's times for the run's incident timeline (kept in the run's Prefect context)."""
    fired = next((a.startsAt for a in payload.alerts if a.fingerprint == d.fingerprint), received)
    receipt = AlertReceipt(alertname=d.alertname, fingerprint=d.fingerprint, fired_at=fired, received_at=received)
    return {ALERT_CONTEXT_KEY: receipt.model_dump(mode="json")}


def _starts_at(payload: AMWebhook, fingerprint: str) -> str:
    return next((a.startsAt.isoformat() for a in payload.alerts if a.fingerprint == fingerprint), "")
