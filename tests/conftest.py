"""Test session set-up: one real ops lab for the whole session, always stopped at the end.

The lab lives in a fresh directory under /tmp (lab users must be able to traverse it) on its own
base port (MEDIC_TEST_LAB_BASE_PORT, default 21000), so it never collides with a developer's lab.
Every medic component in the tests finds it through the settings, exactly as in production.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medic_lab import control
from medic_lab.state import LabState
from medic.orchestration.runtime import point_prefect_at
from medic.settings import get_settings

TEST_HOSTS = 6

# Runs in tests log to the console; sending them to the API as well only produces "Error logging
# to API" noise when the session's Prefect server stops before the last log flush.
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")


EXIT_GRACE_S = int(os.environ.get("MEDIC_TEST_EXIT_GRACE_S", "120"))
_session_status = [1]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _session_status[0] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """A safety net for CI: once the results are in, the process must not outlive them for long.

    Work drained at interpreter exit (Prefect's event and log workers) has no deadline; aimed at a
    Prefect server a test already stopped, it once kept this process alive for hours after a green
    run. `flush_prefect_telemetry` prevents that; if something new does it, say so and exit with
    the session's own status instead of timing CI out."""
    def watchdog() -> None:
        time.sleep(EXIT_GRACE_S)
        os.write(2, f"\ntests: still not exited {EXIT_GRACE_S} s after the session ended — something is "
                    f"draining at exit (Prefect events/logs to a stopped server?); exiting with the session's "
                    f"status {_session_status[0]}\n".encode())
        os._exit(_session_status[0])

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()


def _point_settings_at(lab_dir: Path, base_port: int) -> None:
    os.environ["MEDIC_LAB_DIR"] = str(lab_dir)
    os.environ["MEDIC_LAB_BASE_PORT"] = str(base_port)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def lab() -> Iterator[LabState]:
    """The running lab (Prometheus, Alertmanager, Prefect, TEST_HOSTS web hosts)."""
    base_port = int(os.environ.get("MEDIC_TEST_LAB_BASE_PORT", "21000"))
    lab_dir = Path(tempfile.mkdtemp(prefix="medic-test-lab-", dir="/tmp"))
    lab_dir.chmod(0o755)
    _point_settings_at(lab_dir, base_port)
    try:
        state = control.up(lab_dir, hosts=TEST_HOSTS, base_port=base_port,
                           webhook_url="http://127.0.0.1:9/unused", with_prefect=True)
        point_prefect_at(state.prefect_api_url)
        yield state
    finally:
        control.down(lab_dir)
        shutil.rmtree(lab_dir, ignore_errors=True)
