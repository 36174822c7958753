"""The running lab's description, written by `medic lab up` and read by the lab's own commands and tests.

Two files in the lab dir: ``state.json`` (this model: ports, hosts, where things are) for the lab
itself, and ``settings.json`` — the MEDIC_ settings the lab provides (inventory, SSH key, known_hosts,
Prometheus, Alertmanager, Prefect) — which `medic.settings` reads as a settings source. The engine never
imports this package: that file is the whole interface.

Where things live: everything private (logs, Prometheus data, the client's private key, known_hosts)
stays in the lab dir, which may sit in a private folder (a checkout under a 0700 home). What the lab
users must reach — host roots with the host-side scripts, authorized_keys — lives in the lab's *public
dir* under /var/lib/medic-lab/labs/, 0755, named after the lab dir and removed by `medic lab down`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from medic.settings import LAB_SETTINGS_FILE

STATE_FILE = "state.json"
PUBLIC_ROOT = Path("/var/lib/medic-lab/labs")


def public_dir_for(lab_dir: Path) -> Path:
    """The lab's world-traversable dir: derived from the lab dir alone, so `down` finds it after a crash."""
    digest = hashlib.sha256(str(lab_dir).encode()).hexdigest()[:10]
    return PUBLIC_ROOT / f"{lab_dir.name.lstrip('.') or 'lab'}-{digest}"


class LabHost(BaseModel):
    """One lab host: an sshd on its own port, a login user, and a demo web service."""

    name: str
    group: str
    user: str
    ssh_port: int
    service_port: int
    root: Path = Field(description="the host's own directory (its 'filesystem'), under the lab's public dir")

    @property
    def data_dir(self) -> Path:
        return self.root / "data"


class LabPorts(BaseModel):
    """Every fixed port of the lab, derived from one base port."""

    base: int
    prefect: int
    prometheus: int
    alertmanager: int
    node_exporter: int
    haproxy: int
    haproxy_admin: int

    @classmethod
    def from_base(cls, base: int) -> "LabPorts":
        return cls(
            base=base,
            prefect=base + 10,
            prometheus=base + 90,
            alertmanager=base + 93,
            node_exporter=base + 100,
            haproxy=base + 80,
            haproxy_admin=base + 81,
        )

    def ssh(self, index: int) -> int:
        return self.base + 200 + index

    def service(self, index: int) -> int:
        return self.base + 300 + index


class LabState(BaseModel):
    lab_dir: Path
    public_dir: Path = Field(description="what the lab users must reach: host roots, authorized_keys (0755)")
    ports: LabPorts
    hosts: list[LabHost]
    webhook_url: str
    started_at: datetime
    with_prefect: bool = True
    options: dict[str, bool] = Field(default_factory=dict, description="optional components asked for at `up`")
    serve_pid: int | None = Field(None, description="a `medic serve` the demo left running; `down` stops it")

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.alertmanager}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prefect}/api"

    @property
    def node_exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.node_exporter}"

    @property
    def inventory(self) -> Path:
        return self.lab_dir / "inventory.yml"

    @property
    def ssh_key(self) -> Path:
        return self.lab_dir / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.lab_dir / "ssh" / "known_hosts"

    @property
    def intake_token_file(self) -> Path:
        """medic serve's intake token (0600), sent by the lab's Alertmanager (see `monitoring`)."""
        return self.lab_dir / "alertmanager" / "medic-intake-token"

    @property
    def hosts_dir(self) -> Path:
        return self.public_dir / "hosts"

    @property
    def authorized_keys(self) -> Path:
        """Read by each host's sshd as the login user, so it must be reachable by every lab user."""
        return self.public_dir / "authorized_keys"

    def host(self, name: str) -> LabHost | None:
        return next((h for h in self.hosts if h.name == name), None)

    def provided_settings(self) -> dict[str, str]:
        """The MEDIC_ settings this lab provides to every medic command (see `medic.settings`)."""
        provided = {"inventory": str(self.inventory), "ssh_key": str(self.ssh_key),
                    "known_hosts": str(self.known_hosts), "prometheus_url": self.prometheus_url,
                    "alertmanager_url": self.alertmanager_url, "intake_token_file": str(self.intake_token_file)}
        if self.with_prefect:
            provided["prefect_api_url"] = self.prefect_api_url
        return provided

    @classmethod
    def load(cls, lab_dir: Path) -> "LabState | None":
        path = lab_dir / STATE_FILE
        if not path.is_file():
            return None
        return cls.model_validate_json(path.read_text())

    def save(self) -> None:
        """Write state.json and settings.json (each replaced atomically: readers never see half a file)."""
        _write_atomically(self.lab_dir / STATE_FILE, self.model_dump_json(indent=2))
        _write_atomically(self.lab_dir / LAB_SETTINGS_FILE, json.dumps(self.provided_settings(), indent=2))

    @staticmethod
    def forget(lab_dir: Path) -> None:
        """Remove both files: from now on no medic command takes this lab's endpoints by default."""
        for name in (LAB_SETTINGS_FILE, STATE_FILE):
            (lab_dir / name).unlink(missing_ok=True)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
