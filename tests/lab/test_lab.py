"""The ops lab: real Prometheus, Alertmanager, sshd hosts and Ansible, checked for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medic_lab import control
from medic_lab.processes import find_lab_processes
from medic_lab.state import LabState, public_dir_for
from tests.support.waits import wait_for
from tests.support.webhook_receiver import WebhookReceiver, alert_in, webhook_receiver

MEDIC = [sys.executable, "-m", "medic"]


def medic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MEDIC, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=120)


def test_prometheus_scrapes_every_target(lab: LabState) -> None:
    targets = httpx.get(f"{lab.prometheus_url}/api/v1/targets").json()["data"]["activeTargets"]
    by_job: dict[str, list[str]] = {}
    for t in targets:
        assert t["health"] == "up", f"{t['scrapeUrl']} is {t['health']}: {t.get('lastError')}"
        by_job.setdefault(t["labels"]["job"], []).append(t["labels"].get("host", ""))
    assert sorted(by_job["web"]) == sorted(h.name for h in lab.hosts)
    assert {"prometheus", "alertmanager", "node"} <= set(by_job)


def test_status_reports_every_component_up(lab: LabState) -> None:
    result = medic("lab", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("prefect", "prometheus", "alertmanager", "node-exporter", "web-1 sshd", "web-6 web"):
        assert any(line.startswith(name) and " up " in line for line in result.stdout.splitlines()), name


@pytest.fixture
def receiver(lab: LabState) -> Iterator[WebhookReceiver]:
    """Alertmanager posts to a receiver of this test's own; afterwards to wherever it posted before."""
    before = lab.webhook_url
    with webhook_receiver() as receiver:
        control.set_webhook(lab, receiver.url)
        try:
            yield receiver
        finally:
            control.set_webhook(lab, before)


@pytest.mark.parametrize(
    ("fault", "host", "alertname"),
    [("service-down", "web-2", "ServiceDown"), ("disk-full", "web-1", "DiskAlmostFull"), ("slow", "web-3", "HighLatency")],
)
def test_fault_fires_alert_delivered_by_alertmanager_and_fix_resolves_it(
    lab: LabState, receiver: WebhookReceiver, fault: str, host: str, alertname: str
) -> None:
    broke = medic("lab", "break", fault, host)
    assert broke.returncode == 0, broke.stderr
    try:
        fired = receiver.wait_for(lambda n: alert_in(n, alertname=alertname, host=host, status="firing"), 30)
        assert fired is not None, f"{alertname} for {host} never reached the webhook"
        assert fired["version"] == "4"
        alert = next(a for a in fired["alerts"] if a["labels"]["host"] == host)
        assert alert["annotations"]["runbook"] == fault.replace("slow", "high-latency")
    finally:
        fixed = medic("lab", "fix", fault, host)
    assert fixed.returncode == 0, fixed.stderr
    resolved = receiver.wait_for(lambda n: alert_in(n, alertname=alertname, host=host, status="resolved"), 40)
    assert resolved is not None, f"{alertname} for {host} was never resolved after `fix`"


def _ssh(lab: LabState, port: int, user: str, known_hosts: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(lab.ssh_key), "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(port), f"{user}@127.0.0.1", command],
        capture_output=True, text=True, timeout=30,
    )


def test_ssh_with_host_key_checking_reaches_every_host_as_its_own_user(lab: LabState) -> None:
    for h in lab.hosts:
        result = _ssh(lab, h.ssh_port, h.user, lab.known_hosts, "id -un")
        assert result.returncode == 0, f"{h.name}: {result.stderr}"
        assert result.stdout.strip() == h.user


def test_ssh_refuses_a_host_whose_key_does_not_match(lab: LabState, tmp_path: Path) -> None:
    # Pin web-2's key under web-1's address: a man in the middle, as far as ssh can tell.
    lines = lab.known_hosts.read_text().splitlines()
    web1, web2 = lab.hosts[0], lab.hosts[1]
    key_of_web2 = next(line for line in lines if line.startswith(f"[127.0.0.1]:{web2.ssh_port} ")).split(" ", 1)[1]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{web1.ssh_port} {key_of_web2}\n")
    marker = web1.root / "data" / "should-not-exist"
    result = _ssh(lab, web1.ssh_port, web1.user, wrong, f"touch {marker}")
    assert result.returncode != 0
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr or "Host key verification failed" in result.stderr
    assert not marker.exists()


def test_generated_inventory_works_with_ansible_ping(lab: LabState) -> None:
    ansible = Path(sys.executable).parent / "ansible"
    result = subprocess.run([str(ansible), "-i", str(lab.inventory), "all", "-m", "ping", "-o"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True"})
    assert result.returncode == 0, result.stdout + result.stderr
    for h in lab.hosts:
        assert f"{h.name} | SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["lab", "break", "meltdown", "web-1"], "unknown fault 'meltdown'"),
        (["lab", "break", "service-down", "web-99"], "unknown host 'web-99'"),
        (["lab", "fix", "slow", "db-1"], "unknown host 'db-1'"),
    ],
)
def test_bad_cli_input_gives_one_line_error(lab: LabState, args: list[str], expected: str) -> None:
    result = medic(*args)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr


def test_lab_up_on_a_port_in_use_names_the_port(lab: LabState, tmp_path: Path) -> None:
    other = tmp_path / "other-lab"
    result = medic("lab", "up", "--hosts", "1", "--no-prefect",
                   env={"MEDIC_LAB_DIR": str(other), "MEDIC_LAB_BASE_PORT": str(lab.ports.base)})
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"127.0.0.1:{lab.ports.prometheus}" in result.stderr and "already in use" in result.stderr
    assert not find_lab_processes(other.resolve())
    assert not public_dir_for(other.resolve()).exists()


def test_hosts_out_of_range_is_refused() -> None:
    result = medic("lab", "up", "--hosts", "51", env={"MEDIC_LAB_DIR": "/tmp/medic-never-created"})
    assert result.returncode != 0
    assert "--hosts must be between 1 and 50" in result.stderr


def test_down_leaves_no_process_even_after_up_was_killed(tmp_path: Path) -> None:
    lab_dir = (tmp_path / "crash-lab").resolve()
    base = int(os.environ.get("MEDIC_TEST_LAB_BASE_PORT", "21000")) + 25  # +35..+125, +226, +326: not the session lab's
    env = {**os.environ, "MEDIC_LAB_DIR": str(lab_dir), "MEDIC_LAB_BASE_PORT": str(base)}
    up = subprocess.Popen([*MEDIC, "lab", "up", "--hosts", "2", "--no-prefect"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(find_lab_processes(lab_dir)), what="`medic lab up` to start 4 daemons",
                 done=lambda n: n >= 4, timeout=30, interval=0.05)
        up.send_signal(signal.SIGKILL)  # `up` dies before it can record or wait for anything
        up.wait()
    finally:
        result = subprocess.run([*MEDIC, "lab", "down"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert find_lab_processes(lab_dir) == []
    assert not public_dir_for(lab_dir).exists(), "down left the public dir of a lab whose `up` was killed"


def test_an_empty_lab_dir_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`MEDIC_LAB_DIR= medic lab up` once spread a lab over the current directory."""
    from medic.settings import DEFAULT_LAB_DIR, Settings

    monkeypatch.setenv("MEDIC_LAB_DIR", "")
    monkeypatch.setenv("MEDIC_LAB_BASE_PORT", "")
    settings = Settings()
    assert settings.lab_dir == DEFAULT_LAB_DIR and settings.lab_base_port == 19000
