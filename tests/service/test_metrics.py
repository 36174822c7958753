"""medic serve's /metrics counts every finished run of a runbook — failover and rejoin included.

`Metrics.finished` is what the launcher calls with a finished run's report, and `Metrics.render` is
the body `GET /metrics` answers; the reports are the real models the flows return.
"""

from __future__ import annotations

from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families

from medic.core.report import Outcome, RemediationReport, utcnow
from medic.procedures.failover import FailoverReport
from medic.service.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the /metrics body, parsed by Prometheus's own text-format parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.render().decode())
            for s in family.samples}


def _failover(outcome: Outcome, flow: str = "failover", took_s: float = 5.0) -> FailoverReport:
    started = utcnow()
    return FailoverReport(flow=flow, runbook="postgres-failover", cluster="pg-main", outcome=outcome, summary="…",
                          started_at=started, finished_at=started + timedelta(seconds=took_s))


def test_a_failover_outcome_is_counted_with_its_time_to_recover() -> None:
    metrics = Metrics()
    metrics.finished(_failover(Outcome.PROMOTED, took_s=5.0))
    metrics.finished(_failover(Outcome.REJECTED))
    metrics.finished(_failover(Outcome.REJOINED, flow="rejoin"))
    samples = _samples(metrics)
    runs = [samples.get(("medic_runs_total", (("outcome", outcome), ("runbook", "postgres-failover"))))
            for outcome in ("promoted", "rejected", "rejoined")]
    assert runs == [1.0, 1.0, 1.0], samples
    ttr = (("runbook", "postgres-failover"),)
    assert samples[("medic_time_to_recover_seconds_count", ttr)] == 1.0  # only the promotion restored service
    assert samples[("medic_time_to_recover_seconds_sum", ttr)] == 5.0


def test_a_remediation_outcome_is_counted_and_a_run_without_a_report_is_not() -> None:
    metrics = Metrics()
    started = utcnow()
    metrics.finished(RemediationReport(runbook="service-down", target="web-2", hosts=["web-2"], reason="test",
                                       dry_run=False, outcome=Outcome.RECOVERED, summary="…", started_at=started,
                                       finished_at=started + timedelta(seconds=2)))
    metrics.finished(None)  # a crashed run: nothing to count
    samples = _samples(metrics)
    assert samples[("medic_runs_total", (("outcome", "recovered"), ("runbook", "service-down")))] == 1.0
    assert sum(v for (name, _), v in samples.items() if name == "medic_runs_total") == 1.0
