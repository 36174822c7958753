"""medic serve's own Prometheus metrics: runs by runbook and outcome, time to recover, alerts, approvals."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from typing import Any


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("medic_runs_total", "Remediation runs finished, by runbook and outcome",
                            ["runbook", "outcome"], registry=self.registry)
        self.time_to_recover = Histogram(
            "medic_time_to_recover_seconds", "From run start to verified recovery", ["runbook"],
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=self.registry)
        self.alerts = Counter("medic_alerts_received_total", "Alerts received from Alertmanager, by what medic did",
                              ["action"], registry=self.registry)
        self.deduplicated = Counter("medic_alerts_deduplicated_total",
                                    "Firing alerts that did not start a run because one was already running",
                                    ["runbook"], registry=self.registry)
        self.active = Gauge("medic_runs_active", "Remediation runs executing in this server", registry=self.registry)
        self.approvals_pending = Gauge("medic_approvals_pending", "Flow runs paused waiting for a human decision",
                                       registry=self.registry)
        self.flap_guard = Counter("medic_flap_guard_total", "Runs switched to approval by the flap guard",
                                  ["runbook"], registry=self.registry)

    def finished(self, report: Any) -> None:
        """Count a finished run from its report (a remediation's or a failover's)."""
        runbook, outcome = getattr(report, "runbook", None), getattr(report, "outcome", None)
        if runbook is None or outcome is None:
            return
        self.runs.labels(runbook, str(getattr(outcome, "value", outcome))).inc()
        duration = getattr(report, "duration_s", None)
        if str(getattr(outcome, "value", outcome)) in ("recovered", "promoted") and duration is not None:
            self.time_to_recover.labels(runbook).observe(duration)

    def render(self) -> bytes:
        return generate_latest(self.registry)
