"""Hostile HTTP input to medic serve's intake: deeply nested, wrongly typed, oversized, odd values.

tests/service/test_server.py already covers not-JSON, a list, a missing field, version 3, an
oversized body and a wrong content type on /alertmanager; these are the cases it does not, on both
intake endpoints. Nothing lost means: each gets a clear 4xx naming what is wrong, no run is started
(in Prefect, not only in medic's counters), and the server answers health checks and a good request
normally afterwards.
"""

from __future__ import annotations

import json

import httpx
import pytest

from medic_lab.state import LabState
from tests.support.intake import intake_headers
from tests.support.prefect_api import prefect_json
from tests.support.server import MedicServer, alert_payload

pytestmark = pytest.mark.chaos

DEPTH = 400_000  # "[" * DEPTH + "]" * DEPTH stays under the 1 MiB body limit


def _alert(**changes: object) -> bytes:
    payload = alert_payload("ServiceDown", "web-1", fingerprint="chaos-hostile")
    payload["alerts"][0].update(changes)
    return json.dumps(payload).encode()


ALERTMANAGER = [
    ("nested", b'{"version": "4", "status": "firing", "alerts": ' + b"[" * DEPTH + b"]" * DEPTH + b"}", 400,
     "not an Alertmanager webhook payload"),
    ("nested labels", _alert(labels={"host": json.loads("[" * 50 + "]" * 50)}), 400, "labels.host"),
    ("labels not strings", _alert(labels={"alertname": "ServiceDown", "host": 5}), 400, "labels.host"),
    ("alerts not a list", json.dumps({"version": "4", "status": "firing", "alerts": "all"}).encode(), 400, "alerts"),
    ("no date", _alert(startsAt="yesterday"), 400, "startsAt"),
    ("huge fingerprint", _alert(fingerprint="f" * 100_000), 400, "fingerprint"),
    ("empty fingerprint", _alert(fingerprint=""), 400, "fingerprint"),
    ("status made up", _alert(status="burning"), 400, "status"),
]
RUNS = [
    ("nested", b'{"runbook": ' + b"[" * DEPTH + b"]" * DEPTH + b"}", 400, "bad request"),
    ("runbook not a string", json.dumps({"runbook": 123}).encode(), 400, "runbook"),
    ("long runbook", json.dumps({"runbook": "x" * 10_000}).encode(), 400, "runbook"),
    ("path as runbook", json.dumps({"runbook": "../../etc/passwd"}).encode(), 400, ""),
    ("operator as target", json.dumps({"runbook": "service-down", "target": {"$ne": 1}}).encode(), 400, "target"),
    ("shell in target", json.dumps({"runbook": "service-down", "target": "web-1; rm -rf /"}).encode(), 400, ""),
    ("dry_run not a bool", json.dumps({"runbook": "service-down", "target": "web-1", "dry_run": "maybe"}).encode(),
     400, "dry_run"),
]


def _medic_runs(lab: LabState) -> int:
    body = {"flow_runs": {"tags": {"all_": ["medic-serve"]}}, "limit": 200}
    return len(prefect_json(lab.prefect_api_url, "POST", "/flow_runs/filter", json=body))


@pytest.mark.parametrize(("path", "case", "body", "status", "says"),
                         [("/alertmanager", *c) for c in ALERTMANAGER] + [("/runs", *c) for c in RUNS],
                         ids=[f"alertmanager-{c[0]}" for c in ALERTMANAGER] + [f"runs-{c[0]}" for c in RUNS])
def test_hostile_input_is_refused_clearly_and_starts_nothing(lab: LabState, server: MedicServer, path: str,
                                                             case: str, body: bytes, status: int, says: str) -> None:
    """Nothing lost: a clear 4xx (the field named), no new run in Prefect, the server still healthy."""
    before = _medic_runs(lab)
    response = httpx.post(f"{server.url}{path}", content=body, timeout=30,
                          headers={"content-type": "application/json", **intake_headers()})
    assert response.status_code == status, (case, response.status_code, response.text[:500])
    error = response.json()["error"]
    assert says in error and len(error) < 2000, error[:2000]
    assert _medic_runs(lab) == before
    assert httpx.get(f"{server.url}/healthz", timeout=10).json()["status"] == "ok"
    fine = httpx.post(f"{server.url}/alertmanager", json=alert_payload("NoSuchAlert", "web-1"), timeout=30,
                      headers=intake_headers())
    assert fine.status_code == 200 and fine.json()["alerts"][0]["action"] == "no runbook", fine.text
