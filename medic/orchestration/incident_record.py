"""Where an incident's timeline meets Prefect: the alert's times in the run's context, the timeline as
a table artifact beside the report, and read back for `medic report`.

The intake leaves the alert's `startsAt` and its own receive time in the flow run's Prefect `context`
(`ALERT_CONTEXT_KEY`), so any worker that executes the run finds them. The run leaves its timeline as
a one-row table artifact `timeline-<runbook>-<target>` (the UI shows it; the report reads its row).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from prefect.artifacts import acreate_table_artifact
from prefect.context import get_run_context
from pydantic import ValidationError

from medic.clients.prometheus import PrometheusClient
from medic.core.inventory import Host, Inventory
from medic.core.paths import SLOS_DIR
from medic.core.report import artifact_key
from medic.core.runbook import Runbook
from medic.core.slo import load_slos
from medic.core.timeline import ALERT_CONTEXT_KEY, TIMELINE_PREFIX, AlertReceipt, IncidentTimes, StageSpan
from medic.errors import MedicError
from medic.procedures.incident_times import incident_times

__all__ = ["alert_receipt", "publish_times", "times_for_run"]

log = logging.getLogger("medic.orchestration.incident_record")


def alert_receipt() -> AlertReceipt | None:
    """The alert that started this run, from its Prefect context (None: started by a human or a schedule)."""
    try:
        raw = (get_run_context().flow_run.context or {}).get(ALERT_CONTEXT_KEY)  # type: ignore[union-attr]
        return AlertReceipt.model_validate(raw) if raw else None
    except (AttributeError, ValidationError) as exc:
        log.warning("the run's alert context is unusable: %s", exc)
        return None


def _service_size(hosts: list[Host], inventory: Inventory) -> int:
    groups = {g for h in hosts for g in h.groups}
    return max(1, sum(1 for h in inventory.hosts.values() if groups & set(h.groups)))


async def times_for_run(spec: Runbook, hosts: list[Host], inventory: Inventory, *, prometheus_url: str | None,
                        run_started: datetime, stages: list[StageSpan], human_decision: datetime | None,
                        resolved: datetime, recovered: datetime | None = None) -> IncidentTimes:
    """The run's timeline: two or three Prometheus look-ups after verify, off the event loop."""
    def compute() -> IncidentTimes:
        try:
            slos = list(load_slos(SLOS_DIR).values()) if SLOS_DIR.is_dir() else []
        except MedicError as exc:
            log.warning("SLO specs unreadable, no budget in the timeline: %s", exc)
            slos = []
        with PrometheusClient(prometheus_url) as prom:
            return incident_times(spec, hosts, prom, alert=alert_receipt(), run_started=run_started, stages=stages,
                                  human_decision=human_decision, resolved=resolved, slos=slos,
                                  service_size=_service_size(hosts, inventory), recovered=recovered)
    try:
        return await asyncio.to_thread(compute)
    except MedicError as exc:  # no Prometheus at all: the moments medic knows by itself
        log.warning("incident timeline without Prometheus: %s", exc)
        return IncidentTimes(run_started=run_started, stages=stages, human_decision=human_decision,
                             resolved=resolved, recovered=recovered, step_s=0)


async def publish_times(times: IncidentTimes, runbook: str, target: str) -> None:
    """The timeline as a one-row table artifact (moments in ISO 8601, derived figures in seconds)."""
    row = {"timeline": times.model_dump_json(), "ttd_s": times.time_to_detect_s,
           "tta_s": times.time_to_acknowledge_s, "ttr_s": times.time_to_recover_s}
    await acreate_table_artifact(table=[row], key=artifact_key(TIMELINE_PREFIX + runbook, target),
                                 description=f"{runbook} on {target}: incident timeline (machine timestamps)")
