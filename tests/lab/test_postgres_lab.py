"""The lab's PostgreSQL component laid out for 2 and 3 nodes (no daemons started: the failover tests
start both kinds of cluster for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medic_lab.control import plan_lab
from medic_lab.postgres import PgPorts


@pytest.mark.parametrize(("option", "names"), [("db", ["pg-1", "pg-2"]), ("db3", ["pg-1", "pg-2", "pg-3"])])
def test_db_hosts_and_ports_for_two_or_three_nodes(tmp_path: Path, option: str, names: list[str]) -> None:
    lab = plan_lab(tmp_path / "lab", hosts=2, base_port=19000, webhook_url="http://127.0.0.1:9/", options={option: True})
    db = [h for h in lab.hosts if h.group == "db"]
    assert [h.name for h in db] == names
    ports = PgPorts.of(lab)
    assert list(ports.nodes) == names and list(ports.exporters) == names
    assert ports.nodes["pg-1"] == 19150 and ports.nodes["pg-2"] == 19151  # as the 2-node lab always had them
    every = [*ports.nodes.values(), *ports.exporters.values(), ports.endpoint, ports.endpoint_admin,
             ports.endpoint_metrics]
    assert len(set(every)) == len(every) and all(19150 <= p < 19170 for p in every), every
    ssh = [h.ssh_port for h in lab.hosts]
    assert len(set(ssh)) == len(ssh)
    assert [h.service_port for h in db] == [ports.nodes[n] for n in names]
