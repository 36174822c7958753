"""The one settings object. Environment variables use the prefix ``MEDIC_``.

Where a value comes from, highest first: arguments to ``Settings(...)``, environment variables (an
empty one counts as unset), the running lab's ``<lab_dir>/settings.json``, the defaults. `medic lab up`
writes that file with what the lab provides (Prometheus, Alertmanager, Prefect, inventory, SSH key,
known_hosts), so on a machine with a lab up no configuration is needed — and medic never imports the
lab to find it. Secrets are ``SecretStr``: they never appear in a repr, a log or an artifact.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from medic.core.paths import DEFAULT_LAB_DIR, PLAYBOOKS_DIR, PROJECT_ROOT, RUNBOOKS_DIR
from medic.errors import ConfigError

#: Written by `medic lab up` into the lab dir: the settings the running lab provides, as JSON.
LAB_SETTINGS_FILE = "settings.json"
#: The only settings a lab may provide; anything else in the file is ignored.
LAB_PROVIDED = ("inventory", "ssh_key", "known_hosts", "prometheus_url", "alertmanager_url", "prefect_api_url",
                "intake_token_file")


class LabSettingsSource(PydanticBaseSettingsSource):
    """``<lab_dir>/settings.json``, with ``lab_dir`` as the sources above it (init, env) resolved it."""

    def __call__(self) -> dict[str, Any]:
        lab_dir = self.current_state.get("lab_dir") or self.settings_cls.model_fields["lab_dir"].default
        path = Path(lab_dir) / LAB_SETTINGS_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the lab's settings {path}: {exc}; restart the lab (`medic lab down`, "
                              f"`medic lab up`) or point MEDIC_LAB_DIR elsewhere") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"the lab's settings {path} are not a JSON object; restart the lab "
                              f"(`medic lab down`, `medic lab up`)")
        return {key: value for key, value in data.items() if key in LAB_PROVIDED and value not in (None, "")}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` reads the whole file at once."""
        return None, field_name, False


