"""Slack Socket Mode: receive the approval clicks over a websocket instead of `POST /slack/actions`.

For sites where Slack cannot reach medic (no public endpoint): with MEDIC_SLACK_SOCKET_MODE=true and
an app-level token (MEDIC_SLACK_APP_TOKEN, ``xapp-…``) medic serve opens slack_sdk's
`SocketModeClient`. Each envelope is acknowledged at once (Slack's 3 s rule), then the click goes to
the very `ClickHandler` the HTTP endpoint uses, on medic serve's event loop — one code path, the same
rules. There is no request signature here: the websocket itself is authenticated by the app token.

Only `route` is tested (with constructed `SocketModeRequest`s); a real websocket to Slack cannot be
opened from the test machines.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from typing import Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackClientError
from slack_sdk.socket_mode import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from medic.clients.slack_interactivity import SlackRequestRefused, parse_block_actions
from medic.errors import ConfigError
from medic.service.clicks import ClickHandler, ClickResult, check_click
from medic.settings import Settings

__all__ = ["route", "start_socket_mode"]

log = logging.getLogger("medic.service.socket_mode")


class _Acknowledger(Protocol):
    def send_socket_mode_response(self, response: SocketModeResponse) -> None: ...


def route(client: _Acknowledger, request: SocketModeRequest, *, handler: ClickHandler,
          loop: asyncio.AbstractEventLoop) -> Future[ClickResult] | None:
    """Acknowledge one envelope, and hand an approval click to `handler` on `loop`.

    Returns the future of the click's handling, or None when the envelope is not a click of ours.
    """
    client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
    if request.type != "interactive":
        log.debug("ignoring a Socket Mode %s envelope", request.type)
        return None
    try:
        action = parse_block_actions(request.payload)
        check_click(action)
    except SlackRequestRefused as exc:
        log.warning("ignoring a Socket Mode interaction: %s", exc.reason)
        return None
    return asyncio.run_coroutine_threadsafe(handler.handle(action), loop)


def start_socket_mode(settings: Settings, handler: ClickHandler, loop: asyncio.AbstractEventLoop) -> SocketModeClient:
    """Connect to Slack over Socket Mode and route clicks into medic serve's `ClickHandler` on `loop`."""
    if settings.slack_app_token is None:
        raise ConfigError("MEDIC_SLACK_SOCKET_MODE=true needs MEDIC_SLACK_APP_TOKEN (the app-level xapp- token)")
    bot = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    client = SocketModeClient(app_token=settings.slack_app_token.get_secret_value(),
                              web_client=WebClient(token=bot, base_url=settings.slack_api_url))
    client.socket_mode_request_listeners.append(
        lambda c, request: route(c, request, handler=handler, loop=loop) and None)
    try:
        client.connect()
    except (OSError, SlackClientError) as exc:  # medic serve keeps serving; the endpoint still works
        log.error("Slack Socket Mode could not connect (%s); clicks will not arrive over the websocket", exc)
    else:
        log.warning("Slack Socket Mode connected: approval clicks arrive over the websocket")
    return client
