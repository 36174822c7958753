"""SSH fan-out against the lab's real sshd hosts, with host-key checking on."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tests.support.closed_port import closed_port  # noqa: F401  (a fixture: a port held closed)
from medic.errors import ConfigError, UnsafeValueError
from medic.core.inventory import Host, load_inventory
from medic_lab.state import LabState
from medic.clients.ssh import OUTPUT_LIMIT, SSHSession, _connect_error
from tests.support.waits import wait_for


@pytest.fixture
def hosts(lab: LabState) -> list[Host]:
    inventory = load_inventory()
    return [inventory.host(h.name) for h in lab.hosts]


@pytest.fixture
def ssh(lab: LabState) -> Iterator[SSHSession]:
    with SSHSession() as session:
        yield session


def marker(lab: LabState, name: str) -> Path:
    """A path in web-1's data dir that a command must (or must not) create."""
    return lab.hosts[0].data_dir / f"ssh-test-{name}-{uuid.uuid4().hex[:8]}"


def live_processes(user: str, needle: str) -> list[str]:
    """Running (not zombie) processes of a lab user whose command line contains needle.

    Lab users are shared by every lab on the machine (other sessions' tests run as them too): make
    the needle unique to the test (see `unique_seconds`)."""
    out = subprocess.run(["ps", "-u", user, "-o", "stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if needle in line and not line.lstrip().startswith("Z")]


def unique_seconds(whole: int) -> str:
    """`whole` seconds as a `sleep` argument no other process has: e.g. 4.000123456."""
    return f"{whole}.000{uuid.uuid4().int % 10**6:06d}"


def wait_stopped(user: str, needle: str) -> None:
    wait_for(lambda: live_processes(user, needle), what=f"{user}'s processes matching {needle!r} to be gone",
             timeout=10, done=lambda found: not found)


def with_known_hosts(hosts: list[Host], path: Path) -> list[Host]:
    return [h.model_copy(update={"known_hosts": path}) for h in hosts]


def test_fan_out_runs_as_each_hosts_user_in_host_order(lab: LabState, ssh: SSHSession, hosts: list[Host]) -> None:
    results = ssh.fan_out(hosts, "id -un")
    assert [r.host for r in results] == [h.name for h in hosts]
    for r, h in zip(results, lab.hosts):
        assert r.ok, r
        assert r.stdout.strip() == f"mlab-{h.name}" == h.user
        assert r.exit_code == 0 and r.error is None and r.duration_s > 0


def test_fan_out_with_a_command_per_host(ssh: SSHSession, hosts: list[Host]) -> None:
    results = ssh.fan_out(hosts, lambda h: f"echo {h.name}-$((1 + 1))")
    assert [r.stdout.strip() for r in results] == [f"{h.name}-2" for h in hosts]
    assert [r.command for r in results] == [f"echo {h.name}-$((1 + 1))" for h in hosts]


def test_a_refused_value_while_rendering_stops_the_whole_fan_out(lab: LabState, ssh: SSHSession, hosts: list[Host]) -> None:
    target = marker(lab, "render")

    def render(host: Host) -> str:
        if host.name == hosts[-1].name:
            raise UnsafeValueError(f"refused for {host.name}")
        return f"touch {target}"

    with pytest.raises(UnsafeValueError, match="refused for"):
        ssh.fan_out(hosts, render)
    assert not target.exists()  # web-1 comes first, yet nothing ran


def test_wrong_host_key_is_refused_and_nothing_runs(
    lab: LabState, ssh: SSHSession, hosts: list[Host], tmp_path: Path
) -> None:
    lines = lab.known_hosts.read_text().split("\n")[: len(hosts)]
    # every host is pinned to the *next* host's key: a real ed25519 key, just not its own
    swapped = [f"{line.split()[0]} {' '.join(lines[(i + 1) % len(lines)].split()[1:])}" for i, line in enumerate(lines)]
    (tmp_path / "known_hosts").write_text("\n".join(swapped) + "\n")
    target = marker(lab, "mismatch")
    results = ssh.fan_out(with_known_hosts(hosts, tmp_path / "known_hosts"), f"touch {target}")
    for r, h in zip(results, lab.hosts):
        assert not r.ok and r.unreachable and r.exit_code is None
        assert r.error.startswith(f"host key mismatch for [127.0.0.1]:{h.ssh_port} — refusing to connect"), r.error
    assert not target.exists()


def test_unknown_host_key_is_refused(lab: LabState, ssh: SSHSession, hosts: list[Host], tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text("")
    target = marker(lab, "unknown")
    [r] = ssh.fan_out(with_known_hosts(hosts[:1], tmp_path / "known_hosts"), f"touch {target}")
    assert r.error.startswith(f"unknown host key for [127.0.0.1]:{lab.hosts[0].ssh_port}"), r.error
    assert "refusing to connect" in r.error and not target.exists()


def test_dead_port_is_unreachable_while_others_succeed(ssh: SSHSession, hosts: list[Host], closed_port: int) -> None:
    dead = hosts[1].model_copy(update={"port": closed_port})
    results = ssh.fan_out([hosts[0], dead, hosts[2]], "hostname >/dev/null && echo up")
    assert results[1].error == "unreachable: connection refused" and results[1].unreachable
    assert results[0].ok and results[2].ok and results[0].stdout == "up\n"


def test_a_port_that_accepts_and_never_speaks_is_a_hung_host_not_a_protocol_error(hosts: list[Host]) -> None:
    """What a SIGSTOPped sshd looks like (the kernel accepts, nobody answers): whichever way paramiko
    gives up (banner timeout or no session), the user reads that the host hangs."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hung = hosts[1].model_copy(update={"port": silent.getsockname()[1]})
        with SSHSession(connect_timeout=1.0) as session:
            results = session.fan_out([hosts[0], hung], "echo up")
    assert results[0].ok and results[0].stdout == "up\n", results[0]
    assert results[1].unreachable and "no SSH answer within 1 s" in (results[1].error or ""), results[1]
    assert "the host hangs?" in (results[1].error or ""), results[1]


@pytest.mark.parametrize("paramiko_says", ["No existing session", "Error reading SSH protocol banner"])
def test_both_ways_paramiko_gives_up_on_a_silent_sshd_read_as_a_hung_host(hosts: list[Host], paramiko_says: str) -> None:
    """Which of the two paramiko raises depends on which of its threads times out first (the chaos
    suite saw both): the message must not."""
    said = _connect_error(paramiko.SSHException(paramiko_says), hosts[0], Path("/dev/null"), 2.0)
    assert said == "unreachable: no SSH answer within 2 s (port open, no handshake: the host hangs?)", said


def test_wrong_user_is_auth_failed(ssh: SSHSession, hosts: list[Host]) -> None:
    r = ssh.run(hosts[0].model_copy(update={"user": hosts[1].user}), "true")
    assert r.error and r.error.startswith("auth failed") and r.unreachable


def test_exit_code_stdout_and_stderr_are_captured(ssh: SSHSession, hosts: list[Host]) -> None:
    r = ssh.run(hosts[0], "echo to-out; echo to-err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "to-out\n", "to-err\n")
    assert not r.ok and r.error is None and not r.timed_out
    missing = ssh.run(hosts[0], "no-such-command-xyz")
    assert missing.exit_code == 127 and "not found" in missing.stderr


def test_command_is_passed_through_unchanged(ssh: SSHSession, hosts: list[Host]) -> None:
    r = ssh.run(hosts[0], """printf '%s|' "a b" 'c"d' "it's" $((6 * 7))""")
    assert r.stdout == """a b|c"d|it's|42|"""


def test_stdin_is_closed(ssh: SSHSession, hosts: list[Host]) -> None:
    r = ssh.run(hosts[0], "cat; echo done", timeout=5)
    assert r.ok and r.stdout == "done\n"


def test_output_is_capped_but_the_command_completes(lab: LabState, hosts: list[Host]) -> None:
    with SSHSession(output_limit=1000) as small:
        r = small.run(hosts[0], "head -c 5000 /dev/zero | tr '\\0' a; echo end >&2")
    assert r.ok and r.truncated and r.stdout == "a" * 1000 and r.stderr == "end\n"
    with SSHSession() as default:
        big = default.run(hosts[0], "head -c 200000 /dev/zero | tr '\\0' b")
    assert big.ok and big.truncated and len(big.stdout) == OUTPUT_LIMIT
    with SSHSession() as default:
        small_out = default.run(hosts[0], "echo short")
    assert not small_out.truncated


def test_timeout_really_stops_the_remote_command(lab: LabState, ssh: SSHSession, hosts: list[Host]) -> None:
    target, seconds = marker(lab, "timeout"), unique_seconds(4)
    r = ssh.run(hosts[0], f"sleep {seconds}; touch {target}", timeout=1)
    assert r.timed_out and not r.ok and r.exit_code is None
    assert r.error == "timed out after 1 s — command stopped"
    # Stopped means no process is left that could still touch the marker: neither the sleep nor the
    # shell that would run `touch` after it (its command line names the marker). No waiting 4 s.
    wait_stopped(lab.hosts[0].user, f"sleep {seconds}")
    wait_stopped(lab.hosts[0].user, str(target))
    assert not target.exists()
    assert ssh.run(hosts[0], "echo still-usable").stdout == "still-usable\n"  # the connection survives


def test_timeout_reaches_background_children_of_the_command(lab: LabState, ssh: SSHSession, hosts: list[Host]) -> None:
    first, second = unique_seconds(31), unique_seconds(32)
    r = ssh.run(hosts[0], f"sleep {first} & sleep {second}; wait", timeout=1)
    assert r.timed_out
    wait_stopped(lab.hosts[0].user, f"sleep {first}")
    wait_stopped(lab.hosts[0].user, f"sleep {second}")


def test_a_command_killed_by_a_signal_is_not_a_timeout(ssh: SSHSession, hosts: list[Host]) -> None:
    r = ssh.run(hosts[0], "kill -9 $$", timeout=10)
    assert not r.ok and not r.timed_out and r.error == "killed by a signal before it finished"


def test_connection_is_reused_within_a_session(ssh: SSHSession, hosts: list[Host]) -> None:
    assert not ssh.is_connected(hosts[0])
    first = ssh.run(hosts[0], "echo $SSH_CONNECTION").stdout.split()
    assert ssh.is_connected(hosts[0])
    second = ssh.fan_out([hosts[0]], "echo $SSH_CONNECTION")[0].stdout.split()
    assert first == second and len(first) == 4  # same client port: the same TCP connection
    ssh.close()
    assert not ssh.is_connected(hosts[0])


def test_per_host_concurrency_is_bounded(lab: LabState, ssh: SSHSession, hosts: list[Host]) -> None:
    base = lab.hosts[0].data_dir / f"slots-{uuid.uuid4().hex[:8]}"
    running, done = base / "running", base / "done"
    ssh.run(hosts[0], f"mkdir -p {running} {done}")
    # Each command registers as running and waits (bounded) until a second one runs too — or it is the
    # last of the 8 — so the pass does not depend on timing. Then it leaves 0.3 s for any command over
    # the limit to show up, and reports the most it saw running at once.
    command = (f"f={running}/$$; touch $f; n=1; for i in $(seq 100); do n=$(ls {running} | wc -l); "
               f"[ $n -ge 2 ] || [ $(ls {done} | wc -l) -ge 7 ] && break; sleep 0.1; done; "
               f"sleep 0.3; m=$(ls {running} | wc -l); [ $m -gt $n ] && n=$m; echo $n; rm $f; touch {done}/$$")
    try:
        results = ssh.fan_out([hosts[0]] * 8, command, max_per_host=2)
        assert all(r.ok for r in results), results
        seen = [int(r.stdout) for r in results]
        assert max(seen) <= 2 and max(seen) == 2, seen
    finally:
        ssh.run(hosts[0], f"rm -r {base}")


def test_missing_key_file_is_a_clear_error_before_anything_runs(lab: LabState, ssh: SSHSession, hosts: list[Host]) -> None:
    target = marker(lab, "nokey")
    broken = hosts[1].model_copy(update={"key_file": Path("/nonexistent/id_ed25519")})
    with pytest.raises(ConfigError, match="SSH key for web-2 not found"):
        ssh.fan_out([hosts[0], broken], f"touch {target}")
    assert not target.exists()


def test_missing_known_hosts_refuses_to_run(ssh: SSHSession, hosts: list[Host], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="host-key checking cannot be turned off"):
        ssh.run(hosts[0].model_copy(update={"known_hosts": tmp_path / "absent"}), "true")
