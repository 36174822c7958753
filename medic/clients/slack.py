"""Slack: the one module that talks to it (notifications, incident threads, signed button clicks).

Two rules shape this module:

* **Slack is a side channel.** A Slack outage must never fail a remediation, so :class:`SlackNotifier`
  methods never raise: slack_sdk's own retry handlers deal with HTTP 429 (honouring ``Retry-After``),
  5xx and dropped connections; when they give up, the notifier logs a warning that still carries the
  message text and returns ``None``. Without a bot token it is *disabled* and only logs.
* **A click is only trusted once verified.** :func:`verify_and_parse` checks Slack's request signature
  with ``slack_sdk.signature.SignatureVerifier`` (including the 5-minute replay window) before it reads a
  single field, and refuses anything else with :class:`SlackRequestRefused` carrying the HTTP status.

The approval card builders live in :mod:`medic.approval.card` (pure functions) and are re-exported here.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.error import URLError
from urllib.parse import parse_qs

from pydantic import BaseModel, Field, SecretStr, ValidationError
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry import RetryHandler
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.jitter import Jitter
from slack_sdk.signature import Clock, SignatureVerifier

from medic.approval.card import (
    ApprovalCard,
    Decision,
    approval_card_blocks,
    clip,
    decided_card_blocks,
    escape,
)
from medic.errors import ConfigError, SlackError

if TYPE_CHECKING:
    from medic.settings import Settings

__all__ = [
    "ApprovalCard",
    "BlockAction",
    "Decision",
    "IncidentThread",
    "SlackNotifier",
    "SlackRequestRefused",
    "approval_card_blocks",
    "decided_card_blocks",
    "parse_block_actions",
    "verify_and_parse",
]

log = logging.getLogger(__name__)

REPLAY_WINDOW_SECONDS = 300
_LOGGED_TEXT_MAX = 500


# --- posting ---------------------------------------------------------------------------------------


class _ProportionalJitter(Jitter):
    """Jitter of up to +50 % of the interval (slack_sdk's default adds up to a whole second)."""

    def recalculate(self, duration: float) -> float:
        return duration * (1 + random.random() / 2)


class SlackNotifier:
    """Posts and updates messages; never raises, so Slack cannot fail a remediation.

    Every method returns the message ``ts`` (Slack's message id) or ``None`` when Slack could not be
    reached, refused the call, or no bot token is configured (disabled mode: the text is only logged).
    """

    def __init__(
        self,
        *,
        token: SecretStr | str | None,
        base_url: str = "https://slack.com/api/",
        timeout: int = 10,
        retries: int = 3,
        backoff_factor: float = 0.5,
    ) -> None:
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        self._client: WebClient | None = None
        if secret and secret.strip():
            self._client = WebClient(
                token=secret,
                base_url=base_url if base_url.endswith("/") else base_url + "/",
                timeout=timeout,
                retry_handlers=_retry_handlers(retries, backoff_factor),
            )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> SlackNotifier:
        """The notifier the settings describe (disabled when MEDIC_SLACK_BOT_TOKEN is unset)."""
        return cls(token=settings.slack_bot_token, base_url=settings.slack_api_url, **options)

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def post(
        self, channel: str, text: str, *, blocks: list[dict] | None = None, thread_ts: str | None = None
    ) -> str | None:
        """Post a message (a thread reply when ``thread_ts`` is given); ``text`` is the notification
        fallback and what disabled mode logs."""
        return self._call(
            "chat.postMessage", "ts", channel=channel, text=text, blocks=blocks, thread_ts=thread_ts
        )

    def update(self, channel: str, ts: str, text: str, blocks: list[dict] | None = None) -> str | None:
        """Replace a message in place, e.g. an approval card once it is decided."""
        return self._call("chat.update", "ts", channel=channel, ts=ts, text=text, blocks=blocks)

    def post_ephemeral(self, channel: str, user: str, text: str) -> str | None:
        """A message only ``user`` sees, e.g. "you are not allowed to approve this"."""
        return self._call("chat.postEphemeral", "message_ts", channel=channel, user=user, text=text)

    def usergroup_members(self, usergroup: str) -> set[str] | None:
        """Slack user ids in a user group (``usergroups.users.list``), or None if Slack cannot say."""
        if self._client is None:
            log.info("Slack disabled (no MEDIC_SLACK_BOT_TOKEN); cannot read user group %s", usergroup)
            return None
        data = self._api("usergroups.users.list", what=f"user group {usergroup}", usergroup=usergroup)
        return set(data.get("users") or []) if data is not None else None

    def _call(self, method: str, ts_key: str, *, channel: str, text: str, **extra: Any) -> str | None:
        if self._client is None:
            log.info("Slack disabled (no MEDIC_SLACK_BOT_TOKEN); %s to %s: %s", method, channel, text)
            return None
        data = self._api(method, what=f"to {channel}", note=f" Message was: {clip(text, _LOGGED_TEXT_MAX)}",
                         channel=channel, text=text, **extra)
        return data.get(ts_key) if data is not None else None

    def _api(self, method: str, *, what: str, note: str = "", **args: Any) -> dict[str, Any] | None:
        """One Web API call with retries; its data, or None after logging why (never raises)."""
        assert self._client is not None
        try:
            response = self._client.api_call(method, json={k: v for k, v in args.items() if v is not None})
        except SlackApiError as e:
            data = e.response.data
            error = data.get("error", "unknown") if isinstance(data, dict) else "unknown"
            reason = f"HTTP {e.response.status_code}, error {error!r}"
        except (SlackClientError, URLError, OSError) as e:  # URLError/OSError: connection-level failures
            reason = f"{type(e).__name__}: {e}"
        else:
            return dict(response.data) if isinstance(response.data, dict) else {}
        log.warning("Slack %s %s failed (%s, retries included); the remediation goes on.%s",
                    method, what, reason, note)
        return None


def _retry_handlers(retries: int, backoff_factor: float) -> list[RetryHandler]:
    interval = BackoffRetryIntervalCalculator(backoff_factor=backoff_factor, jitter=_ProportionalJitter())
    return [
        RateLimitErrorRetryHandler(max_retry_count=retries),  # sleeps Retry-After itself
        ServerErrorRetryHandler(max_retry_count=retries, interval_calculator=interval),
        ConnectionErrorRetryHandler(max_retry_count=retries, interval_calculator=interval),
    ]


class IncidentThread:
    """One Slack thread per incident: a parent message, then one reply per stage.

    Stages are diagnosis, waiting for approval, action result, verified / not recovered. If the parent
    could not be posted (Slack down), replies go to the channel unthreaded rather than being lost.
    """

    def __init__(self, notifier: SlackNotifier, channel: str) -> None:
        self.notifier = notifier
        self.channel = channel
        self.ts: str | None = None

    def open(self, title: str, evidence_text: str) -> str | None:
        """Post the parent message and remember its ts for the replies (text escaped: no stray pings)."""
        self.ts = self.notifier.post(self.channel, f"*{escape(title)}*\n{escape(evidence_text)}")
        return self.ts

    def say(self, text: str, *, blocks: list[dict] | None = None) -> str | None:
        """Reply in the incident's thread."""
        return self.notifier.post(self.channel, text, blocks=blocks, thread_ts=self.ts)


# --- the interactivity endpoint --------------------------------------------------------------------


class SlackRequestRefused(SlackError):
    """An interactivity request medic will not act on; ``status`` is the HTTP answer to give Slack."""

    def __init__(self, *, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"Slack request refused (HTTP {status}): {reason}")


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
