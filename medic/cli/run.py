"""`medic run`, `medic runbooks`, `medic validate` and `medic approve`.

`medic run` executes the remediation flow in this process (no deployment polling, no worker), so a
run starts at once, and prints each stage live. Its exit code is the outcome's (`Outcome.exit_code`:
0 recovered / not needed / dry run, 1 failed / not recovered, 3 rejected / approval timed out,
4 already running); errors exit by their class (`medic.errors.ExitCode`: 2 bad input, 5 a
dependency unreachable) through `medic.cli.main.main`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console

from medic.core.audit import format_record
from medic.cli.approvers import add_approver_commands, approval_warnings, approve, approver_credentials
from medic.core.inventory import load_inventory
from medic.core.progress import add_listener
from medic.core.report import Outcome, RemediationReport, TimelineEntry
from medic.core.runbook import Runbook, find_runbook, load_runbook, load_runbooks
from medic.errors import ExitCode, MedicError, RunbookError
from medic.orchestration.telemetry import point_prefect_at
from medic.settings import Settings, get_settings

# Imported inside the commands that need them, so that `medic --help`, `medic runbooks` and the parsing
# of `medic run` never import Prefect (measured with perf_counter on top of `medic.cli.main`, best of 5
# on this shared 2-core machine): httpx 53 ms (only `medic run` asking a medic serve), flow_kinds 44 ms,
# procedures.stages 290 ms and procedures.failover 215 ms (paramiko, ansible-runner), and — after
# `use_prefect_api`, since Prefect reads its environment when first imported — orchestration.runs
# 0.95 s, orchestration.pause 1.4 s, approval.gate 2.2 s (Prefect).

def use_prefect_api(settings: Settings) -> None:
    """Point Prefect at the configured API *before* prefect is imported, and keep its console quiet."""
    if settings.prefect_api_url:
        point_prefect_at(settings.prefect_api_url)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def cmd_runbooks(args: argparse.Namespace) -> int:
    for rb in load_runbooks(get_settings().runbooks_dir).values():
        trigger = rb.trigger.alertname if rb.trigger else "—"
        print(f"{rb.name:<16} trigger {trigger:<16} approval {rb.approval.policy:<8} {rb.recover.description}")
        print(f"{'':<16} {rb.description}")
    return 0


class Validation(BaseModel):
    """What `medic validate` checked and the problems it found (one line each, file first)."""

    runbooks: int = 0
    playbooks: int = 0
    inventory: Path | None = Field(None, description="the inventory the hosts were checked against; None: not checked")
    problems: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, description="approval set-up that lets nobody (or anyone) approve")

    def summary(self) -> str:
        hosts = (f"the hosts they name in {self.inventory}" if self.inventory else
                 "hosts not checked (no inventory configured)")
        return (f"{self.runbooks} runbook(s), {self.playbooks} playbook(s) checked, {hosts}: "
                f"{len(self.problems)} problem(s)" + (f", {len(self.warnings)} warning(s)" if self.warnings else ""))


def _named_playbooks(rb: Runbook) -> list[tuple[str, str]]:
    """(field, file name) of every playbook a runbook runs."""
    named = [("recover.playbook", rb.recover.playbook)] if rb.recover.playbook else []
    return named + ([("failover.rejoin_playbook", rb.failover.rejoin_playbook)] if rb.failover else [])


def _named_targets(rb: Runbook) -> list[tuple[str, str]]:
    """(field, host or group) of every inventory name a runbook relies on."""
    named = [("targets.default", rb.targets.default), ("targets.within", rb.targets.within)]
    named += [("failover.members", rb.failover.members)] if rb.failover else []
    return [(field, name) for field, name in named if name]


def validate_all(settings: Settings) -> Validation:
    """Every runbook spec, every playbook (`ansible-playbook --syntax-check`, no inventory needed) and,
    when an inventory is configured, the hosts and groups each runbook names."""
    from medic.clients.ansible import syntax_check  # ansible-runner: ~0.1 s that only validate pays

    found = Validation(inventory=settings.inventory)
    inventory = None
    if settings.inventory is not None:
        try:
            inventory = load_inventory(settings.inventory)
        except MedicError as exc:
            found.problems.append(str(exc))
    playbooks = {p.resolve() for p in settings.playbooks_dir.glob("*.yml")} if settings.playbooks_dir.is_dir() else set()
    loaded: list[Runbook] = []
    for path in sorted(settings.runbooks_dir.glob("*.yaml")):
        found.runbooks += 1
        try:
            rb = load_runbook(path)
        except RunbookError as exc:
            found.problems.append(str(exc))
            continue
        loaded.append(rb)
        for field, name in _named_playbooks(rb):
            playbook = settings.playbooks_dir / name
            if playbook.is_file():
                playbooks.add(playbook.resolve())
            else:
                found.problems.append(str(RunbookError("playbook not found", file=str(path), field=field,
                                                       expected=f"a file {playbook}", found=name)))
        for field, name in _named_targets(rb) if inventory is not None else []:
            try:
                inventory.resolve(name)
            except MedicError as exc:
                found.problems.append(str(RunbookError(str(exc), file=str(path), field=field,
                                                       expected="a host or group of the inventory", found=name)))
    found.playbooks = len(playbooks)
    found.warnings = approval_warnings(settings, loaded)
    found.problems += [str(problem) for problem in syntax_check(sorted(playbooks))]
    return found


def cmd_validate(args: argparse.Namespace) -> int:
    found = validate_all(get_settings())
    for problem in found.problems:
        print(problem, file=sys.stderr)
    for warning in found.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(found.summary())
    return int(ExitCode.BAD_INPUT if found.problems else ExitCode.OK)


class LiveView:
    """Prints each stage as it happens; on a terminal, a spinner shows what is being waited for."""

    def __init__(self, *, interactive: bool) -> None:
        self.console = Console(highlight=False)
        self.began = time.monotonic()
        self.interactive = interactive and self.console.is_terminal
        self.status = self.console.status("starting…") if self.console.is_terminal else None
        self.prompted = False

    def __enter__(self) -> "LiveView":
        if self.status:
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status:
            self.status.stop()

    def __call__(self, entry: TimelineEntry, recorded: bool) -> None:
        elapsed = time.monotonic() - self.began
        if not recorded:
            if self.status:
                self.status.update(f"[bold]{entry.stage}[/]: {entry.message}")
            else:
                print(f"{elapsed:6.1f}s  {entry.stage:<9} … {entry.message}", flush=True)
            return
        self.console.print(f"{elapsed:6.1f}s  [bold]{entry.stage:<9}[/] {entry.message}", markup=True, soft_wrap=True)
        if entry.stage == "approval" and entry.message.startswith("waiting") and self.interactive and not self.prompted:
            self.prompted = True
            run_id = entry.message.split("medic approve ", 1)[1].split("`", 1)[0]
            threading.Thread(target=self._prompt, args=(run_id,), daemon=True).start()

    def _prompt(self, run_id: str) -> None:
        """Decide here as a verified approver: name and secret as for `medic approve` (asked if unset)."""
        from medic.cli.approvers import send_decision

        if self.status:
            self.status.stop()
        answer = self.console.input("[bold]Approve this action?[/] [y = approve / n = reject / Enter = wait]: ")
        if answer.strip().lower() not in ("y", "yes", "n", "no"):
            return
        try:
            name = os.environ.get("MEDIC_APPROVER") or self.console.input("your approver name: ").strip()
            name, secret = approver_credentials(name, ask=True)
        except MedicError as exc:
            self.console.print(f"not sent: {exc}")
            return
        decision = "approve" if answer.strip().lower().startswith("y") else "reject"
        outcome, verdict = asyncio.run(send_decision(run_id, decision=decision, name=name, secret=secret))
        self.console.print(f"decision sent: {outcome.status.value} {outcome.reason}".rstrip()
                           + (f" — {verdict}" if verdict else ""))
        if self.status:
            self.status.start()


def _print_outcome(report: Any, run_id: str, state_name: str, seconds: float | None,
                   settings: Settings, args: argparse.Namespace) -> int:
    if args.report:
        Path(args.report).write_text(report.model_dump_json(indent=2))
    ui = settings.prefect_ui_url
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    print(f"\n{str(report.outcome.value).upper()}: {report.summary}")
    print(f"flow run {run_id} ({state_name}){took}" + (f" — {ui}/runs/flow-run/{run_id}" if ui else ""))
    return int(report.outcome.exit_code)


_REFUSALS = {409: ExitCode.ALREADY_RUNNING, 400: ExitCode.BAD_INPUT, 503: ExitCode.DEPENDENCY}


def _run_via_server(settings: Settings, args: argparse.Namespace) -> int | None:
    """Let a running `medic serve` (for the same Prefect) run it; None when there is none to ask."""
    import httpx  # 53 ms, see the top

    from medic.service.credentials import client_headers  # the intake credential (issue 11)

    base = f"http://{settings.server_host}:{settings.server_port}"
    with httpx.Client(base_url=base, headers=client_headers(settings)) as http:  # one client: ~55 ms to set up
        try:
            health = http.get("/healthz?verbose=1", timeout=httpx.Timeout(2.0, connect=0.3)).json()
        except (httpx.HTTPError, ValueError):
            return None
        if health.get("prefect_api") != settings.prefect_api_url:
            return None
        body = {"runbook": args.runbook, "target": args.target, "dry_run": args.dry_run}
        with http.stream("POST", "/runs", json=body, timeout=httpx.Timeout(None, connect=2.0)) as response:
            if response.status_code != 200:
                response.read()
                error = response.json().get("error", response.text)
                print(f"medic: error: {error}", file=sys.stderr)
                # 409: a run of it is in progress; 400: bad input; 503: medic serve cannot reach Prefect
                return int(_REFUSALS.get(response.status_code, ExitCode.FAILED))
            with LiveView(interactive=sys.stdin.isatty()) as view:
                for line in response.iter_lines():
                    item = json.loads(line)
                    if item["type"] == "entry":
                        recorded = item.pop("recorded")
                        view(TimelineEntry.model_validate(item), recorded)
                    elif item["type"] == "done":
                        break
    ending = next((o for o in Outcome if o.state_name == item.get("state_name")), None)
    if not item.get("report") and ending is not None:  # executed by a worker: its final state says the outcome
        print(f"\n{ending.value.upper()}: {item.get('message')}")
        return int(ending.exit_code)
    if not item.get("report"):
        print(f"medic: error: the run ended {item.get('state_name')} without a report: {item.get('message')}",
              file=sys.stderr)
        return int(ExitCode.FAILED)
    model = _failover_report_model() if "cluster" in item["report"] else RemediationReport
    report = model.model_validate(item["report"])
    return _print_outcome(report, str(getattr(report, "flow_run_id", None) or "?"), item["state_name"],
                          item.get("seconds"), settings, args)


def _failover_report_model() -> Any:
    from medic.procedures.failover import FailoverReport  # 215 ms, see the top

    return FailoverReport


def cmd_run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not args.local:
        answered = _run_via_server(settings, args)
        if answered is not None:
            return answered
    from medic.orchestration.flow_kinds import choose, load_flow  # 44 ms, see the top
    from medic.procedures.stages import plan  # 290 ms

    spec = find_runbook(args.runbook, settings.runbooks_dir)
    if spec.kind == "remediation" or args.target:
        plan(spec, args.target, load_inventory())  # bad input fails here, before any flow run exists
    choice = choose(spec, args.target, reason="medic run (CLI)", dry_run=args.dry_run)
    use_prefect_api(settings)
    from medic.orchestration.runs import run_flow_now  # Prefect: only after use_prefect_api

    with LiveView(interactive=sys.stdin.isatty()) as view:
        remove = add_listener(view)
        try:
            outcome = asyncio.run(run_flow_now(load_flow(choice.entrypoint), choice.parameters))
        finally:
            remove()
    report = outcome.result
    if not hasattr(report, "outcome") or not hasattr(report, "summary"):
        if isinstance(outcome.error, MedicError):
            raise outcome.error  # e.g. Prometheus unreachable: main() exits with its code and message
        print(f"medic: error: the flow run ended {outcome.state_name} without a report: {outcome.message}",
              file=sys.stderr)
        return int(ExitCode.FAILED)
    return _print_outcome(report, str(outcome.flow_run_id), outcome.state_name, outcome.seconds, settings, args)


def cmd_approve(args: argparse.Namespace) -> int:
    use_prefect_api(get_settings())  # before Prefect is imported (medic/cli/approvers.py imports it lazily)
    return approve(args)


def cmd_audit(args: argparse.Namespace) -> int:
    use_prefect_api(get_settings())  # the log is kept in Prefect, reachable from any machine
    from medic.orchestration.audit_spool import pending
    from medic.orchestration.audit_store import read_records, replay_spooled, where  # after use_prefect_api

    state_dir = get_settings().state_dir
    if state_dir is not None and pending(state_dir):  # kept here while Prefect was unreachable: send them now
        replay_spooled(state_dir)
        if left := pending(state_dir):
            print(f"{len(left)} audit record(s) still wait on this machine in {state_dir} for Prefect",
                  file=sys.stderr)
    entries = read_records(flow_run_id=args.run, limit=args.limit)
    for entry in entries:
        print(format_record(entry))
    if not entries:
        print(f"no audit records{' for run ' + args.run if args.run else ''} in {where()}", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("runbooks", help="list the runbooks").set_defaults(handler=cmd_runbooks)
    sub.add_parser("validate", help="check every runbook, its playbook and the hosts it names").set_defaults(
        handler=cmd_validate)
    p = sub.add_parser("run", help="run a runbook now and watch it live")
    p.add_argument("runbook", help="runbook name, e.g. service-down")
    p.add_argument("--target", help="inventory host or group (default: the runbook's default target)")
    p.add_argument("--dry-run", action="store_true", help="detect and diagnose, recover in check mode, change nothing")
    p.add_argument("--report", metavar="PATH", help="also write the incident report as JSON to PATH")
    p.add_argument("--local", action="store_true",
                   help="run in this process even when a medic serve is running (default: let it run it)")
    p.set_defaults(handler=cmd_run)
    add_approver_commands(sub, approve_handler=cmd_approve)  # `medic approve`, `medic approvers`
    p = sub.add_parser("audit", help="show the audit log: every decision and every action")
    p.add_argument("--run", metavar="ID", help="only the records of this flow run")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="the newest N records (default 50; 0 = all)")
    p.set_defaults(handler=cmd_audit)
