"""`medic serve`: everything a site needs in one process.

- Prefect: the configured API (MEDIC_PREFECT_API_URL, or the running lab's), else an embedded local
  server with SQLite under the state dir, started here and stopped on exit.
- Deployments from prefect.yaml (one per runbook, maintenance schedules), served by a Prefect Runner
  in this process: runs started from the UI or by a schedule execute without a separate worker.
- The HTTP app (Alertmanager intake, Slack actions, /healthz, /metrics) on --host/--port.
- Runs that a previous medic serve left paused or running are adopted (executed again from the top).
SIGTERM/SIGINT stop it cleanly: no new runs, a grace period for running ones, Prefect stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import nullcontext

from medic.settings import Settings, get_settings

log = logging.getLogger("medic.service.daemon")
SHUTDOWN_GRACE_S = 10.0


async def _serve(settings: Settings, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    import uvicorn
    from prefect.runner import Runner

    from flows.remediate import remediate
    from medic.orchestration.deployments import load_specs, to_runner_deployments
    from medic.orchestration.runtime import flush_prefect_telemetry
    from medic.service.app import build_state, create_app

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
        await runner.astop()
        runner_task.cancel()
        await asyncio.gather(runner_task, return_exceptions=True)
        await asyncio.to_thread(state.launcher.wait_idle, SHUTDOWN_GRACE_S)
        if not await asyncio.to_thread(flush_prefect_telemetry):
            log.warning("medic serve: some Prefect events/logs could not be delivered before exit")


def serve(*, host: str | None = None, port: int | None = None) -> int:
    from medic.cli.run import use_prefect_api
    from medic.orchestration.embedded_server import EmbeddedPrefect

    settings = get_settings()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    embedded = None
    if not settings.prefect_api_url:
        embedded = EmbeddedPrefect(settings.state_dir / "prefect", port=settings.prefect_port)
        settings.prefect_api_url = embedded.api_url
        settings.prefect_ui_url = embedded.api_url.removesuffix("/api")
    with embedded if embedded is not None else nullcontext():
        use_prefect_api(settings)
        os.environ.setdefault("MEDIC_PROJECT_DIR", str(settings.runbooks_dir.parent))
        asyncio.run(_serve(settings, host or settings.server_host, port or settings.server_port))
    return 0
