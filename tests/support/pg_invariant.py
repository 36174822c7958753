"""The failover invariant (issue 12 part 3), checked while a failover runs: no split brain, no silent loss.

    with failover_invariant(lab) as watch:
        watch.flowing()                # clients are writing: something to lose
        outcome, report = failover([APPROVE])
        watch.report = report          # what the run told the human about the writes at risk
        watch.flowing(node=new)        # and they write again, on the new primary

Two threads run for the whole block:

- a *sampler*, every 100 ms, asks each node directly (its own port, not the endpoint) whether it
  answers as a writable primary (`NOT pg_is_in_recovery()` and not read-only); both nodes are asked at
  once, so one sample is one moment. A node that does not answer within 1 s (dead, fenced, SIGSTOPped)
  is not writable.
- a *writer* inserts numbered rows into `medic_writes` through the client endpoint (HAProxy), one
  connection and transaction each, like a short-lived client; a row is *acknowledged* only when its
  COMMIT returned to the client, and each acknowledged id is remembered.

On a clean exit it asserts (the body's own exception, if any, is never masked):

1. never two writable nodes in one sample;
2. every acknowledged row is present on the final primary (the node the endpoint routes to at the
   end, read directly) — or, for the rows missing, the run's report declared writes at risk.

Why the "or": the test cluster (`--with db`, medic_lab/postgres.py) replicates **asynchronously**:
a COMMIT returns once the primary's WAL is flushed locally, before the standby has it, so a primary
killed at the wrong moment loses acknowledged rows whatever medic does (bench/failover.py measures
it; `--with db-sync` is the synchronous variant, where nothing may be missing). What medic owes the
human is the truth about it: `diagnosis.at_risk_bytes` on the approval card. So missing rows pass
only when the report said a positive number of WAL bytes were at risk; an "unknown" or 0 with rows
missing fails. With `sync=True` (a db-sync lab) nothing may be missing at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from medic.clients.postgres import run_sql
from medic.procedures.failover import FailoverReport, read_route
from medic_lab.postgres import PgPorts
from medic_lab.state import LabState
from tests.support.pg_cluster import cluster, nodes
from tests.support.waits import wait_for

__all__ = ["FailoverWatch", "failover_invariant"]

TABLE = "medic_writes"  # created by the lab: (id bigint primary key, at timestamptz)
SAMPLE_EVERY_S = 0.1
WRITABLE_SQL = "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'"


@dataclass
class Sample:
    at: float  # time.monotonic() when the round began
    writable: list[str]


@dataclass
class FailoverWatch:
    """What the sampler and the writer saw; `report` is set by the test once the run has ended."""

    lab: LabState
    sync: bool = False
    report: FailoverReport | None = None
    card_at_risk: int | None = None  # a run that crashed has no report: the WAL bytes its approval card showed
    samples: list[Sample] = field(default_factory=list)
    acked: dict[int, int] = field(default_factory=dict)  # row id → port of the node that committed it
    attempted: int = 0
    failed: int = 0
    last_error: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)

    # --- the threads ----------------------------------------------------------------------------

    def _address(self, node: str) -> str:
        return f"127.0.0.1:{PgPorts.of(self.lab).nodes[node]}"

    def _writable(self, node: str) -> bool:
        r = run_sql(self._address(node), WRITABLE_SQL, timeout=1.0)
        return r.returncode == 0 and r.stdout.strip() == "t"

    def _sample(self, names: list[str]) -> None:
        with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="pg-sample") as pool:
            while not self._stop.is_set():
                began = time.monotonic()
                answers = list(pool.map(self._writable, names))
                self.samples.append(Sample(at=began, writable=[n for n, w in zip(names, answers) if w]))
                self._stop.wait(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - began)))

    def _write(self, endpoint: str) -> None:
        n = time.time_ns() // 1000  # ids unique across the tests sharing the lab's table
        while not self._stop.is_set():
            n += 1
            self.attempted += 1
            r = run_sql(endpoint, f"INSERT INTO {TABLE} (id) VALUES ({n}) RETURNING inet_server_port()", timeout=2.0)
            port = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
            if r.returncode == 0 and port.isdigit():
                self.acked[n] = int(port)
            else:
                self.failed += 1
                self.last_error = (r.stderr or r.stdout).strip()[-200:]
            self._stop.wait(0.05)  # pace, not synchronisation: keep the shared 2 cores for the run itself

    def flowing(self, *, node: str | None = None, at_least: int = 5, timeout: float = 60) -> None:
        """Until `at_least` more writes are acknowledged (by `node` when given): call it before the fault,
        so there is something to lose, and after the repair, to see clients write again."""
        port = PgPorts.of(self.lab).nodes[node] if node else None
        mine = lambda: sum(1 for p in list(self.acked.values()) if port is None or p == port)  # noqa: E731
        start = mine()
        wait_for(lambda: (mine() - start, self.summary()), what=f"{at_least} writes acknowledged through the "
                 f"endpoint{' by ' + node if node else ''}", timeout=timeout, done=lambda seen: seen[0] >= at_least)

    # --- the verdict ----------------------------------------------------------------------------

    def split_brain(self) -> list[Sample]:
        return [s for s in self.samples if len(s.writable) > 1]

    def missing(self) -> tuple[str | None, list[int]]:
        """(final primary, acknowledged ids absent on it); (None, all) when nothing is routed."""
        primary = read_route(cluster()).primary
        ids = sorted(self.acked)
        if primary not in nodes():
            return None, ids
        if not ids:
            return primary, []
        r = run_sql(self._address(primary), f"SELECT id FROM {TABLE} WHERE id BETWEEN {ids[0]} AND {ids[-1]}",
                    timeout=10)
        assert r.returncode == 0, f"cannot read {TABLE} on the final primary {primary}: {r.stderr.strip()}"
        present = {int(x) for x in r.stdout.split()}
        return primary, [i for i in ids if i not in present]

    def declared_at_risk(self) -> int | None:
        """WAL bytes the run's report (else its approval card) said a promotion would lose (None: no figure)."""
        if self.report is None or self.report.diagnosis is None:
            return self.card_at_risk
        return self.report.diagnosis.at_risk_bytes

    def problems(self) -> list[str]:
        """What broke the invariant ([] when it held)."""
        found = []
        if split := self.split_brain():
            found.append(f"{len(split)} of {len(self.samples)} samples saw two writable primaries, first "
                         f"{split[0].writable} at +{split[0].at - self.samples[0].at:.2f} s")
        primary, lost = self.missing()
        at_risk = self.declared_at_risk()
        if primary is None:
            found.append(f"no single primary routed at the end ({read_route(cluster())}): "
                         f"{len(self.acked)} acknowledged rows cannot be checked")
        elif lost and (self.sync or not at_risk):
            found.append(f"{len(lost)} of {len(self.acked)} acknowledged rows missing on the final primary {primary} "
                         f"(first {lost[:10]}); the report declared {at_risk} WAL bytes at risk"
                         + (" (synchronous replication: none may be lost)" if self.sync else ""))
        return found

    def summary(self) -> str:
        gaps = [b.at - a.at for a, b in zip(self.samples, self.samples[1:])]
        return (f"{len(self.samples)} samples (longest gap {max(gaps, default=0):.2f} s), {self.attempted} writes "
                f"attempted, {len(self.acked)} acknowledged, {self.failed} failed"
                + (f" (last: {self.last_error})" if self.last_error else ""))


@contextmanager
def failover_invariant(lab: LabState, *, sync: bool = False) -> Iterator[FailoverWatch]:
    """Sample the nodes and write through the endpoint for the block; assert the invariant at its end."""
    watch = FailoverWatch(lab=lab, sync=sync)
    endpoint = cluster().endpoint
    threads = [threading.Thread(target=watch._sample, args=(nodes(),), name="pg-invariant-sampler", daemon=True),
               threading.Thread(target=watch._write, args=(endpoint,), name="pg-invariant-writer", daemon=True)]
    for t in threads:
        t.start()
    try:
        yield watch
    finally:
        watch._stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), f"the invariant's sampler or writer did not stop: {watch.summary()}"
    assert watch.samples and watch.acked, f"the invariant saw nothing to judge: {watch.summary()}"
    problems = watch.problems()
    assert not problems, f"failover invariant broken: {'; '.join(problems)} ({watch.summary()})"
