"""`medic lab ...`: the lab's commands, plugged into `medic` through the entry-point group
``medic.commands`` (pyproject.toml: ``lab = "medic_lab.cli:add_commands"``). medic never imports the lab.

Building the parser imports almost nothing: the handlers import the lab itself (`control`, `faults`:
~100 ms of imports — httpx, cryptography, yaml — measured with `python -X importtime`), so `medic run`
and friends do not pay for a lab they do not use.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from medic.core.paths import DEFAULT_WEBHOOK_URL
from medic.settings import get_settings


def _say(msg: str) -> None:
    print(msg, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    from medic_lab import control  # ~100 ms, see module docstring

    settings = get_settings()
    lab = control.up(settings.lab_dir, hosts=args.hosts, base_port=settings.lab_base_port,
                     webhook_url=args.webhook_url, with_prefect=not args.no_prefect,
                     options={name: True for name in args.components}, progress=lambda m: _say(f"lab: {m}"))
    _say(f"lab: up in {lab.lab_dir} — Prometheus {lab.prometheus_url}, Alertmanager {lab.alertmanager_url}, "
         + (f"Prefect {lab.prefect_api_url.removesuffix('/api')}, " if lab.with_prefect else "")
         + f"inventory {lab.inventory}")
    if lab.options.get("cluster"):
        _say(f"lab: cluster — intake {lab.webhook_url}, workers: `medic lab status`; its Prefect asks for the auth "
             f"string: set -a; . {lab.lab_dir}/cluster/secrets.env; set +a")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from medic_lab import control  # ~100 ms, see module docstring

    stopped = control.down(get_settings().lab_dir)
    _say(f"lab: down, stopped {stopped} processes")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from medic_lab import control  # ~100 ms, see module docstring

    rows = control.status(get_settings().lab_dir)
    width = max(len(r.name) for r in rows)
    for r in rows:
        _say(f"{r.name:<{width}}  {'up  ' if r.up else 'DOWN'}  {r.address}  {r.detail}".rstrip())
    return 0 if all(r.up for r in rows) else 1


def cmd_break(args: argparse.Namespace) -> int:
    from medic_lab import control, faults  # ~100 ms, see module docstring

    _say(faults.break_host(control.require_lab(get_settings().lab_dir), args.fault, args.host))
    return 0


def cmd_fix(args: argparse.Namespace) -> int:
    from medic_lab import control, faults  # ~100 ms, see module docstring

    _say(faults.fix_host(control.require_lab(get_settings().lab_dir), args.fault, args.host))
    return 0


def cmd_faults(args: argparse.Namespace) -> int:
    """The injector's own record of every break and fix (medic_lab/fault_record.py)."""
    from medic_lab import control
    from medic_lab.fault_record import read_record, render_record

    events = read_record(control.require_lab(get_settings().lab_dir))
    _say(render_record(events[-args.last:] if args.last else events))
    return 0


def cmd_webhook(args: argparse.Namespace) -> int:
    from medic_lab import control  # ~100 ms, see module docstring

    control.set_webhook(control.require_lab(get_settings().lab_dir), args.url)
    _say(f"lab: Alertmanager now posts to {args.url}")
    return 0


def fault_list() -> str:
    """Every fault, one line each, grouped by what must run for it (the help text of break/fix)."""
    from medic_lab import faults  # ~100 ms, see module docstring
    from medic_lab.components import registered

    from medic_lab import dependency_faults

    groups = [("faults of web hosts", faults.FAULTS),
              ("faults of medic's dependencies on a host", dependency_faults.HOST_FAULTS),
              ("faults of medic's dependencies in the whole lab (no HOST)", dependency_faults.LAB_FAULTS)]
    groups += [(f"faults of {c.name} (`medic lab up --with {c.name}`)", c.faults()) for c in registered() if c.faults()]
    width = max(len(f.name) for _, group in groups for f in group)
    lines = []
    for title, group in groups:
        lines += [f"{title}:", *(f"  {f.name:<{width}}  {f.summary}" for f in group), ""]
    return "\n".join(lines).rstrip()


class LazyEpilogParser(argparse.ArgumentParser):
    """Computes its epilog when help is printed, not when the parser is built (see module docstring)."""

    epilog_factory: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.epilog_factory is not None:
            self.epilog = self.epilog_factory()
        return super().format_help()


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `medic lab` and its actions to the `medic` command's subcommands."""
    lab = sub.add_parser("lab", help="the local ops lab of real components").add_subparsers(
        dest="lab_command", required=True, metavar="ACTION", parser_class=LazyEpilogParser)
    p = lab.add_parser("up", help="start Prometheus, Alertmanager, Prefect and N SSH hosts on 127.0.0.1")
    p.add_argument("--hosts", type=int, default=3, help="number of web hosts, 1-50 (default 3)")
    p.add_argument("--webhook-url", default=DEFAULT_WEBHOOK_URL, help="where Alertmanager posts alerts")
    p.add_argument("--no-prefect", action="store_true", help="do not start a Prefect server")
    p.add_argument("--with", dest="components", action="append", default=[], metavar="COMPONENT",
                   help="also start an optional component (e.g. db: PostgreSQL primary + replica; "
                        "db3: primary + 2 standbys; db-sync: synchronous replication; "
                        "cluster: Prefect on PostgreSQL with auth, 2 workers, intake-only medic serve)")
    p.set_defaults(handler=cmd_up)
    lab.add_parser("down", help="stop every lab process (and a medic serve the demo left running)").set_defaults(
        handler=cmd_down)
    lab.add_parser("status", help="each component, its address and whether it is up").set_defaults(
        handler=cmd_status)
    for name, handler, verb in (("break", cmd_break, "inject"), ("fix", cmd_fix, "undo")):
        p = lab.add_parser(name, help=f"{verb} a fault (`medic lab {name} --help` lists them)",
                           description=f"{verb.capitalize()} a fault on one lab host, or of the whole lab.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.epilog_factory = fault_list
        p.add_argument("fault", metavar="FAULT", help="one of the faults listed below")
        p.add_argument("host", metavar="HOST", nargs="?",
                       help="a lab host, e.g. web-1 (or pg-1 for a database fault); none for a whole-lab fault")
        p.set_defaults(handler=handler)
    p = lab.add_parser("faults", help="the fault injector's record: every break and fix, when it took effect")
    p.add_argument("--last", type=int, default=0, metavar="N", help="only the last N events")
    p.set_defaults(handler=cmd_faults)
    p = lab.add_parser("webhook", help="point Alertmanager at another webhook URL")
    p.add_argument("url")
    p.set_defaults(handler=cmd_webhook)
