"""How test clients reach medic serve's intake: its credential, as `medic run` sends it (issue 11), and
an alert sent the way Alertmanager sends it — again, when medic answered that Prefect was too slow.

The credential is read fresh from the settings each time (the session lab's settings.json names the
token file), so a test module that starts its own lab or server with other credentials gets those.

Why resend: medic answers every alert within `record_deadline_s` (2.5 s); when a loaded Prefect has
not recorded the run by then, the answer is 503 "Prefect did not record the run within 2.5 s … found
by the alert's idempotency key when it is sent again", and Alertmanager resends. A test that sent once
failed on a loaded CI (stop 22's run: 'error' == 'started') on what the design expects a resend to fix.
"""

from __future__ import annotations

from typing import Any

import httpx

from medic.service.credentials import client_headers
from medic.settings import Settings
from tests.support.waits import wait_for

__all__ = ["intake_headers", "send_alert"]

NOT_RECORDED_IN_TIME = "did not record the run within"


def intake_headers(**overrides: object) -> dict[str, str]:
    """`{"authorization": ...}` for the configured intake credential (empty when none is configured)."""
    return client_headers(Settings(**overrides))  # type: ignore[arg-type]


def send_alert(base_url: str, payload: dict[str, Any], *, resend_for: float = 90.0) -> httpx.Response:
    """POST `payload` to `base_url`/alertmanager with the intake credential, resent (same alerts, same
    idempotency keys) while medic answers that Prefect did not record the run in time; any other
    answer is returned as it is."""
    def send() -> httpx.Response:
        return httpx.post(f"{base_url}/alertmanager", json=payload, headers=intake_headers(), timeout=30)

    return wait_for(send, what="an answer other than 'Prefect did not record the run in time'", timeout=resend_for,
                    done=lambda r: not (r.status_code == 503 and NOT_RECORDED_IN_TIME in r.text), interval=0.5)
