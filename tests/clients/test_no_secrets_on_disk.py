"""No secret reaches disk: with recognisable fake secrets in medic's environment, real playbooks
(one SIGKILLed mid-run) and a real maintenance flow run leave no trace of them in any file medic,
ansible-runner, Ansible or Prefect wrote (the lab dir with the state dir and Prefect's SQLite DB,
run dirs in the temp dir, ~/.ansible).

Before the fix, ansible-runner's artifacts/<ident>/command held the whole environment: the SIGKILL
test's leftover run dir had every canary in it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from medic.clients.ansible import run_playbook, syntax_check
from medic.clients.ansible_env import sweep_stale
from medic.core.inventory import Host, load_inventory
from medic.core.polling import wait_until
from medic.settings import get_settings
from medic_lab.state import LabState
from tests.fakes.slack_api import FakeSlack
from tests.support.secret_scan import find_secrets, make_canaries, places_written

PLAYBOOKS = Path(__file__).parents[1] / "playbooks"
KILLED_RUN = """
import sys
from pathlib import Path
from medic.clients.ansible import run_playbook
from medic.core.inventory import load_inventory
run_playbook(Path(sys.argv[1]), hosts=[load_inventory().host("web-1")], timeout=120)
"""


@pytest.fixture(scope="module")
def canaries(lab: LabState) -> Iterator[dict[str, str]]:
    """The secrets medic holds in production, as fake values, in this process's environment; Slack
    pointed at the local fake so nothing leaves the machine."""
    values = make_canaries()
    with FakeSlack(token=values["MEDIC_SLACK_BOT_TOKEN"]) as slack, pytest.MonkeyPatch.context() as mp:
        for name, value in values.items():
            mp.setenv(name, value)
        mp.setenv("MEDIC_SLACK_API_URL", slack.base_url)
        get_settings.cache_clear()
        try:
            yield values
        finally:
            get_settings.cache_clear()
    get_settings.cache_clear()


@pytest.fixture
def web1(lab: LabState) -> Host:
    return load_inventory().host("web-1")


def leaks(lab: LabState, canaries: dict[str, str], *extra: Path) -> list[str]:
    return find_secrets([*places_written(lab.lab_dir), lab.public_dir, *extra], canaries)


def test_playbooks_leave_no_secret_anywhere(lab: LabState, canaries: dict[str, str], web1: Host) -> None:
    assert os.environ["MEDIC_APPROVAL_KEY"] == canaries["MEDIC_APPROVAL_KEY"]  # the canaries are live
    assert run_playbook(PLAYBOOKS / "echo_vars.yml", hosts=[web1], extravars={"value": "*.tmp"}).ok
    assert not run_playbook(PLAYBOOKS / "fail.yml", hosts=[web1]).ok
    assert run_playbook(get_settings().playbooks_dir / "cleanup-data-dir.yml", hosts=[web1], check=True).ok
    assert syntax_check([get_settings().playbooks_dir / "restart-service.yml"]) == []
    assert leaks(lab, canaries) == []


def test_a_playbook_sigkilled_mid_run_leaves_no_secret(lab: LabState, canaries: dict[str, str],
                                                       web1: Host) -> None:
    """medic killed while ansible-playbook runs: its run dir stays behind (no `finally` ran) and
    holds nothing secret; the next run removes it."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(PLAYBOOKS / "sleep.yml")],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tmp = Path(tempfile.gettempdir())
    try:
        def started() -> list[Path]:
            return [p for p in tmp.glob(f"medic-ansible-{proc.pid}-*/artifacts/*/stdout")
                    if "sleep long" in p.read_text(errors="replace")]

        outputs = wait_until(started, timeout=60, interval=0.2,
                             what=f"the playbook run by pid {proc.pid} to reach its sleep task")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    left = outputs[0].parents[2]
    try:
        assert left.is_dir() and (outputs[0].parent / "command").is_file()  # what ansible-runner wrote
        assert find_secrets([left], canaries) == []
        assert leaks(lab, canaries) == []
    finally:  # ansible-playbook ran in its own session (a pty): it outlives medic until SIGHUP ends it
        orphans = wait_until(lambda: _processes_using(left), timeout=30, interval=0.2, done=lambda found: not found,
                             what=f"the orphaned ansible-playbook of {left} to end after losing its terminal")
    assert orphans == []
    assert run_playbook(PLAYBOOKS / "echo_vars.yml", hosts=[web1]).ok  # sweeps run dirs of dead medic processes
    wait_until(lambda: (sweep_stale(), left.exists())[1], done=lambda exists: not exists, timeout=30, interval=0.5,
               what=f"{left} (its medic process is gone) to be swept")


def _processes_using(path: Path) -> list[str]:
    """Live processes whose command line names `path` (ansible-playbook gets `-e @<run dir>/…`)."""
    out = subprocess.run(["ps", "-eo", "stat=,pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(path) in line and not line.lstrip().startswith("Z")]


def test_a_maintenance_flow_run_leaves_no_secret_in_prefect_or_the_state_dir(lab: LabState,
                                                                              canaries: dict[str, str]) -> None:
    from flows import maintenance
    from medic.orchestration.runs import run_flow_now

    outcome = asyncio.run(run_flow_now(maintenance.cleanup, {"group": "web-1", "dry_run": True,
                                                             "ignore_window": True, "reason": "secret check"}))
    assert outcome.result is not None, f"{outcome.state_name}: {outcome.message}"
    assert leaks(lab, canaries) == []
