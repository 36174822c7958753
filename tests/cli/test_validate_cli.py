"""`medic validate` as a user (or a runbook author's CI) runs it: a real subprocess on temporary runbook,
playbook and inventory directories (no lab), with the real `ansible-playbook --syntax-check`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from medic.core.paths import PLAYBOOKS_DIR, RUNBOOKS_DIR

INVENTORY = ("all:\n  children:\n    web:\n      hosts:\n        web-1:\n        web-2:\n"
             "    db:\n      hosts:\n        pg-1:\n        pg-2:\n")
BROKEN_PLAY = ("- hosts: all\n  gather_facts: false\n  tasks:\n    - name: Say hello\n"
               "      ansible.builtin.debug:\n        msg: hello\n     oops: [\n")


@dataclass
class Workspace:
    runbooks: Path
    playbooks: Path
    inventory: Path
    env: dict[str, str]

    def validate(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "medic", "validate"], env=self.env, capture_output=True,
                              text=True, timeout=180)

    def edit(self, runbook: str, old: str, new: str) -> Path:
        path = self.runbooks / f"{runbook}.yaml"
        text = path.read_text()
        assert text.count(old) == 1, old
        path.write_text(text.replace(old, new))
        return path

    def summary(self, problems: int, *, playbooks: int | None = None, hosts: bool = True) -> str:
        """The summary line; `playbooks` defaults to the playbooks now in the workspace (all are checked)."""
        playbooks = len(list(self.playbooks.glob("*.yml"))) if playbooks is None else playbooks
        checked = f"the hosts they name in {self.inventory}" if hosts else "hosts not checked (no inventory configured)"
        return f"6 runbook(s), {playbooks} playbook(s) checked, {checked}: {problems} problem(s)\n"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """Copies of the real runbooks and playbooks, an inventory with groups web and db, and no lab."""
    runbooks = Path(shutil.copytree(RUNBOOKS_DIR, tmp_path / "runbooks"))
    playbooks = Path(shutil.copytree(PLAYBOOKS_DIR, tmp_path / "playbooks"))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(INVENTORY)
    (tmp_path / "lab").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIC_")}
    env |= {"MEDIC_RUNBOOKS_DIR": str(runbooks), "MEDIC_PLAYBOOKS_DIR": str(playbooks),
            "MEDIC_INVENTORY": str(inventory), "MEDIC_LAB_DIR": str(tmp_path / "lab"),
            "MEDIC_APPROVAL_KEY": "validate-test-key"}  # without it, validate warns (test_approval_warnings)
    return Workspace(runbooks, playbooks, inventory, env)


def test_the_real_runbooks_validate(workspace: Workspace) -> None:
    done = workspace.validate()
    assert (done.returncode, done.stdout, done.stderr) == (0, workspace.summary(0), "")


def test_a_missing_playbook_is_reported(workspace: Workspace) -> None:
    (workspace.playbooks / "cleanup-data-dir.yml").unlink()
    done = workspace.validate()
    assert done.returncode == 2
    assert done.stdout == workspace.summary(1)
    assert done.stderr == (f"{workspace.runbooks / 'disk-full.yaml'}: playbook not found; "
                           "field: recover.playbook; "
                           f"expected: a file {workspace.playbooks / 'cleanup-data-dir.yml'}; "
                           "found: cleanup-data-dir.yml\n")


def test_a_default_target_not_in_the_inventory_is_reported(workspace: Workspace) -> None:
    path = workspace.edit("high-latency", "  default: web\n", "  default: web-9\n")
    done = workspace.validate()
    assert done.returncode == 2
    assert done.stderr.startswith(f"{path}: unknown target 'web-9': not a host or group of the inventory "
                                  "(known: pg-1, pg-2, web-1, web-2, all, db, web); field: targets.default; ")
    assert done.stderr.endswith("expected: a host or group of the inventory; found: web-9\n")
    assert done.stdout == workspace.summary(1)


def test_a_failover_cluster_group_not_in_the_inventory_is_reported(workspace: Workspace) -> None:
    workspace.inventory.write_text(INVENTORY.split("    db:")[0])
    done = workspace.validate()
    assert done.returncode == 2
    assert done.stderr.startswith(f"{workspace.runbooks / 'postgres-failover.yaml'}: unknown target 'db': ")
    assert "field: failover.members; " in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_an_unknown_field_is_reported_with_file_and_line(workspace: Workspace) -> None:
    path = workspace.edit("service-down", "  settle: 5s\n", "  settle: 5s\n  frobnicate: 1\n")
    line = path.read_text().splitlines().index("  frobnicate: 1") + 1
    done = workspace.validate()
    assert done.returncode == 2
    assert done.stderr == (f"{path}:{line}: unknown field 'frobnicate'; field: detect.frobnicate; "
                           "expected: one of the documented fields of detect; found: 1\n")


def test_without_an_inventory_specs_and_playbooks_are_still_checked(workspace: Workspace) -> None:
    """A runbook author's CI has specs and playbooks, no inventory: that is not a problem."""
    del workspace.env["MEDIC_INVENTORY"]
    workspace.inventory.unlink()
    clean = workspace.validate()
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, workspace.summary(0, hosts=False), "")

    path = workspace.edit("disk-full", "name: disk-full", "name: disk-ful")
    done = workspace.validate()
    assert done.returncode == 2
    assert done.stderr.startswith(f"{path}:3: the runbook's name must match") and done.stderr.count("\n") == 1
    assert done.stdout == workspace.summary(1, hosts=False)


