"""Talk to the lab cluster's Prefect (`medic lab up --with cluster`) from a test: its URL comes from the
lab, its auth string from the lab's secret store (`medic_lab.cluster.cluster_secret`), never from a file
of the test's own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from medic.orchestration.telemetry import point_prefect_at
from medic_lab.cluster import cluster_secret
from medic_lab.cluster_prefect import AUTH_KEY
from medic_lab.state import LabState


@contextmanager
def cluster_prefect(lab: LabState) -> Iterator[None]:
    """Within: this process's Prefect client (and its children) use the cluster's API with its auth
    string; afterwards whatever was configured before."""
    saved_url, saved_auth = os.environ.get("PREFECT_API_URL"), os.environ.get(AUTH_KEY)
    os.environ[AUTH_KEY] = cluster_secret(lab.lab_dir).get_secret_value()
    point_prefect_at(lab.prefect_api_url)  # refreshes Prefect's settings: the auth string too
    try:
        yield
    finally:
        if saved_auth is None:
            os.environ.pop(AUTH_KEY, None)
        else:
            os.environ[AUTH_KEY] = saved_auth
        if saved_url is not None:
            point_prefect_at(saved_url)
        else:
            os.environ.pop("PREFECT_API_URL", None)
            point_prefect_at_nothing()


def point_prefect_at_nothing() -> None:
    """Refresh Prefect's settings after PREFECT_API_URL was removed (only if Prefect is loaded)."""
    import sys

    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
