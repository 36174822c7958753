"""Numbered inserts through the PostgreSQL client endpoint, and the check that none was lost.

Each insert is its own connection and transaction (`psql -c`, like a short-lived client), so a
row counts as *acknowledged* only when its COMMIT returned success to the client. After a failover,
`check` reads the table on the endpoint's (new) primary: every acknowledged id must be there.

    .venv/bin/python bench/write_load.py --endpoint 127.0.0.1:30152 --seconds 5
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medic.clients.postgres import run_sql  # noqa: E402

TABLE = "medic_writes"  # created by the lab: (id bigint primary key, at timestamptz)


class Ack(BaseModel):
    id: int
    at: float
    server_port: int


class LoadResult(BaseModel):
    attempted: int
    acknowledged: list[Ack]
    failed: int


class WriteLoad:
    """Insert ids start, start+1, ... through `endpoint` in a thread until stopped."""

    def __init__(self, endpoint: str, *, start: int = 1, timeout: float = 2.0) -> None:
        self.endpoint, self.next_id, self.timeout = endpoint, start, timeout
        self.acks: list[Ack] = []
        self.attempted = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="write-load", daemon=True)

    def __enter__(self) -> "WriteLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join()
        return LoadResult(attempted=self.attempted, acknowledged=list(self.acks), failed=self.failed)

    def _loop(self) -> None:
        while not self._stop.is_set():
            n = self.next_id
            self.next_id += 1
            self.attempted += 1
            r = run_sql(self.endpoint, f"INSERT INTO {TABLE} (id) VALUES ({int(n)}) RETURNING inet_server_port()",
                        timeout=self.timeout)
            port = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
            if r.returncode == 0 and port.isdigit():
                self.acks.append(Ack(id=n, at=time.monotonic(), server_port=int(port)))
            else:
                self.failed += 1
                time.sleep(0.02)  # the endpoint has no primary right now; don't spin


class LossCheck(BaseModel):
    acknowledged: int
    present: int
    lost_ids: list[int]


def check(endpoint: str, result: LoadResult) -> LossCheck:
    """Which acknowledged ids are missing on the endpoint's primary now."""
    acked = sorted(a.id for a in result.acknowledged)
    if not acked:
        return LossCheck(acknowledged=0, present=0, lost_ids=[])
    r = run_sql(endpoint, f"SELECT id FROM {TABLE} WHERE id BETWEEN {acked[0]} AND {acked[-1]}", timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"cannot read {TABLE} through {endpoint}: {r.stderr.strip()}")
    present = {int(x) for x in r.stdout.split()}
    lost = [i for i in acked if i not in present]
    return LossCheck(acknowledged=len(acked), present=len(acked) - len(lost), lost_ids=lost)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--start", type=int, default=int(time.time() * 1000))
    args = parser.parse_args()
    with WriteLoad(args.endpoint, start=args.start) as load:
        time.sleep(args.seconds)
    result = load.stop()
    loss = check(args.endpoint, result)
    print(f"attempted {result.attempted}, acknowledged {loss.acknowledged}, failed {result.failed}, "
          f"lost {len(loss.lost_ids)} acknowledged row(s) {loss.lost_ids[:20]}")
    return 1 if loss.lost_ids else 0


if __name__ == "__main__":
    raise SystemExit(main())