def test_a_configured_inventory_that_is_missing_is_a_problem_but_runbooks_are_still_checked(
        workspace: Workspace) -> None:
    workspace.inventory.unlink()
    workspace.edit("disk-full", "name: disk-full", "name: disk-ful")
    done = workspace.validate()
    assert done.returncode == 2
    problems = done.stderr.splitlines()
    assert problems[0] == (f"inventory {workspace.inventory} does not exist; start the lab (`medic lab up`) "
                           "or set MEDIC_INVENTORY")
    assert problems[1].startswith(f"{workspace.runbooks / 'disk-full.yaml'}:3: the runbook's name must match")
    assert done.stdout == workspace.summary(2)


def test_a_playbook_with_a_syntax_error_is_reported_with_its_file_and_line(workspace: Workspace) -> None:
    playbook = workspace.playbooks / "restart-service.yml"
    playbook.write_text(BROKEN_PLAY)
    line = BROKEN_PLAY.splitlines().index("     oops: [") + 1
    done = workspace.validate()
    assert done.returncode == 2
    assert done.stderr.startswith(f"{playbook}:{line}: ansible-playbook --syntax-check: YAML parsing failed")
    assert done.stderr.count("\n") == 1, done.stderr  # the other playbooks are fine, and say nothing
    assert done.stdout == workspace.summary(1)


def test_a_playbook_no_runbook_names_is_checked_too(workspace: Workspace) -> None:
    """Every playbook in playbooks/: maintenance flows run some that no runbook names."""
    extra = workspace.playbooks / "unused.yml"
    extra.write_text("- hosts: all\n  tasks:\n    - name: A module that does not exist\n"
                     "      ansible.builtin.no_such_module: {}\n")
    done = workspace.validate()
    assert done.returncode == 2
    assert done.stderr.startswith(f"{extra}:3: ansible-playbook --syntax-check: couldn't resolve module/action "
                                  "'ansible.builtin.no_such_module'"), done.stderr
    assert done.stdout == workspace.summary(1)


def test_approval_warnings_do_not_fail_validation_but_say_what_to_fix(workspace: Workspace) -> None:
    """Issue 11: no key → nothing could be approved; a required policy naming nobody; a name not in the
    approver directory. Warnings (stderr), exit 0: the specs themselves are valid."""
    workspace.env.pop("MEDIC_APPROVAL_KEY")
    path = workspace.edit("disk-full", "  approvers: [alice, bob]  # names in approvers.yaml\n", "")
    workspace.edit("postgres-failover", "approvers: [alice, bob]", "approvers: [alice, mallory]")
    done = workspace.validate()
    assert done.returncode == 0 and done.stdout == workspace.summary(0).replace("\n", ", 3 warning(s)\n"), done
    warnings = done.stderr.splitlines()
    assert warnings[0].startswith("warning: MEDIC_APPROVAL_KEY is not set: no approval can be verified"), warnings
    assert f"warning: {path}: approval: policy 'required' names no approvers" in warnings[1], warnings
    assert "approval.approvers: 'mallory' is not in" in warnings[2] and "it admits nobody" in warnings[2], warnings
