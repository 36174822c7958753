"""Test session set-up: one real ops lab for the whole session, always stopped at the end.

The lab lives in a fresh directory under /tmp on its own base port (MEDIC_TEST_LAB_BASE_PORT, default
21000), so it never collides with a developer's lab. Every medic component in the tests finds it
through the settings, exactly as in production. "Always stopped" includes a SIGTERM to pytest (CI
cancelling a job, `kill`): it ends the session like Ctrl-C, so every fixture's teardown runs.
MEDIC_TEST_LAB_HOSTS and MEDIC_TEST_LAB_PREFECT=0 make a smaller session lab (tests/lab uses them
to run a pytest inside a test).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from medic_lab import control
from medic_lab.state import LabState
from medic.orchestration.telemetry import point_prefect_at
from medic.settings import get_settings

TEST_HOSTS = int(os.environ.get("MEDIC_TEST_LAB_HOSTS", "6"))
TEST_WITH_PREFECT = os.environ.get("MEDIC_TEST_LAB_PREFECT", "1") != "0"

# Runs in tests log to the console; sending them to the API as well only produces "Error logging
# to API" noise when the session's Prefect server stops before the last log flush.
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")


EXIT_GRACE_S = int(os.environ.get("MEDIC_TEST_EXIT_GRACE_S", "120"))
_session_status = [1]


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _sigterm_ends_the_session)


def _sigterm_ends_the_session(signum: int, frame: FrameType | None) -> None:
    """Default SIGTERM kills pytest on the spot and leaves the session lab running (sshd, Prometheus,
    Prefect, all of it). As KeyboardInterrupt, pytest stops and tears every fixture down."""
    signal.signal(signal.SIGTERM, _sigterm_while_stopping)
    raise KeyboardInterrupt("SIGTERM: ending the session; fixtures tear down and the lab is stopped")


def _sigterm_while_stopping(signum: int, frame: FrameType | None) -> None:
    """A second SIGTERM must not cut the teardown short (SIGKILL still would). A handler, not SIG_IGN:
    an ignored signal stays ignored in every process started afterwards."""
    os.write(2, b"\ntests: SIGTERM again - still stopping the lab\n")


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


def _approvals_for_the_session(lab_dir: Path) -> None:
    """A fresh approval key and the tests' approver directory (tests/support/approvals.py), in the
    environment so that every medic process the tests start verifies approvals the same way (issue 11)."""
    from tests.support.approvals import write_directory

    os.environ["MEDIC_APPROVAL_KEY"] = f"test-approval-key-{secrets.token_hex(16)}"
    os.environ["MEDIC_APPROVERS_FILE"] = str(write_directory(lab_dir / "approvers-test.yaml"))
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def lab() -> Iterator[LabState]:
    """The running lab (Prometheus, Alertmanager, Prefect, TEST_HOSTS web hosts)."""
    base_port = int(os.environ.get("MEDIC_TEST_LAB_BASE_PORT", "21000"))
    lab_dir = Path(tempfile.mkdtemp(prefix="medic-test-lab-", dir="/tmp"))
    _point_settings_at(lab_dir, base_port)
    _approvals_for_the_session(lab_dir)
    try:
        state = control.up(lab_dir, hosts=TEST_HOSTS, base_port=base_port,
                           webhook_url="http://127.0.0.1:9/unused", with_prefect=TEST_WITH_PREFECT)
        if TEST_WITH_PREFECT:
            point_prefect_at(state.prefect_api_url)
        yield state
    finally:
        from medic_lab.state import public_dir_for
        from tests.support.secret_scan import session_leaks

        try:  # issue 11: nothing secret on disk — grepped at the end of the session, before the lab goes
            leaks = session_leaks(lab_dir, public_dir_for(lab_dir))
        finally:
            control.down(lab_dir)
            shutil.rmtree(lab_dir, ignore_errors=True)
        if leaks:
            raise AssertionError(leaks)
