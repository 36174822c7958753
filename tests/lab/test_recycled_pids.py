"""A pidfile whose dead process's pid now names another host's webapp (or sshd) means "not running".

Every lab host shares one pid namespace and pids wrap at pid_max (32768 here) within a minute when
Ansible runs: the 30-minute soak saw web-1's `servicectl status` answer "running" for 2 minutes while
web-1 was down — its stale pid had been given to another host's webapp — so the first repair did
nothing. Here the recycling is made on purpose: the host's pidfile is pointed at a live process of
another host; the lab is restored and checked afterwards.
"""

from __future__ import annotations

import subprocess

import pytest

from medic.errors import LabError
from medic_lab import faults
from medic_lab.dependency_faults import sshd_pid
from medic_lab.processes import alive, spawned_pid
from medic_lab.state import LabHost, LabState
from tests.support.lab_health import Inject, restored  # noqa: F401 (fixture)
from tests.support.lab_health import broken  # noqa: F401 (fixture)


def _pid(path) -> int:  # noqa: ANN001 - a pidfile path
    return int(path.read_text().strip())


def _web(lab: LabState) -> tuple[LabHost, LabHost]:
    web = [h for h in lab.hosts if h.group == "web"]
    return web[1], web[2]


def test_a_stale_pid_that_now_names_another_hosts_webapp_is_not_this_hosts_service(
        lab: LabState, broken: Inject) -> None:
    """What the user sees: `servicectl status` says stopped (3), so the repair starts the service; the
    lab's injectors refuse to signal the other host's process and leave it running."""
    down, other = _web(lab)
    broken("service-down", down.name)
    other_pid = _pid(other.root / "run" / "web.pid")
    assert alive(other_pid)
    (down.root / "run" / "web.pid").write_text(f"{other_pid}\n")  # what pid recycling does

    status = subprocess.run([str(down.root / "bin" / "servicectl"), "status"], capture_output=True, text=True,
                            timeout=30)
    assert (status.returncode, status.stdout.strip()) == (3, "web: stopped"), status
    with pytest.raises(LabError, match=f"web service of {down.name} is not running"):
        faults.break_host(lab, "slow", down.name)  # would have slowed the other host's webapp
    assert "already down" in faults.break_host(lab, "service-down", down.name)
    assert alive(other_pid), f"{other.name}'s webapp (pid {other_pid}) was killed through {down.name}'s pidfile"

    started = subprocess.run(["runuser", "-u", down.user, "--", str(down.root / "bin" / "servicectl"), "start"],
                             capture_output=True, text=True, timeout=60)  # as the host's user, like the playbook
    assert started.returncode == 0 and "web: started" in started.stdout, started
    assert _pid(down.root / "run" / "web.pid") != other_pid and alive(other_pid)


def test_a_stale_sshd_pid_that_names_another_hosts_sshd_is_not_hung_through_it(lab: LabState, restored: LabState) -> None:
    """sshd rewrites its command line into a title; its config path in it still tells the hosts apart."""
    one, other = _web(lab)
    mine, theirs = sshd_pid(one), sshd_pid(other)
    assert mine is not None and theirs is not None and mine != theirs
    pidfile = one.root / "sshd" / "sshd.pid"
    saved = pidfile.read_text()
    try:
        pidfile.write_text(f"{theirs}\n")
        assert sshd_pid(one) is None
    finally:
        pidfile.write_text(saved)
    assert sshd_pid(one) == mine


def test_a_lab_daemons_stale_pid_that_names_another_process_is_not_signalled(lab: LabState) -> None:
    """The lab's own daemons (`<lab>/pids/*.pid`): a pid that now names a process `spawn` did not start
    for this lab (here: a session leader without the lab's mark, as a reused pid would be) means the
    daemon is down — `medic lab break alertmanager-down` says so and leaves that process alone."""
    pidfile = lab.lab_dir / "pids" / "alertmanager.pid"
    mine = spawned_pid(lab.lab_dir, "alertmanager")
    assert mine is not None, "the lab's Alertmanager should be running before the test"
    saved = pidfile.read_text()
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True, env={"PATH": "/usr/bin:/bin"})
    try:
        pidfile.write_text(f"{stranger.pid}\n")  # what pid reuse does once the daemon has died
        assert spawned_pid(lab.lab_dir, "alertmanager") is None
        assert faults.break_host(lab, "alertmanager-down") == "alertmanager was already down"
        assert stranger.poll() is None, "a process that is not the lab's Alertmanager was stopped through its pidfile"
    finally:
        pidfile.write_text(saved)
        stranger.kill()
        stranger.wait(timeout=10)
    assert spawned_pid(lab.lab_dir, "alertmanager") == mine
