"""The remediation flow end to end against the lab: real faults, real Prometheus, SSH and Ansible.

Each test owns one host so the tests never disturb each other: web-1 disk-full, web-2 service-down,
web-3 slow, web-4 dry run, web-5 healthy, web-6 unreachable. Faults go through the `broken` fixture,
which restores the shared lab after the test, pass or fail, and checks it is healthy again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medic_lab.state import LabState
from medic.core.paths import PLAYBOOKS_DIR, RUNBOOKS_DIR
from medic.core.report import Outcome
from medic.settings import get_settings
from tests.support.flows import metric, remediate, remediate_and_decide, wait_metric
from tests.support.lab_health import Inject, broken, restored, seen  # noqa: F401 (fixtures)
from tests.support.prefect_api import prefect_json


def test_service_down_is_recovered_and_confirmed_by_prometheus(lab: LabState, broken: Inject) -> None:
    broken("service-down", "web-2")
    seen(lab, "service-down", "web-2")
    run, report = remediate("service-down", "web-2")
    assert report.outcome is Outcome.RECOVERED, report.summary
    assert run.state_type == "COMPLETED" and run.state_name == "Recovered"
    assert report.hosts == ["web-2"]
    assert [h.status for h in report.recovery.hosts] == ["changed"]
    assert any(c.name == "service status" and "stopped" in c.result.stdout for c in report.diagnosis.commands)
    assert metric(lab, 'up{job="web",host="web-2"}')[0][1] == 1
    # the artifact says the same as the final state
    artifact = prefect_json(lab.prefect_api_url, "POST", "/artifacts/filter",
                            json={"artifacts": {"key": {"any_": ["incident-service-down-web-2"]}}})
    assert any("recovered" in (a.get("description") or "") and "web-2" in a["data"] for a in artifact)


def test_healthy_target_is_not_needed_and_nothing_runs(lab: LabState, restored: LabState) -> None:
    pid_before = (lab.host("web-5").root / "run" / "web.pid").read_text()
    run, report = remediate("service-down", "web-5")
    assert report.outcome is Outcome.NOT_NEEDED
    assert run.state_type == "COMPLETED" and run.state_name == "NotNeeded"
    assert report.recovery is None and report.diagnosis is None
    assert (lab.host("web-5").root / "run" / "web.pid").read_text() == pid_before


def test_dry_run_changes_nothing_on_the_host(lab: LabState, broken: Inject) -> None:
    broken("service-down", "web-4")
    seen(lab, "service-down", "web-4")
    run, report = remediate("service-down", "web-4", dry_run=True)
    assert report.outcome is Outcome.DRY_RUN, report.summary
    assert report.recovery.check_mode and report.recovery.hosts[0].status == "would change"
    assert report.recovery.hosts[0].detail == "would run: start"
    assert report.verify is None
    # still down: the check-mode playbook started nothing (servicectl is the authority, no waiting needed)
    status = subprocess.run([str(lab.host("web-4").root / "bin" / "servicectl"), "status"], capture_output=True, text=True)
    assert status.returncode == 3, status.stdout


def test_disk_full_after_approval_frees_junk_only_inside_the_data_dir(lab: LabState, broken: Inject) -> None:
    host = lab.host("web-1")
    orders = (host.data_dir / "app" / "orders.db").read_bytes()
    broken("disk-full", "web-1")
    seen(lab, "disk-full", "web-1")
    junk_bytes = sum(f.stat().st_size for f in (host.data_dir / "cache").glob("junk-*"))
    run, report, statuses = asyncio.run(remediate_and_decide(
        "disk-full", "web-1", [{"decision": "approve", "approver": "alice"}]))
    assert statuses == ["accepted"]
    assert report.outcome is Outcome.RECOVERED, report.summary
    assert report.approval.decision == "approved" and report.approval.approvers == ["alice"]
    assert int(report.recovery.hosts[0].return_values["bytes_freed"]) == junk_bytes
    assert list((host.data_dir / "cache").glob("junk-*")) == []
    assert (host.data_dir / "cache" / "session.tmp").exists(), "a young cache file must be kept"
    assert (host.data_dir / "app" / "orders.db").read_bytes() == orders
    ratio = wait_metric(lab, 'demo_data_dir_used_bytes{host="web-1"} / demo_data_dir_capacity_bytes{host="web-1"}',
                        lambda r: bool(r) and r[0][1] < 0.8, what="Prometheus to show web-1's data dir below 80 %")
    assert ratio[0][1] < 0.8


def test_disk_full_rejected_changes_nothing(lab: LabState, broken: Inject) -> None:
    host = lab.host("web-1")
    broken("disk-full", "web-1")
    seen(lab, "disk-full", "web-1")
    before = sorted(p.name for p in (host.data_dir / "cache").iterdir())
    run, report, _ = asyncio.run(remediate_and_decide(
        "disk-full", "web-1", [{"decision": "reject", "approver": "bob", "comment": "not now"}]))
    assert report.outcome is Outcome.REJECTED
    assert run.state_type == "FAILED" and run.state_name == "Rejected"
    assert "bob" in report.summary and "not now" in report.summary
    assert report.recovery is None
    assert sorted(p.name for p in (host.data_dir / "cache").iterdir()) == before


def test_high_latency_on_the_group_restarts_only_the_slow_instance(lab: LabState, broken: Inject) -> None:
    pids = {h.name: (h.root / "run" / "web.pid").read_text() for h in lab.hosts}
    broken("slow", "web-3")
    wait_metric(lab, 'ALERTS{alertname="HighLatency",host="web-3",alertstate="firing"}', lambda r: bool(r), timeout=30)
    run, report = remediate("high-latency", "web")
    assert report.outcome is Outcome.RECOVERED, report.summary
    assert report.hosts == ["web-3"]
    assert [h.host for h in report.recovery.hosts] == ["web-3"]
    after = {h.name: (h.root / "run" / "web.pid").read_text() for h in lab.hosts}
    assert after["web-3"] != pids["web-3"]
    assert {n: p for n, p in after.items() if n != "web-3"} == {n: p for n, p in pids.items() if n != "web-3"}


def test_unreachable_host_gives_a_clear_failed_outcome(lab: LabState, broken: Inject) -> None:
    broken("host-down", "web-6")
    seen(lab, "host-down", "web-6")
    run, report = remediate("service-down", "web-6")
    assert report.outcome is Outcome.FAILED
    assert run.state_type == "FAILED"
    assert "unreachable" in report.summary and "web-6" in report.summary
    assert report.recovery is None


@pytest.fixture
def failing_runbooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runbook dir with one runbook whose playbook always fails on the host."""
    runbooks, playbooks = tmp_path / "runbooks", tmp_path / "playbooks"
    runbooks.mkdir()
    shutil.copytree(PLAYBOOKS_DIR, playbooks)
    (playbooks / "always-fails.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Try the repair\n      ansible.builtin.command: /bin/false\n")
    spec = (RUNBOOKS_DIR / "service-down.yaml").read_text()
    spec = spec.replace("name: service-down", "name: broken-repair").replace("restart-service.yml", "always-fails.yml")
    spec = spec.replace('condition: "== 0"', 'condition: "== 1"', 1)  # "detects" a healthy host
    (runbooks / "broken-repair.yaml").write_text(spec)
    monkeypatch.setenv("MEDIC_RUNBOOKS_DIR", str(runbooks))
    monkeypatch.setenv("MEDIC_PLAYBOOKS_DIR", str(playbooks))
    get_settings.cache_clear()
    yield runbooks
    get_settings.cache_clear()


