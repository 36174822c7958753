"""`medic deploy`: the work pool and every deployment in it, created or updated (idempotent).

The pool has type "medic" and `MedicWorker`'s base job template; the deployments are prefect.yaml's
entries plus one per remediation runbook it does not list (`deployments.load_specs`), each with the
flow's parameter schema (the UI renders the typed form) and its schedules. Made with
`PrefectClient.create_deployment` (an upsert by flow and name): `flow.deploy()` fails on this server
because its client sends `limit: null` when reading the pool's workers (MACHINE-NOTES).
"""

from __future__ import annotations

from pydantic import BaseModel

from medic.errors import PrefectError
from medic.settings import Settings

__all__ = ["DeployedPool", "deploy_all"]


class DeployedPool(BaseModel):
    """What `medic deploy` left in Prefect."""

    pool: str
    deployments: list[str]  # "flow/deployment"
    schedules: int


async def deploy_all(settings: Settings, *, with_schedules: bool = True) -> DeployedPool:
    """Create or update `settings.work_pool` and every deployment in it; PrefectError if Prefect refuses."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.client.schemas.schedules import CronSchedule

    from medic.core.runbook import load_runbooks
    from medic.orchestration.deployments import load_flow, load_specs
    from medic.orchestration.worker import WORKER_TYPE, MedicWorker

    remediations = [rb.name for rb in load_runbooks(settings.runbooks_dir).values() if rb.kind == "remediation"]
    specs = load_specs(runbooks=remediations)
    names, schedules = [], 0
    try:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(
                name=settings.work_pool, type=WORKER_TYPE, description="medic's runs, executed by `medic worker`s",
                base_job_template=MedicWorker.get_default_base_job_template()), overwrite=True)
            for spec in specs:
                flow = load_flow(spec.entrypoint)
                flow_id = await client.create_flow(flow)
                cron = [DeploymentScheduleCreate(schedule=CronSchedule(cron=s.cron, timezone=s.timezone), active=s.active)
                        for s in spec.schedules] if with_schedules else []
                await client.create_deployment(
                    flow_id=flow_id, name=spec.name, work_pool_name=settings.work_pool, entrypoint=spec.entrypoint,
                    path=".", parameter_openapi_schema=flow.parameters.model_dump_for_openapi(),
                    parameters=spec.parameters, description=spec.description or flow.description,
                    tags=spec.tags, schedules=cron, enforce_parameter_schema=True)
                names.append(f"{flow.name}/{spec.name}")
                schedules += len(cron)
    except PrefectError:
        raise
    except Exception as exc:  # noqa: BLE001 - any client failure is "Prefect refused or is unreachable"
        raise PrefectError(f"medic deploy: Prefect refused or is unreachable: {exc}; check PREFECT_API_URL "
                           f"(and PREFECT_API_AUTH_STRING) and that the server is up") from exc
    return DeployedPool(pool=settings.work_pool, deployments=names, schedules=schedules)
