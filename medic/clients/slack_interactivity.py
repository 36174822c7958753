"""Slack interactivity: a button click is only trusted once verified.

:func:`verify_and_parse` checks Slack's request signature with ``slack_sdk.signature.SignatureVerifier``
(including the 5-minute replay window) before it reads a single field, and refuses anything else with
:class:`SlackRequestRefused` carrying the HTTP status to answer. :func:`parse_block_actions` turns a
decoded ``block_actions`` payload into a :class:`BlockAction`; Socket Mode, whose websocket is
authenticated by the app token instead, uses it directly. Posting to Slack is `medic.clients.slack`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, Field, ValidationError
from slack_sdk.signature import Clock, SignatureVerifier

from medic.errors import ConfigError, SlackRequestRefused

__all__ = ["BlockAction", "SlackRequestRefused", "parse_block_actions", "verify_and_parse"]

REPLAY_WINDOW_SECONDS = 300


def _unauthentic(reason: str) -> SlackRequestRefused:
    return SlackRequestRefused(status=401, reason=reason)


def _malformed(reason: str) -> SlackRequestRefused:
    return SlackRequestRefused(status=400, reason=reason)


class BlockAction(BaseModel):
    """One button click, flattened from Slack's ``block_actions`` payload."""

    user_id: str
    user_name: str
    team_id: str
    action_id: str
    block_id: str
    value: str
    action_ts: str
    channel_id: str
    message_ts: str
    response_url: str
    trigger_id: str
    message_blocks: list[dict] = Field(default_factory=list)


class _User(BaseModel):
    id: str
    username: str | None = None
    name: str | None = None
    team_id: str | None = None


class _Action(BaseModel):
    action_id: str
    block_id: str
    value: str
    action_ts: str


class _Container(BaseModel):
    message_ts: str
    channel_id: str


class _Team(BaseModel):
    id: str


class _Message(BaseModel):
    blocks: list[dict] = Field(default_factory=list)


class _BlockActionsPayload(BaseModel):
    """The fields medic needs of Slack's documented ``block_actions`` payload (others are ignored)."""

    type: str
    user: _User
    actions: list[_Action] = Field(min_length=1)
    container: _Container
    team: _Team | None = None
    message: _Message | None = None
    response_url: str
    trigger_id: str


class _FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def verify_and_parse(
    body: bytes, headers: Mapping[str, str], signing_secret: str, now: float | None = None
) -> BlockAction:
    """Check the Slack signature of a raw request, then parse its button click.

    The signature is checked on the raw bytes before anything is parsed. ``now`` is for tests.
    """
    if not signing_secret or not signing_secret.strip():
        raise ConfigError(
            "no Slack signing secret: set MEDIC_SLACK_SIGNING_SECRET to the app's Signing Secret"
        )
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp, signature = lowered.get("x-slack-request-timestamp"), lowered.get("x-slack-signature")
    if not timestamp or not signature:
        raise _unauthentic("missing signature headers")
    try:
        skew = abs((now if now is not None else Clock().now()) - int(timestamp))
    except ValueError:
        raise _unauthentic(f"malformed timestamp header {timestamp[:20]!r}") from None
    if skew > REPLAY_WINDOW_SECONDS:
        raise _unauthentic("timestamp outside the 5-minute window (possible replay)")
    try:
        text = body.decode("utf-8")  # SignatureVerifier itself would raise on bytes that are not UTF-8
    except UnicodeDecodeError:
        raise _malformed("body is not UTF-8 (Slack sends payload=<JSON>)") from None
    verifier = SignatureVerifier(signing_secret, clock=_FixedClock(now) if now is not None else Clock())
    if not verifier.is_valid(body=text, timestamp=timestamp, signature=signature):
        raise _unauthentic(
            "signature mismatch (is MEDIC_SLACK_SIGNING_SECRET the app's Signing Secret?)"
        )
    return _parse_block_actions(text)


def _parse_block_actions(body: str) -> BlockAction:
    try:
        form = parse_qs(body, strict_parsing=True)
    except ValueError:
        form = {}
    if list(form) != ["payload"] or len(form["payload"]) != 1:
        raise _malformed("body is not form-encoded payload=<JSON>")
    try:
        raw = json.loads(form["payload"][0])
    except json.JSONDecodeError as e:
        raise _malformed(f"payload is not valid JSON ({e.msg})") from None
    return parse_block_actions(raw)


def parse_block_actions(raw: Any) -> BlockAction:
    """A decoded ``block_actions`` payload → its click (shared by the HTTP endpoint and Socket Mode)."""
    if not isinstance(raw, dict) or raw.get("type") != "block_actions":
        found = raw.get("type") if isinstance(raw, dict) else type(raw).__name__
        raise _malformed(
            f"unsupported interaction type {found!r}: medic only handles block_actions"
        )
    try:
        payload = _BlockActionsPayload.model_validate(raw)
    except ValidationError as e:
        where = ", ".join(".".join(str(p) for p in err["loc"]) + f" ({err['msg']})" for err in e.errors())
        raise _malformed(f"block_actions payload is missing fields: {where}") from None
    user, action = payload.user, payload.actions[0]
    team_id = user.team_id or (payload.team.id if payload.team else None)
    if team_id is None:
        raise _malformed("block_actions payload is missing fields: user.team_id, team.id")
    return BlockAction(
        user_id=user.id,
        user_name=user.username or user.name or user.id,
        team_id=team_id,
        action_id=action.action_id,
        block_id=action.block_id,
        value=action.value,
        action_ts=action.action_ts,
        channel_id=payload.container.channel_id,
        message_ts=payload.container.message_ts,
        response_url=payload.response_url,
        trigger_id=payload.trigger_id,
        message_blocks=payload.message.blocks if payload.message else [],
    )
