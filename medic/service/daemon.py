"""`medic serve`: everything a small site needs in one process, or the intake of a larger one.

- Prefect: the configured API (MEDIC_PREFECT_API_URL, or the running lab's), else an embedded local
  server with SQLite under the state dir, started here and stopped on exit.
- Then the serving half (`medic.service.serving`): the HTTP app (Alertmanager intake, Slack actions,
  /runs, /healthz, /metrics) on --host/--port; with MEDIC_EXECUTION=embedded (the default) also the
  deployments served by a Prefect Runner in this process and the runs this instance (MEDIC_INSTANCE)
  left before a restart adopted; with MEDIC_EXECUTION=workers intake only (`medic worker`s execute).
SIGTERM/SIGINT stop it cleanly: no new runs, a grace period for running ones, Prefect stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import nullcontext

from medic.cli.run import use_prefect_api
from medic.orchestration.embedded_server import EmbeddedPrefect
from medic.service.credentials import check_serving
from medic.settings import get_settings

__all__ = ["serve"]


def serve(*, host: str | None = None, port: int | None = None) -> int:
    """Run medic serve until SIGTERM/SIGINT; 0 on a clean stop."""
    settings = get_settings()
    check_serving(settings, host or settings.server_host)  # no credential: loopback only (issue 11)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("medic.service", "medic.orchestration"):  # one line per alert and per run's end
        logging.getLogger(name).setLevel(logging.INFO)
    embedded = None
    if not settings.prefect_api_url:
        embedded = EmbeddedPrefect(settings.state_dir / "prefect", port=settings.prefect_port)
        settings.prefect_api_url = embedded.api_url
        settings.prefect_ui_url = embedded.api_url.removesuffix("/api")
    with embedded if embedded is not None else nullcontext():
        use_prefect_api(settings)
        os.environ.setdefault("MEDIC_PROJECT_DIR", str(settings.runbooks_dir.parent))
        # Imported only now, not at the top: Prefect reads its environment (API URL, console log level)
        # when first imported, and the serving half imports Prefect, uvicorn and the flows
        # (1.4-3.6 s with -X importtime on this shared 2-core machine, ~1.0 s of it Prefect).
        from medic.service.serving import run_service

        asyncio.run(run_service(settings, host or settings.server_host, port or settings.server_port))
    return 0
