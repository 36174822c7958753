"""`medic slo rules`: the Prometheus recording and burn-rate alert rules for slos/*.yaml.

    medic slo rules                       # print them (YAML, a Prometheus rule file)
    medic slo rules --out rules/slo.yml   # write them; load the file from prometheus.yml's rule_files
    medic slo list                        # each SLO: objective, window, budget, alert pairs

The specs are validated first (errors name file, line and field, exit 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medic.core.paths import SLOS_DIR

__all__ = ["add_commands"]


def cmd_rules(args: argparse.Namespace) -> int:
    from medic.core.slo import load_slos
    from medic.procedures.slo_rules import rules_yaml

    text = rules_yaml(list(load_slos(args.dir).values()), interval=args.interval)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out} ({text.count('- record:')} recording rules, {text.count('- alert:')} alerts)")
    else:
        print(text, end="")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from medic.core.slo import load_slos
    from medic.procedures.slo_rules import prom_duration

    for slo in load_slos(args.dir).values():
        pairs = ", ".join(f"{a.severity} {a.burn:g}× {prom_duration(a.long)}/{prom_duration(a.short)}" for a in slo.alerts)
        deps = f"; depends on {', '.join(slo.depends_on)}" if slo.depends_on else ""
        print(f"{slo.name} ({slo.service}): {slo.objective:g} % over {prom_duration(slo.window)}, budget "
              f"{slo.budget:.3%} of events; alerts: {pairs}{deps}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slo", help="service level objectives: Prometheus rules from slos/*.yaml")
    slo_sub = p.add_subparsers(dest="slo_command", required=True, metavar="SUBCOMMAND")
    r = slo_sub.add_parser("rules", help="print (or --out) the recording and burn-rate alert rules")
    r.add_argument("--out", type=Path, help="write the rule file here instead of printing it")
    r.add_argument("--interval", default="30s", help="rule group evaluation interval (default 30s)")
    r.add_argument("--dir", type=Path, default=SLOS_DIR, help="where the SLO specs are (default slos/)")
    r.set_defaults(handler=cmd_rules)
    ls = slo_sub.add_parser("list", help="each SLO with its objective, budget and alert windows")
    ls.add_argument("--dir", type=Path, default=SLOS_DIR, help="where the SLO specs are (default slos/)")
    ls.set_defaults(handler=cmd_list)
