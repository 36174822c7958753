"""Slack's Web API: notifications, incident threads, approval cards posted and updated.

**Slack is a side channel.** A Slack outage must never fail a remediation, so :class:`SlackNotifier`
methods never raise: slack_sdk's own retry handlers deal with HTTP 429 (honouring ``Retry-After``),
5xx and dropped connections; when they give up, the notifier logs a warning that still carries the
message text and returns ``None``. Without a bot token it is *disabled* and only logs.

The approval card builders live in :mod:`medic.approval.card` (pure functions) and are re-exported here.
Clicks coming back from Slack (signed requests, Socket Mode payloads) are `medic.clients.slack_interactivity`.
"""

from __future__ import annotations

import logging
import random
from typing import Any
from urllib.error import URLError

from pydantic import SecretStr
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

from medic.approval.card import (
    ApprovalCard,
    Decision,
    approval_card_blocks,
    clip,
    decided_card_blocks,
    escape,
)
from medic.settings import Settings

__all__ = [
    "ApprovalCard",
    "Decision",
    "IncidentThread",
    "SlackNotifier",
    "approval_card_blocks",
    "decided_card_blocks",
]

log = logging.getLogger(__name__)

_LOGGED_TEXT_MAX = 500



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
