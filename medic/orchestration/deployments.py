"""The deployments medic serves, read from prefect.yaml (plus one per runbook it does not list).

prefect.yaml stays the single description of what can be started from the Prefect UI and on which
schedule; `medic serve` turns each entry into a RunnerDeployment it serves itself.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from medic.errors import ConfigError
from medic.core.paths import PROJECT_ROOT


class Schedule(BaseModel):
    cron: str
    timezone: str = "UTC"
    active: bool = True


class DeploymentSpec(BaseModel):
    name: str
    entrypoint: str = Field(pattern=r"^flows/[a-z_]+\.py:[a-z_]+$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    schedules: list[Schedule] = Field(default_factory=list)

    @property
    def flow_name(self) -> str:
        return self.entrypoint.split(":")[1]


def load_specs(path: Path = PROJECT_ROOT / "prefect.yaml", runbooks: list[str] | None = None) -> list[DeploymentSpec]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read deployments from {path}: {exc}") from exc
    keys = set(DeploymentSpec.model_fields)
    specs = [DeploymentSpec.model_validate({k: v for k, v in d.items() if k in keys}) for d in data.get("deployments", [])]
    listed = {s.parameters.get("runbook") for s in specs if s.flow_name == "remediate"}
    for name in runbooks or []:
        if name not in listed:
            specs.append(DeploymentSpec(name=name, entrypoint="flows/remediate.py:remediate",
                                        description=f"runbook {name}", parameters={"runbook": name},
                                        tags=["medic", "remediation"]))
    return specs


def load_flow(entrypoint: str) -> Any:
    module_path, attribute = entrypoint.split(":")
    module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
    return getattr(module, attribute)


async def to_runner_deployments(specs: list[DeploymentSpec]) -> list[Any]:
    from prefect.schedules import Schedule as PrefectSchedule

    deployments = []
    for spec in specs:
        flow = load_flow(spec.entrypoint)
        schedules = [PrefectSchedule(cron=s.cron, timezone=s.timezone, active=s.active) for s in spec.schedules]
        deployments.append(await flow.ato_deployment(
            name=spec.name, parameters=spec.parameters, description=spec.description, tags=spec.tags,
            schedules=schedules or None))
    return deployments
