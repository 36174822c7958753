"""A real `medic serve` subprocess against the session lab, stopped (SIGTERM, then SIGKILL) afterwards."""

from __future__ import annotations

from typing import TYPE_CHECKING

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


from medic.core.net import free_port, wait_healthy
from medic.errors import WaitTimeout
from tests.support.prefect_api import prefect_json

__all__ = ["MedicServer", "alert_payload", "cancel_leftover_runs", "free_port", "medic_server"]


class MedicServer:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def medic_server(state_dir: Path, *, env: dict[str, str] | None = None, port: int | None = None,
                 python_args: tuple[str, ...] = ("-m", "medic")) -> Iterator[MedicServer]:
    """`python_args` start medic (the soak's census wrapper replaces `-m medic`); `serve --port` follows."""
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / f"serve-{port}.log"
    # The alert sweep is off unless a test asks for it: the session lab's Alertmanager is shared, and a
    # sweep would take alerts another test's host raises (tests/chaos/test_alert_sweep.py turns it on).
    full_env = {**os.environ, "MEDIC_STATE_DIR": str(state_dir), "MEDIC_ALERT_SWEEP_S": "0", **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, *python_args, "serve", "--port", str(port)], env=full_env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = MedicServer(proc, f"http://127.0.0.1:{port}", log)
    try:
        try:
            wait_healthy(f"{server.url}/healthz", what="medic serve", timeout=90, proc=proc, interval=0.3)
        except WaitTimeout as exc:
            raise RuntimeError(f"{exc}:\n{server.logs()[-3000:]}") from None
        yield server
    finally:
        server.stop()


def alert_payload(alertname: str, host: str, *, status: str = "firing", fingerprint: str | None = None,
                  starts_at: str = "2026-11-22T00:00:00Z", extra_labels: dict[str, str] | None = None) -> dict:
    """An Alertmanager webhook (version 4) with one alert, shaped as Alertmanager sends it."""
    labels = {"alertname": alertname, "host": host, "job": "web", "severity": "critical", **(extra_labels or {})}
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{alertname}", host="{host}"}}', "truncatedAlerts": 0,
        "status": status, "receiver": "medic", "groupLabels": {"alertname": alertname, "host": host},
        "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
        "alerts": [{"status": status, "labels": labels, "annotations": {"summary": "test"},
                    "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": fingerprint or f"fp-{alertname}-{host}"}],
    }


def cancel_leftover_runs(prefect_api_url: str) -> int:
    """Cancel runs an earlier test's medic serve left paused or running in the shared session Prefect.

    A new medic serve adopts such runs (as it should after a restart); a test module that starts its
    own server must begin from a clean site instead.
    """
    runs = prefect_json(prefect_api_url, "POST", "/flow_runs/filter", json={"limit": 200, "flow_runs": {
        "tags": {"all_": ["medic-serve"]}, "state": {"type": {"any_": ["PAUSED", "RUNNING", "PENDING"]}}}})
    for run in runs:
        prefect_json(prefect_api_url, "POST", f"/flow_runs/{run['id']}/set_state", json={
            "state": {"type": "CANCELLED", "message": "left over by an earlier test"}, "force": True})
    return len(runs)


FLAP_TEST_WINDOW_S = 300  # the flap servers' window: an earlier module's repairs soon stop counting


def flap_free_host(lab: "LabState", runbook: str = "service-down", window_s: float = FLAP_TEST_WINDOW_S) -> str:
    """A web host no earlier test remediated with `runbook` within the flap window (the history is
    site-wide in Prefect, so a flap test must start from a host with none)."""
    from medic.orchestration.flap_guard import FlapGuard

    guard = FlapGuard(max_runs=1, window_s=window_s)
    host = next((h.name for h in reversed(lab.hosts) if h.group == "web" and guard.count((runbook, h.name)) == 0), None)
    assert host is not None, f"every web host was remediated ({runbook}) by an earlier test within {window_s:g} s"
    return host


if TYPE_CHECKING:
    from medic_lab.state import LabState
