"""medic serve's HTTP app: Alertmanager intake, Slack actions, health and metrics.

Handlers answer fast and never block on a remediation: runs execute in their own threads (see
`medic.orchestration.launcher`). Every refusal says why, in the response body.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from medic.errors import IntakeRefused
from medic.orchestration.launcher import LaunchStatus
from medic.service.intake import Action, decide, parse_webhook
from medic.service.run_stream import start_run
from medic.service.slack_endpoint import slack_actions, slack_not_configured
from medic.service.state import ServiceState, service_state

__all__ = ["create_app"]

log = logging.getLogger("medic.service.app")


async def healthz(request: Request) -> Response:
    state = service_state(request)
    prefect_ok = False
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            prefect_ok = (await client.get(f"{state.settings.prefect_api_url}/health")).status_code == 200
    except httpx.HTTPError:
        pass
    body = {"status": "ok" if prefect_ok else "degraded", "prefect_api": state.settings.prefect_api_url,
            "prefect_reachable": prefect_ok, "runbooks": sorted(state.runbooks),
            "active_runs": [{"runbook": k[0], "target": k[1], "flow_run_id": v}
                            for k, v in state.launcher.active().items()]}
    return JSONResponse(body, status_code=200 if prefect_ok else 503)


async def metrics(request: Request) -> Response:
    state = service_state(request)
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            paused = await client.post(f"{state.settings.prefect_api_url}/flow_runs/count", json={
                "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}, "tags": {"all_": ["medic"]}}})
            state.metrics.approvals_pending.set(float(paused.json()))
    except (httpx.HTTPError, ValueError):
        log.warning("could not count paused runs for medic_approvals_pending")
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def alertmanager(request: Request) -> Response:
    state = service_state(request)
    body = await request.body()
    try:
        payload = parse_webhook(body, request.headers.get("content-type"))
    except IntakeRefused as exc:
        state.metrics.alerts.labels("refused").inc()
        log.warning("refused an Alertmanager webhook: %s", exc.reason)
        return JSONResponse({"error": exc.reason}, status_code=exc.status)
    results: list[dict[str, Any]] = []
    for d in decide(payload, state.runbooks, state.inventory()):
        entry = d.model_dump(mode="json", exclude_none=True)
        if d.action is Action.START and d.runbook and d.target:
            launch = await state.launcher.launch(
                state.runbooks[d.runbook], d.target, reason=f"alert {d.alertname} ({d.fingerprint})",
                idempotency_key=f"{d.runbook}:{d.target}:{d.fingerprint}:{_starts_at(payload, d.fingerprint)}")
            entry.update(result=launch.status.value, flow_run_id=launch.flow_run_id, detail=launch.detail or d.detail)
            state.metrics.alerts.labels(launch.status.value).inc()
        elif d.action is Action.RESOLVED and d.runbook and d.target:
            withdrawn = await state.launcher.withdraw(d.runbook, d.target, why=f"alert {d.alertname} resolved")
            entry.update(result="resolved", detail=f"ended approval wait of run {withdrawn}" if withdrawn else "recorded")
            state.metrics.alerts.labels("resolved").inc()
        else:
            log.info("alert %s (%s): %s", d.alertname, d.fingerprint, d.detail)
            state.metrics.alerts.labels(d.action.value).inc()
        results.append(entry)
    started = sum(1 for r in results if r.get("result") in (LaunchStatus.STARTED.value, LaunchStatus.QUEUED.value))
    return JSONResponse({"received": len(payload.alerts), "started": started, "alerts": results})


def _starts_at(payload: Any, fingerprint: str) -> str:
    return next((a.startsAt.isoformat() for a in payload.alerts if a.fingerprint == fingerprint), "")


def create_app(state: ServiceState) -> Starlette:
    """medic serve's routes over `state` (built by `medic.service.state.build_state`)."""
    slack = slack_actions if state.settings.slack_signing_secret is not None else slack_not_configured
    app = Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/alertmanager", alertmanager, methods=["POST"]),
        Route("/runs", start_run, methods=["POST"]),
        Route("/slack/actions", slack, methods=["POST"]),
    ])
    app.state.medic = state
    return app
