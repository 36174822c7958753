"""What the lab starts and is later killed is reaped, not left a zombie (PID 1 here never reaps)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from medic_lab import faults
from medic_lab.processes import process_gone, spawn
from medic_lab.reaper import stat_fields
from medic_lab.state import LabHost, LabState
from tests.support.waits import wait_for

REAP_TIMEOUT_S = 10


def _proc_entry(pid: int) -> str:
    """What /proc says about a pid: 'gone' once reaped, else its state letter (Z = zombie)."""
    fields = stat_fields(pid)
    return "gone" if fields is None else f"state {fields[0].decode()}"


def _wait_reaped(pid: int) -> None:
    wait_for(lambda: _proc_entry(pid), what=f"/proc/{pid} to disappear (reaped, not a zombie)",
             timeout=REAP_TIMEOUT_S, done=lambda seen: seen == "gone", interval=0.05)


def test_a_killed_child_of_spawn_is_reaped(tmp_path: Path) -> None:
    proc = spawn("sleeper", [sys.executable, "-c", "import signal; signal.pause()"], lab_dir=tmp_path)
    try:
        assert _proc_entry(proc.pid).startswith("state "), "the child never ran"
        os.kill(proc.pid, signal.SIGKILL)
        _wait_reaped(proc.pid)
    finally:
        if not process_gone(proc.pid):
            os.kill(proc.pid, signal.SIGKILL)


def test_process_gone_counts_a_zombie_as_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # not the lab's: nobody reaps it until wait()
    try:
        wait_for(lambda: _proc_entry(child.pid), what=f"pid {child.pid} to exit and stay a zombie",
                 timeout=REAP_TIMEOUT_S, done=lambda seen: seen == "state Z", interval=0.05)
        assert Path(f"/proc/{child.pid}").exists()
        assert process_gone(child.pid)
    finally:
        child.wait(timeout=10)
    assert process_gone(child.pid)


@pytest.fixture
def web_host(lab: LabState) -> Iterator[LabHost]:
    """web-6 with its service running again afterwards, whatever the test did to it."""
    host = lab.host("web-6")
    assert host is not None, [h.name for h in lab.hosts]
    yield host
    faults.fix_host(lab, "service-down", host.name)


def _service_pid(host: LabHost) -> int:
    return int((host.root / "run" / "web.pid").read_text())


def test_a_lab_service_killed_by_a_fault_is_reaped(lab: LabState, web_host: LabHost) -> None:
    faults.break_host(lab, "service-down", web_host.name)
    faults.fix_host(lab, "service-down", web_host.name)  # started by this process, through spawn
    pid = _service_pid(web_host)
    said = faults.break_host(lab, "service-down", web_host.name)
    assert str(pid) in said, said
    _wait_reaped(pid)


def test_a_daemon_started_over_ssh_and_killed_is_reaped(lab: LabState, web_host: LabHost) -> None:
    """`servicectl restart` over SSH detaches the service: its parent exits and it is orphaned. It comes
    to this process (a child subreaper), not to PID 1, and is reaped when it dies."""
    restarted = subprocess.run(
        ["ssh", "-i", str(lab.ssh_key), "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "BatchMode=yes",
         "-p", str(web_host.ssh_port), f"{web_host.user}@127.0.0.1", f"{web_host.root}/bin/servicectl restart"],
        capture_output=True, text=True, timeout=60)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    pid = _service_pid(web_host)
    fields = stat_fields(pid)
    assert fields is not None and int(fields[1]) == os.getpid(), (
        f"the service started over SSH (pid {pid}) should have been re-parented to this process; "
        f"its parent is {fields[1].decode() if fields else 'gone'}")
    os.kill(pid, signal.SIGKILL)
    _wait_reaped(pid)
