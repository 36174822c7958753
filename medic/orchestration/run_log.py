"""Tell a run's story where people look: the run's logs in the Prefect UI (and `/api/logs/filter`).

Every stage says what it found and what it decided in one line (`stage: finding → decision`). `tell`
sends that line to the run's timeline (the incident report, the Slack thread, `medic run`'s live view)
*and* to Prefect's run logger, so the UI and the report can never tell different stories. Lines are
built from stage results only — never from settings — so no secret reaches them.
"""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from medic.core.progress import Timeline

__all__ = ["run_logger", "tell"]


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger] | None:
    """Prefect's logger of the current flow or task run; None outside a run (a stage called directly)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return None


def tell(timeline: Timeline, stage: str, message: str, *, level: int = logging.INFO) -> None:
    """Record one finding or decision in the timeline and in the run's Prefect logs, as one line
    (command output and error texts bring tabs and newlines: each run of whitespace becomes a space)."""
    message = " ".join(message.split())
    timeline.note(stage, message)  # outside a run this is logged to `medic.run` already
    logger = run_logger()
    if logger is not None:
        logger.log(level, "%s: %s", stage, message)
