"""AlertmanagerClient.active_alerts against the session lab's real Alertmanager, and against garbage."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from medic.clients.alertmanager import AlertmanagerClient, RaisedAlert
from medic.errors import AlertmanagerError
from medic_lab.state import LabState
from tests.support.app_server import serve_app
from tests.support.waits import wait_for


def test_active_alerts_reads_back_a_raised_alert_with_its_fingerprint_and_start(lab: LabState) -> None:
    name = f"MedicTestSweep{uuid.uuid4().hex[:6]}"
    with AlertmanagerClient(lab.alertmanager_url) as am:
        now = datetime.now(timezone.utc)
        am.post_alerts([RaisedAlert(labels={"alertname": name, "host": "web-1"}, annotations={"summary": "test"},
                                    starts_at=now, ends_at=now + timedelta(minutes=2))])
        found = wait_for(lambda: [a for a in am.active_alerts() if a.labels.get("alertname") == name],
                         what=f"Alertmanager to list {name}", timeout=15)
        other_receiver = [a for a in am.active_alerts(receiver="^nobody$") if a.labels.get("alertname") == name]
    assert found[0].labels["host"] == "web-1" and found[0].annotations["summary"] == "test"
    assert len(found[0].fingerprint) == 16 and found[0].startsAt.tzinfo is not None
    assert other_receiver == [], "an alert routed to receiver 'medic' was listed for receiver '^nobody$'"


@pytest.mark.parametrize("answer, says", [
    (PlainTextResponse("<html>proxy error</html>"), "not JSON"),
    (JSONResponse([{"labels": {"alertname": "X"}}]), "cannot read"),
    (JSONResponse({"error": "nope"}, status_code=500), "HTTP 500"),
])
def test_active_alerts_from_something_that_is_not_alertmanager_is_a_clear_error(answer, says: str) -> None:
    app = Starlette(routes=[Route("/api/v2/alerts", lambda request: answer)])
    with serve_app(app) as url, AlertmanagerClient(url) as am:
        with pytest.raises(AlertmanagerError, match=says):
            am.active_alerts()
