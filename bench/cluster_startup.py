"""How long the lab's production topology takes to start, next to the embedded SQLite Prefect.

    .venv/bin/python bench/cluster_startup.py [--base-port 30600] [-n 1]

Brings `medic lab up --with cluster` (1 web host) up and down n times in a fresh dir, printing what
`<lab_dir>/cluster/timings.txt` measured (PostgreSQL init+ready, Prefect server on a fresh PostgreSQL
answering /health, `medic deploy`, both workers ONLINE + intake healthy) and the whole `up`; then starts
the embedded SQLite Prefect (fresh database) as `medic serve` does, for comparison. Needs root. Figures
depend on the machine's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from medic.orchestration.embedded_server import EmbeddedPrefect
from medic_lab import control


def one_cluster(base_port: int) -> None:
    lab_dir = Path(tempfile.mkdtemp(prefix="medic-bench-cluster-", dir="/tmp"))
    began = time.monotonic()
    try:
        control.up(lab_dir, hosts=1, base_port=base_port, webhook_url="http://127.0.0.1:9/unused",
                   options={"cluster": True})
        took = time.monotonic() - began
        for line in (lab_dir / "cluster" / "timings.txt").read_text().splitlines():
            print(f"  {line}")
        print(f"  whole `up --with cluster` (1 host): {took:.1f} s")
    finally:
        control.down(lab_dir)
        shutil.rmtree(lab_dir, ignore_errors=True)


def one_sqlite(base_port: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="medic-bench-sqlite-", dir="/tmp"))
    began = time.monotonic()
    try:
        with EmbeddedPrefect(home, port=base_port + 10):
            print(f"  embedded Prefect server on a fresh SQLite answering after {time.monotonic() - began:.1f} s")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-port", type=int, default=int(os.environ.get("MEDIC_LAB_BASE_PORT", "30600")))
    parser.add_argument("-n", type=int, default=1)
    args = parser.parse_args()
    for i in range(args.n):
        print(f"run {i + 1}, load average {os.getloadavg()[0]:.1f}:")
        one_cluster(args.base_port)
        one_sqlite(args.base_port)


if __name__ == "__main__":
    main()
