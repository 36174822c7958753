"""Fan-out of one command to 50 lab hosts: medic (paramiko) vs parallel OpenSSH vs `ansible --forks 50`.

Starts its own lab (50 hosts, base port 23000, /tmp/medic-lab-h3-bench) and always stops it.
Prints medians over several rounds and ratios against parallel OpenSSH, the fastest peer a human
would reach for. Also measures the fixed cost of one `run_playbook` (empty playbook, one host).

    .venv/bin/python bench/ssh_fanout.py [--hosts 50] [--rounds 5] [--ansible-rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

LAB_DIR = Path("/tmp/medic-lab-h3-bench")
BASE_PORT = 23000
COMMANDS = ("true", "hostname")


def timed(fn: Callable[[], bool], rounds: int) -> tuple[list[float], bool]:
    """Wall times of `rounds` calls, and whether every call reported success."""
    times, ok = [], True
    for _ in range(rounds):
        started = time.perf_counter()
        ok = fn() and ok
        times.append(time.perf_counter() - started)
    return times, ok


def medic_cold(hosts: list, command: str) -> bool:
    from medic.clients.ssh import SSHSession

    with SSHSession() as ssh:
        return all(r.ok for r in ssh.fan_out(hosts, command))


def openssh_parallel(lab, command: str) -> bool:
    procs = [
        subprocess.Popen(
            ["ssh", "-F", "/dev/null", "-i", str(lab.ssh_key), "-o", f"UserKnownHostsFile={lab.known_hosts}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "KexAlgorithms=curve25519-sha256",
             "-o", "ControlPath=none", "-p", str(h.ssh_port), f"{h.user}@127.0.0.1", command],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        for h in lab.hosts
    ]
    return all(p.wait() == 0 for p in procs)


def ansible_adhoc(lab, command: str) -> bool:
    ansible = str(Path(sys.executable).parent / "ansible")
    done = subprocess.run([ansible, "all", "-i", str(lab.inventory), "-m", "command", "-a", command, "--forks", "50"],
                          capture_output=True, text=True, env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True"})
    return done.returncode == 0


def playbook_fixed_cost(hosts: list, rounds: int) -> tuple[list[float], bool]:
    from medic.clients.ansible import run_playbook

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.yml"
        empty.write_text("- hosts: all\n  gather_facts: false\n  tasks: []\n")
        return timed(lambda: run_playbook(empty, hosts=hosts[:1]).ok, rounds)


def row(name: str, command: str, times: list[float], ok: bool, baseline: float | None) -> str:
    median = statistics.median(times)
    ratio = f"{median / baseline:6.2f}x" if baseline else "      -"
    flag = "" if ok else "  (SOME HOSTS FAILED)"
    return f"{name:<34} {command:<9} {median:8.3f} {min(times):8.3f} {max(times):8.3f}   {ratio}{flag}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ansible-rounds", type=int, default=3)
    args = parser.parse_args()

    os.environ["MEDIC_LAB_DIR"] = str(LAB_DIR)
    os.environ["MEDIC_LAB_BASE_PORT"] = str(BASE_PORT)
    from medic.core.inventory import load_inventory
    from medic_lab import control
    from medic.settings import get_settings
    from medic.clients.ssh import SSHSession

    get_settings.cache_clear()
    started = time.perf_counter()
    try:
        lab = control.up(LAB_DIR, hosts=args.hosts, base_port=BASE_PORT,
                         webhook_url="http://127.0.0.1:9/unused", with_prefect=False)
        print(f"lab of {args.hosts} hosts up in {time.perf_counter() - started:.1f} s "
              f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.2f})")
        inventory = load_inventory()
        hosts = [inventory.host(h.name) for h in lab.hosts]
        lines = []
        for command in COMMANDS:
            ssh_times, ssh_ok = timed(lambda: openssh_parallel(lab, command), args.rounds)
            base = statistics.median(ssh_times)
            lines.append(row("OpenSSH, 50 parallel processes", command, ssh_times, ssh_ok, base))
            lines.append(row("medic fan_out, cold connections", command,
                             *timed(lambda: medic_cold(hosts, command), args.rounds), base))
            with SSHSession() as warm:
                warm.fan_out(hosts, "true")  # open every connection once
                lines.append(row("medic fan_out, reused connections", command,
                                 *timed(lambda: all(r.ok for r in warm.fan_out(hosts, command)), args.rounds), base))
            lines.append(row("ansible -m command --forks 50", command,
                             *timed(lambda: ansible_adhoc(lab, command), args.ansible_rounds), base))
        print(f"\n{'method':<34} {'command':<9} {'median s':>8} {'min':>8} {'max':>8}   vs OpenSSH")
        print("\n".join(lines))
        print()
        print(row("run_playbook: empty playbook, 1 host", "-", *playbook_fixed_cost(hosts, args.ansible_rounds), None))
    finally:
        control.down(LAB_DIR)
        shutil.rmtree(LAB_DIR, ignore_errors=True)
        print("\nlab stopped")


if __name__ == "__main__":
    main()
