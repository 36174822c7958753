"""The soak's ledger: one `Fault` per injection, and the attribution of Prefect's runs, Prometheus'
alert episodes and the audit log's actions to the target fault behind them."""

from __future__ import annotations

from dataclasses import dataclass, field

#: target fault → (the alert it makes fire, the runbook that repairs it)
TARGET = {"service-down": ("ServiceDown", "service-down"), "disk-full": ("DiskAlmostFull", "disk-full"),
          "slow": ("HighLatency", "high-latency")}


@dataclass
class Fault:
    """One line of the ledger."""

    id: int
    kind: str  # target | dependency
    fault: str
    host: str | None
    injected_at: float
    said: str
    alert: str = ""
    alert_at: float | None = None
    runs: list[dict] = field(default_factory=list)
    actions: int = 0
    outcome: str = "open"
    recovered_at: float | None = None
    fixed_by_soak_at: float | None = None
    window_end: float | None = None

    @property
    def ttr_s(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.injected_at


def attribute(faults_: list[Fault], runs: list[dict], fired: dict, actions: list, end: float) -> list[dict]:
    """Each target fault gets the alert episode, runs and audit actions of its runbook on its host
    between its injection and the next fault on that host; returns the runs no fault claimed."""
    claimed: set[str] = set()
    by_host: dict[str, list[Fault]] = {}
    for f in faults_:
        if f.host:
            by_host.setdefault(f.host, []).append(f)
    for host_faults in by_host.values():
        for f, nxt in zip(host_faults, [*host_faults[1:], None]):
            f.window_end = nxt.injected_at if nxt else end
    for f in faults_:
        if f.kind != "target":
            continue
        runbook = TARGET[f.fault][1]
        lo, hi = f.injected_at - 1, f.window_end or end
        f.alert_at = next((t for t in fired.get((f.alert, f.host), []) if lo <= t <= hi), None)
        f.runs = [r for r in runs if r["runbook"] == runbook and r["target"] == f.host and lo <= r["created"] <= hi]
        claimed.update(r["id"] for r in f.runs)
        f.actions = sum(1 for a in actions if a.runbook == runbook and a.target == f.host
                        and lo <= a.at.timestamp() <= hi)
    return [r for r in runs if r["id"] not in claimed]
