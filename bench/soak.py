#!/usr/bin/env python3
"""The soak (issue 12, part 4): N minutes of random target *and* dependency faults on a ~20-host lab
under traffic, with a real `medic serve` handling every alert alone and a scripted approver.

Starts its own lab (``--hosts`` web hosts, base port ``--base-port``, /tmp/medic-lab-soak), the traffic
generator through HAProxy (lab/loadgen.py) for the whole run, `medic serve` (the lab's Alertmanager
posts to it), probes of every host's service, a sampler of medic serve's RSS and descriptors, and an
approver that answers every paused run with `medic approve` (``--reject-share`` of them rejected).

On a seeded schedule it injects with `medic_lab.faults.break_host` (so every break and fix is in the
lab's own record, ``faults.jsonl``):
- target faults (service-down, disk-full, slow) that medic must repair: a fault is *recovered* when the
  probes see the symptom gone (service answers, fast, data dir under 90 %), never from medic's belief;
- dependency faults (prometheus-down, alertmanager-down, prefect-restart, prefect-down; sshd-hang,
  playbook-hang on a host), fixed by the soak after ``--dep-hold`` s; medic must then catch up.
A host carries at most one fault at a time. After the schedule, a drain (``--drain`` s) lets medic
finish; whatever is still broken is fixed by the soak and counted as unrecovered.

Prints the ledger (every fault: when, its alert, its run(s), outcome, time to recovery), availability
per service, runs with no fault behind them, faults with no run, duplicate actions (audit log), runs
left non-final, medic serve's RSS/FDs with the slope after the first 5 minutes, and ✔/✘ against the
issue's numbers. Writes the ledger as JSON (``--ledger``). Asserts nothing; always stops what it started.

    nice -n 10 .venv/bin/python bench/soak.py --minutes 30 [--hosts 20] [--seed 1] [--base-port 14000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from soak_ledger import TARGET, Fault, attribute  # noqa: E402
from soak_report import print_report  # noqa: E402
from medic.settings import Settings  # noqa: E402
from soak_watch import FINAL, Approver, Probes, ServeSampler, actions_since, alerts_fired, runs_since  # noqa: E402

LAB_DIR = Path("/tmp/medic-lab-soak")
#: medic serve's default alert sweep (tests.support.server turns it off for tests; the soak runs medic as shipped).
SWEEP_S = str(Settings.model_fields["alert_sweep_s"].default)
STATE_DIR = Path("/tmp/medic-soak")  # medic serve's state and log, kept after the run
SERVE_PORT_OFFSET = 690  # inside the lab's port span, used by nothing of the lab
LAB_DEPS = ("prometheus-down", "alertmanager-down", "prefect-restart", "prefect-down")
HOST_DEPS = ("sshd-hang", "playbook-hang")
COOLDOWN_S = 20.0  # a host recovered this long ago may get its next fault (its run has ended by then)


class Stop(Exception):
    """SIGTERM: unwind like Ctrl-C, so that everything started is stopped."""


def _on_sigterm(*_: object) -> None:
    raise Stop()


def schedule(rng: random.Random, seconds: float, every: float, dep_every: float) -> list[tuple[float, str]]:
    """(offset s, 'target' | 'dependency') — target faults every ~`every` s, dependency faults every ~`dep_every`."""
    events = []
    t = rng.uniform(5, every)
    while t < seconds:
        events.append((t, "target"))
        t += rng.uniform(0.5 * every, 1.5 * every)
    t = rng.uniform(0.5 * dep_every, dep_every)
    while t < seconds:
        events.append((t, "dependency"))
        t += rng.uniform(0.75 * dep_every, 1.25 * dep_every)
    return sorted(events)


class Soak:
    """The injector: breaks on schedule, notices recoveries from the probes, fixes dependency faults."""

    def __init__(self, lab, probes: Probes, approver: Approver, args: argparse.Namespace) -> None:
        self.lab, self.probes, self.approver, self.args = lab, probes, approver, args
        self.rng = random.Random(args.seed)
        self.faults: list[Fault] = []
        self.busy_until: dict[str, float] = {}  # host → free again after this time (inf: open fault)
        self.errors: list[str] = []

    def say(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} soak: {msg}", flush=True)

    def inject(self, kind: str) -> None:
        from medic_lab import faults

        now = time.time()
        free = sorted(h for h in self.probes.hosts if self.busy_until.get(h, 0) <= now)
        open_lab = any(f.kind == "dependency" and f.host is None and f.outcome == "open" for f in self.faults)
        if kind == "target":
            name, host = self.rng.choice(sorted(TARGET)), (self.rng.choice(free) if free else None)
        elif self.rng.random() < 0.6 and not open_lab:
            name, host = self.rng.choice(LAB_DEPS), None
        else:
            name, host = self.rng.choice(HOST_DEPS), (self.rng.choice(free) if free else None)
        if host is None and name not in LAB_DEPS:
            self.say(f"no free host for {name}: skipped")
            return
        try:
            said = faults.break_host(self.lab, name, host)
        except Exception as exc:  # noqa: BLE001 — an injection that failed is reported, the soak goes on
            self.errors.append(f"break {name} {host or ''}: {exc}")
            self.say(f"break {name} {host or ''} FAILED: {exc}")
            return
        fault = Fault(len(self.faults) + 1, "target" if name in TARGET else "dependency", name, host, now, said,
                      alert=TARGET.get(name, ("", ""))[0])
        self.faults.append(fault)
        if host:
            self.busy_until[host] = float("inf")
        self.say(f"#{fault.id} break {name} {host or '(lab)'}: {said}")

    def fix(self, fault: Fault, outcome: str) -> None:
        from medic_lab import faults

        try:
            said = faults.fix_host(self.lab, fault.fault, fault.host)
        except Exception as exc:  # noqa: BLE001
            said = f"FIX FAILED: {exc}"
            self.errors.append(f"fix {fault.fault} {fault.host or ''}: {exc}")
        fault.fixed_by_soak_at, fault.outcome = time.time(), outcome
        if fault.host:
            self.busy_until[fault.host] = time.time() + COOLDOWN_S
        self.say(f"#{fault.id} fix {fault.fault} {fault.host or '(lab)'} ({outcome}): {said}")

    def check(self, *, final: bool = False) -> None:
        """Recoveries seen by the probes; rejected repairs and due dependency faults fixed by the soak."""
        now = time.time()
        rejected = {(d.runbook, d.target): d.at for d in self.approver.decisions if d.decision == "reject"}
        for f in self.faults:
            if f.outcome != "open":
                continue
            if f.kind == "dependency":
                if final or now - f.injected_at >= self.args.dep_hold:
                    self.fix(f, "fixed by the soak")
                    f.recovered_at = f.fixed_by_soak_at
                continue
            seen = self.probes.healthy_since(f.host, f.fault, f.injected_at)
            if seen is not None:
                f.recovered_at, f.outcome = seen, "recovered"
                self.busy_until[f.host] = now + COOLDOWN_S
                self.say(f"#{f.id} {f.fault} {f.host} recovered after {seen - f.injected_at:.1f} s (probes)")
            elif rejected.get((TARGET[f.fault][1], f.host), 0) > f.injected_at:
                self.fix(f, "rejected by a human; fixed by the soak")
            elif final:
                self.fix(f, "UNRECOVERED; fixed by the soak at the end")

    def run(self) -> float:
        """The schedule, then the drain; returns when the schedule ended (epoch)."""
        began = time.time()
        events = schedule(self.rng, self.args.minutes * 60, self.args.every, self.args.dep_every)
        self.say(f"{sum(k == 'target' for _, k in events)} target and {sum(k == 'dependency' for _, k in events)} "
                 f"dependency faults scheduled over {self.args.minutes:g} min (seed {self.args.seed})")
        while events or time.time() - began < self.args.minutes * 60:
            while events and time.time() - began >= events[0][0]:
                self.inject(events.pop(0)[1])
            self.check()
            time.sleep(0.5)
        ended = time.time()
        for f in self.faults:  # no dependency fault outlives the schedule
            if f.kind == "dependency" and f.outcome == "open":
                self.fix(f, "fixed by the soak")
                f.recovered_at = f.fixed_by_soak_at
        self.say(f"schedule over; draining up to {self.args.drain:g} s for medic to finish")
        api = self.lab.prefect_api_url
        while time.time() - ended < self.args.drain:
            self.check()
            if not any(f.outcome == "open" for f in self.faults) and not _live_runs(api):
                break
            time.sleep(1)
        self.check(final=True)
        return ended


def _live_runs(api: str) -> list[dict]:
    try:
        return httpx.post(f"{api}/flow_runs/filter", timeout=10, json={"limit": 200, "flow_runs": {
            "tags": {"all_": ["medic-serve"]}, "state": {"type": {"not_any_": list(FINAL)}}}}).json()
    except httpx.HTTPError:
        return [{"id": "?"}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--base-port", type=int, default=14000)
    parser.add_argument("--every", type=float, default=15, help="mean seconds between target faults")
    parser.add_argument("--dep-every", type=float, default=60, help="mean seconds between dependency faults")
    parser.add_argument("--dep-hold", type=float, default=30, help="seconds a dependency fault lasts")
    parser.add_argument("--drain", type=float, default=240, help="seconds medic gets after the schedule")
    parser.add_argument("--rate", type=float, default=20, help="traffic through HAProxy, req/s")
    parser.add_argument("--reject-share", type=float, default=0.0, help="share of approvals the approver rejects")
    parser.add_argument("--ledger", type=Path, default=Path("/tmp/medic-soak-ledger.json"))
    parser.add_argument("--census", type=Path, help="also write medic serve's memory census here, one JSON "
                        "line a minute (bench/serve_census.py); costs ~0.3 s of its CPU a minute")
    args = parser.parse_args()

    os.environ.update(MEDIC_LAB_DIR=str(LAB_DIR), MEDIC_LAB_BASE_PORT=str(args.base_port))
    os.environ.setdefault("MEDIC_APPROVAL_KEY", secrets.token_urlsafe(32))  # inherited by medic serve
    signal.signal(signal.SIGTERM, _on_sigterm)
    from medic.approval.identity import approver_secret, encode_secret
    from medic_lab import control
    from tests.support.server import medic_server

    serve_port = args.base_port + SERVE_PORT_OFFSET
    with tempfile.TemporaryDirectory(prefix="medic-soak-") as tmp, ExitStack() as stack:
        try:
            print(f"soak: starting a {args.hosts}-host lab on ports {args.base_port}+ …", flush=True)
            stack.callback(control.down, LAB_DIR)
            lab = control.up(LAB_DIR, hosts=args.hosts, base_port=args.base_port,
                             webhook_url=f"http://127.0.0.1:{serve_port}/alertmanager")
            os.environ.update(PREFECT_API_URL=lab.prefect_api_url)
            from medic.settings import get_settings

            get_settings.cache_clear()
            shutil.rmtree(STATE_DIR, ignore_errors=True)
            census_args = (str(ROOT / "bench" / "serve_census.py"), str(args.census)) if args.census else ("-m", "medic")
            srv = stack.enter_context(medic_server(STATE_DIR, port=serve_port,
                                                   env={"MEDIC_INSTANCE": "soak", "MEDIC_ALERT_SWEEP_S": SWEEP_S},
                                                   python_args=census_args))
            print(f"soak: medic serve at {srv.url} (pid {srv.proc.pid}, log {srv.log}); Prefect UI "
                  f"{lab.prefect_api_url.removesuffix('/api')}", flush=True)
            load_out = Path(tmp) / "load.json"
            load = subprocess.Popen([sys.executable, str(ROOT / "lab" / "loadgen.py"), "--port", str(lab.ports.haproxy),
                                     "--profile", "noisy", "--rate", str(args.rate), "--work-ms", "2",
                                     "--duration", str(args.minutes * 60 + args.drain + 600), "--seed", str(args.seed),
                                     "--out", str(load_out)], start_new_session=True)
            stack.callback(_stop_load, load)
            probes = Probes({h.name: h.service_port for h in lab.hosts if h.group == "web"})
            probes.start()
            stack.callback(probes.close)
            sampler = ServeSampler(srv.proc.pid)
            sampler.start()
            stack.callback(sampler.close)
            key = get_settings().approval_key.get_secret_value()
            approver = Approver(lab.prefect_api_url, "alice", encode_secret(approver_secret(key, "alice")),
                                args.reject_share, args.seed)
            approver.start()
            stack.callback(approver.close)

            soak = Soak(lab, probes, approver, args)
            began = time.time()
            ended = soak.run()
            finished = time.time()
            runs = runs_since(lab.prefect_api_url, began - 5)
            fired = alerts_fired(lab.prometheus_url, began, finished)
            actions = actions_since(began - 5)
            orphans = attribute(soak.faults, runs, fired, actions, finished)
            _stop_load(load)
            load_summary = json.loads(load_out.read_text()) if load_out.exists() else None
            args.ledger.write_text(json.dumps({
                "args": {k: str(v) for k, v in vars(args).items()}, "began": began, "schedule_ended": ended,
                "finished": finished,
                "faults": [{**asdict(f), "ttr_s": f.ttr_s} for f in soak.faults], "runs": runs,
                "decisions": [asdict(d) for d in approver.decisions], "serve_samples": sampler.samples,
                "injector_errors": soak.errors, "approver_errors": approver.errors[-20:],
            }, indent=1, default=str))
            print_report(soak.faults, runs, orphans, probes, sampler, approver, load_summary, args,
                         began=began, finished=finished, serve_alive=srv.proc.poll() is None, errors=soak.errors)
            print(f"\nledger: {args.ledger}; medic serve's log: {srv.log}")
        except (KeyboardInterrupt, Stop):
            print("\nsoak: interrupted — stopping everything it started", flush=True)
            return 130
    return 0


def _stop_load(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
