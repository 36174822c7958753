"""A lab whose dir sits in a private folder (a checkout under a 0700 home) works; a SIGTERM to pytest
stops the session lab."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medic.core.paths import PROJECT_ROOT
from medic_lab import control
from medic_lab.processes import find_lab_processes
from medic_lab.state import LabHost, LabState, public_dir_for
from tests.support.waits import wait_for

BASE_PORT = int(os.environ.get("MEDIC_TEST_LAB_BASE_PORT", "21000"))
# Interleaved with the session lab's ports (+10..+100, +201.., +301..) so that every test lab stays within
# base..base+400: +40 uses +50, +120..+140, +241, +341; +65 uses +75, +145..+165, +266, +366.
PRIVATE_LAB_PORT = BASE_PORT + 40
PROBE_LAB_PORT = BASE_PORT + 65
PROBE = Path(__file__).with_name("sigterm_probe.py")


@pytest.fixture
def private_lab(tmp_path: Path) -> Iterator[LabState]:
    """A 1-host lab (no Prefect) in <0700 home>/checkout/.lab, always stopped."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    lab_dir = home / "checkout" / ".lab"
    try:
        yield control.up(lab_dir, hosts=1, base_port=PRIVATE_LAB_PORT, webhook_url="http://127.0.0.1:9/unused",
                         with_prefect=False)
    finally:
        control.down(lab_dir)


def _ssh(lab: LabState, host: LabHost, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(lab.ssh_key), "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(host.ssh_port), f"{host.user}@127.0.0.1", command],
        capture_output=True, text=True, timeout=60)


def test_a_lab_in_a_private_folder_serves_ssh_and_web(private_lab: LabState) -> None:
    lab, host = private_lab, private_lab.hosts[0]
    home = lab.lab_dir.parent.parent
    assert stat.S_IMODE(home.stat().st_mode) == 0o700, "the test must really run under a private folder"
    key = lab.ssh_key.stat()
    assert (stat.S_IMODE(key.st_mode), key.st_uid) == (0o600, 0), "the client key stays root's, 0600"
    assert lab.ssh_key.is_relative_to(lab.lab_dir) and host.root.is_relative_to(lab.public_dir)
    assert stat.S_IMODE(lab.public_dir.stat().st_mode) == 0o755

    said = _ssh(lab, host, f"id -un && {host.root}/bin/servicectl restart")
    assert said.returncode == 0, said.stdout + said.stderr
    assert said.stdout.splitlines()[0] == host.user
    assert "web: started" in said.stdout, said.stdout
    health = httpx.get(f"http://127.0.0.1:{host.service_port}/healthz", timeout=5)
    assert health.status_code == 200, health.text

    control.down(lab.lab_dir)
    assert find_lab_processes(lab.lab_dir) == []
    assert not lab.public_dir.exists(), f"`down` left the public dir {lab.public_dir}"


def test_sigterm_to_pytest_stops_its_session_lab(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    env = {**os.environ, "MEDIC_TEST_LAB_BASE_PORT": str(PROBE_LAB_PORT), "MEDIC_TEST_LAB_HOSTS": "1",
           "MEDIC_TEST_LAB_PREFECT": "0", "MEDIC_PROBE_READY": str(ready)}
    pytest_run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PROBE)],
                                  env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
    try:
        seen = wait_for(lambda: ready.read_text() if ready.exists() else
                        ("" if pytest_run.poll() is None else f"pytest exited with {pytest_run.returncode}"),
                        what="the inner pytest's session lab to be up", timeout=120, interval=0.2)
        assert not seen.startswith("pytest exited"), f"{seen}:\n{pytest_run.communicate()[0]}"
        lab_dir = Path(seen)
        assert find_lab_processes(lab_dir), f"no lab processes found for {lab_dir}"
        pytest_run.send_signal(signal.SIGTERM)
        output = pytest_run.communicate(timeout=120)[0]
    finally:
        if pytest_run.poll() is None:
            pytest_run.kill()
            pytest_run.communicate()
    left = find_lab_processes(lab_dir)
    if left:  # clean up what the inner pytest should have
        control.down(lab_dir)
        shutil.rmtree(lab_dir, ignore_errors=True)
    assert left == [], f"SIGTERM left the session lab running: {left}\n{output}"
    assert not public_dir_for(lab_dir).exists()
    assert "SIGTERM" in output and pytest_run.returncode == pytest.ExitCode.INTERRUPTED, output


class _Interrupted(Exception):
    """Raised from `up`'s progress callback: a failure after the daemons have started."""


def test_an_up_that_fails_after_starting_daemons_leaves_nothing(tmp_path: Path) -> None:
    lab_dir = tmp_path / "partial"
    started: list[int] = []

    def fail_once_started(message: str) -> None:
        started.extend(p.pid for p in find_lab_processes(lab_dir.resolve()))
        raise _Interrupted(message)

    with pytest.raises(_Interrupted):
        control.up(lab_dir, hosts=1, base_port=PRIVATE_LAB_PORT, webhook_url="http://127.0.0.1:9/unused",
                   with_prefect=False, progress=fail_once_started)
    assert len(started) >= 5, f"the failure should come after the daemons started; found {started}"
    assert find_lab_processes(lab_dir.resolve()) == []
    assert not public_dir_for(lab_dir.resolve()).exists(), "a failed `up` left its public dir"
    assert not (lab_dir / "settings.json").exists(), "a failed `up` must not advertise its endpoints"
