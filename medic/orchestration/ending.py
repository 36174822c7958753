"""A run's final Prefect state from its outcome — the one place Completed/Failed is decided.

`medic.core.report.ENDINGS` holds the table (outcome → Completed/Failed, state name, exit code);
this module only turns it into a Prefect state, so `medic.core` never imports Prefect.
"""

from __future__ import annotations

from typing import Any

from prefect.states import Completed, Failed, State

from medic.core.report import Outcome

__all__ = ["final_state"]


def final_state(outcome: Outcome, message: str, report: Any) -> State:
    """Completed or Failed as `outcome` says, named after it, with the outcome line as its message."""
    state = Completed if outcome.completed else Failed
    return state(message=message, name=outcome.state_name, data=report)
