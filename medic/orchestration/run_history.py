"""What medic's runs did, read back from Prefect: for reports and incident metrics.

Everything comes from Prefect's public client API, so any machine that reaches Prefect can report:
flow runs of the remediation and failover flows since a moment, their task runs (one per stage:
detect, diagnose, recover, verify …, with machine timestamps), and their state history (the time a
run spent Paused is the time a human took to decide). The final state's name is the outcome's
(`medic.core.report.ENDINGS`), so a run's outcome is read back without its result.
"""

from __future__ import annotations

import re
from datetime import datetime
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from pydantic import BaseModel, Field

from medic.core.report import ENDINGS, Outcome
from medic.core.timeline import IncidentTimes
from medic.errors import PrefectError
from medic.orchestration.api import post_query
from medic.orchestration.incident_record import read_times

__all__ = ["RunRecord", "StageTime", "read_runs"]

INCIDENT_FLOWS = ("remediate", "failover")
_BY_STATE_NAME = {ending.state_name: outcome for outcome, ending in ENDINGS.items()}
_PAGE = 200
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


def _paused_seconds(states: list) -> float:
    """Sum of the spans between entering Paused and leaving it (state history in time order)."""
    waited, since = 0.0, None
    for state in sorted(states, key=lambda s: s.timestamp):
        if state.type is StateType.PAUSED and since is None:
            since = state.timestamp
        elif state.type is not StateType.PAUSED and since is not None:
            waited += (state.timestamp - since).total_seconds()
            since = None
    return waited




def _record(run: FlowRun, flow_name: str) -> RunRecord:
    params = run.parameters or {}
    state_name = run.state.name if run.state else "Unknown"
    final = bool(run.state and run.state.is_final())
    seconds = (run.end_time - run.start_time).total_seconds() if run.start_time and run.end_time else 0.0
    return RunRecord(id=str(run.id), flow=flow_name, runbook=str(params.get("runbook") or "?"),
                     target=str(params.get("target") or params.get("primary") or "?"),
                     outcome=_BY_STATE_NAME.get(state_name) if final else None, state_name=state_name,
                     started=run.start_time, ended=run.end_time, seconds=seconds)


async def read_runs(since: datetime, *, flows: tuple[str, ...] = INCIDENT_FLOWS) -> list[RunRecord]:
    """Runs of `flows` started since `since`, oldest first, with their stages and human waits."""
    flow_filter = {"name": {"any_": list(flows)}}
    known = await post_query("medic's flows", "/flows/filter", {"flows": flow_filter, "limit": _PAGE, "offset": 0})
    names = {f["id"]: f["name"] for f in known}
    if not names:
        return []
    runs: list[FlowRun] = []
    while True:
        page = await post_query("medic's runs", "/flow_runs/filter", {
            "flows": flow_filter, "flow_runs": {"start_time": {"after_": since.isoformat()}},
            "sort": "START_TIME_ASC", "limit": _PAGE, "offset": len(runs)})
        runs += [FlowRun.model_validate(r) for r in page]
        if len(page) < _PAGE:
            break
    records = {str(r.id): _record(r, names.get(str(r.flow_id), "?")) for r in runs}
    ids = list(records)
    for start in range(0, len(ids), _PAGE):
        chunk, offset = ids[start:start + _PAGE], 0
        while True:
            tasks = [TaskRun.model_validate(t) for t in await post_query("the runs' stages", "/task_runs/filter", {
                "flow_runs": {"id": {"any_": chunk}}, "sort": "EXPECTED_START_TIME_ASC", "limit": _PAGE,
                "offset": offset})]
            for t in tasks:
                if t.flow_run_id and t.start_time and t.end_time:
                    records[str(t.flow_run_id)].stages.append(StageTime(
                        stage=_TASK_SUFFIX.sub("", t.name), started=t.start_time,
                        seconds=(t.end_time - t.start_time).total_seconds()))
            offset += len(tasks)
            if len(tasks) < _PAGE:
                break
    async with get_client() as client:  # one client for every run's state history
        for run_id, record in records.items():
            record.stages.sort(key=lambda s: s.started)
            try:
                states = await client.read_flow_run_states(UUID(run_id))
            except Exception as exc:  # noqa: BLE001 - any client failure is "Prefect cannot answer"
                raise PrefectError(f"cannot read the states of run {run_id}: {exc}") from exc
            record.asked_human = any(s.type is StateType.PAUSED for s in states)
            record.human_wait_s = _paused_seconds(states)
    for run_id, times in (await read_times(ids)).items():  # impact → recovered, for TTD / TTA / TTR
        if run_id in records:
            records[run_id].incident = times
    return list(records.values())
