"""Slack-signed ``block_actions`` requests, shaped as Slack documents them, for the interactivity endpoint.

Tests send these to the real handler instead of mocking the verifier; the signature is made with
``slack_sdk.signature.SignatureVerifier.generate_signature``, the same code that checks it.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from slack_sdk.signature import SignatureVerifier

SIGNING_SECRET = "medic-test-signing-secret"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def block_action_payload(
    *,
    value: str = "3f0c6a1e-9d2b-4c5e-8f7a-1b2c3d4e5f60",
    action_id: str = "medic_approve",
    block_id: str = "medic_approval",
    user_id: str = "U0ONCALL1",
    user_name: str = "oncall.alice",
    team_id: str = "T0MEDIC",
    channel_id: str = "C0OPS0001",
    message_ts: str = "1700000000.000100",
    message_blocks: list[dict] | None = None,
) -> dict[str, Any]:
    """A ``block_actions`` payload as Slack sends it for one button click."""
    action_ts = f"{time.time():.6f}"
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": "A0MEDIC01",
        "token": "legacy-verification-token",
        "container": {
            "type": "message", "message_ts": message_ts, "channel_id": channel_id, "is_ephemeral": False,
        },
        "trigger_id": f"1700000000.{team_id}.0123456789abcdef",
        "team": {"id": team_id, "domain": "medic-test"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": "ops"},
        "message": {
            "type": "message", "user": "U0MEDICBOT", "ts": message_ts, "bot_id": "B0MEDIC",
            "text": "Approval needed", "blocks": message_blocks or [],
        },
        "state": {"values": {}},
        "response_url": f"https://hooks.slack.com/actions/{team_id}/1700000000/0123456789abcdef",
        "actions": [
            {
                "action_id": action_id, "block_id": block_id, "value": value, "type": "button",
                "style": "primary" if action_id == "medic_approve" else "danger",
                "text": {"type": "plain_text", "text": "Approve", "emoji": True}, "action_ts": action_ts,
            }
        ],
    }


def form_body(payload: dict[str, Any]) -> bytes:
    """``payload=<JSON>``, form-encoded, as Slack posts it."""
    return urlencode({"payload": json.dumps(payload)}).encode()


def sign(
    body: bytes, *, secret: str = SIGNING_SECRET, timestamp: int | None = None, omit_headers: bool = False
) -> dict[str, str]:
    """Slack's request headers for ``body``; sign with another ``secret`` to forge, an old one to replay."""
    headers = {"Content-Type": FORM_CONTENT_TYPE}
    if omit_headers:
        return headers
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return headers | {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}


def signed_block_action(
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    omit_headers: bool = False,
    **payload_options: Any,
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a signed button click; ``payload_options`` go to :func:`block_action_payload`."""
    body = form_body(block_action_payload(**payload_options))
    return body, sign(body, secret=secret, timestamp=timestamp, omit_headers=omit_headers)


def post_block_action(url: str, *, timeout: float = 10.0, **options: Any) -> httpx.Response:
    """POST a signed click to a local endpoint; ``options`` go to :func:`signed_block_action`."""
    if urlsplit(url).hostname not in _LOOPBACK:
        raise ValueError(f"refusing to send a test request off this machine: {url}")
    body, headers = signed_block_action(**options)
    return httpx.post(url, content=body, headers=headers, timeout=timeout, trust_env=False)
