"""Which Prefect flow executes a runbook of each kind, under which deployment, with which parameters.

`kind: remediation` runbooks run flows/remediate.py; `kind: failover` runbooks run flows/failover.py
(the alert's host is the primary believed down). The launcher, `medic run`, `POST /runs` and the
deployments all ask here, so a new kind is added in one place.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from medic.errors import RunbookError
from medic.core.runbook import Runbook

ENTRYPOINTS = {"remediation": "flows/remediate.py:remediate", "failover": "flows/failover.py:failover"}


class FlowChoice(BaseModel):
    kind: str
    entrypoint: str
    deployment: str
    parameters: dict[str, Any]
    context: dict[str, Any] = {}  # the run's Prefect context: the alert's times (medic.core.timeline)


def choose(runbook: Runbook, target: str | None, *, reason: str, dry_run: bool = False,
           require_approval: bool = False, context: dict[str, Any] | None = None) -> FlowChoice:
    entrypoint = ENTRYPOINTS[runbook.kind]
    flow_name = entrypoint.split(":")[1]
    if runbook.kind == "failover":
        if dry_run:
            raise RunbookError(f"runbook {runbook.name!r} is a failover: it has no dry run (it refuses and asks a "
                               f"human before changing anything)", file=str(runbook.source), field="kind")
        params: dict[str, Any] = {"runbook": runbook.name, "primary": target, "reason": reason}
    else:
        params = {"runbook": runbook.name, "target": target, "dry_run": dry_run, "reason": reason,
                  "require_approval": require_approval}
    return FlowChoice(kind=runbook.kind, entrypoint=entrypoint, deployment=f"{flow_name}/{runbook.name}",
                      parameters=params, context=context or {})


def load_flow(entrypoint: str) -> Any:
    from medic.orchestration.deployments import load_flow as load

    return load(entrypoint)
