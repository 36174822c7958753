"""`medic detect RUNBOOK --target HOST`: what the runbook's anomaly detector sees now, as a chart.

For a runbook that detects by anomaly (`detect: {anomaly: …}`): the query over its lookback, scored
row by row, drawn in the terminal (series above, score below, `!` where the score reaches the
threshold) with the detector's reason; `--png FILE` writes the same picture as a PNG. For a runbook
with a fixed condition it says so and shows the current values instead. Exit 0 either way: finding
an anomaly is an answer, not a failure (the runbook's own run decides what to do about it).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from medic.core.inventory import load_inventory
from medic.core.runbook import find_runbook
from medic.errors import InputError
from medic.settings import get_settings

__all__ = ["add_commands"]


def cmd_detect(args: argparse.Namespace) -> int:
    # Imported here: numpy and the detectors cost ~0.2 s that every other `medic` command would pay.
    from medic.clients.prometheus import PrometheusClient
    from medic.detect.chart import png_chart, terminal_chart
    from medic.procedures.anomaly import score_hosts

    settings = get_settings()
    runbook = find_runbook(args.runbook, settings.runbooks_dir)
    anomaly = runbook.detect.anomaly
    if anomaly is None:
        raise InputError(f"runbook {runbook.name} detects with a fixed condition ({runbook.detect.query} "
                         f"{runbook.detect.condition}), not an anomaly detector; `medic run {runbook.name} "
                         f"--dry-run` shows what it would do")
    target = args.target or runbook.targets.within or runbook.targets.default
    if not target:
        raise InputError(f"runbook {runbook.name} names no default target: give --target HOST")
    hosts = load_inventory().resolve(target)
    if runbook.targets.within:
        allowed = {h.name for h in load_inventory().resolve(runbook.targets.within)}
        outside = [h.name for h in hosts if h.name not in allowed]
        if outside:
            raise InputError(f"{', '.join(outside)} is not in group {runbook.targets.within}, where runbook "
                             f"{runbook.name} may act")
    if args.lookback:
        anomaly = anomaly.model_copy(update={"lookback": args.lookback})
    width = max(40, min(120, shutil.get_terminal_size((100, 20)).columns - 16))
    with PrometheusClient(settings.prometheus_url) as prom:
        scores = score_hosts(anomaly, hosts, prom)
    for found in scores:
        verdict = "ANOMALY" if found.score >= anomaly.threshold else "normal"
        title = (f"{runbook.name} on {found.host}: {verdict} (score {found.score:.2f}, threshold "
                 f"{anomaly.threshold:g}, {anomaly.detector} over {anomaly.lookback:g} s)")
        print(terminal_chart(found.times, found.values, found.scores, threshold=anomaly.threshold, title=title,
                             width=width))
        print(f"  why: {found.reason}\n")
        if args.png:
            path = args.png if len(scores) == 1 else args.png.with_name(f"{args.png.stem}-{found.host}{args.png.suffix}")
            path.write_bytes(png_chart(found.times, found.values, found.scores, threshold=anomaly.threshold,
                                       title=title, reason=found.reason))
            print(f"  chart: {path}\n")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="show what a runbook's anomaly detector sees now (a chart + the reason)")
    p.add_argument("runbook", help="a runbook whose detect is an anomaly detector (e.g. memory-leak)")
    p.add_argument("--target", help="inventory host or group (default: the runbook's)")
    p.add_argument("--lookback", type=float, help="seconds of history to score (default: the runbook's)")
    p.add_argument("--png", type=Path, help="also write the chart as a PNG to this file")
    p.set_defaults(handler=cmd_detect)
