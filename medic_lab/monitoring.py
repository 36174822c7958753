"""Configuration of the lab's Prometheus and Alertmanager, generated from the lab state."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

import yaml

from medic.core.slo import load_slos
from medic.procedures.slo_rules import rules_yaml
from medic_lab.state import LabState
from medic.core.paths import LAB_TEMPLATES_DIR, SLOS_DIR


SLO_RULES = "slo-rules.yml"


def _target(port: int) -> str:
    return f"127.0.0.1:{port}"


def prometheus_config(lab: LabState, extra_jobs: list[dict[str, Any]] | None = None) -> str:
    web_targets = [{"targets": [_target(h.service_port)], "labels": {"host": h.name}}
                   for h in lab.hosts if h.group == "web"]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(lab.lab_dir / "prometheus" / "rules.yml"), str(lab.lab_dir / "prometheus" / SLO_RULES)],
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


def alertmanager_config(webhook_url: str, credentials_file: Path | None = None) -> str:
    """Alertmanager posting every alert to `webhook_url`, with medic's intake token from
    `credentials_file` as a bearer token (http_config.authorization, as a real site configures it)."""
    webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True, "max_alerts": 0}
    if credentials_file is not None and credentials_file.exists():  # (a lab from before issue 11 has none)
        webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": str(credentials_file)}}
    config = {
        "route": {
            "receiver": "medic",
            "group_by": ["alertname", "host"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "medic", "webhook_configs": [webhook]}],
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_intake_token(lab: LabState) -> None:
    """A fresh random token for medic serve's intake (0600): Alertmanager reads it as its
    credentials_file and every medic command finds it through the lab's settings (intake_token_file)."""
    path = lab.intake_token_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(secrets.token_urlsafe(32))


def write_monitoring_configs(lab: LabState, extra_jobs: list[dict[str, Any]] | None = None) -> None:
    prom_dir = lab.lab_dir / "prometheus"
    am_dir = lab.lab_dir / "alertmanager"
    for d in (prom_dir / "data", am_dir / "data"):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy2(LAB_TEMPLATES_DIR / "rules.yml", prom_dir / "rules.yml")
    # The SLOs of slos/*.yaml as `medic slo rules` writes them, evaluated every 2 s (the lab is fast).
    (prom_dir / SLO_RULES).write_text(rules_yaml(list(load_slos(SLOS_DIR).values()), interval="2s"))
    (prom_dir / "prometheus.yml").write_text(prometheus_config(lab, extra_jobs))
    write_intake_token(lab)
    (am_dir / "alertmanager.yml").write_text(alertmanager_config(lab.webhook_url, lab.intake_token_file))
