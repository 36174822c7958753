"""What medic's runs did, read back from Prefect: for reports and incident metrics.

Everything comes from Prefect's public REST API, so any machine that reaches Prefect can report:
flow runs of the remediation and failover flows since a moment, their task runs (one per stage:
detect, diagnose, recover, verify …, with machine timestamps), and their state history (the time a
run spent Paused is the time a human took to decide). The final state's name is the outcome's
(`medic.core.report.ENDINGS`), so a run's outcome is read back without its result.

A week is a few hundred runs, and `medic report` should answer in well under 2 s: every kind of row is
read with one count and its pages at once over one connection, and only runs that paused (Prefect
records each pause's key in the run's `empirical_policy.pause_keys`) have their state history read.
Rows stay JSON until they become RunRecords (Prefect's client models, and importing Prefect, cost more
than the reads).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from medic.core.report import ENDINGS, Outcome
from medic.core.timeline import TIMELINE_PREFIX, IncidentTimes
from medic.orchestration.api import PrefectReader

__all__ = ["RunRecord", "StageTime", "read_runs", "read_timelines"]

log = logging.getLogger(__name__)

INCIDENT_FLOWS = ("remediate", "failover")
_BY_STATE_NAME = {ending.state_name: outcome for outcome, ending in ENDINGS.items()}
_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
_IDS_PER_QUERY = 200  # run ids in one `any_` filter
_TASK_SUFFIX = re.compile(r"-[0-9a-f]{3}$")  # Prefect names task runs "<task>-<3 hex>"


class StageTime(BaseModel):
    stage: str
    started: datetime
    seconds: float


class RunRecord(BaseModel):
    """One run of a runbook as Prefect recorded it."""

    id: str
    flow: str
    runbook: str
    target: str
    outcome: Outcome | None = Field(description="from the final state's name; None while running or if unknown")
    state_name: str
    started: datetime | None
    ended: datetime | None
    seconds: float = 0.0
    stages: list[StageTime] = Field(default_factory=list)
    human_wait_s: float = Field(0.0, description="time spent Paused, waiting for a human decision")
    asked_human: bool = False
    incident: IncidentTimes | None = Field(None, description="the run's incident timeline (its timeline artifact)")

    @property
    def acted(self) -> bool:
        """An incident medic repaired or tried to (not 'not needed', not a dry run, not refused)."""
        return self.outcome in (Outcome.RECOVERED, Outcome.NOT_RECOVERED, Outcome.PROMOTED,
                                Outcome.PROMOTED_NOT_ROUTED, Outcome.PROMOTED_NOT_VERIFIED, Outcome.PROMOTE_FAILED)


class _State(BaseModel):
    type: str
    timestamp: datetime


def _paused_seconds(states: list[_State]) -> float:
    """Sum of the spans between entering Paused and leaving it (state history in time order)."""
    waited, since = 0.0, None
    for state in sorted(states, key=lambda s: s.timestamp):
        if state.type == "PAUSED" and since is None:
            since = state.timestamp
        elif state.type != "PAUSED" and since is not None:
            waited += (state.timestamp - since).total_seconds()
            since = None
    return waited


def _record(run: dict[str, Any], flow_name: str) -> RunRecord:
    params = run.get("parameters") or {}
    state = run.get("state") or {}
    state_name = state.get("name") or "Unknown"
    record = RunRecord(id=run["id"], flow=flow_name, runbook=str(params.get("runbook") or "?"),
                       target=str(params.get("target") or params.get("primary") or "?"),
                       outcome=_BY_STATE_NAME.get(state_name) if state.get("type") in _FINAL else None,
                       state_name=state_name, started=run.get("start_time"), ended=run.get("end_time"))
    if record.started and record.ended:
        record.seconds = (record.ended - record.started).total_seconds()
    return record


def _chunks(ids: list[str]) -> list[list[str]]:
    return [ids[i:i + _IDS_PER_QUERY] for i in range(0, len(ids), _IDS_PER_QUERY)]


async def read_timelines(reader: PrefectReader, run_ids: list[str]) -> dict[str, IncidentTimes]:
    """Each run's timeline artifact, by run id (runs without one are left out)."""
    found: dict[str, IncidentTimes] = {}
    for chunk in _chunks(run_ids):
        for artifact in await reader.every("the runs' incident timelines", "/artifacts/filter", {"artifacts": {
                "flow_run_id": {"any_": chunk}, "key": {"like_": TIMELINE_PREFIX}, "type": {"any_": ["table"]}},
                "sort": "CREATED_DESC"}):
            try:
                data = artifact["data"]
                rows = json.loads(data) if isinstance(data, str) else data
                found.setdefault(str(artifact["flow_run_id"]), IncidentTimes.model_validate_json(rows[0]["timeline"]))
            except (ValueError, KeyError, IndexError, TypeError, ValidationError) as exc:
                log.warning("unreadable timeline artifact %s: %s", artifact.get("key"), exc)
    return found


async def _add_stages(reader: PrefectReader, records: dict[str, RunRecord]) -> None:
    for chunk in _chunks(list(records)):
        for t in await reader.every("the runs' stages", "/task_runs/filter", {
                "flow_runs": {"id": {"any_": chunk}}, "sort": "EXPECTED_START_TIME_ASC"}):
            if t.get("flow_run_id") and t.get("start_time") and t.get("end_time"):
                stage = StageTime(stage=_TASK_SUFFIX.sub("", t["name"]), started=t["start_time"], seconds=0)
                stage.seconds = (datetime.fromisoformat(t["end_time"]) - stage.started).total_seconds()
                records[t["flow_run_id"]].stages.append(stage)
    for record in records.values():
        record.stages.sort(key=lambda s: s.started)


async def _add_human_waits(reader: PrefectReader, records: dict[str, RunRecord], paused: list[str]) -> None:
    async def one(run_id: str) -> None:
        rows = await reader.get(f"the states of run {run_id}", "/flow_run_states/", {"flow_run_id": run_id})
        states = [_State.model_validate(r) for r in rows]
        records[run_id].asked_human = any(s.type == "PAUSED" for s in states)
        records[run_id].human_wait_s = _paused_seconds(states)

    await asyncio.gather(*(one(run_id) for run_id in paused))


async def read_runs(since: datetime, *, flows: tuple[str, ...] = INCIDENT_FLOWS) -> list[RunRecord]:
    """Runs of `flows` started since `since`, oldest first, with their stages, human waits and timelines."""
    flow_filter = {"name": {"any_": list(flows)}}
    async with PrefectReader() as reader:
        known = await reader.every("medic's flows", "/flows/filter", {"flows": flow_filter})
        names = {f["id"]: f["name"] for f in known}
        if not names:
            return []
        runs = await reader.every("medic's runs", "/flow_runs/filter", {
            "flows": flow_filter, "flow_runs": {"start_time": {"after_": since.isoformat()}}, "sort": "START_TIME_ASC"})
        records = {r["id"]: _record(r, names.get(r["flow_id"], "?")) for r in runs}
        paused = [r["id"] for r in runs if (r.get("empirical_policy") or {}).get("pause_keys")]
        _, _, timelines = await asyncio.gather(_add_stages(reader, records), _add_human_waits(reader, records, paused),
                                               read_timelines(reader, list(records)))
    for run_id, times in timelines.items():  # impact → recovered, for TTD / TTA / TTR
        if run_id in records:
            records[run_id].incident = times
    return list(records.values())
