"""Durable intake: a 2xx to Alertmanager means the run is recorded in Prefect; else 503 and it retries.

Real processes only: a Prefect server of this module's own (so a test can stop and restart it, with
its SQLite database kept), `medic serve` subprocesses pointed at it, the session lab's Alertmanager,
Prometheus and hosts. Fingerprints are unique per test, so nothing another test sent is "already handled".
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medic.core.net import free_port
from medic.orchestration.embedded_server import EmbeddedPrefect
from medic.orchestration.locks import remediation_lock_name
from medic_lab import control
from medic_lab.state import LabState
from tests.support.intake import intake_headers, send_alert
from tests.support.lab_health import Inject, broken, seen  # noqa: F401 (fixtures)
from tests.support.server import MedicServer, alert_payload, medic_server
from tests.support.waits import wait_for


class OwnPrefect:
    """A Prefect server this module may stop and start again on the same port and database."""

    def __init__(self, home: Path) -> None:
        self.server = EmbeddedPrefect(home, port=free_port())
        self.api_url = self.server.api_url

    def start(self) -> None:
        self.server.__enter__()

    def stop(self) -> None:
        self.server.stop()

    def runs(self, *tags: str) -> list[dict]:
        body = {"flow_runs": {"tags": {"all_": ["medic-serve", *tags]}}, "limit": 200}
        return httpx.post(f"{self.api_url}/flow_runs/filter", json=body, timeout=10).json()

    def run(self, run_id: str) -> dict:
        return httpx.get(f"{self.api_url}/flow_runs/{run_id}", timeout=10).json()


@pytest.fixture(scope="module")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPrefect]:
    own = OwnPrefect(tmp_path_factory.mktemp("prefect"))
    own.start()
    try:
        yield own
    finally:
        own.stop()


@pytest.fixture
def prefect_up(prefect: OwnPrefect) -> Iterator[OwnPrefect]:
    """The module's Prefect, running again after the test even if the test stopped it and failed."""
    yield prefect
    if prefect.server.proc is None or prefect.server.proc.poll() is not None:
        prefect.start()


def _intake(lab: LabState, prefect: OwnPrefect, state_dir: Path, instance: str, **env: str):  # noqa: ANN202
    return medic_server(state_dir, env={"MEDIC_PREFECT_API_URL": prefect.api_url, "MEDIC_INSTANCE": instance, **env})


@pytest.fixture(scope="module")
def intake(lab: LabState, prefect: OwnPrefect, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedicServer]:
    with _intake(lab, prefect, tmp_path_factory.mktemp("intake"), "durable-a") as server:
        yield server


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _post(server: MedicServer, payload: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/alertmanager", json=payload, timeout=30, headers=intake_headers())


def _runs_of(prefect: OwnPrefect, fingerprint: str, target: str) -> list[dict]:
    return [r for r in prefect.runs(f"target:{target}") if fingerprint in (r["parameters"].get("reason") or "")]


def _alerts_metric(server: MedicServer, action: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=10, headers=intake_headers()).text.splitlines():
        if line.startswith("medic_alerts_received_total{") and f'action="{action}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_prefect_down_answers_503_and_the_resend_records_exactly_one_run(intake: MedicServer,
                                                                         prefect_up: OwnPrefect) -> None:
    fingerprint = _unique("durable-web-3")
    payload = alert_payload("ServiceDown", "web-3", fingerprint=fingerprint, starts_at="2026-11-22T03:00:00Z")
    prefect_up.stop()
    refused = _post(intake, payload)
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert "could not be recorded in Prefect" in body["error"], body
    assert body["alerts"][0]["result"] == "error" and "not recorded in Prefect" in body["alerts"][0]["detail"], body
    assert "flow_run_id" not in body["alerts"][0] or body["alerts"][0]["flow_run_id"] is None

    prefect_up.start()
    assert _runs_of(prefect_up, fingerprint, "web-3") == [], "a 503 must not leave a run behind"
    # What Alertmanager does after a 5xx: send the same notification again, with backoff, until a 2xx (a
    # Prefect just restarted may still be too slow for the bound; a creation cut off is found by its key).
    accepted = wait_for(lambda: _post(intake, payload), what="a resend to be accepted once Prefect is back",
                        timeout=60, done=lambda answer: answer.status_code == 200, interval=1.0)
    entry = accepted.json()["alerts"][0]
    assert entry["result"] == "started" and entry["flow_run_id"], entry
    again = _post(intake, payload)  # and once more, as a retry that crossed the first answer would
    assert again.status_code == 200 and again.json()["alerts"][0]["flow_run_id"] == entry["flow_run_id"], again.text
    runs = _runs_of(prefect_up, fingerprint, "web-3")
    assert [r["id"] for r in runs] == [entry["flow_run_id"]]


