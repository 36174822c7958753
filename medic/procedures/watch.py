"""The anomaly watcher: score every watched runbook's series and raise alerts for what stands out.

For metrics with no good threshold (a slow leak, a drift) Prometheus has no rule to fire. A runbook
with `detect: {anomaly: …}` and a `trigger` is watched: on every pass each of its target hosts is
scored (medic.procedures.anomaly), and a host at or above the threshold gets the runbook's trigger
alert raised in Alertmanager (API v2) with the detector's reason as its summary — so Alertmanager's
grouping, silences and routing, medic's intake and the runbook follow exactly as for any alert.
Each raised alert ends `alert_ttl` later unless raised again, so a watcher that dies pages nobody
forever; Alertmanager keeps the first `startsAt` of an alert raised again, so the intake's
idempotency key (fingerprint + startsAt) still sees one incident.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from medic.clients.alertmanager import AlertmanagerClient, RaisedAlert
from medic.clients.prometheus import PrometheusClient
from medic.core.inventory import Inventory
from medic.core.runbook import Runbook
from medic.procedures.anomaly import HostScore, score_hosts

__all__ = ["WatchFinding", "WatchReport", "watch"]

SOURCE = "medic-anomaly-watch"


class WatchFinding(BaseModel):
    runbook: str
    host: str
    score: float
    reason: str
    raised: bool = Field(description="an alert was raised in Alertmanager for it")


class WatchReport(BaseModel):
    runbooks: list[str] = Field(description="runbooks watched (those with detect.anomaly and a trigger)")
    findings: list[WatchFinding]

    @property
    def raised(self) -> list[WatchFinding]:
        return [f for f in self.findings if f.raised]


def watched(runbooks: dict[str, Runbook], names: list[str] | None = None) -> list[Runbook]:
    """The runbooks a watcher scores: anomaly detect + a trigger alert to raise (optionally by name)."""
    chosen = [rb for rb in runbooks.values() if rb.detect.anomaly is not None and rb.trigger is not None]
    return [rb for rb in chosen if names is None or rb.name in names]


def _alert(rb: Runbook, found: HostScore, now: datetime, ttl: timedelta, link: str) -> RaisedAlert:
    assert rb.trigger is not None and rb.detect.anomaly is not None
    labels = {**rb.trigger.matchers, "alertname": rb.trigger.alertname, rb.targets.from_label: found.host,
              "severity": "warning", "source": SOURCE, "detector": rb.detect.anomaly.detector}
    return RaisedAlert(labels=labels, annotations={"summary": found.reason, "runbook": rb.name,
                                                   "score": f"{found.score:.2f}"},
                       starts_at=now, ends_at=now + ttl, generator_url=link)


def watch(runbooks: list[Runbook], inventory: Inventory, prom: PrometheusClient, am: AlertmanagerClient, *,
          alert_ttl: timedelta, link: str = "") -> tuple[WatchReport, dict[str, HostScore]]:
    """One pass: score, raise what stands out, and say what was seen (scores by 'runbook/host' for charts)."""
    now = datetime.now(UTC)
    findings: list[WatchFinding] = []
    alerts: list[RaisedAlert] = []
    scores: dict[str, HostScore] = {}
    for rb in runbooks:
        assert rb.detect.anomaly is not None
        target = rb.targets.within or rb.targets.default
        hosts = inventory.resolve(target) if target else list(inventory.hosts.values())
        for found in score_hosts(rb.detect.anomaly, hosts, prom):
            hit = found.score >= rb.detect.anomaly.threshold
            if hit:
                alerts.append(_alert(rb, found, now, alert_ttl, link))
            scores[f"{rb.name}/{found.host}"] = found
            findings.append(WatchFinding(runbook=rb.name, host=found.host, score=round(found.score, 3),
                                         reason=found.reason, raised=hit))
    am.post_alerts(alerts)
    return WatchReport(runbooks=[rb.name for rb in runbooks], findings=findings), scores