def test_failing_playbook_gives_failed_with_the_task_message(lab: LabState, failing_runbooks: Path,
                                                               restored: LabState) -> None:
    run, report = remediate("broken-repair", "web-5")
    assert report.outcome is Outcome.FAILED
    assert run.state_type == "FAILED" and run.state_name == "Failed"
    assert report.recovery.hosts[0].status == "failed"
    assert "Try the repair" in report.recovery.hosts[0].detail
    assert report.verify is None


def _medic(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medic", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ})


def test_cli_run_recovers_and_exits_zero(lab: LabState, broken: Inject) -> None:
    broken("service-down", "web-2")
    seen(lab, "service-down", "web-2")
    result = _medic("run", "service-down", "--target", "web-2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RECOVERED" in result.stdout
    for stage in ("detect", "diagnose", "recover", "verify"):
        assert stage in result.stdout


@pytest.mark.parametrize(("target", "message"), [
    ("web-1; rm -rf /", "is refused"),
    ("db-9", "unknown target 'db-9'"),
])
def test_cli_run_refuses_bad_targets_before_anything_runs(lab: LabState, target: str, message: str) -> None:
    result = _medic("run", "service-down", "--target", target)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_cli_run_unknown_runbook(lab: LabState) -> None:
    result = _medic("run", "no-such-runbook", "--target", "web-1")
    assert result.returncode == 2
    assert "no runbook named 'no-such-runbook'" in result.stderr
