"""A host that hangs (its sshd SIGSTOPped) and a remote command that never returns, mid-work.

Nothing lost here means: every host asked has a result of its own, the hung one's says it timed out,
the others' are unaffected, and no ssh / ansible-playbook process (ours) or remote command (theirs)
is left running afterwards.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from medic.clients.ansible import run_playbook
from medic.clients.ssh import SSHSession
from medic.core.inventory import Host, load_inventory
from medic.core.paths import PROJECT_ROOT
from medic_lab.state import LabState
from tests.support.chaos import Inject, close_ssh_masters, our_client_processes
from tests.support.waits import wait_for

RESTART = PROJECT_ROOT / "playbooks" / "restart-service.yml"

pytestmark = pytest.mark.chaos


@pytest.fixture
def hosts(lab: LabState) -> list[Host]:
    inventory = load_inventory()
    return [inventory.host(h.name) for h in lab.hosts if h.group == "web"][:3]


def remote_processes(user: str, needle: str) -> list[str]:
    """Live processes of a lab host's user whose command line contains `needle`."""
    out = subprocess.run(["ps", "-u", user, "-o", "pid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if needle in line and line.split()[1][:1] != "Z"]


def test_a_hung_host_in_an_ssh_fan_out_times_out_alone(lab: LabState, hosts: list[Host], inject: Inject) -> None:
    """Nothing lost: three hosts asked, three results; the hung one's says it timed out (no banner),
    the two others answered; no client connection to the hung host is left open."""
    hung = hosts[1]
    close_ssh_masters(hung.port)  # an earlier test's master to this host would hold a connection of its own
    inject("sshd-hang", hung.name)
    with SSHSession(connect_timeout=2) as ssh:
        results = ssh.fan_out(hosts, "echo up", timeout=5)
    assert [r.host for r in results] == [h.name for h in hosts]
    assert results[0].ok and results[2].ok, results
    assert results[1].unreachable and "no SSH answer within 2 s" in (results[1].error or ""), results[1]
    assert our_client_processes(hung.port) == []


def test_a_hung_host_in_a_playbook_batch_is_unreachable_and_the_others_done(
        lab: LabState, hosts: list[Host], inject: Inject) -> None:
    """Nothing lost: the playbook has a result for each host of the batch — the hung host unreachable
    with ssh's own timeout message, the others' tasks ran — and no ssh or ansible-playbook process
    of ours is left (ControlPersist masters of the healthy hosts name no hung port)."""
    hung = hosts[1]
    close_ssh_masters(hung.port)  # an earlier test's master to this host would hold a connection of its own
    inject("sshd-hang", hung.name)
    result = run_playbook(RESTART, hosts=hosts, timeout=60)
    assert set(result.hosts) == {h.name for h in hosts}, result
    assert result.hosts[hung.name].unreachable, result.hosts[hung.name]
    message = " ".join(t.msg for t in result.hosts[hung.name].tasks)
    assert "timed out" in message.lower(), message
    assert all(result.hosts[h.name].succeeded for h in hosts if h is not hung), result
    assert wait_for(lambda: our_client_processes(hung.port),
                    what="no ssh / ansible-playbook process left", timeout=10, done=lambda left: not left) == []


def test_a_hung_playbook_step_times_out_and_leaves_no_process_on_either_side(
        lab: LabState, hosts: list[Host], inject: Inject) -> None:
    """Nothing lost: the step ends as `timeout` within its bound with a clear status, the healthy
    `status` task before it ran, and neither our ansible-playbook/ssh nor the remote blocked
    `servicectl restart` is still running once the run has returned."""
    target = hosts[2]
    lab_host = lab.host(target.name)
    assert lab_host is not None
    inject("playbook-hang", target.name)
    result = run_playbook(RESTART, hosts=[target], extravars={"restart_if_running": True}, timeout=6)
    assert result.status == "timeout" and not result.ok, result
    assert wait_for(lambda: our_client_processes(), what="no ssh / ansible-playbook process of ours left",
                    timeout=10, done=lambda left: not left) == []
    servicectl = str(Path(lab_host.root) / "bin" / "servicectl")
    assert wait_for(lambda: remote_processes(target.user, servicectl),
                    what=f"no `servicectl restart` left running on {target.name}", timeout=10,
                    done=lambda left: not left) == []