def test_twenty_concurrent_copies_of_one_notification_answer_with_one_run(intake: MedicServer,
                                                                          prefect_up: OwnPrefect) -> None:
    fingerprint = _unique("durable-web-4")
    payload = alert_payload("ServiceDown", "web-4", fingerprint=fingerprint, starts_at="2026-11-22T04:00:00Z")

    async def twenty() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, headers=intake_headers()) as client:
            return await asyncio.gather(*[client.post(f"{intake.url}/alertmanager", json=payload) for _ in range(20)])

    answers = asyncio.run(twenty())
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    entries = [a.json()["alerts"][0] for a in answers]
    run_ids = {e.get("flow_run_id") for e in entries}
    assert len(run_ids) == 1 and None not in run_ids, entries
    assert [e["result"] for e in entries].count("started") == 1, [e["result"] for e in entries]
    assert [r["id"] for r in _runs_of(prefect_up, fingerprint, "web-4")] == list(run_ids)


def test_alertmanager_retries_a_503_until_the_run_is_recorded(lab: LabState, intake: MedicServer,
                                                              prefect_up: OwnPrefect) -> None:
    """The lab's real Alertmanager delivers to medic serve while Prefect is down, gets 503, and keeps
    resending; once Prefect is back, exactly one run is recorded for the alert."""
    marker = _unique("am-retry")
    labels = {"alertname": "ServiceDown", "host": "web-5", "job": "web", "severity": "critical", "test": marker}
    errors_before = _alerts_metric(intake, "error")
    prefect_up.stop()
    control.set_webhook(lab, f"{intake.url}/alertmanager")
    try:
        httpx.post(f"{lab.alertmanager_url}/api/v2/alerts", json=[{"labels": labels, "annotations": {}}],
                   timeout=10).raise_for_status()
        wait_for(lambda: _alerts_metric(intake, "error"), what="Alertmanager to deliver and get a 503",
                 timeout=60, done=lambda errors: errors > errors_before, interval=0.3, ignore=httpx.HTTPError)
        prefect_up.start()

        def recorded() -> list[dict]:  # web-5 is this test's alone in this module's Prefect
            return [r for r in prefect_up.runs("target:web-5") if "ServiceDown" in (r["parameters"].get("reason") or "")]

        runs = wait_for(recorded, what="Alertmanager's resend to be recorded as a run", timeout=90, interval=0.5,
                        ignore=httpx.HTTPError)
        assert _alerts_metric(intake, "started") >= 1
        assert len(runs) == 1, [(r["id"], r["parameters"]["reason"]) for r in runs]
    finally:
        httpx.post(f"{lab.alertmanager_url}/api/v2/alerts", timeout=10, json=[{
            "labels": labels, "annotations": {}, "endsAt": "2000-01-01T00:00:00Z"}])
        control.set_webhook(lab, "http://127.0.0.1:9/unused")


def _final(run: dict) -> bool:
    return run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _slots(prefect: OwnPrefect, name: str) -> int:
    answer = httpx.get(f"{prefect.api_url}/v2/concurrency_limits/{name}", timeout=10)
    return int(answer.json()["active_slots"]) if answer.status_code == 200 else 0


