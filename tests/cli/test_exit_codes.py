"""`medic`'s exit codes as the README defines them, each from a real cause: real subprocesses of the
`medic` command, a closed port for an unreachable dependency, the session lab for real outcomes."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from medic.core.net import free_port
from medic.core.paths import PLAYBOOKS_DIR, RUNBOOKS_DIR
from medic.core.report import ENDINGS, Outcome
from medic.errors import ExitCode
from medic_lab.state import LabState
from tests.support.approvals import secret_text
from tests.support.lab_health import Inject, broken, restored, seen  # noqa: F401 (fixtures)
from tests.support.waits import wait_for
from tests.support.closed_port import closed_port  # noqa: F401  (a fixture: a port held closed)

README = Path(__file__).resolve().parents[2] / "README.md"
RUN_ID = re.compile(r"medic approve ([0-9a-f-]{36})")


def medic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medic", *args], capture_output=True, text=True, timeout=300,
                          env=env if env is not None else lab_env(), stdin=subprocess.DEVNULL)


def lab_env(**extra: str) -> dict[str, str]:
    """The test session's environment (it points at the session lab), never a developer's `medic serve`."""
    return {**os.environ, "MEDIC_SERVER_PORT": str(free_port()), "PYTHONUNBUFFERED": "1", **extra}


# --- the table ------------------------------------------------------------------------------------


def test_the_readme_table_documents_every_exit_code() -> None:
    section = README.read_text().split("### Exit codes of `medic run`", 1)[1].split("\n#", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)}
    assert documented == {int(code) for code in ExitCode}


@pytest.mark.parametrize(("outcome", "code"), [
    (Outcome.RECOVERED, 0), (Outcome.NOT_NEEDED, 0), (Outcome.DRY_RUN, 0), (Outcome.PROMOTED, 0),
    (Outcome.REJOINED, 0), (Outcome.COMPLETED, 0), (Outcome.SKIPPED, 0),
    (Outcome.FAILED, 1), (Outcome.NOT_RECOVERED, 1), (Outcome.REFUSED, 1), (Outcome.PROMOTE_FAILED, 1),
    (Outcome.PROMOTED_NOT_ROUTED, 1), (Outcome.STOPPED, 1),
    (Outcome.REJECTED, 3), (Outcome.APPROVAL_TIMED_OUT, 3), (Outcome.ALREADY_RUNNING, 4),
])
def test_each_outcome_exits_as_the_readme_says(outcome: Outcome, code: int) -> None:
    assert outcome.exit_code == code
    assert outcome.completed == (code in (0, 4))  # the flow's final state agrees: Completed, else Failed


def test_every_outcome_has_exactly_one_ending() -> None:
    assert set(ENDINGS) == set(Outcome)
    names = [ending.state_name for ending in ENDINGS.values()]
    assert len(names) == len(set(names)), names


# --- without a lab: bad input (2) and an unreachable Prefect (5) ------------------------------------


@pytest.fixture
def no_lab(tmp_path: Path, closed_port: int) -> dict[str, str]:
    """An environment with an inventory, no lab, and Prefect configured at a port nothing listens on."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  children:\n    web:\n      hosts:\n        web-1:\n")
    (tmp_path / "lab").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDIC_", "PREFECT_"))}
    return env | {"MEDIC_LAB_DIR": str(tmp_path / "lab"), "MEDIC_INVENTORY": str(inventory),
                  "MEDIC_PREFECT_API_URL": f"http://127.0.0.1:{closed_port}/api",
                  "MEDIC_SERVER_PORT": str(free_port())}


