"""The soak's observers: what it knows about the lab comes from here, never from medic's own belief.

- `Probes`: every web host's service probed directly (GET /, its /metrics) once a second: up, slow,
  disk usage — the ground truth for availability and time to recovery (works while Prometheus is down);
- `ServeSampler`: medic serve's RSS and open file descriptors from /proc, every few seconds;
- `Approver`: a scripted human who answers every paused run with `medic approve` (a real subprocess,
  with the secret medic derives for the approver from MEDIC_APPROVAL_KEY);
- `runs_since`, `alerts_fired`, `actions_since`: Prefect's runs, Prometheus' ALERTS history and the
  audit log's action records, read once at the end.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from medic.errors import ExitCode

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
SLOW_S = 0.3  # the slow fault answers in 0.6 s, a healthy service in ~10 ms
DISK_FULL = 0.9  # DiskAlmostFull's threshold (lab/rules.yml)


@dataclass
class HostView:
    """One host's probe history: (time, answered 200, latency s) and (time, disk used ratio)."""

    port: int
    answers: list[tuple[float, bool, float]] = field(default_factory=list)
    disk: list[tuple[float, float]] = field(default_factory=list)


class Probes:
    """Probes every web host's service directly, once a second, from one thread per host."""

    def __init__(self, ports: dict[str, int], interval: float = 1.0) -> None:
        self.hosts = {name: HostView(port) for name, port in ports.items()}
        self.interval, self.stop = interval, threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(n,), daemon=True, name=f"probe-{n}") for n in ports]

    def _loop(self, name: str) -> None:
        view = self.hosts[name]
        with httpx.Client(timeout=2.0) as client:
            n = 0
            while not self.stop.is_set():
                began = time.time()
                try:
                    ok = client.get(f"http://127.0.0.1:{view.port}/").status_code == 200
                except httpx.HTTPError:
                    ok = False
                latency = time.time() - began
                ratio = None
                if n % 3 == 0:
                    ratio = _disk_ratio(client, view.port)
                with self.lock:
                    view.answers.append((began, ok, latency))
                    if ratio is not None:
                        view.disk.append((began, ratio))
                n += 1
                self.stop.wait(max(0.0, self.interval - (time.time() - began)))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)

    def healthy_since(self, name: str, fault: str, after: float) -> float | None:
        """The first time after `after` from which the fault's symptom is gone and stays gone (3 probes)."""
        with self.lock:
            answers = [a for a in self.hosts[name].answers if a[0] > after]
            disk = [d for d in self.hosts[name].disk if d[0] > after]
        if fault == "disk-full":
            points = [(t, r < DISK_FULL) for t, r in disk]
            need = 2
        else:
            points = [(t, ok and (fault != "slow" or lat < SLOW_S)) for t, ok, lat in answers]
            need = 3
        run_start = None
        streak = 0
        for t, good in points:
            if good:
                run_start = t if streak == 0 else run_start
                streak += 1
                if streak >= need:
                    return run_start
            else:
                streak = 0
        return None

    def availability(self, name: str, since: float, until: float) -> tuple[float, float]:
        """(share of probes answered 200, share answered 200 within SLOW_S) in [since, until]."""
        with self.lock:
            window = [a for a in self.hosts[name].answers if since <= a[0] <= until]
        if not window:
            return 0.0, 0.0
        return (sum(ok for _, ok, _ in window) / len(window),
                sum(ok and lat < SLOW_S for _, ok, lat in window) / len(window))


def _disk_ratio(client: httpx.Client, port: int) -> float | None:
    try:
        text = client.get(f"http://127.0.0.1:{port}/metrics").text
    except httpx.HTTPError:
        return None
    used = cap = None
    for line in text.splitlines():
        if line.startswith("demo_data_dir_used_bytes"):
            used = float(line.rsplit(" ", 1)[1])
        elif line.startswith("demo_data_dir_capacity_bytes"):
            cap = float(line.rsplit(" ", 1)[1])
    return used / cap if used is not None and cap else None


