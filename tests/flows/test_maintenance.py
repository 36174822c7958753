"""Maintenance flows against the real lab: HAProxy drains, Alertmanager silences, SSH restarts, Ansible cleanup.

Every test that changes the lab takes `restored` or `broken`: after it, pass or fail, no server is
left drained, no silence active, no fault in place, and the lab is checked healthy.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from medic.clients.alertmanager import AlertmanagerClient, Matcher
from medic.errors import UnsafeValueError
from medic.clients.haproxy import HAProxyRuntime
from medic_lab.state import LabState
from medic.procedures.maintenance import DAYS, MaintenanceConfigError, check_window, parse_batch_size, parse_window
from medic.core.report import Outcome
from medic.procedures.maintenance_report import MaintenanceReport
from medic.orchestration.runs import FlowRunOutcome, run_flow_now
from medic.core.progress import add_listener
from medic.settings import get_settings
from tests.support.lab_health import Inject, broken, restored  # noqa: F401 (fixtures)


def _run(name: str, **params: Any) -> tuple[FlowRunOutcome, MaintenanceReport]:
    from flows import maintenance

    outcome = asyncio.run(run_flow_now(getattr(maintenance, name), params))
    assert isinstance(outcome.result, MaintenanceReport), f"no report: {outcome.state_name} {outcome.message}"
    return outcome, outcome.result


def _pids(lab: LabState) -> dict[str, int]:
    return {h.name: int((h.root / "run" / "web.pid").read_text()) for h in lab.hosts if h.group == "web"}


def _servers(lab: LabState) -> dict[str, str]:
    return {s.name: s.admin_state for s in HAProxyRuntime("127.0.0.1", lab.ports.haproxy_admin).servers("web")}


def _active_silences(lab: LabState) -> list:
    with AlertmanagerClient(lab.alertmanager_url) as am:
        return am.silences(created_by="medic", state="active")


@pytest.fixture
def window(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def set_window(text: str) -> None:
        monkeypatch.setenv("MEDIC_MAINTENANCE_WINDOW", text)
        get_settings.cache_clear()

    yield set_window
    monkeypatch.delenv("MEDIC_MAINTENANCE_WINDOW", raising=False)
    get_settings.cache_clear()


class _Traffic:
    """Requests through the HAProxy frontend for as long as the block runs."""

    def __init__(self, lab: LabState) -> None:
        self.url = f"http://127.0.0.1:{lab.ports.haproxy}/"
        self.ok, self.errors, self._stop = 0, [], threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.url)
                    self.ok += r.status_code == 200
                    if r.status_code != 200:
                        self.errors.append(r.status_code)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> "_Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class _SilenceWatch:
    """At the moment each batch starts restarting, record which hosts Alertmanager has silenced."""

    def __init__(self, lab: LabState) -> None:
        self.lab, self.seen, self.drained = lab, [], []

    def __call__(self, entry: Any, recorded: bool) -> None:
        if recorded and entry.stage == "restart":
            batch = entry.message.split(": ", 1)[1].split(" silenced")[0].split(", ")
            silenced = {m.value for s in _active_silences(self.lab) for m in s.matchers if m.name == "host"}
            self.seen.append((batch, silenced))
            self.drained.append({n for n, st in _servers(self.lab).items() if st == "drain"})


def test_rolling_restart_in_batches_of_two_restarts_everything_without_dropping_traffic(
        lab: LabState, restored: LabState) -> None:
    before = _pids(lab)
    watch = _SilenceWatch(lab)
    remove = add_listener(watch)
    try:
        with _Traffic(lab) as traffic:
            outcome, report = _run("rolling_restart", group="web", batch_size="2", reason="test")
    finally:
        remove()
    assert outcome.state_name == "Completed", report.summary
    assert report.outcome is Outcome.COMPLETED
    after = _pids(lab)
    assert all(after[h] != before[h] for h in before), (before, after)
    assert {s.host: s.pid_after for s in report.hosts} == after
    assert [b.hosts for b in report.batches] == [["web-1", "web-2"], ["web-3", "web-4"], ["web-5", "web-6"]]
    # during each batch, exactly its hosts were silenced and drained
    assert [set(batch) for batch, _ in watch.seen] == [{"web-1", "web-2"}, {"web-3", "web-4"}, {"web-5", "web-6"}]
    assert all(set(batch) == silenced for batch, silenced in watch.seen), watch.seen
    assert [set(b) for b, _ in watch.seen] == watch.drained
    assert traffic.ok > 0 and traffic.errors == []
    assert _active_silences(lab) == []
    assert set(_servers(lab).values()) == {"ready"}
    assert all(s.lb_after.startswith("ready, UP") for s in report.hosts)


def test_a_host_that_will_not_start_stops_the_run_and_leaves_nothing_drained(lab: LabState, broken: Inject) -> None:
    broken("wont-start", "web-3")
    before = _pids(lab)
    outcome, report = _run("rolling_restart", group="web", batch_size="2", max_errors=0, reason="test")
    assert outcome.state_name == "StoppedAtErrorThreshold"
    assert report.outcome is Outcome.STOPPED
    by_host = {s.host: s for s in report.hosts}
    assert by_host["web-3"].status == "failed" and "restart failed" in by_host["web-3"].detail
    assert by_host["web-3"].lb_after.startswith("ready, DOWN")  # back to ready; its health check keeps it out
    assert by_host["web-4"].status == "restarted"
    assert [by_host[h].status for h in ("web-5", "web-6")] == ["not started", "not started"]
    after = _pids(lab)
    assert after["web-5"] == before["web-5"] and after["web-6"] == before["web-6"]
    assert after["web-1"] != before["web-1"]
    assert "drain" not in _servers(lab).values()
    assert set(_servers(lab).values()) == {"ready"}
    assert _active_silences(lab) == []
    assert "web-3 (HAProxy: ready, DOWN" in report.summary


def test_dry_run_changes_nothing(lab: LabState, restored: LabState) -> None:
    before = _pids(lab)
    with AlertmanagerClient(lab.alertmanager_url) as am:
        silences_before = len(am.silences(created_by="medic"))
    outcome, report = _run("rolling_restart", group="web", batch_size="50%", dry_run=True)
    assert outcome.state_name == "DryRun"
    assert {s.status for s in report.hosts} == {"would restart"}
    assert "servicectl restart" in report.hosts[0].detail and "web: running" in report.hosts[0].detail
    assert _pids(lab) == before
    assert set(_servers(lab).values()) == {"ready"}
    with AlertmanagerClient(lab.alertmanager_url) as am:
        assert len(am.silences(created_by="medic")) == silences_before


def test_cleanup_frees_junk_on_a_disk_full_host(lab: LabState, broken: Inject) -> None:
    broken("disk-full", "web-5")
    outcome, report = _run("cleanup", group="web", batch_size="50%", reason="test")
    assert outcome.state_name == "Completed", report.summary
    by_host = {c.host: c for c in report.cleaned}
    assert by_host["web-5"].status == "cleaned" and by_host["web-5"].bytes_freed > 50 * 1024 * 1024
    assert all(by_host[h].bytes_freed == 0 for h in by_host if h != "web-5")
    assert not list((lab.host("web-5").data_dir / "cache").glob("junk-*"))
    assert (lab.host("web-5").data_dir / "app" / "orders.db").exists()


def _a_window_that_is_closed_now() -> str:
    tomorrow = DAYS[(datetime.now(timezone.utc).weekday() + 2) % 7].title()
    return f"{tomorrow} 02:00-03:00"


def test_a_run_outside_the_window_is_skipped_and_a_manual_override_runs(lab: LabState, restored: LabState,
                                                                         window: Any) -> None:
    window(_a_window_that_is_closed_now())
    before = _pids(lab)
    outcome, report = _run("rolling_restart", group="web-1")
    assert outcome.state_name == "Skipped"
    assert report.outcome is Outcome.SKIPPED and "outside the maintenance window" in report.summary
    assert _pids(lab) == before
    outcome, report = _run("cleanup", group="web-1", ignore_window=True, dry_run=True)
    assert outcome.state_name == "DryRun" and "ignored on request" in report.window.reason


def test_a_bad_window_fails_the_run_with_a_clear_error(lab: LabState, window) -> None:
    window("weekends 2am-4am")
    outcome = asyncio.run(run_flow_now(__import__("flows.maintenance").maintenance.cleanup, {"group": "web-1"}))
    assert outcome.state_name == "Failed"
    assert "maintenance window 'weekends 2am-4am': cannot read" in outcome.message


def test_bad_parameters_are_refused_before_anything_runs(lab: LabState, restored: LabState) -> None:
    before = _pids(lab)
    outcome = asyncio.run(run_flow_now(__import__("flows.maintenance").maintenance.rolling_restart,
                                       {"group": "web", "batch_size": "0%"}))
    assert outcome.state_name == "Failed" and "batch size '0%'" in outcome.message
    outcome = asyncio.run(run_flow_now(__import__("flows.maintenance").maintenance.rolling_restart,
                                       {"group": "web;reboot"}))
    assert outcome.state_name == "Failed" and "refused" in outcome.message
    assert _pids(lab) == before


def test_silences_are_created_listed_and_expired(lab: LabState, restored: LabState) -> None:
    with AlertmanagerClient(lab.alertmanager_url) as am:
        sid = am.create_silence([Matcher(name="host", value="web-6")], comment="test", duration=timedelta(minutes=5))
        assert [s.id for s in am.silences(label="host", value="web-6", state="active")] == [sid]
        am.expire_silence(sid)
        am.expire_silence(sid)  # idempotent
        assert [s.state for s in am.silences(label="host", value="web-6") if s.id == sid] == ["expired"]
        with pytest.raises(UnsafeValueError, match="not a UUID"):
            am.expire_silence("../silences")
        with pytest.raises(UnsafeValueError, match="at least one matcher"):
            am.create_silence([], comment="x", duration=timedelta(minutes=1))


# ---------------------------------------------------------------------------- pure rules


def test_window_rules() -> None:
    w = parse_window("Sat,Sun 02:00-04:00")
    saturday = datetime(2026, 5, 2, 3, 0, tzinfo=timezone.utc)
    assert w.contains(saturday) and not w.contains(saturday.replace(hour=4))
    assert w.next_open(saturday.replace(hour=5)) == datetime(2026, 5, 3, 2, 0, tzinfo=timezone.utc)
    night = parse_window("Mon-Fri 22:00-02:00")
    assert night.contains(datetime(2026, 5, 2, 1, 0, tzinfo=timezone.utc))  # Friday's window, Saturday 01:00
    assert not night.contains(datetime(2026, 5, 3, 1, 0, tzinfo=timezone.utc))
    assert parse_window("") is None
    wait = check_window("Sat 02:00-04:00", now=saturday.replace(hour=1), ignore_window=False, outside="wait",
                        max_wait=timedelta(hours=2))
    assert wait.decision == "wait" and wait.opens_at == saturday.replace(hour=2)


@pytest.mark.parametrize("text, message", [
    ("Sat 2-4", "expected \\[DAYS \\]HH:MM-HH:MM"),
    ("Funday 02:00-04:00", "'funday' is not a day"),
    ("25:00-26:00", "25:00 is not a time of day"),
    ("02:00-02:00", "starts and ends at the same time"),
])
def test_bad_windows_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(MaintenanceConfigError, match=message):
        parse_window(text)


def test_batch_sizes() -> None:
    assert [parse_batch_size(x, 6) for x in ("1", "2", "25%", "100%", "10")] == [1, 2, 2, 6, 6]
    assert parse_batch_size("25%", 20) == 5
    for bad in ("0", "x", "150%", "2.5", "-1"):
        with pytest.raises(MaintenanceConfigError, match="batch size"):
            parse_batch_size(bad, 6)
