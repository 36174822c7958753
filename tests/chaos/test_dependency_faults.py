"""The dependency faults themselves: each breaks what it says, and its `fix` puts it back as it was.

Nothing lost here means: after `fix`, the daemon answers on the same port with the data it had
(Prometheus its series, Prefect its flow runs), and `medic lab break` refuses a wrong HOST argument
with a message that says what to type instead.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import httpx
import pytest

from medic.clients.ssh import SSHSession
from medic.core.inventory import load_inventory
from medic.errors import LabError
from medic_lab import faults
from medic_lab.state import LabState
from tests.support.chaos import Inject
from tests.support.prefect_api import prefect_json, prefect_request

pytestmark = pytest.mark.chaos


def refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.ConnectError:
        return True
    return False


@pytest.mark.parametrize(("fault", "url"), [("prometheus-down", "prometheus_url"),
                                            ("alertmanager-down", "alertmanager_url")])
def test_a_monitoring_daemon_goes_down_and_comes_back_on_its_port(
        lab: LabState, inject: Inject, fault: str, url: str) -> None:
    """Nothing lost: after `fix` the daemon answers on the same port (Prometheus still has the `up`
    series it scraped before the fault: same data dir)."""
    base = getattr(lab, url)
    before = time.time()
    said = inject(fault)
    assert said.startswith("stopped ") and refused(f"{base}/-/ready"), said
    assert "already down" in faults.break_host(lab, fault)
    fixed = faults.fix_host(lab, fault)
    assert fixed.startswith("started ") and httpx.get(f"{base}/-/ready", timeout=5).status_code == 200, fixed
    if fault == "prometheus-down":
        series = httpx.get(f"{base}/api/v1/query", params={"query": "count(up)", "time": before}, timeout=5).json()
        assert series["data"]["result"], f"Prometheus lost its data across the fault: {series}"
    assert "already running" in faults.fix_host(lab, fault)


def test_prefect_restart_keeps_its_port_and_database(lab: LabState, inject: Inject) -> None:
    """Nothing lost: a flow run created before the restart is still there after it, same id."""
    if not lab.with_prefect:
        pytest.skip("this session's lab runs without Prefect")
    name = f"chaos-{uuid.uuid4().hex[:8]}"
    api = lab.prefect_api_url
    flow = prefect_json(api, "POST", "/flows/", json={"name": name})
    run = prefect_json(api, "POST", "/flow_runs/", json={"flow_id": flow["id"], "name": name})
    said = inject("prefect-restart")
    assert "on the same port and database" in said, said
    after = prefect_request(api, "GET", f"/flow_runs/{run['id']}")
    assert after.status_code == 200 and after.json()["name"] == name, after.text
    prefect_json(api, "DELETE", f"/flows/{flow['id']}")


def test_sshd_hang_blocks_ssh_until_fixed(lab: LabState, inject: Inject) -> None:
    """Nothing lost: the hung host answers again after `fix` (SIGCONT), on the same connection path."""
    host = load_inventory().host(lab.hosts[0].name)
    inject("sshd-hang", host.name)
    with SSHSession(connect_timeout=1) as ssh:
        assert ssh.run(host, "true", timeout=2).unreachable
    faults.fix_host(lab, "sshd-hang", host.name)
    with SSHSession() as ssh:
        assert ssh.run(host, "echo back").stdout == "back\n"


def test_playbook_hang_blocks_actions_not_status_until_fixed(lab: LabState, inject: Inject) -> None:
    """Nothing lost: `status` still answers during the fault, and after `fix` servicectl is the
    original script again (the blocked action would have gone on)."""
    host = load_inventory().host(lab.hosts[0].name)
    servicectl = lab.hosts[0].root / "bin" / "servicectl"
    original = servicectl.read_bytes()
    inject("playbook-hang", host.name)
    with SSHSession() as ssh:
        assert ssh.run(host, f"{servicectl} status", timeout=5).exit_code == 0
        blocked = ssh.run(host, f"{servicectl} stop", timeout=1)
        assert blocked.timed_out, blocked
    faults.fix_host(lab, "playbook-hang", host.name)
    assert servicectl.read_bytes() == original


@pytest.mark.parametrize(("args", "error"), [
    (["prometheus-down", "web-1"], "takes no HOST"),
    (["service-down"], "is a fault of one host"),
])
def test_break_says_when_the_host_argument_is_wrong(lab: LabState, args: list[str], error: str) -> None:
    """Nothing lost: a wrong call changes nothing and says what to type instead."""
    with pytest.raises(LabError, match=error):
        faults.break_host(lab, *args)
    cli = subprocess.run([sys.executable, "-m", "medic", "lab", "break", *args], capture_output=True, text=True,
                         timeout=60)
    assert cli.returncode != 0 and error in cli.stderr, cli.stderr
    assert httpx.get(f"{lab.prometheus_url}/-/ready", timeout=5).status_code == 200
