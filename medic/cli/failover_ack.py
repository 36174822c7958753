"""`medic failover-ack CLUSTER --reason …`: a human releases a cluster an interrupted failover left held.

A failover that died half-way (medic serve killed, a crash) leaves its cluster held
(medic.orchestration.cluster_hold): every failover and rejoin of it is refused until someone has
checked the cluster by hand and says so here. The acknowledgement is audited (a `decision` record
naming who, the run, its last step and the reason) before the hold is removed; without Prefect it
fails and nothing is released.
"""

from __future__ import annotations

import argparse
import asyncio

from medic.settings import get_settings

__all__ = ["add_commands"]


def cmd_failover_ack(args: argparse.Namespace) -> int:
    from medic.cli.run import use_prefect_api

    settings = get_settings()
    use_prefect_api(settings)
    from medic.orchestration.cluster_hold import acknowledge
    from medic.orchestration.locks import remediation_lock_name

    held = asyncio.run(acknowledge(remediation_lock_name(args.runbook, args.cluster), reason=args.reason))
    if held is None:
        print(f"{args.cluster}: not held (no interrupted {args.runbook} run); nothing to acknowledge")
        return 0
    print(f"{args.cluster}: released — run {held.flow_run_id} had stopped at its '{held.step}' step "
          f"({held.since:%Y-%m-%d %H:%M:%S} UTC); acknowledged and audited")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("failover-ack", help="release a cluster an interrupted failover left held (audited)")
    p.add_argument("cluster", help="the cluster's name (the failover runbook's report names it)")
    p.add_argument("--reason", required=True, help="what you checked and found (kept in the audit log)")
    p.add_argument("--runbook", default="postgres-failover", help="the failover runbook (default postgres-failover)")
    p.set_defaults(handler=cmd_failover_ack)
