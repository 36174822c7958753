"""`POST /runs` on medic serve: start a remediation for `medic run` and stream its stages back.

The CLI then pays neither Python's nor Prefect's start-up: the warm server creates the run under its
deployment and executes it at once, and each timeline entry is sent as one NDJSON line, followed by
the final report. The same dedupe as for alerts applies.

In workers mode (intake only) the run is created Scheduled for the pool and a worker executes it:
the stream then says when the run's state changes in Prefect, and ends with its final state and
message (no report object: it stays with the worker; the incident report is the run's artifact).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from prefect.context import FlowRunContext
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from medic.errors import MedicError
from medic.core.progress import add_listener
from medic.core.report import TimelineEntry
from medic.core.runbook import find_runbook
from medic.procedures.stages import plan
from medic.service.disk_space import low_disk_space
from medic.service.state import service_state


class RunRequest(BaseModel):
    runbook: str = Field(max_length=64)
    target: str | None = Field(None, max_length=64)
    dry_run: bool = False


def _current_run_id() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


async def start_run(request: Request) -> Response:
    state = service_state(request)
    try:
        asked = RunRequest.model_validate_json(await request.body())
        spec = find_runbook(asked.runbook, state.settings.runbooks_dir)
        if spec.kind == "remediation" or asked.target:
            target = plan(spec, asked.target, state.inventory()).target
        else:
            target = "primary"  # a failover finds the current primary itself
    except MedicError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    except ValueError as exc:
        return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
    if short := low_disk_space(state.settings):  # refused up front, not failed halfway
        return JSONResponse({"error": short}, status_code=503, headers={"Retry-After": "5"})

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    run_id: dict[str, str] = {}

    def on_entry(entry: TimelineEntry, recorded: bool) -> None:
        current = _current_run_id()
        if current is not None and current == run_id.get("id"):
            loop.call_soon_threadsafe(queue.put_nowait, {"type": "entry", "recorded": recorded,
                                                         **entry.model_dump(mode="json")})

    def on_done(outcome: Any) -> None:
        report = getattr(outcome, "result", None)
        loop.call_soon_threadsafe(queue.put_nowait, {
            "type": "done", "state_name": getattr(outcome, "state_name", "Crashed"),
            "message": getattr(outcome, "message", None), "seconds": getattr(outcome, "seconds", None),
            "report": report.model_dump(mode="json") if isinstance(report, BaseModel) else None})

    if state.settings.execution == "workers":
        return await _start_on_workers(state, spec, target, asked.dry_run)
    remove = add_listener(on_entry)
    launch = await state.launcher.launch_manual(spec, target, dry_run=asked.dry_run, on_done=on_done)
    if launch.flow_run_id:
        run_id["id"] = launch.flow_run_id
    if launch.status.value != "started":
        remove()
        status = 409 if launch.status.value == "duplicate" else 503
        return JSONResponse({"error": launch.detail, "flow_run_id": launch.flow_run_id}, status_code=status)

    async def lines() -> AsyncIterator[bytes]:
        try:
            yield (json.dumps({"type": "started", "flow_run_id": launch.flow_run_id}) + "\n").encode()
            while True:
                item = await queue.get()
                yield (json.dumps(item) + "\n").encode()
                if item["type"] == "done":
                    return
        finally:
            remove()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


async def _start_on_workers(state: Any, spec: Any, target: str, dry_run: bool) -> Response:
    """Record the run for the pool, then follow it in Prefect until it ends (a worker executes it)."""
    from prefect.client.orchestration import get_client

    launch = await state.launcher.launch_manual(spec, target, dry_run=dry_run)
    if launch.status.value != "started":
        status = 409 if launch.status.value == "duplicate" else 503
        return JSONResponse({"error": launch.detail, "flow_run_id": launch.flow_run_id}, status_code=status)

    async def lines() -> AsyncIterator[bytes]:
        yield (json.dumps({"type": "started", "flow_run_id": launch.flow_run_id}) + "\n").encode()
        seen, started = None, datetime.now(timezone.utc)
        async with get_client() as client:
            while True:
                run = await client.read_flow_run(launch.flow_run_id)  # type: ignore[arg-type]
                current = run.state
                if current is not None and (current.type.value, current.name) != seen:
                    seen = (current.type.value, current.name)
                    if current.type.value in FINAL:
                        seconds = (datetime.now(timezone.utc) - started).total_seconds()
                        yield (json.dumps({"type": "done", "state_name": current.name, "message": current.message,
                                           "seconds": seconds, "report": None}) + "\n").encode()
                        return
                    yield (json.dumps({"type": "state", "state_name": current.name,
                                       "message": current.message}) + "\n").encode()
                await asyncio.sleep(0.5)

    return StreamingResponse(lines(), media_type="application/x-ndjson")
