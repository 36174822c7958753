"""Which Prefect API this process talks to, and handing over what it still owes the old one.

Neither function imports Prefect unless it is already loaded: `medic runbooks`/`validate` and the lab
call them, and `import prefect` costs ~1.1 s (measured: `python -c "import prefect"`, 1.12 s wall).
"""

from __future__ import annotations

import os
import sys

__all__ = ["flush_prefect_telemetry", "point_prefect_at"]


def point_prefect_at(api_url: str) -> None:
    """Use this Prefect API from now on, in this process and its children.

    Prefect captures its settings from the environment when `prefect.context` is first imported;
    an environment change after that is ignored unless its global settings context is refreshed.
    """
    loaded = "prefect.context" in sys.modules
    if loaded:
        flush_prefect_telemetry()
    os.environ["PREFECT_API_URL"] = api_url
    if loaded:
        from prefect.context import refresh_global_settings_context  # loaded already: free

        refresh_global_settings_context()


def flush_prefect_telemetry(timeout: float = 10.0) -> bool:
    """Deliver the events and logs Prefect has queued, and stop its workers; True if all went out.

    Prefect sends them from background workers that are drained at interpreter exit without a
    deadline. Its events worker is shared by every API URL and keeps the URL it started with; once
    that server is gone each queued event costs ~50 s of reconnects (measured), so a process that
    outlives or switches its Prefect server would hang for hours at exit. Call this while the
    server still answers: before stopping it, and before pointing the process at another one.
    The next event or log starts a fresh worker for the current API URL.
    """
    if "prefect.events.worker" not in sys.modules and "prefect.logging.handlers" not in sys.modules:
        return True  # nothing can be queued
    from medic.orchestration.prefect_compat import drain_telemetry  # prefect is loaded: ~0.3 s more at most

    return drain_telemetry(timeout)
