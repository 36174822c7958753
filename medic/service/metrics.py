"""medic serve's own Prometheus metrics: runs by runbook and outcome, time to recover, alerts, approvals."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from medic.core.report import Outcome


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Counter("medic_runs_total", "Runs finished (remediation, failover, rejoin), by runbook and outcome",
                            ["runbook", "outcome"], registry=self.registry)
        self.time_to_recover = Histogram(
            "medic_time_to_recover_seconds", "From run start to verified recovery", ["runbook"],
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=self.registry)
        self.alerts = Counter("medic_alerts_received_total", "Alerts received from Alertmanager, by what medic did",
                              ["action"], registry=self.registry)
        self.swept = Counter("medic_alert_sweep_total",
                             "Firing alerts the alert sweep found in Alertmanager, by what medic did",
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
        """Count a finished run by its report's runbook and outcome (remediation, failover and rejoin
        reports carry both); time to recover when the run restored service."""
        runbook, outcome = getattr(report, "runbook", None), getattr(report, "outcome", None)
        if not isinstance(runbook, str) or not isinstance(outcome, Outcome):
            return  # no report (the run crashed) or one that is not a run of a runbook
        self.runs.labels(runbook, outcome.value).inc()
        duration = getattr(report, "duration_s", None)
        if outcome.restored and duration is not None:
            self.time_to_recover.labels(runbook).observe(duration)

    def render(self) -> bytes:
        return generate_latest(self.registry)
