"""`medic deploy` and `medic worker`: the work pool with medic's deployments, and a worker executing them.

Settings come from MEDIC_* (work_pool, worker_*); Prefect from PREFECT_API_URL/PREFECT_API_AUTH_STRING
or MEDIC_PREFECT_API_URL. Both exit 5 when Prefect is unreachable (a `PrefectError`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from medic.cli.run import use_prefect_api
from medic.settings import get_settings

__all__ = ["add_commands"]


def cmd_deploy(args: argparse.Namespace) -> int:
    settings = get_settings()
    use_prefect_api(settings)
    from medic.orchestration.deploy import deploy_all

    done = asyncio.run(deploy_all(settings, with_schedules=not args.no_schedules))
    print(f"work pool {done.pool!r} (type medic): {len(done.deployments)} deployments, {done.schedules} schedules")
    for name in done.deployments:
        print(f"  {name}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    use_prefect_api(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    from medic.orchestration.worker import serve_worker

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve_worker(settings, name=args.name, stop=stop, grace_s=args.grace,
                                  ready=lambda w: print(f"medic worker {w.name!r} ready in pool "
                                                        f"{settings.work_pool!r}", flush=True))

    return asyncio.run(main())


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="create or update the work pool and every deployment in it (idempotent)")
    p.add_argument("--no-schedules", action="store_true",
                   help="deployments without their schedules (tests, benches: nothing starts by itself)")
    p.set_defaults(handler=cmd_deploy)
    p = sub.add_parser("worker", help="execute the work pool's runs until SIGTERM/SIGINT")
    p.add_argument("--name", help="this worker's name in the pool (default: MEDIC_WORKER_NAME or medic-<host>-<pid>)")
    p.add_argument("--grace", type=float, default=60.0,
                   help="on SIGTERM, seconds to let running runs finish before exiting (default 60)")
    p.set_defaults(handler=cmd_worker)
