"""Only verified identities approve, against the real lab: the remediation flow runs in this process, a
disk-full host is really full, inputs arrive through Prefect's REST API exactly as anyone with API
access could send them (and through a real `medic approve`), and refusals are read back from the
audit log in Prefect. Hosts: web-1 (forgeries, then 2-of-2), web-2 (made-up identity only), web-3 (no key).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from medic.approval.identity import approver_secret, cli_proof
from medic.core.paths import RUNBOOKS_DIR
from medic.core.polling import retry
from medic.core.progress import add_listener
from medic.core.report import Outcome, RemediationReport
from medic.orchestration.audit_store import read_records
from medic.orchestration.runs import FlowRunOutcome, run_flow_now
from medic.settings import get_settings
from medic_lab.state import LabState
from tests.support.approvals import code_of, secret_text
from tests.support.flows import remediate
from tests.support.lab_health import Inject, broken, seen  # noqa: F401 (a fixture)
from tests.support.prefect_api import prefect_json, prefect_request
from tests.support.waits import wait_for

VARIANTS = {  # runbook → approval policy (disk-full's otherwise)
    "disk-full-pair": {"policy": "required", "approvers": ["alice", "bob"], "required_approvals": 2, "timeout": "3m"},
    "disk-full-quick": {"policy": "required", "approvers": ["alice"], "timeout": "20s"},
}


@pytest.fixture(scope="module")
def runbooks(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The shipped runbooks plus disk-full variants, as this process's MEDIC_RUNBOOKS_DIR."""
    directory = tmp_path_factory.mktemp("identity-runbooks")
    for path in RUNBOOKS_DIR.glob("*.yaml"):
        shutil.copy(path, directory / path.name)
    base = yaml.safe_load((RUNBOOKS_DIR / "disk-full.yaml").read_text())
    for name, approval in VARIANTS.items():
        spec = {**base, "name": name, "trigger": {"alertname": name}, "approval": approval}
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    before = os.environ.get("MEDIC_RUNBOOKS_DIR")
    os.environ["MEDIC_RUNBOOKS_DIR"] = str(directory)
    get_settings.cache_clear()
    yield directory
    if before is None:
        os.environ.pop("MEDIC_RUNBOOKS_DIR", None)
    else:
        os.environ["MEDIC_RUNBOOKS_DIR"] = before
    get_settings.cache_clear()


# --- helpers ----------------------------------------------------------------------------------------


