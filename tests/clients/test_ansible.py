"""run_playbook against the lab hosts with real ansible-playbook runs (tests/playbooks/)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from medic.clients.ansible import PlaybookResult, run_playbook
from medic.errors import AnsibleError, UnknownTargetError
from medic.core.inventory import Host, Inventory, load_inventory
from medic_lab.state import LabState
from tests.support.closed_port import closed_port  # noqa: F401  (a fixture: a port held closed)

PLAYBOOKS = Path(__file__).parents[1] / "playbooks"


@pytest.fixture(autouse=True)
def no_markers_left(lab: LabState) -> Iterator[None]:
    """The marker files the playbooks create stay out of the shared lab's data dirs after each test."""
    yield
    for host in lab.hosts[:2]:
        for marker in host.data_dir.glob("medic-test-*"):
            marker.unlink(missing_ok=True)


@pytest.fixture
def hosts(lab: LabState) -> list[Host]:
    inventory = load_inventory()
    return [inventory.host("web-1"), inventory.host("web-2")]


def inventory_copy(lab: LabState, tmp_path: Path, *, port: dict[str, int] | None = None,
                   ssh_args: str | None = None) -> Path:
    """The lab inventory with some hosts moved to other ports and/or other ssh options."""
    data = yaml.safe_load(lab.inventory.read_text())
    for name, new_port in (port or {}).items():
        data["all"]["children"]["web"]["hosts"][name]["ansible_port"] = new_port
    if ssh_args is not None:
        data["all"]["vars"]["ansible_ssh_common_args"] = ssh_args
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def touch(hosts: list[Host], name: str, **kwargs) -> PlaybookResult:
    return run_playbook(PLAYBOOKS / "touch_marker.yml", hosts=hosts, extravars={"marker": name}, **kwargs)


def test_playbook_changes_then_is_idempotent(lab: LabState, hosts: list[Host]) -> None:
    name = uuid.uuid4().hex[:8]
    first = touch(hosts, name)
    assert first.ok and first.status == "successful" and first.rc == 0, first
    for h in lab.hosts[:2]:
        result = first.hosts[h.name]
        assert (result.changed, result.failed, result.unreachable) == (1, 0, 0)
        assert [(t.task, t.status) for t in result.tasks] == [("touch the marker", "changed"), ("report to medic", "ok")]
        assert result.return_values == {"path": str(h.data_dir / f"medic-test-{name}"), "created": True}
        assert (h.data_dir / f"medic-test-{name}").is_file()
    second = touch(hosts, name)
    assert second.ok
    assert all(r.changed == 0 and r.return_values["created"] is False for r in second.hosts.values())
    assert set(second.hosts) == {"web-1", "web-2"}


def test_check_mode_changes_nothing_on_disk(lab: LabState, hosts: list[Host]) -> None:
    name = uuid.uuid4().hex[:8]
    result = touch(hosts, name, check=True)
    assert result.ok and result.check
    assert result.hosts["web-1"].changed == 1  # it would change...
    assert not (lab.hosts[0].data_dir / f"medic-test-{name}").exists()  # ...but did not


def test_only_the_given_hosts_are_targeted(lab: LabState, hosts: list[Host]) -> None:
    name = uuid.uuid4().hex[:8]
    result = touch(hosts[:1], name)
    assert set(result.hosts) == {"web-1"}
    assert (lab.hosts[0].data_dir / f"medic-test-{name}").exists()
    assert not (lab.hosts[1].data_dir / f"medic-test-{name}").exists()


def test_failing_task_is_a_failed_result_with_its_message(hosts: list[Host]) -> None:
    result = run_playbook(PLAYBOOKS / "fail.yml", hosts=hosts)
    assert result.status == "failed" and not result.ok and result.rc != 0
    web1 = result.hosts["web-1"]
    assert web1.failed == 1 and not web1.succeeded
    [task] = web1.tasks
    assert (task.task, task.status, task.msg) == ("refuse", "failed", "medic test failure on web-1")