def test_restarting_one_intake_leaves_the_other_ones_paused_run_alone(
        lab: LabState, intake: MedicServer, prefect_up: OwnPrefect, broken: Inject,
        tmp_path: Path) -> None:
    """Two medic serve on one Prefect (instances durable-a and durable-b): B restarts while A's run
    waits for approval — A's run stays Paused (same state), and its slot stays taken."""
    broken("disk-full", "web-6")
    seen(lab, "disk-full", "web-6")
    fingerprint = _unique("two-intakes")
    alert = alert_payload("DiskAlmostFull", "web-6", fingerprint=fingerprint, starts_at="2026-11-22T05:00:00Z")
    lock = remediation_lock_name("disk-full", "web-6")
    with _intake(lab, prefect_up, tmp_path / "b", "durable-b"):  # B's first life, while A's run starts
        answer = _post(intake, alert).json()["alerts"][0]
        assert answer["result"] == "started", answer
        run_id = answer["flow_run_id"]
        paused = wait_for(lambda: prefect_up.run(run_id), what=f"run {run_id} to wait for approval", timeout=180,
                          done=lambda run: run["state"]["type"] == "PAUSED" or _final(run), ignore=httpx.HTTPError)
        assert paused["state"]["type"] == "PAUSED", f"{paused['state']}\n{intake.logs()[-3000:]}"
        assert "medic-serve:durable-a" in paused["tags"], paused["tags"]
        assert _slots(prefect_up, lock) == 1

    with _intake(lab, prefect_up, tmp_path / "b", "durable-b") as restarted:  # B again, after it went away
        after = prefect_up.run(run_id)
        assert after["state"]["type"] == "PAUSED" and after["state"]["id"] == paused["state"]["id"], after["state"]
        assert _slots(prefect_up, lock) == 1, "the other intake's restart freed a slot it does not own"
        assert "adopted" not in restarted.logs()

    alert["status"] = alert["alerts"][0]["status"] = "resolved"
    resolved = _post(intake, alert).json()["alerts"][0]
    assert resolved["result"] == "resolved" and run_id in resolved["detail"], resolved
    ended = wait_for(lambda: prefect_up.run(run_id), what=f"run {run_id} to end", timeout=90,
                     done=_final, ignore=httpx.HTTPError)
    assert ended["state"]["name"] == "NotNeeded", ended["state"]


@pytest.fixture(scope="module")
def pool(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OwnPrefect, MedicServer]]:
    """An intake-only medic serve (MEDIC_EXECUTION=workers) on a Prefect of its own, its pool deployed
    by `medic deploy`, and no worker: its runs stay Scheduled, so what Prefect holds is all there is."""
    own = OwnPrefect(tmp_path_factory.mktemp("pool-prefect"))
    own.start()
    try:
        env = {**os.environ, "MEDIC_PREFECT_API_URL": own.api_url, "PREFECT_API_URL": own.api_url}
        deployed = subprocess.run([sys.executable, "-m", "medic", "deploy"], env=env, capture_output=True, text=True,
                                  timeout=180)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        with _intake(lab, own, tmp_path_factory.mktemp("pool-intake"), "pool-intake", MEDIC_EXECUTION="workers") as srv:
            yield own, srv
    finally:
        own.stop()


def test_intake_only_records_scheduled_runs_for_the_pool_and_asks_prefect_if_they_live(
        pool: tuple[OwnPrefect, MedicServer]) -> None:
    prefect, intake_only = pool
    assert "intake only" in intake_only.logs()

    def alert(name: str) -> dict:
        return alert_payload("ServiceDown", "web-2", fingerprint=_unique(name), starts_at="2026-11-22T06:00:00Z")

    first = send_alert(intake_only.url, alert("pool-first")).json()["alerts"][0]
    assert first["result"] == "started", (first, intake_only.logs()[-2000:])
    run = prefect.run(first["flow_run_id"])
    assert run["state"]["type"] == "SCHEDULED", run["state"]
    assert run["work_pool_name"] == "medic" and "medic-serve:pool-intake" in run["tags"], run
    other = send_alert(intake_only.url, alert("pool-second")).json()["alerts"][0]  # another alert, same (runbook, target)
    assert other["result"] == "duplicate" and other["flow_run_id"] == first["flow_run_id"], other

    httpx.post(f"{prefect.api_url}/flow_runs/{first['flow_run_id']}/set_state", timeout=10, json={
        "state": {"type": "CANCELLED", "message": "cancelled by the test"}, "force": True}).raise_for_status()
    later = alert("pool-later")  # the run is gone from Prefect's live ones: within the cache's TTL, a new run
    fresh = wait_for(lambda: send_alert(intake_only.url, later).json()["alerts"][0], what="a new run once the old one ended",
                     timeout=30, done=lambda entry: entry["result"] != "duplicate", interval=0.5)
    assert fresh["result"] == "started" and fresh["flow_run_id"] != first["flow_run_id"], fresh
    assert prefect.run(fresh["flow_run_id"])["state"]["type"] == "SCHEDULED"