@pytest.mark.parametrize(("args", "message"), [
    (["run", "no-such-runbook", "--local"], "no runbook named 'no-such-runbook'"),
    (["run", "service-down", "--target", "web-1; rm -rf /", "--local"], "is refused"),
    (["run", "service-down", "--target", "web-9", "--local"], "unknown target 'web-9'"),
    (["run"], "the following arguments are required: runbook"),
    (["run", "service-down", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_input_exits_2_before_anything_is_contacted(no_lab: dict[str, str], args: list[str],
                                                       message: str) -> None:
    """Prefect is unreachable here: had anything tried to reach it, the exit code would be 5."""
    done = medic(*args, env=no_lab)
    assert done.returncode == ExitCode.BAD_INPUT == 2, done.stderr
    assert message in done.stderr, done.stderr


def test_an_unreachable_prefect_exits_5_and_names_its_url(no_lab: dict[str, str]) -> None:
    done = medic("run", "service-down", "--target", "web-1", "--local", env=no_lab)
    assert done.returncode == ExitCode.DEPENDENCY == 5, done.stdout + done.stderr
    assert done.stderr.startswith("medic: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert no_lab["MEDIC_PREFECT_API_URL"] in done.stderr


def test_approve_with_prefect_unreachable_exits_5(no_lab: dict[str, str]) -> None:
    done = medic("approve", "3fa85f64-5717-4562-b3fc-2c963f66afa6", "--approver", "alice",
                 env={**no_lab, "MEDIC_APPROVER_SECRET": "A" * 32})  # well-formed: it gets as far as Prefect
    assert done.returncode == 5, done.stdout + done.stderr
    assert "Prefect API" in done.stderr


# --- with the lab: real outcomes (0, 1, 3, 4) and Prometheus unreachable mid-run (5) -----------------


def test_a_healthy_target_exits_0(lab: LabState, restored: LabState) -> None:
    done = medic("run", "service-down", "--target", "web-5", "--local")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NOT NEEDED: " in done.stdout


def test_a_failed_repair_exits_1(lab: LabState, restored: LabState, tmp_path: Path) -> None:
    """A runbook whose playbook always fails on the host (and that 'detects' the healthy web-5)."""
    runbooks, playbooks = tmp_path / "runbooks", tmp_path / "playbooks"
    runbooks.mkdir()
    playbooks.mkdir()
    (playbooks / "always-fails.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: Try the repair\n      ansible.builtin.command: /bin/false\n")
    spec = (RUNBOOKS_DIR / "service-down.yaml").read_text()
    spec = spec.replace("name: service-down", "name: broken-repair").replace("restart-service.yml", "always-fails.yml")
    (runbooks / "broken-repair.yaml").write_text(spec.replace('condition: "== 0"', 'condition: "== 1"', 1))
    assert (PLAYBOOKS_DIR / "restart-service.yml").is_file()  # what the copy replaced really exists
    done = medic("run", "broken-repair", "--target", "web-5", "--local",
                 env=lab_env(MEDIC_RUNBOOKS_DIR=str(runbooks), MEDIC_PLAYBOOKS_DIR=str(playbooks)))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED: " in done.stdout and "Try the repair" in done.stdout


def test_prometheus_unreachable_during_a_run_exits_5_and_names_its_url(lab: LabState, restored: LabState,
                                                                     closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    done = medic("run", "service-down", "--target", "web-5", "--local", env=lab_env(MEDIC_PROMETHEUS_URL=url))
    assert done.returncode == 5, done.stdout + done.stderr
    assert f"cannot reach Prometheus at {url}" in done.stderr, done.stderr


class Background:
    """A `medic` command running in the background; its output lines as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "medic", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                     env=lab_env(), start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def waiting_run(lab: LabState, broken: Inject) -> Iterator[tuple[Background, str]]:
    """`medic run disk-full` on web-1, paused for a human; at the end it is rejected (which releases
    its slot: a killed run would keep it) and stopped, pass or fail."""
    broken("disk-full", "web-1")
    seen(lab, "disk-full", "web-1")
    run = Background("run", "disk-full", "--target", "web-1", "--local")
    run_id: str | None = None
    try:
        found = wait_for(lambda: RUN_ID.search(run.output()) or run.proc.poll(), timeout=180,
                         what="`medic run disk-full` to ask for approval (its output so far is below)")
        assert isinstance(found, re.Match), f"medic run ended with {run.proc.returncode}:\n{run.output()}"
        run_id = found[1]
        yield run, run_id
    finally:
        if run_id and run.proc.poll() is None:
            medic("approve", run_id, "--reject", "--approver", "bob", "--comment", "test teardown",
                  env=lab_env(MEDIC_APPROVER_SECRET=secret_text("bob")))
            try:
                run.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        run.stop()


def test_a_second_run_meanwhile_exits_4_and_a_rejection_exits_3(waiting_run: tuple[Background, str]) -> None:
    first, run_id = waiting_run
    second = medic("run", "disk-full", "--target", "web-1", "--local")
    assert second.returncode == 4, second.stdout + second.stderr
    assert "ALREADY RUNNING: " in second.stdout
    decided = medic("approve", run_id, "--reject", "--approver", "bob", "--comment", "exit-code test",
                    env=lab_env(MEDIC_APPROVER_SECRET=secret_text("bob")))
    assert decided.returncode == 0, decided.stdout + decided.stderr
    assert first.proc.wait(timeout=120) == 3, first.output()
    assert "REJECTED: " in first.output()
