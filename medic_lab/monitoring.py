"""Configuration of the lab's Prometheus and Alertmanager, generated from the lab state."""

from __future__ import annotations

import shutil
from typing import Any

import yaml

from medic_lab.state import LabState
from medic.core.paths import LAB_TEMPLATES_DIR


def _target(port: int) -> str:
    return f"127.0.0.1:{port}"


def prometheus_config(lab: LabState, extra_jobs: list[dict[str, Any]] | None = None) -> str:
    web_targets = [{"targets": [_target(h.service_port)], "labels": {"host": h.name}}
                   for h in lab.hosts if h.group == "web"]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(lab.lab_dir / "prometheus" / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [_target(lab.ports.alertmanager)]}]}]},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [_target(lab.ports.prometheus)]}]},
            {"job_name": "alertmanager", "static_configs": [{"targets": [_target(lab.ports.alertmanager)]}]},
            {"job_name": "node", "static_configs": [{"targets": [_target(lab.ports.node_exporter)]}]},
            {"job_name": "web", "static_configs": web_targets},
            *(extra_jobs or []),
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def alertmanager_config(webhook_url: str) -> str:
    config = {
        "route": {
            "receiver": "medic",
            "group_by": ["alertname", "host"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {"name": "medic", "webhook_configs": [{"url": webhook_url, "send_resolved": True, "max_alerts": 0}]}
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_monitoring_configs(lab: LabState, extra_jobs: list[dict[str, Any]] | None = None) -> None:
    prom_dir = lab.lab_dir / "prometheus"
    am_dir = lab.lab_dir / "alertmanager"
    for d in (prom_dir / "data", am_dir / "data"):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy2(LAB_TEMPLATES_DIR / "rules.yml", prom_dir / "rules.yml")
    (prom_dir / "prometheus.yml").write_text(prometheus_config(lab, extra_jobs))
    (am_dir / "alertmanager.yml").write_text(alertmanager_config(lab.webhook_url))
