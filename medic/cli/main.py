"""The `medic` command.

Errors medic raises on purpose (MedicError) are printed as one line on stderr and exit with the code
their class carries (`medic.errors.ExitCode`: 2 bad input, 5 a dependency unreachable, 1 anything
else); anything else is a bug and keeps its traceback. argparse's own usage errors exit 2 as well.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from medic.cli.deploy_worker import add_commands as add_deploy_worker_commands
from medic.cli.detect import add_commands as add_detect_commands
from medic.cli.failover_ack import add_commands as add_failover_ack_commands
from medic.cli.report import add_commands as add_report_commands
from medic.cli.run import add_commands as add_run_commands
from medic.cli.slo import add_commands as add_slo_commands
from medic.errors import MedicError

Handler = Callable[[argparse.Namespace], int]


def cmd_serve(args: argparse.Namespace) -> int:
    from medic.service.daemon import serve  # 40 ms (httpx, for the embedded Prefect): `medic serve` only

    return serve(host=args.host, port=args.port)


#: Packages add subcommands through this entry-point group: `name = "module:add_commands"`, where
#: add_commands(subparsers) adds its parsers (e.g. `medic lab` from medic_lab). medic imports none by name.
COMMANDS_GROUP = "medic.commands"


def add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Every installed provider of `medic.commands`; one that fails to load is named, not fatal."""
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not take `medic run` down with it
            print(f"medic: warning: the {ep.name!r} commands ({ep.value}) failed to load: {exc}; "
                  f"reinstall medic (`make setup`)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medic", description="Runbook automation for operations teams, on Prefect.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_run_commands(sub)
    add_detect_commands(sub)
    add_slo_commands(sub)
    add_report_commands(sub)
    add_deploy_worker_commands(sub)
    add_failover_ack_commands(sub)
    add_plugin_commands(sub)
    p = sub.add_parser("serve", help="run medic as a service: alerts, Slack, deployments, metrics")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8787)")
    p.set_defaults(handler=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except MedicError as exc:
        print(f"medic: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("medic: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
