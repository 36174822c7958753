"""`POST /slack/actions`: an Approve / Reject click on an approval card, over HTTP.

The endpoint only verifies and parses (401 / 400 otherwise) and answers 200 at once — Slack wants an
answer within 3 s — then the process's `ClickHandler` (`medic.service.clicks`, shared with Socket Mode)
does the slow part in the background.
"""

from __future__ import annotations

import logging

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from medic.clients.slack_interactivity import SlackRequestRefused, verify_and_parse
from medic.service.clicks import check_click
from medic.service.state import service_state

__all__ = ["slack_actions", "slack_not_configured"]

log = logging.getLogger("medic.service.slack_endpoint")


async def slack_actions(request: Request) -> Response:
    """Verify, parse, answer 200 at once; the click is handled in the background."""
    state = service_state(request)
    secret = state.settings.slack_signing_secret
    body = await request.body()
    try:
        action = verify_and_parse(body, request.headers, secret.get_secret_value() if secret else "")
        check_click(action)
    except SlackRequestRefused as exc:
        log.warning("refused a Slack request from %s: %s", request.client.host if request.client else "?", exc.reason)
        return JSONResponse({"error": exc.reason}, status_code=exc.status)
    return Response(status_code=200, background=BackgroundTask(state.clicks.handle, action))


async def slack_not_configured(request: Request) -> Response:
    """What `/slack/actions` answers on a medic serve without a signing secret: say how to configure it."""
    return JSONResponse({"error": "Slack is not configured on this medic (set MEDIC_SLACK_SIGNING_SECRET)"},
                        status_code=404)
