"""The demo's last step: the operations report over the incidents it just caused.

Runs the `ops-report` flow (its markdown artifact, with the charts, is in the Prefect UI), prints each
runbook's time to detect / acknowledge / recover and each SLO's figures, and writes the charts as PNG
files under `<lab dir>/report/` (the README's chart came from there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from medic.core.report import artifact_key

__all__ = ["report_after_demo"]


def report_after_demo(lab_dir: Path, since_s: float, say: Callable[[str], None]) -> Path:
    """The report over the last `since_s` seconds; returns the directory its charts were written to."""
    from flows.report import ops_report
    from medic.procedures.report_assembly import assemble
    from medic.orchestration.run_history import read_runs

    period = f"{int(since_s) + 60}s"
    report = asyncio.run(ops_report(since=period))  # the artifact `ops-report` in the Prefect UI
    until = datetime.now(UTC)
    start = until - timedelta(seconds=int(since_s) + 60)
    _, charts = assemble(asyncio.run(read_runs(start)), start, until, since_s + 60)
    out = lab_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for title, png in charts:
        (out / f"{artifact_key(title)}.png").write_bytes(png)

    def p50(d: object) -> str:
        return "—" if d is None else f"{d.p50:.1f} s"  # type: ignore[attr-defined]

    say("\n━━ operations report (Prefect artifact `ops-report`) ━━")
    say(f"{'runbook':<16} {'incidents':>9} {'detect':>9} {'acknowledge':>12} {'recover':>9}   (p50, from impact)")
    for r in report.runbooks:
        say(f"{r.runbook:<16} {r.incidents:>9} {p50(r.ttd):>9} {p50(r.tta):>12} {p50(r.ttr):>9}")
    for s in report.slos:
        avail = "—" if s.availability is None else f"{s.availability * 100:.3f} %"
        left = "—" if s.budget_left is None else f"{s.budget_left * 100:.1f} %"
        say(f"SLO {s.slo}: availability {avail} over the demo, error budget left {left} of {s.objective:g} %")
    say(f"charts: {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}")
    return out
