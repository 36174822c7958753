"""The running lab's description, written by `medic lab up` and read by every other medic command.

This file is how `medic run`, `medic serve` and the tests find the lab's endpoints and inventory
without extra configuration.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

STATE_FILE = "state.json"


class LabHost(BaseModel):
    """One lab host: an sshd on its own port, a login user, and a demo web service."""

    name: str
    group: str
    user: str
    ssh_port: int
    service_port: int
    root: Path = Field(description="the host's own directory (its 'filesystem')")

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
    ports: LabPorts
    hosts: list[LabHost]
    webhook_url: str
    started_at: datetime
    with_prefect: bool = True
    options: dict[str, bool] = Field(default_factory=dict, description="optional components asked for at `up`")

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

    def host(self, name: str) -> LabHost | None:
        return next((h for h in self.hosts if h.name == name), None)

    @classmethod
    def load(cls, lab_dir: Path) -> "LabState | None":
        path = lab_dir / STATE_FILE
        if not path.is_file():
            return None
        return cls.model_validate_json(path.read_text())

    def save(self) -> None:
        path = self.lab_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
