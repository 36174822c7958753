"""`medic report --since 7d`: incidents, stage percentiles, approvals and SLO budgets, from any machine.

Reads medic's runs from Prefect and the SLOs' figures from Prometheus, prints the report as markdown;
`--charts DIR` also writes its PNG charts there. The scheduled deployment `ops-report` makes the same
report as a Prefect artifact and posts the short version to Slack.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_commands"]


def cmd_report(args: argparse.Namespace) -> int:
    # Imported here: httpx, numpy and matplotlib are needed by this command only (Prefect is not imported).
    import asyncio
    import threading
    from datetime import UTC, datetime, timedelta

    from medic.cli.run import use_prefect_api
    from medic.settings import get_settings

    use_prefect_api(get_settings())  # the lab's (or MEDIC_PREFECT_API_URL's) Prefect, before Prefect is imported
    from medic.core.report import artifact_key
    from medic.core.runbook import parse_duration
    from medic.errors import InputError
    from medic.orchestration.run_history import read_runs
    from medic.procedures import report_charts
    from medic.procedures.ops_report import render_markdown
    from medic.procedures.report_assembly import assemble

    try:
        period = parse_duration(args.since)
    except ValueError:
        raise InputError(f"--since {args.since!r} is not a duration: use e.g. 24h, 7d, 30d") from None
    until = datetime.now(UTC)
    start = until - timedelta(seconds=period)
    # Charts only when asked for: drawing them (matplotlib) is half the time of a report over a week;
    # then matplotlib is imported in a thread while the runs are read (that is waiting on Prefect).
    drawing = threading.Thread(target=report_charts.prepare, daemon=True) if args.charts else None
    if drawing:
        drawing.start()
    runs = asyncio.run(read_runs(start))
    if drawing:
        drawing.join()
    report, charts = assemble(runs, start, until, period, charts=args.charts is not None)
    print(render_markdown(report), end="")
    if args.charts:
        args.charts.mkdir(parents=True, exist_ok=True)
        for title, png in charts:
            path = args.charts / f"{artifact_key(title)}.png"
            path.write_bytes(png)
            print(f"chart: {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="operations report: incidents, stage percentiles, approvals, SLO budgets")
    p.add_argument("--since", default="7d", help="the period, ending now (default 7d)")
    p.add_argument("--charts", type=Path, help="also write the report's PNG charts into this directory")
    p.set_defaults(handler=cmd_report)
