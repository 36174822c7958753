"""medic serve's HTTP app: Alertmanager intake, Slack actions, health and metrics.

Handlers answer fast and never block on a remediation: runs execute in their own threads (see
`medic.orchestration.launcher`). Every refusal says why, in the response body.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.middleware import Middleware
from starlette.routing import Route

from medic.errors import IntakeRefused
from medic.orchestration.launcher import LaunchStatus
from medic.service.credentials import Credentials
from medic.service.disk_space import low_disk_space
from medic.service.guard import IntakeGuard, TokenBuckets, describe_client
from medic.service.health import PrefectProbe
from medic.service.alert_handling import handle_alert
from medic.service.intake import decide, parse_webhook
from medic.service.run_stream import start_run
from medic.service.slack_endpoint import slack_actions, slack_not_configured
from medic.service.state import ServiceState, service_state

__all__ = ["create_app"]

log = logging.getLogger("medic.service.app")


async def healthz(request: Request) -> Response:
    """Status only (ok / degraded: Prefect unreachable, or medic's disk full) for anyone; the details for
    a client with a credential (`?verbose=1`, checked by the guard): which Prefect, the disk, which
    runbooks, which runs are active."""
    state = service_state(request)
    prefect_ok = await _probe(request).healthy()
    disk_short = low_disk_space(state.settings)  # no run can start: as degraded as Prefect gone
    status = 200 if prefect_ok and not disk_short else 503
    said = "ok" if status == 200 else "degraded"
    if not (_asks_verbose(request) and describe_client(request.scope)):
        return JSONResponse({"status": said}, status_code=status)
    body = {"status": said, "prefect_api": state.settings.prefect_api_url, "disk": disk_short or "ok",
            "prefect_reachable": prefect_ok, "runbooks": sorted(state.runbooks),
            "active_runs": [{"runbook": k[0], "target": k[1], "flow_run_id": v}
                            for k, v in state.launcher.active().items()]}
    return JSONResponse(body, status_code=status)


def _asks_verbose(request: Request) -> bool:
    return request.query_params.get("verbose", "0") not in ("0", "false", "")


def _probe(request: Request) -> PrefectProbe:
    probe: PrefectProbe = request.app.state.prefect_probe
    return probe


async def metrics(request: Request) -> Response:
    state = service_state(request)
    paused = await _probe(request).paused()
    if paused is not None:
        state.metrics.approvals_pending.set(paused)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def alertmanager(request: Request) -> Response:
    state = service_state(request)
    received = datetime.now(timezone.utc)  # the incident timeline's "delivered to medic"
    body = await request.body()
    try:
        payload = parse_webhook(body, request.headers.get("content-type"))
    except IntakeRefused as exc:
        state.metrics.alerts.labels("refused").inc()
        log.warning("refused an Alertmanager webhook: %s", exc.reason)
        return JSONResponse({"error": exc.reason}, status_code=exc.status)
    decisions = decide(payload, state.runbooks, state.inventory())
    # Every alert of the group at once: a run recorded in Prefect, or the reason it could not be.
    results = await asyncio.gather(*[handle_alert(state, payload, d, received) for d in decisions])
    unrecorded = [r for r in results if r.get("result") == LaunchStatus.ERROR.value]
    started = sum(1 for r in results if r.get("result") == LaunchStatus.STARTED.value)
    body = {"received": len(payload.alerts), "started": started, "alerts": results}
    if unrecorded:
        # Durable intake: a 2xx means every run is recorded in Prefect. Alertmanager resends on 5xx;
        # what was recorded meanwhile is found again by its idempotency key.
        body["error"] = (f"{len(unrecorded)} alert(s) could not be recorded in Prefect; send again: "
                         f"{unrecorded[0].get('detail', '')}")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse(body)


def create_app(state: ServiceState) -> Starlette:
    """medic serve's routes over `state` (built by `medic.service.state.build_state`), behind the guard
    (`medic.service.guard`: rate limit, credentials, content types, body size)."""
    settings = state.settings
    slack = slack_actions if settings.slack_signing_secret is not None else slack_not_configured
    guard = Middleware(IntakeGuard, credentials=Credentials.from_settings(settings),
                       limiter=TokenBuckets(settings.intake_rate_per_s, settings.intake_burst))
    app = Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/alertmanager", alertmanager, methods=["POST"]),
        Route("/runs", start_run, methods=["POST"]),
        Route("/slack/actions", slack, methods=["POST"]),
    ], middleware=[guard])
    app.state.medic = state
    app.state.prefect_probe = PrefectProbe(settings.prefect_api_url, ttl_s=settings.health_cache_s)
    return app