class Settings(BaseSettings):
    # An empty variable (`MEDIC_LAB_DIR= medic lab up`) means "not set", never "the current directory".
    model_config = SettingsConfigDict(env_prefix="MEDIC_", extra="ignore", env_ignore_empty=True)

    lab_dir: Path = Field(DEFAULT_LAB_DIR, description="where the ops lab keeps all its state")
    lab_base_port: int = Field(19000, description="the lab's ports are derived from this one")

    runbooks_dir: Path = RUNBOOKS_DIR
    playbooks_dir: Path = PLAYBOOKS_DIR
    inventory: Path | None = Field(None, description="Ansible inventory (YAML); default: the lab's")
    ssh_key: Path | None = Field(None, description="private key for SSH and Ansible; default: the lab's")
    known_hosts: Path | None = Field(None, description="known_hosts for host-key checking; default: the lab's")
    prometheus_url: str | None = None
    alertmanager_url: str | None = None
    prefect_api_url: str | None = None
    prefect_ui_url: str | None = None

    ssh_connect_timeout: float = 5.0
    ssh_command_timeout: float = 30.0
    ssh_max_parallel: int = 64
    ssh_max_per_host: int = 4
    prometheus_timeout: float = 5.0

    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_channel: str | None = None
    slack_escalation_channel: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_socket_mode: bool = False

    # Approver identity (issue 11): one key shared by medic serve and every process running flows; each
    # approver's credential is derived from it (`medic approvers issue NAME`). Unset: no approval verifies.
    approval_key: SecretStr | None = Field(None, description="signs and verifies approvals; unset: nothing is approved")
    approvers_file: Path = Field(PROJECT_ROOT / "approvers.yaml", description="the approver directory (names, Slack ids)")

    flap_max_runs: int = Field(3, ge=1, description="remediations of one runbook on one target before asking a human")
    flap_window_s: float = Field(3600.0, gt=0, description="the flap guard's window")
    max_concurrent_runs: int = Field(16, ge=1, description="remediations medic serve executes at once")
    runner_poll_s: float = Field(1.0, gt=0, description="how often medic serve polls for runs started in the UI")
    prefect_port: int = Field(4200, description="port of the embedded Prefect server medic serve starts")

    maintenance_window: str = Field("", description="when maintenance may run, UTC, e.g. 'Sat,Sun 02:00-04:00'; empty: always")
    maintenance_outside_window: Literal["skip", "wait"] = Field(
        "skip", description="a scheduled maintenance run outside the window is skipped, or waits for it to open")
    maintenance_max_wait_s: float = Field(6 * 3600.0, ge=0, description="the longest a run waits for its window")
    haproxy_admin: str | None = Field(
        None, description="HAProxy runtime API host:port for every host; default: each host's medic_lb_admin var")

    # Where runs execute (issue 10). "embedded": medic serve executes every run itself (small sites, the
    # demo). "workers": medic serve is intake only; runs are Scheduled in the work pool and executed by
    # `medic worker` processes on any machine that reaches Prefect.
    execution: Literal["embedded", "workers"] = Field(
        "embedded", description="embedded: medic serve runs everything; workers: runs execute on `medic worker`s")
    work_pool: str = Field("medic", description="the Prefect work pool medic's deployments and workers use")
    worker_name: str | None = Field(None, description="this worker's name in the pool; default: medic-<host>-<pid>")
    worker_poll_s: float = Field(0.5, gt=0, description="how often a worker asks Prefect for Scheduled runs")
    worker_heartbeat_s: float = Field(5.0, gt=0, description="how often a worker tells Prefect it is alive")
    worker_max_runs: int = Field(8, ge=1, description="runs one worker executes at once")
    worker_dead_after_s: float = Field(
        30.0, gt=0, description="a worker silent this long is dead: its runs are ended Crashed and re-run once")
    instance: str | None = Field(None, description="this medic serve's name (tags its runs); default: medic-<host>")

    server_host: str = "127.0.0.1"
    server_port: int = 8787
    # Who may call /alertmanager and /runs (issue 11; medic.service.credentials). None configured: both
    # refuse every request, and medic serve will not listen beyond loopback.
    intake_token: SecretStr | None = Field(None, description="bearer token (Alertmanager http_config.authorization)")
    intake_token_file: Path | None = Field(None, description="a file holding the bearer token (as credentials_file)")
    intake_basic_auth: SecretStr | None = Field(None, description="'user:password' (Alertmanager http_config.basic_auth)")
    intake_tokens: dict[str, SecretStr] = Field(default_factory=dict, description="per-client bearer tokens, name → token")
    intake_rate_per_s: float = Field(100.0, gt=0, description="requests per second a client may keep up (token bucket)")
    intake_burst: int = Field(1000, ge=1, description="requests a client may send at once before the rate applies")
    health_cache_s: float = Field(5.0, ge=0, description="how long /healthz and /metrics reuse Prefect's answers")
    alert_sweep_s: float = Field(
        15.0, ge=0, description="how often medic serve asks Alertmanager for firing alerts it has not taken; 0: never")
    already_running_retry_s: float = Field(
        75.0, ge=0, description="an alert whose run found the remediation slot held (AlreadyRunning) is taken again "
                                "this long after that run ended, if it still fires (≤ 5 times: a dead holder's "
                                "lease lapses within 300 s)")
    prefect_outage_wait_s: float = Field(
        60.0, ge=0, description="how long a run waits for an unreachable or busy Prefect API at a step it cannot "
                                "skip (taking its remediation slot, showing its approval card) before it fails")
    alert_sweep_receiver: str | None = Field(
        None, description="sweep only alerts Alertmanager routes to this receiver (regex); default: every alert")
    tls_cert: Path | None = Field(None, description="serve HTTPS with this certificate (PEM, may hold the key)")
    tls_key: Path | None = Field(None, description="the certificate's private key (PEM)")
    tls_client_ca: Path | None = Field(None, description="require client certificates signed by this CA (mTLS)")
    state_dir: Path | None = Field(None, description="audit log and server state; default: <lab_dir>/medic")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """init > env (> .env, secrets dir: unused unless configured) > the running lab's settings.json > defaults."""
        return init_settings, env_settings, dotenv_settings, file_secret_settings, LabSettingsSource(settings_cls)

    @model_validator(mode="after")
    def _derive(self) -> "Settings":
        if self.state_dir is None:
            self.state_dir = self.lab_dir / "medic"
        if self.prefect_ui_url is None and self.prefect_api_url:
            self.prefect_ui_url = self.prefect_api_url.removesuffix("/api")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