class ServeSampler:
    """medic serve's resident memory (kB) and open descriptors, from /proc, every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 5.0) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int]] = []  # (time, rss kB, fds)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="serve-sampler")

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
                self.samples.append((time.time(), rss, fds))
            except (OSError, StopIteration):
                pass  # medic serve exited: the report says so
            self.stop.wait(self.interval)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def growth(samples: list[tuple[float, float]], after: float) -> tuple[float, float, float] | None:
    """Least-squares line through the (time, value) samples after `after`: (start value, end value,
    growth % end vs start of the fitted line). None with fewer than 3 samples."""
    pts = [(t, v) for t, v in samples if t >= after]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt, mv = sum(t for t, _ in pts) / n, sum(v for _, v in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    slope = sum((t - mt) * (v - mv) for t, v in pts) / var if var else 0.0
    start = mv + slope * (pts[0][0] - mt)
    end = mv + slope * (pts[-1][0] - mt)
    return start, end, 100 * (end - start) / start if start else 0.0


@dataclass
class Decision:
    run_id: str
    runbook: str
    target: str
    decision: str
    at: float
    exit_code: int
    said: str


class Approver:
    """A scripted human: every paused medic run gets `medic approve RUN --approver NAME` (or `--reject`
    for a seeded share of them), once per pause (a run that pauses again is answered again); an answer
    that could not reach Prefect (exit 5) is given again a second later, as a person would."""

    def __init__(self, api: str, name: str, secret: str, reject_share: float, seed: int) -> None:
        self.api, self.name, self.reject_share = api, name, reject_share
        self.env = {**os.environ, "MEDIC_APPROVER_SECRET": secret}
        self.rng = random.Random(seed)
        self.answered: set[str] = set()  # state ids of the pauses answered
        self.decisions: list[Decision] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="approver")

    def _paused(self) -> list[dict]:
        return httpx.post(f"{self.api}/flow_runs/filter", timeout=10, json={"limit": 200, "flow_runs": {
            "tags": {"all_": ["medic-serve"]}, "state": {"type": {"any_": ["PAUSED"]}}}}).json()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                for run in self._paused():
                    if run["state"]["id"] not in self.answered:
                        self._answer(run)
            except (httpx.HTTPError, ValueError, subprocess.TimeoutExpired) as exc:  # Prefect may be down: a fault
                self.errors.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
            self.stop.wait(1.0)

    def _answer(self, run: dict) -> None:
        self.answered.add(run["state"]["id"])
        decision = "reject" if self.rng.random() < self.reject_share else "approve"
        argv = [sys.executable, "-m", "medic", "approve", run["id"], "--approver", self.name,
                "--comment", f"soak: scripted {decision}"] + (["--reject"] if decision == "reject" else [])
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode == ExitCode.DEPENDENCY:  # Prefect mid-restart, say: a person would try again
            self.answered.discard(run["state"]["id"])
        tags = run.get("tags") or []
        self.decisions.append(Decision(
            run["id"], _tag(tags, "runbook"), _tag(tags, "target"), decision, time.time(), done.returncode,
            (done.stdout + done.stderr).strip().splitlines()[-1][:160] if (done.stdout + done.stderr).strip() else ""))

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=130)


def _tag(tags: list[str], name: str) -> str:
    return next((t.split(":", 1)[1] for t in tags if t.startswith(f"{name}:")), "")


def epoch(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def runs_since(api: str, since: float) -> list[dict]:
    """Every medic-serve run created since `since`: id, runbook, target, state, created/end epoch."""
    out: list[dict] = []
    offset = 0
    while True:
        page = httpx.post(f"{api}/flow_runs/filter", timeout=30, json={
            "flow_runs": {"tags": {"all_": ["medic-serve"]}}, "sort": "EXPECTED_START_TIME_ASC",
            "limit": 200, "offset": offset}).json()
        for r in page:
            created = epoch(r.get("created"))
            if created is not None and created >= since:
                tags = r.get("tags") or []
                state = r.get("state") or {"type": "PENDING", "name": "Pending", "message": ""}
                out.append({"id": r["id"], "runbook": _tag(tags, "runbook"), "target": _tag(tags, "target"),
                            "state": state["type"], "name": state["name"], "message": (state.get("message") or "")[:160],
                            "created": created, "end": epoch(r.get("end_time"))})
        if len(page) < 200:
            return out
        offset += 200


def alerts_fired(prom: str, start: float, end: float) -> dict[tuple[str, str], list[float]]:
    """(alertname, host) → every time its ALERTS{alertstate="firing"} series began (a gap of > 3 s
    ends an episode), from Prometheus' own history over the soak."""
    fired: dict[tuple[str, str], list[float]] = {}
    t = start
    while t < end:  # query_range answers at most 11,000 points per series
        stop = min(end, t + 3 * 3600)
        res = httpx.get(f"{prom}/api/v1/query_range", timeout=60, params={
            "query": 'ALERTS{alertstate="firing"}', "start": t, "end": stop, "step": "1s"}).json()
        for series in res["data"]["result"]:
            key = (series["metric"].get("alertname", ""), series["metric"].get("host", ""))
            last = None
            for ts, _ in series["values"]:
                ts = float(ts)
                if last is None or ts - last > 3:
                    fired.setdefault(key, []).append(ts)
                last = ts
        t = stop
    return fired


def actions_since(since: float) -> list:
    """The audit log's `action` records made since `since` (AuditRecord, oldest first)."""
    from datetime import timezone

    from medic.orchestration.audit_store import read_records

    return read_records(kinds=["action"], since=datetime.fromtimestamp(since, timezone.utc))
