"""The intake credential test clients send to medic serve, as `medic run` does (issue 11).

Read fresh from the settings each time (the session lab's settings.json names the token file), so a
test module that starts its own lab or server with other credentials gets those.
"""

from __future__ import annotations

from medic.service.credentials import client_headers
from medic.settings import Settings

__all__ = ["intake_headers"]


def intake_headers(**overrides: object) -> dict[str, str]:
    """`{"authorization": ...}` for the configured intake credential (empty when none is configured)."""
    return client_headers(Settings(**overrides))  # type: ignore[arg-type]
