"""The `medic` command.

Errors medic raises on purpose (MedicError) are printed as one line on stderr with exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from medic.errors import MedicError
from medic.core.paths import DEFAULT_WEBHOOK_URL  # not from medic_lab.control: ~0.2 s of imports per `medic run`

Handler = Callable[[argparse.Namespace], int]


def _lab_dir():
    from medic.settings import get_settings

    return get_settings().lab_dir


def _say(msg: str) -> None:
    print(msg, flush=True)


def cmd_lab_up(args: argparse.Namespace) -> int:
    from medic_lab import control
    from medic.settings import get_settings

    settings = get_settings()
    lab = control.up(
        settings.lab_dir,
        hosts=args.hosts,
        base_port=settings.lab_base_port,
        webhook_url=args.webhook_url,
        with_prefect=not args.no_prefect,
        options={name: True for name in args.components},
        progress=lambda m: _say(f"lab: {m}"),
    )
    _say(f"lab: up in {lab.lab_dir} — Prometheus {lab.prometheus_url}, Alertmanager {lab.alertmanager_url}, "
         + (f"Prefect {lab.prefect_api_url.removesuffix('/api')}, " if lab.with_prefect else "")
         + f"inventory {lab.inventory}")
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    from medic_lab import control

    stopped = control.down(_lab_dir())
    _say(f"lab: down, stopped {stopped} processes")
    return 0


def cmd_lab_status(args: argparse.Namespace) -> int:
    from medic_lab import control

    rows = control.status(_lab_dir())
    width = max(len(r.name) for r in rows)
    for r in rows:
        _say(f"{r.name:<{width}}  {'up  ' if r.up else 'DOWN'}  {r.address}  {r.detail}".rstrip())
    return 0 if all(r.up for r in rows) else 1


def cmd_lab_break(args: argparse.Namespace) -> int:
    from medic_lab import control, faults

    _say(faults.break_host(control.require_lab(_lab_dir()), args.fault, args.host))
    return 0


def cmd_lab_fix(args: argparse.Namespace) -> int:
    from medic_lab import control, faults

    _say(faults.fix_host(control.require_lab(_lab_dir()), args.fault, args.host))
    return 0


def cmd_lab_webhook(args: argparse.Namespace) -> int:
    from medic_lab import control

    control.set_webhook(control.require_lab(_lab_dir()), args.url)
    _say(f"lab: Alertmanager now posts to {args.url}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from medic.service.daemon import serve

    return serve(host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medic", description="Runbook automation for operations teams, on Prefect.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lab = sub.add_parser("lab", help="the local ops lab of real components").add_subparsers(
        dest="lab_command", required=True, metavar="ACTION")
    p = lab.add_parser("up", help="start Prometheus, Alertmanager, Prefect and N SSH hosts on 127.0.0.1")
    p.add_argument("--hosts", type=int, default=3, help="number of web hosts, 1-50 (default 3)")
    p.add_argument("--webhook-url", default=DEFAULT_WEBHOOK_URL, help="where Alertmanager posts alerts")
    p.add_argument("--no-prefect", action="store_true", help="do not start a Prefect server")
    p.add_argument("--with", dest="components", action="append", default=[], metavar="COMPONENT",
                   help="also start an optional component (e.g. db: PostgreSQL primary + replica)")
    p.set_defaults(handler=cmd_lab_up)
    lab.add_parser("down", help="stop every lab process").set_defaults(handler=cmd_lab_down)
    lab.add_parser("status", help="each component, its address and whether it is up").set_defaults(
        handler=cmd_lab_status)
    for name, handler, verb in (("break", cmd_lab_break, "inject"), ("fix", cmd_lab_fix, "undo")):
        p = lab.add_parser(name, help=f"{verb} a fault on a host (service-down, disk-full, slow, host-down)")
        p.add_argument("fault")
        p.add_argument("host")
        p.set_defaults(handler=handler)
    p = lab.add_parser("webhook", help="point Alertmanager at another webhook URL")
    p.add_argument("url")
    p.set_defaults(handler=cmd_lab_webhook)

    from medic.cli.run import add_commands

    add_commands(sub)
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
        return 2
    except KeyboardInterrupt:
        print("medic: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
