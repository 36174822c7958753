"""`medic approve` and `medic approvers`: deciding with a credential medic issued, and issuing it.

`medic approve RUN --approver NAME` reads the approver's secret from MEDIC_APPROVER_SECRET or asks for
it without echo (never from argv, which `ps` shows), and sends a proof bound to that run, its pause and
the decision — never the secret. It then waits for the flow's verdict, so a wrong secret or a name the
runbook does not admit is an error here (exit 2), not a silent no-op.

`medic approvers issue NAME` prints NAME's secret once, with an otpauth:// URI for an authenticator app
(whose 6-digit codes are what the Prefect UI's Resume form asks for). Nothing is stored: the secret is
derived from MEDIC_APPROVAL_KEY; revoke by removing NAME from approvers.yaml, or rotate the key.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import itertools
import os
import sys
from collections.abc import Callable
from typing import Any

from medic.approval.directory import load_directory, unknown_approvers
from medic.approval.identity import approver_secret, cli_proof, decode_secret, encode_secret, otpauth_uri
from medic.core.polling import retry_async
from medic.core.runbook import Runbook
from medic.errors import ConfigError, ExitCode, InputError, MedicError
from medic.settings import Settings, get_settings

__all__ = ["add_approver_commands", "approval_warnings", "approve", "approver_credentials", "send_decision"]

SECRET_ENV = "MEDIC_APPROVER_SECRET"
APPROVER_ENV = "MEDIC_APPROVER"
VERDICT_WAIT_S = 20.0  # the paused flow polls every 0.2 s; verifying + claiming a code is a few API calls


def approver_credentials(name: str | None, *, ask: bool) -> tuple[str, bytes]:
    """(approver name, secret) from --approver / MEDIC_APPROVER and MEDIC_APPROVER_SECRET, asking for the
    secret without echo on a terminal when `ask`; InputError (exit 2) saying what is missing otherwise."""
    name = name or os.environ.get(APPROVER_ENV, "")
    if not name:
        raise InputError("medic approve needs --approver NAME (your name in approvers.yaml) or MEDIC_APPROVER")
    text = os.environ.get(SECRET_ENV, "")
    if not text and ask and sys.stdin.isatty():
        text = getpass.getpass(f"approver secret of {name} (from `medic approvers issue {name}`): ")
    if not text:
        raise InputError(f"no approver secret for {name}: set {SECRET_ENV} (printed once by `medic approvers issue "
                         f"{name}`) or run in a terminal to be asked for it; nothing was sent")
    secret = decode_secret(text)
    if secret is None:
        raise InputError(f"{SECRET_ENV} is not a medic approver secret (32 base32 characters, as printed by "
                         f"`medic approvers issue {name}`); nothing was sent")
    return name, secret


async def send_decision(run_id: str, *, decision: str, name: str, secret: bytes, comment: str = "") -> tuple[Any, str | None]:
    """Resume `run_id` with a proof for its current pause; (resume outcome, the flow's verdict or None)."""
    from medic.approval.answers import resume_proven
    from medic.approval.verify import read_verdict
    from medic.orchestration.pause import ResumeStatus

    sent: list[str] = []

    def payload_for(pause_key: str) -> dict[str, str]:
        proof = cli_proof(secret, run_id=run_id, pause_key=pause_key, decision=decision)
        sent.append(proof)
        return {"decision": decision, "approver": name, "comment": comment, "proof": proof}

    def not_paused_yet(outcome: Any) -> bool:
        # A run announces its approval request a moment before it pauses: wait briefly (≤3 s) for it.
        return outcome.status is ResumeStatus.NOT_PAUSED and outcome.state_type in ("RUNNING", "PENDING")

    outcome = await retry_async(lambda: resume_proven(run_id, payload_for), delays=itertools.repeat(0.1, 29),
                                retry_if=not_paused_yet)
    if not outcome.accepted or not sent:
        return outcome, None
    verdict = await retry_async(lambda: read_verdict(sent[-1]), delays=itertools.repeat(0.1),
                                retry_if=lambda v: v is None, timeout=VERDICT_WAIT_S)
    return outcome, verdict


def approve(args: argparse.Namespace) -> int:
    """`medic approve`, once the caller has pointed Prefect at the configured API."""
    name, secret = approver_credentials(args.approver, ask=True)
    decision = "reject" if args.reject else args.decision
    outcome, verdict = asyncio.run(send_decision(args.run_id, decision=decision, name=name, secret=secret,
                                                 comment=args.comment or ""))
    if not outcome.accepted:
        print(f"medic: error: run {args.run_id}: {outcome.status.value}"
              f"{': ' + outcome.reason if outcome.reason else ''}", file=sys.stderr)
        return int(ExitCode.BAD_INPUT)
    if verdict == "counted":
        print(f"{ {'approve': 'approved', 'reject': 'rejected'}[decision]} run {args.run_id} as {name} (verified)")
        return 0
    if verdict is None:
        print(f"medic: error: run {args.run_id} took the decision but gave no verdict within {VERDICT_WAIT_S:.0f} s; "
              f"see `medic audit --run {args.run_id}`", file=sys.stderr)
        return int(ExitCode.FAILED)
    print(f"medic: error: run {args.run_id} {verdict} (as {name}); the run is still waiting", file=sys.stderr)
    return int(ExitCode.BAD_INPUT)


def approval_warnings(settings: Settings, runbooks: list[Runbook]) -> list[str]:
    """Where approvals could not be verified, or a `required` policy names nobody (issue 11)."""
    warnings = []
    if settings.approval_key is None or not settings.approval_key.get_secret_value():
        warnings.append("MEDIC_APPROVAL_KEY is not set: no approval can be verified, so every run that needs one "
                        "ends 'not approved' — set the same key on medic serve and every worker")
    try:
        directory = load_directory(settings.approvers_file)
    except MedicError as exc:
        return [*warnings, f"approver directory unusable, nobody can approve: {exc}"]
    if not directory.approvers:
        warnings.append(f"{settings.approvers_file}: no approvers — nobody can approve")
    for rb in runbooks:
        where = f"{rb.source or rb.name}: approval"
        if rb.approval.policy == "required" and not rb.approval.approvers and not rb.approval.approver_group:
            warnings.append(f"{where}: policy 'required' names no approvers — anyone in the approver "
                            f"directory may approve; name them in approval.approvers")
        for entry in unknown_approvers(rb.approval.approvers, directory):
            warnings.append(f"{where}.approvers: {entry!r} is not in {settings.approvers_file} — it admits nobody")
    return warnings


def _key(settings: Settings) -> str:
    if settings.approval_key is None or not settings.approval_key.get_secret_value():
        raise ConfigError("MEDIC_APPROVAL_KEY is not set: it is the key every approver credential derives from; "
                          "set the same value on medic serve and every worker, then issue credentials")
    return settings.approval_key.get_secret_value()


def cmd_approvers_issue(args: argparse.Namespace) -> int:
    settings = get_settings()
    directory = load_directory(settings.approvers_file)
    if directory.get(args.name) is None:
        known = ", ".join(a.name for a in directory.approvers) or "none"
        raise InputError(f"{args.name!r} is not in the approver directory {settings.approvers_file} (known: {known}); "
                         f"add them there first")
    secret = approver_secret(_key(settings), args.name)
    print(f"approver secret of {args.name} (shown once; give it to {args.name} only — medic stores nothing):")
    print(f"  {encode_secret(secret)}")
    print(f"for an authenticator app (6-digit codes for the Prefect UI form):\n  {otpauth_uri(args.name, secret)}")
    print(f"for the CLI: export {SECRET_ENV}=<the secret>; medic approve RUN_ID --approver {args.name}")
    return 0


def cmd_approvers_list(args: argparse.Namespace) -> int:
    settings = get_settings()
    directory = load_directory(settings.approvers_file)
    for entry in directory.approvers:
        print(f"{entry.name:<24} {entry.slack_id or '-'}")
    if not directory.approvers:
        print(f"no approvers in {settings.approvers_file}: nobody can approve", file=sys.stderr)
    return 0


def add_approver_commands(sub: argparse._SubParsersAction, *, approve_handler: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser("approve", help="approve (or reject) a run waiting for a decision, as a verified approver")
    p.add_argument("run_id", help="the flow run id (shown by medic run, Slack and the Prefect UI)")
    p.add_argument("--decision", choices=("approve", "reject"), default="approve", help="default: approve")
    p.add_argument("--reject", action="store_true", help="same as --decision reject: nothing will be changed")
    p.add_argument("--approver", metavar="NAME",
                   help=f"your name in approvers.yaml (default: ${APPROVER_ENV}); the secret comes from "
                        f"${SECRET_ENV} or a prompt, never the command line")
    p.add_argument("--comment", help="why — kept in the report and audit log")
    p.set_defaults(handler=approve_handler)
    p = sub.add_parser("approvers", help="the approver directory and the credentials medic issues")
    approvers = p.add_subparsers(dest="approvers_command", required=True)
    issue = approvers.add_parser("issue", help="print NAME's approver secret and authenticator URI (once)")
    issue.add_argument("name", help="an approver name from approvers.yaml")
    issue.set_defaults(handler=cmd_approvers_issue)
    approvers.add_parser("list", help="who may approve").set_defaults(handler=cmd_approvers_list)
