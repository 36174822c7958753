"""The fake Slack's faults: slack-slow (every Web API call answered late) and slack-down (HTTP 503).

Slack is the one fake of the lab (Slack cannot be reached from here). These faults write
``<lab>/faults/slack.json``, which the fake Slack Web API (tests/fakes/slack_api.py, started with
``control_file=slack_control(lab)``) reads on every request — so `medic lab break slack-slow` from a
shell, or a test's `inject`, reaches the fake that a test runs in its own process. Listed with the
other whole-lab faults in `medic_lab.dependency_faults.LAB_FAULTS`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medic.errors import LabError
from medic_lab.state import LabState

__all__ = ["SLACK_DELAY_S", "SLACK_DOWN_STATUS", "slack_back", "slack_control", "slack_down", "slack_slow"]

#: Seconds the fake Slack holds every answer under slack-slow (`MEDIC_LAB_SLACK_DELAY_S` overrides).
SLACK_DELAY_S = 5.0
#: slack-down's answer to every Web API call: Slack's outage page (HTTP 503), not a refused connection —
#: the fake keeps listening, as slack.com's front end does when Slack is down behind it.
SLACK_DOWN_STATUS = 503


def slack_control(lab: LabState) -> Path:
    """The file the fake Slack reads its fault from (absent: Slack answers normally)."""
    return lab.lab_dir / "faults" / "slack.json"


def _set_slack(lab: LabState, fault: dict[str, float]) -> None:
    path = slack_control(lab)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps(fault))
    staged.replace(path)  # atomic: the fake never reads half a file


def slack_slow(lab: LabState) -> str:
    """Every call answered after N s (the fake holds the answer, not its lock: calls overlap as in Slack)."""
    raw = os.environ.get("MEDIC_LAB_SLACK_DELAY_S") or str(SLACK_DELAY_S)
    try:
        delay = float(raw)
    except ValueError:
        raise LabError(f"MEDIC_LAB_SLACK_DELAY_S={raw!r} is not a number of seconds (e.g. 5)") from None
    if not 0 < delay <= 300:
        raise LabError(f"MEDIC_LAB_SLACK_DELAY_S={raw!r}: give a delay between 0 and 300 s")
    _set_slack(lab, {"delay_s": delay})
    return f"the fake Slack now answers every Web API call after {delay:g} s"


def slack_down(lab: LabState) -> str:
    """Every call answered 503 at once; slack_sdk retries it, then medic logs the message it could not send."""
    _set_slack(lab, {"status": SLACK_DOWN_STATUS})
    return f"the fake Slack now answers every Web API call with HTTP {SLACK_DOWN_STATUS} (connections still accepted)"


def slack_back(lab: LabState) -> str:
    """Undo either fault: the fake answers normally from its next request."""
    path = slack_control(lab)
    if not path.exists():
        return "the fake Slack was answering normally"
    path.unlink()
    return "the fake Slack answers normally again"