async def start_until_paused(runbook: str, host: str) -> tuple[asyncio.Task[FlowRunOutcome], str]:
    """Run the remediation flow in this process; its id once it says it waits for a decision."""
    from flows.remediate import remediate as remediate_flow

    loop = asyncio.get_running_loop()
    found: asyncio.Future[str] = loop.create_future()

    def on_entry(entry: Any, recorded: bool) -> None:
        if recorded and entry.stage == "approval" and entry.message.startswith("waiting") and not found.done():
            run_id = entry.message.split("medic approve ", 1)[1].split("`", 1)[0]
            loop.call_soon_threadsafe(lambda: found.done() or found.set_result(run_id))

    remove = add_listener(on_entry)
    run = asyncio.create_task(run_flow_now(remediate_flow, {"runbook": runbook, "target": host}))
    try:
        done, _ = await asyncio.wait({run, found}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        assert found in done, f"the run never asked for approval: {run.result() if run in done else 'still running'}"
        return run, found.result()
    finally:
        remove()


def paused(api: str, run_id: str, *, not_key: str | None = None, timeout: float = 30) -> str:
    """Until the run waits (Paused, its input schema stored) under a pause key other than `not_key`."""
    def look() -> str:
        state = prefect_json(api, "GET", f"/flow_runs/{run_id}")["state"]
        details = state.get("state_details") or {}
        key, schema = details.get("pause_key"), (details.get("run_input_keyset") or {}).get("schema")
        if state["type"] != "PAUSED" or key == not_key or not schema:
            return f"{state['type']} under {key!r}"
        stored = prefect_request(api, "GET", f"/flow_runs/{run_id}/input/{schema}").status_code == 200
        return f"key:{key}" if stored else f"PAUSED under {key!r}, schema not stored yet"

    said = wait_for(look, what=f"run {run_id} to wait under a pause key other than {not_key!r}", timeout=timeout,
                    done=lambda s: s.startswith("key:"), interval=0.1, ignore=httpx.HTTPError)
    return said.removeprefix("key:")


def resume(api: str, run_id: str, run_input: dict[str, Any]) -> str:
    """POST /flow_runs/{id}/resume as any API client can: Prefect's orchestration status. A 5xx (its
    SQLite busy on a loaded machine) is sent again, as a client would; any other answer without a
    status fails the test showing it."""
    response = retry(lambda: httpx.post(f"{api}/flow_runs/{run_id}/resume", json={"run_input": run_input}, timeout=10),
                     delays=(0.5, 1.0, 2.0, 4.0), retry_if=lambda r: r.status_code >= 500)
    body = response.json()
    assert isinstance(body, dict) and "status" in body, (response.status_code, body)
    return str(body["status"])


def refusals(run_id: str, count: int) -> list[str]:
    """The `result` of the run's refused-decision audit records, oldest first, once `count` are there."""
    found = wait_for(lambda: [r.result for r in read_records(flow_run_id=run_id, kinds=["decision"])
                              if r.result.startswith("refused")],
                     what=f"{count} refused decision(s) of run {run_id} in the audit log", timeout=30,
                     done=lambda results: len(results) >= count, interval=0.3)
    return found


def cache(lab: LabState, host: str) -> list[str]:
    return sorted(p.name for p in (lab.host(host).data_dir / "cache").iterdir())


def other_code(code: str) -> str:
    return f"{(int(code) + 500_000) % 1_000_000:06d}"


# --- the tests --------------------------------------------------------------------------------------


def test_forged_inputs_are_refused_and_audited_and_two_of_two_needs_two_people(
        lab: LabState, runbooks: Path, broken: Inject) -> None:
    api = lab.prefect_api_url
    broken("disk-full", "web-1")
    seen(lab, "disk-full", "web-1")

    async def scenario() -> tuple[FlowRunOutcome, str, list[str], Any]:
        run, run_id = await start_until_paused("disk-full-pair", "web-1")
        key = await asyncio.to_thread(paused, api, run_id)
        forged = [  # each through Prefect's REST API; each must leave the run waiting under a fresh pause
            {"decision": "approve", "approver": "mallory", "code": "123456"},  # made-up identity
            {"decision": "approve", "approver": "alice", "code": other_code(code_of("alice"))},  # wrong code
            {"decision": "approve", "approver": "U0ALICE"},  # a Slack identity typed by hand, no proof
            {"decision": "approve", "approver": "alice",  # a Slack proof made without medic's key
             "proof": f"slack:U0ALICE:{int(time.time())}:{'0' * 64}"},
            {"decision": "approve", "approver": "bob",  # bob's real proof, made for another run
             "proof": cli_proof(approver_secret(get_settings().approval_key.get_secret_value(), "bob"),
                                run_id=str(uuid.uuid4()), pause_key=key, decision="approve")},
        ]
        for run_input in forged:
            assert await asyncio.to_thread(resume, api, run_id, run_input) == "ACCEPT"
            key = await asyncio.to_thread(paused, api, run_id, not_key=key)
        # a hand-typed `via` is no field at all: Prefect refuses the input, the run stays in the same pause
        typed = {"decision": "approve", "approver": "U0ALICE", "via": "slack"}
        assert await asyncio.to_thread(resume, api, run_id, typed) == "REJECT"
        assert await asyncio.to_thread(paused, api, run_id) == key
        # alice with a valid code counts once; the same code again, and alice again via `medic approve`, do not
        code = code_of("alice")
        assert await asyncio.to_thread(resume, api, run_id, {"decision": "approve", "approver": "alice", "code": code}) == "ACCEPT"
        key = await asyncio.to_thread(paused, api, run_id, not_key=key)
        assert await asyncio.to_thread(resume, api, run_id, {"decision": "approve", "approver": "alice", "code": code}) == "ACCEPT"
        key = await asyncio.to_thread(paused, api, run_id, not_key=key)
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "medic", "approve", run_id, "--approver", "alice",
            env={**os.environ, "MEDIC_APPROVER_SECRET": secret_text("alice")}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), 120)
        cli_said = (cli.returncode, out.decode() + err.decode())
        key = await asyncio.to_thread(paused, api, run_id, not_key=key)  # still waiting for a second person
        before_bob = await asyncio.to_thread(refusals, run_id, 7)
        bob = {"decision": "approve", "approver": "bob", "code": code_of("bob")}
        assert await asyncio.to_thread(resume, api, run_id, bob) == "ACCEPT"
        return await asyncio.wait_for(run, 180), run_id, before_bob, cli_said

    outcome, run_id, refused, (cli_rc, cli_output) = asyncio.run(scenario())
    assert cli_rc == 2 and "alice already approved" in cli_output, cli_output
    assert refused == [
        "refused: 'mallory' is not in the approver directory",
        "refused: wrong or expired code for 'alice'",
        "refused: no proof: 'U0ALICE' gave no code (a decision needs the approver's 6-digit code)",
        "refused: forged or misdirected Slack proof",
        "refused: forged or misdirected CLI proof (wrong secret, run, pause or decision)",
        "refused: code already used by alice (each code counts once)",
        "refused: alice already approved (via any channel); waiting for another approver",
    ], refused
    report = outcome.result
    assert isinstance(report, RemediationReport) and report.outcome is Outcome.RECOVERED, outcome
    assert report.approval.approvers == ["alice", "bob"] and report.approval.channel == "ui"
    decided = [r for r in read_records(flow_run_id=run_id, kinds=["decision"]) if not r.result.startswith("refused")]
    assert [(r.who, r.what, r.result) for r in decided] == [("alice, bob", "approved", "recovery runs")]


