"""`medic validate` as a user runs it: a real subprocess on temporary runbook, playbook and inventory
directories (no lab)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from medic.core.paths import PLAYBOOKS_DIR, RUNBOOKS_DIR

INVENTORY = "all:\n  children:\n    web:\n      hosts:\n        web-1:\n        web-2:\n"


@dataclass
class Workspace:
    runbooks: Path
    playbooks: Path
    env: dict[str, str]

    def validate(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "medic", "validate"], env=self.env, capture_output=True,
                              text=True, timeout=60)

    def edit(self, runbook: str, old: str, new: str) -> Path:
        path = self.runbooks / f"{runbook}.yaml"
        text = path.read_text()
        assert text.count(old) == 1, old
        path.write_text(text.replace(old, new))
        return path


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """Copies of the real runbooks and playbooks, an inventory with group web, and no lab."""
    runbooks = Path(shutil.copytree(RUNBOOKS_DIR, tmp_path / "runbooks"))
    playbooks = Path(shutil.copytree(PLAYBOOKS_DIR, tmp_path / "playbooks"))
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "lab").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIC_")}
    env |= {"MEDIC_RUNBOOKS_DIR": str(runbooks), "MEDIC_PLAYBOOKS_DIR": str(playbooks),
            "MEDIC_INVENTORY": str(tmp_path / "inventory.yml"), "MEDIC_LAB_DIR": str(tmp_path / "lab")}
    return Workspace(runbooks, playbooks, env)


def test_the_real_runbooks_validate(workspace: Workspace) -> None:
    done = workspace.validate()
    assert (done.returncode, done.stdout, done.stderr) == (0, "4 runbook(s) checked, 0 problem(s)\n", "")


def test_a_missing_playbook_is_reported(workspace: Workspace) -> None:
    (workspace.playbooks / "cleanup-data-dir.yml").unlink()
    done = workspace.validate()
    assert done.returncode == 2
    assert done.stdout == "4 runbook(s) checked, 1 problem(s)\n"
    assert done.stderr == (f"{workspace.runbooks / 'disk-full.yaml'}: playbook not found; "
                           "field: recover.playbook; "
                           f"expected: a file {workspace.playbooks / 'cleanup-data-dir.yml'}; "
                           "found: cleanup-data-dir.yml\n")


def test_a_default_target_not_in_the_inventory_is_reported(workspace: Workspace) -> None:
    path = workspace.edit("high-latency", "  default: web\n", "  default: web-9\n")
    done = workspace.validate()
    assert done.returncode == 2
    assert done.stderr.startswith(f"{path}: unknown target 'web-9': not a host or group of the inventory "
                                  "(known: web-1, web-2, all, web); field: targets.default; ")
    assert done.stderr.endswith("expected: a host or group of the inventory; found: web-9\n")
    assert done.stdout == "4 runbook(s) checked, 1 problem(s)\n"


def test_an_unknown_field_is_reported_with_file_and_line(workspace: Workspace) -> None:
    path = workspace.edit("service-down", "  settle: 5s\n", "  settle: 5s\n  frobnicate: 1\n")
    line = path.read_text().splitlines().index("  frobnicate: 1") + 1
    done = workspace.validate()
    assert done.returncode == 2
    assert done.stderr == (f"{path}:{line}: unknown field 'frobnicate'; field: detect.frobnicate; "
                           "expected: one of the documented fields of detect; found: 1\n")


def test_a_missing_inventory_is_a_problem_but_runbooks_are_still_checked(workspace: Workspace) -> None:
    inventory = Path(workspace.env["MEDIC_INVENTORY"])
    inventory.unlink()
    workspace.edit("disk-full", "name: disk-full", "name: disk-ful")
    done = workspace.validate()
    assert done.returncode == 2
    problems = done.stderr.splitlines()
    assert problems[0] == (f"inventory: inventory {inventory} does not exist; start the lab (`medic lab up`) "
                           "or set MEDIC_INVENTORY")
    assert problems[1].startswith(f"{workspace.runbooks / 'disk-full.yaml'}:3: the runbook's name must match")
    assert done.stdout == "4 runbook(s) checked, 2 problem(s)\n"