def test_unreachable_host_is_in_the_result(lab: LabState, tmp_path: Path, closed_port: int) -> None:
    inventory = inventory_copy(lab, tmp_path, port={"web-2": closed_port})
    targets = Inventory.load(inventory).resolve("web")[:2]
    result = touch(targets, uuid.uuid4().hex[:8], inventory=inventory)
    assert not result.ok and result.status == "failed"
    dead = result.hosts["web-2"]
    assert dead.unreachable == 1 and dead.tasks[0].status == "unreachable"
    assert "Connection refused" in dead.tasks[0].msg
    assert result.hosts["web-1"].succeeded and result.hosts["web-1"].changed == 1


def test_wrong_host_key_is_refused(lab: LabState, tmp_path: Path) -> None:
    """Host-key checking is on although ansible-runner turns it off by default.

    The copied inventory leaves StrictHostKeyChecking to Ansible (and disables ssh connection
    sharing, which would skip the key check): only ANSIBLE_HOST_KEY_CHECKING=True refuses the host.
    """
    lines = lab.known_hosts.read_text().split("\n")
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{lines[0].split()[0]} {' '.join(lines[1].split()[1:])}\n")  # web-1 pinned to web-2's key
    inventory = inventory_copy(lab, tmp_path, ssh_args=f"-o UserKnownHostsFile={wrong} -o ControlPath=none")
    name = uuid.uuid4().hex[:8]
    result = touch(Inventory.load(inventory).resolve("web-1"), name, inventory=inventory)
    web1 = result.hosts["web-1"]
    assert web1.unreachable == 1 and not result.ok
    assert "Host key verification failed" in web1.tasks[0].msg
    assert not (lab.hosts[0].data_dir / f"medic-test-{name}").exists()


def test_environment_is_safe_and_nothing_is_left_on_disk(
    hosts: list[Host], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = run_playbook(PLAYBOOKS / "report_env.yml", hosts=hosts[:1], extravars={"extra": "x y"})
    values = result.hosts["web-1"].return_values
    assert values["host_key_checking"] == "True"
    assert values["local_temp"].startswith(str(scratch) + "/medic-ansible-")  # the run used scratch...
    assert values["extra"] == "x y"
    assert list(scratch.iterdir()) == []  # ...and left nothing there
    again = run_playbook(PLAYBOOKS / "report_env.yml", hosts=hosts[:1])
    assert again.hosts["web-1"].return_values["extra"] == "none"  # no extravars carried over


def test_timeout_stops_the_run(hosts: list[Host]) -> None:
    result = run_playbook(PLAYBOOKS / "sleep.yml", hosts=hosts[:1], timeout=2)
    assert result.status == "timeout" and not result.ok


def test_missing_playbook_is_an_ansible_error(hosts: list[Host], tmp_path: Path) -> None:
    with pytest.raises(AnsibleError, match=f"playbook {tmp_path}/nope.yml does not exist"):
        run_playbook(tmp_path / "nope.yml", hosts=hosts)


def test_broken_playbook_is_a_failed_result_with_ansibles_error(hosts: list[Host], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("- hosts: all\n  tasks:\n    - no_such_module_xyz: {}\n")
    result = run_playbook(broken, hosts=hosts)
    assert result.status == "failed" and not result.ok
    assert result.error and "no_such_module_xyz" in result.error


def test_targets_must_come_from_the_inventory(hosts: list[Host]) -> None:
    stranger = hosts[0].model_copy(update={"name": "db-9"})
    with pytest.raises(UnknownTargetError, match="db-9"):
        run_playbook(PLAYBOOKS / "fail.yml", hosts=[stranger])
    with pytest.raises(AnsibleError, match="no hosts given"):
        run_playbook(PLAYBOOKS / "fail.yml", hosts=[])
