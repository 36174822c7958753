"""The alert sweep: every `alert_sweep_s`, ask Alertmanager which alerts fire and take any medic has not.

Why: a webhook is an edge. Alertmanager notifies once per change of a group, then only every
`repeat_interval` (hours), and its notification log can swallow a change: an alert that resolved while
Alertmanager was down, whose labels fire again before Prometheus re-sends the resolution, counts as
"already notified" until repeat_interval — the 30-minute soak (issue 12) left two faults unrepaired for
26 minutes that way, with the alert firing in Alertmanager the whole time. The sweep makes intake
level-triggered: each active alert (not silenced — a maintenance silence still stops medic — not
inhibited) goes through the same path as the webhook's (`handle_alert`, the same idempotency key), so an
alert already handled is answered by the run Prefect holds and nothing runs twice. Alerts no runbook
starts for are skipped silently; each other one gets its usual one-line decision log (`handle_alert`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from medic.clients.alertmanager import AlertmanagerClient
from medic.errors import MedicError
from medic.orchestration.launcher import LaunchStatus
from medic.service.alert_handling import handle_alert
from medic.service.intake import Action, AMAlert, AMWebhook, decide
from medic.service.state import ServiceState

__all__ = ["sweep_once", "sweep_forever"]

log = logging.getLogger("medic.service.alert_sweep")


async def sweep_once(state: ServiceState, alertmanager_url: str) -> list[dict]:
    """One sweep: the answers for the firing alerts a runbook starts for (the webhook's answer format)."""
    def fetch() -> list:
        with AlertmanagerClient(alertmanager_url) as am:
            return am.active_alerts(receiver=state.settings.alert_sweep_receiver)

    active = await asyncio.to_thread(fetch)
    payload = AMWebhook(version="4", status="firing", receiver="medic-sweep", alerts=[
        AMAlert(status="firing", **a.model_dump()) for a in active])
    received = datetime.now(timezone.utc)
    wanted = [d for d in decide(payload, state.runbooks, state.inventory()) if d.action is Action.START]
    return list(await asyncio.gather(*[handle_alert(state, payload, d, received, via="sweep") for d in wanted]))


async def sweep_forever(state: ServiceState, alertmanager_url: str, every_s: float) -> None:
    """Sweep every `every_s` until cancelled; a sweep that fails is logged (once per kind of failure)."""
    last_failure = ""
    while True:
        await asyncio.sleep(every_s)
        try:
            answers = await sweep_once(state, alertmanager_url)
        except Exception as exc:  # noqa: BLE001 - a sweep that died would be invisible: log it, sweep again
            if str(exc) != last_failure:
                log.warning("alert sweep: %s (next try in %g s)", exc, every_s,
                            exc_info=not isinstance(exc, MedicError))
            last_failure = str(exc)
            continue
        last_failure = ""
        started = [a for a in answers if a.get("result") == LaunchStatus.STARTED.value]
        if started:
            log.warning("alert sweep: started %d run(s) for firing alerts nothing was handling — %s (their webhook "
                        "never came, or their last run failed on an error or found the slot held)",
                        len(started), ", ".join(f"{a['runbook']} on {a['target']}" for a in started))
