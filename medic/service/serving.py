"""The serving half of `medic serve`, on one event loop: the HTTP app and (embedded mode) a Prefect Runner.

- The HTTP app (Alertmanager intake, Slack actions, /runs, /healthz, /metrics) on host:port.
- `execution = "embedded"`: deployments from prefect.yaml (one per runbook, maintenance schedules),
  served by a Prefect Runner in this process, so runs started from the UI or by a schedule execute
  without a separate worker; runs that this instance left paused or running before a restart are
  adopted (executed again from the top).
- The alert sweep (`medic.service.alert_sweep`): every `alert_sweep_s`, firing alerts Alertmanager holds
  that no webhook started a run for are taken through the same intake path.
- `execution = "workers"`: intake only. No Runner, nothing executed here, nothing adopted: runs are
  created Scheduled in the work pool's deployments (`medic deploy`) and `medic worker`s take them.
On the way out: no new runs, a grace period for running ones, Prefect's telemetry flushed.
`medic.service.daemon` imports this module only once Prefect's environment is set.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from prefect.runner import Runner

from flows.remediate import remediate
from medic.core.process_memory import limit_malloc_arenas
from medic.orchestration.deployments import load_specs, to_runner_deployments
from medic.orchestration.flow_kinds import ENTRYPOINTS, choose
from medic.orchestration.prefect_compat import share_tls_contexts
from medic.orchestration.runs import resolve_deployments
from medic.orchestration.telemetry import flush_prefect_telemetry
from medic.service.alert_sweep import sweep_forever
from medic.service.app import create_app
from medic.service.credentials import tls_options
from medic.service.state import build_state
from medic.settings import Settings

__all__ = ["SHUTDOWN_GRACE_S", "run_service"]

log = logging.getLogger("medic.service.serving")
SHUTDOWN_GRACE_S = 10.0


async def run_service(settings: Settings, host: str, port: int) -> None:
    """Serve until the HTTP server stops (SIGTERM/SIGINT), then stop the Runner and let runs finish."""
    limit_malloc_arenas()  # before the first run's thread (medic.core.process_memory says why)
    share_tls_contexts()  # every Prefect client made from here on shares one CA-bundle load
    state = build_state(settings, remediate)
    runner, runner_task = None, None
    if settings.execution == "embedded":
        remediations = [name for name, rb in state.runbooks.items() if rb.kind == "remediation"]
        deployments = await to_runner_deployments(load_specs(runbooks=remediations))
        runner = Runner(name="medic-serve", query_seconds=settings.runner_poll_s, pause_on_shutdown=True)
        for deployment in deployments:
            await runner.add_deployment(deployment)
        runner_task = asyncio.create_task(runner.start(), name="prefect-runner")
        adopted = await state.launcher.adopt_orphans()
        if adopted:
            log.warning("adopted %d run(s) this instance (%s) left before a restart: %s", len(adopted),
                        state.launcher.instance, ", ".join(adopted))
        mode = f"{len(deployments)} deployment(s) served here"
    else:
        mode = f"intake only: runs go to work pool {settings.work_pool!r}"
    missing = await resolve_deployments(
        [choose(rb, None, reason="").deployment for rb in state.runbooks.values() if rb.kind in ENTRYPOINTS])  # the first alert pays no look-up
    if missing:
        log.warning("medic serve: deployment(s) %s not found in Prefect yet: alerts for them answer 503 until "
                    "they exist (workers mode: run `medic deploy`)", ", ".join(missing))
    server = uvicorn.Server(uvicorn.Config(create_app(state), host=host, port=port, log_level="warning",
                                           lifespan="off", access_log=False, **tls_options(settings)))
    log.warning("medic serve %s: http://%s:%d (Alertmanager → /alertmanager), Prefect %s, %s",
                state.launcher.instance, host, port, settings.prefect_api_url, mode)
    if settings.approval_key is None or not settings.approval_key.get_secret_value():  # issue 11: fail closed, say so
        log.warning("medic serve: MEDIC_APPROVAL_KEY is not set — no approval can be verified; every run that "
                    "needs one ends 'not approved'. Set the same key here and on every worker.")
    sweep = None
    if settings.alertmanager_url and settings.alert_sweep_s > 0:  # level-triggered intake beside the webhook
        sweep = asyncio.create_task(sweep_forever(state, settings.alertmanager_url, settings.alert_sweep_s),
                                    name="alert-sweep")
    else:
        log.warning("medic serve: no alert sweep (MEDIC_ALERTMANAGER_URL unset or MEDIC_ALERT_SWEEP_S=0): an alert "
                    "whose webhook Alertmanager never sends waits for its repeat_interval")
    try:
        await server.serve()
    finally:
        log.warning("medic serve: stopping (waiting up to %.0f s for running remediations)", SHUTDOWN_GRACE_S)
        if sweep is not None:
            sweep.cancel()
            await asyncio.gather(sweep, return_exceptions=True)
        state.close()
        if runner is not None and runner_task is not None:
            await runner.astop()
            runner_task.cancel()
            await asyncio.gather(runner_task, return_exceptions=True)
        if not await asyncio.to_thread(state.launcher.wait_idle, SHUTDOWN_GRACE_S):
            from medic.orchestration.orphans import abandon_runs

            await abandon_runs(state.launcher.still_running())  # Crashed naming the step; no playbook left
        if not await asyncio.to_thread(flush_prefect_telemetry):
            log.warning("medic serve: some Prefect events/logs could not be delivered before exit")
