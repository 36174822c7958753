"""The soak's printed report: the ledger as a markdown table, availability, orphans, duplicates, medic
serve's memory and descriptors, and the issue's numbers with ✔/✘ (a bench prints; it asserts nothing)."""

from __future__ import annotations

import time
from collections import Counter

from soak_watch import FINAL, growth

WARMUP_S = 300.0  # the "after the first 5 minutes"


def _clock(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "—"


def _s(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "—"


def print_report(faults, runs, orphans, probes, sampler, approver, load, args, *, began: float, finished: float,
                 serve_alive: bool, errors: list[str]) -> None:
    print(f"\n## Soak: {args.hosts} hosts, {args.minutes:g} min of faults (seed {args.seed}), "
          f"{(finished - began) / 60:.1f} min in all\n")
    print("| # | injected | fault | host | alert fired (+s) | run(s) → ending | audit actions | outcome | recovered (+s, probes) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f in faults:
        alert = f"{f.alert} +{f.alert_at - f.injected_at:.1f}" if f.alert_at else ("—" if f.kind == "target" else "n/a")
        ran = ", ".join(f"{r['id'][:8]} {r['name']}" for r in f.runs) or ("**none**" if f.kind == "target" else "n/a")
        print(f"| {f.id} | {_clock(f.injected_at)} | {f.fault} | {f.host or '(lab)'} | {alert} | {ran} | "
              f"{f.actions if f.kind == 'target' else 'n/a'} | {f.outcome} | {_s(f.ttr_s)} |")

    targets = [f for f in faults if f.kind == "target"]
    deps = [f for f in faults if f.kind == "dependency"]
    if deps:
        print("\nWhat medic had to catch up on: the target faults open while each lab-wide dependency fault lasted")
        for d in (d for d in deps if d.host is None):  # a host's sshd-hang/playbook-hang: no other fault there
            end = d.fixed_by_soak_at or finished
            during = [f for f in targets if f.injected_at < end
                      and (f.recovered_at or f.fixed_by_soak_at or finished) > d.injected_at]
            print(f"  #{d.id} {d.fault} ({end - d.injected_at:.0f} s): "
                  + (", ".join(f"#{f.id} {f.fault} {f.host} → {f.outcome}" for f in during) or "none"))
    ttr = sorted(f.ttr_s for f in targets if f.outcome == "recovered" and f.ttr_s is not None)
    print(f"\ntarget faults: {len(targets)}, recovered by medic {len(ttr)}"
          + (f" — time to recovery p50 {ttr[len(ttr) // 2]:.1f} s, max {ttr[-1]:.1f} s" if ttr else ""))
    by_kind = Counter((f.fault, f.outcome) for f in targets)
    for (fault, outcome), n in sorted(by_kind.items()):
        print(f"  {fault:<13} {outcome}: {n}")
    print(f"dependency faults: {len(deps)} ({', '.join(f'{k} ×{n}' for k, n in Counter(f.fault for f in deps).items()) or 'none'})")
    print(f"approvals answered: {len(approver.decisions)} "
          f"({dict(Counter(f'{d.decision} exit {d.exit_code}' for d in approver.decisions))})")
    if approver.errors:
        print(f"approver: {len(approver.errors)} poll(s) failed (last: {approver.errors[-1][:120]})")
    for d in approver.decisions:
        if d.exit_code:
            print(f"  {d.decision} {d.run_id[:8]} ({d.runbook} {d.target}) exit {d.exit_code}: {d.said}")
    if errors:
        print(f"injector errors: {len(errors)}")
        for e in errors[:10]:
            print(f"  {e}")

    print("\n### Availability per service (probes: GET / every second, straight to the host)\n")
    print("| service | answered | answered < 0.3 s |")
    print("|---|---|---|")
    for name in sorted(probes.hosts, key=lambda n: int(n.split("-")[-1])):
        up, fast = probes.availability(name, began, finished)
        print(f"| {name} | {100 * up:.2f} % | {100 * fast:.2f} % |")
    if load:
        print(f"| HAProxy frontend (loadgen, {load['sent']} requests) | "
              f"{100 * load['ok'] / max(load['sent'], 1):.2f} % | — |")

    print(f"\nruns with no fault behind them: {len(orphans)}")
    for r in orphans[:15]:
        print(f"  {r['id'][:8]} {r['runbook']} on {r['target']} → {r['name']} {r['message'][:100]}")
    no_run = [f for f in targets if not f.runs]
    print(f"faults with no run: {len(no_run)}" + (f" ({', '.join(f'#{f.id} {f.fault} {f.host}' for f in no_run)})" if no_run else ""))
    dups = [f for f in targets if f.actions > 1]
    print(f"duplicate actions (more than one audit `action` per fault): {len(dups)}"
          + (f" ({', '.join(f'#{f.id} ×{f.actions}' for f in dups)})" if dups else ""))
    unaudited = [f for f in targets if f.outcome == "recovered" and f.actions == 0]
    print(f"faults medic repaired with no audit `action` record: {len(unaudited)}"
          + (f" ({', '.join(f'#{f.id} {f.fault} {f.host}' for f in unaudited)})" if unaudited else ""))
    many = [f for f in targets if len(f.runs) > 1]
    if many:
        print(f"faults with more than one run: {', '.join(f'#{f.id} ×{len(f.runs)}' for f in many)}")
    live = [r for r in runs if r["state"] not in FINAL]
    print(f"runs left non-final: {len(live)}" + (f" ({', '.join(r['id'][:8] + ' ' + r['name'] for r in live)})" if live else ""))
    print(f"run endings: {dict(Counter(r['name'] for r in runs))}")
    for r in runs:
        if r["state"] != "COMPLETED" and r["state"] in FINAL:
            print(f"  {r['id'][:8]} {r['runbook']} on {r['target']} → {r['name']}: {r['message'][:150]}")

    samples = sampler.samples
    warmup = min(WARMUP_S, (finished - began) / 3)
    rss = growth([(t, r) for t, r, _ in samples], began + warmup)
    fds = growth([(t, d) for t, _, d in samples], began + warmup)
    print(f"\n### medic serve (pid {sampler.pid}{'' if serve_alive else ', EXITED before the end'}): "
          f"{len(samples)} samples every {sampler.interval:g} s\n")
    if samples:
        step = max(1, len(samples) // 12)
        print("| at | RSS MB | open fds |")
        print("|---|---|---|")
        for t, r, d in samples[::step]:
            print(f"| +{max(0.0, (t - began) / 60):.1f} min | {r / 1024:.1f} | {d} |")
    note = "" if warmup == WARMUP_S else f" (run too short: after the first {warmup / 60:.1f} min instead of 5)"
    if rss:
        print(f"RSS fitted line after warm-up{note}: {rss[0] / 1024:.1f} → {rss[1] / 1024:.1f} MB ({rss[2]:+.1f} %)")
    if fds:
        print(f"open fds fitted line after warm-up: {fds[0]:.1f} → {fds[1]:.1f} ({fds[2]:+.1f} %)")

    print("\n### The issue's numbers\n")
    unrecovered = [f for f in targets if f.outcome.startswith("UNRECOVERED")]
    checks = [
        (not unrecovered, f"0 faults left unrecovered unless a human rejected — {len(unrecovered)} unrecovered"
         + (f" ({', '.join(f'#{f.id} {f.fault} {f.host}' for f in unrecovered)})" if unrecovered else "")),
        (not dups, f"0 duplicate actions — {len(dups)}"),
        (not live, f"0 runs stuck non-final — {len(live)}"),
        (rss is not None and rss[2] < 10, f"medic RSS growth < 10 % after the first {warmup / 60:.0f} min — "
         + (f"{rss[2]:+.1f} %" if rss else "not enough samples")),
    ]
    for ok, text in checks:
        print(f"{'✔' if ok else '✘'} {text}")
