"""The serving half of `medic serve`, on one event loop: the HTTP app and a Prefect Runner.

- Deployments from prefect.yaml (one per runbook, maintenance schedules), served by a Prefect Runner
  in this process: runs started from the UI or by a schedule execute without a separate worker.
- The HTTP app (Alertmanager intake, Slack actions, /runs, /healthz, /metrics) on host:port.
- Runs that a previous medic serve left paused or running are adopted (executed again from the top).
On the way out: no new runs, a grace period for running ones, Prefect's telemetry flushed.
`medic.service.daemon` imports this module only once Prefect's environment is set.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from prefect.runner import Runner

from flows.remediate import remediate
from medic.orchestration.deployments import load_specs, to_runner_deployments
from medic.orchestration.telemetry import flush_prefect_telemetry
from medic.service.app import create_app
from medic.service.state import build_state
from medic.settings import Settings

__all__ = ["SHUTDOWN_GRACE_S", "run_service"]

log = logging.getLogger("medic.service.serving")
SHUTDOWN_GRACE_S = 10.0


async def run_service(settings: Settings, host: str, port: int) -> None:
    """Serve until the HTTP server stops (SIGTERM/SIGINT), then stop the Runner and let runs finish."""
    state = build_state(settings, remediate)
    remediations = [name for name, rb in state.runbooks.items() if rb.kind == "remediation"]
    deployments = await to_runner_deployments(load_specs(runbooks=remediations))
    runner = Runner(name="medic-serve", query_seconds=settings.runner_poll_s, pause_on_shutdown=True)
    for deployment in deployments:
        await runner.add_deployment(deployment)
    runner_task = asyncio.create_task(runner.start(), name="prefect-runner")
    adopted = await state.launcher.adopt_orphans()
    if adopted:
        log.warning("adopted %d run(s) left by a previous medic serve: %s", len(adopted), ", ".join(adopted))
    server = uvicorn.Server(uvicorn.Config(create_app(state), host=host, port=port, log_level="warning",
                                           lifespan="off", access_log=False))
    log.warning("medic serve: http://%s:%d (Alertmanager → /alertmanager), Prefect %s, %d deployment(s)",
                host, port, settings.prefect_api_url, len(deployments))
    try:
        await server.serve()
    finally:
        log.warning("medic serve: stopping (waiting up to %.0f s for running remediations)", SHUTDOWN_GRACE_S)
        state.close()
        await runner.astop()
        runner_task.cancel()
        await asyncio.gather(runner_task, return_exceptions=True)
        await asyncio.to_thread(state.launcher.wait_idle, SHUTDOWN_GRACE_S)
        if not await asyncio.to_thread(flush_prefect_telemetry):
            log.warning("medic serve: some Prefect events/logs could not be delivered before exit")