def test_a_made_up_identity_through_the_prefect_api_does_not_remediate(
        lab: LabState, runbooks: Path, broken: Inject) -> None:
    api = lab.prefect_api_url
    broken("disk-full", "web-2")
    seen(lab, "disk-full", "web-2")
    before = cache(lab, "web-2")

    async def scenario() -> tuple[FlowRunOutcome, str]:
        run, run_id = await start_until_paused("disk-full-quick", "web-2")
        key = await asyncio.to_thread(paused, api, run_id)
        made_up = {"decision": "approve", "approver": "root", "code": "000000", "comment": "trust me"}
        assert await asyncio.to_thread(resume, api, run_id, made_up) == "ACCEPT"  # Prefect takes it …
        await asyncio.to_thread(paused, api, run_id, not_key=key)  # … medic refuses it and keeps waiting
        return await asyncio.wait_for(run, 120), run_id

    outcome, run_id = asyncio.run(scenario())
    report = outcome.result
    assert isinstance(report, RemediationReport) and report.outcome is Outcome.APPROVAL_TIMED_OUT, outcome
    assert report.recovery is None and cache(lab, "web-2") == before
    assert refusals(run_id, 1) == ["refused: 'root' is not in the approver directory"]
    record = next(r for r in read_records(flow_run_id=run_id, kinds=["decision"]) if r.result.startswith("refused"))
    assert record.who == "root (unverified)" and record.what == "approve"


def test_without_an_approval_key_nothing_is_approved_and_it_says_why(
        lab: LabState, runbooks: Path, broken: Inject) -> None:
    broken("disk-full", "web-3")
    seen(lab, "disk-full", "web-3")
    before = cache(lab, "web-3")
    key = os.environ.pop("MEDIC_APPROVAL_KEY")
    get_settings.cache_clear()
    try:
        outcome, report = remediate("disk-full", "web-3")
    finally:
        os.environ["MEDIC_APPROVAL_KEY"] = key
        get_settings.cache_clear()
    assert report.outcome is Outcome.REJECTED and outcome.state_name == "Rejected", report.summary
    assert "MEDIC_APPROVAL_KEY is not configured" in report.summary and report.approval.approvers == []
    assert report.recovery is None and cache(lab, "web-3") == before
