"""The Ansible YAML inventory: groups, children, variable precedence, and names refused as unsafe
before any lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from medic.errors import InventoryError, UnknownTargetError, UnsafeValueError
from medic.core.inventory import Inventory, check_name, load_inventory
from medic.settings import get_settings

NESTED = """\
all:
  vars: {medic_x: all, medic_y: all, medic_z: all, ansible_user: ops}
  children:
    web:
      vars: {medic_y: web, medic_z: web}
      hosts:
        web-1: {medic_z: host, ansible_host: 10.0.0.1, ansible_port: 2201}
        web-2:
      children:
        canary:
          vars: {medic_z: canary}
          hosts:
            web-2:
    db:
      vars: {medic_z: db}
      hosts:
        web-1:
        db-1: {ansible_ssh_private_key_file: /keys/db}
"""


def write_inventory(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    return path


@pytest.fixture
def nested(tmp_path: Path) -> Inventory:
    return Inventory.load(write_inventory(tmp_path, NESTED))


def medic_vars(inventory: Inventory, host: str) -> dict[str, object]:
    return {k: v for k, v in inventory.hosts[host].vars.items() if k.startswith("medic_")}


def test_vars_all_then_parent_then_child_group_then_host(nested: Inventory) -> None:
    # host vars beat every group's, even a group listed after the host's own entry (db)
    assert medic_vars(nested, "web-1") == {"medic_x": "all", "medic_y": "web", "medic_z": "host"}
    assert medic_vars(nested, "web-2") == {"medic_x": "all", "medic_y": "web", "medic_z": "canary"}
    assert medic_vars(nested, "db-1") == {"medic_x": "all", "medic_y": "all", "medic_z": "db"}


def test_connection_fields_come_from_ansible_vars(nested: Inventory) -> None:
    web1, web2, db1 = (nested.hosts[n] for n in ("web-1", "web-2", "db-1"))
    assert (web1.address, web1.port, web1.user) == ("10.0.0.1", 2201, "ops")
    assert (web2.address, web2.port, web2.key_file) == ("web-2", 22, None)
    assert db1.key_file == Path("/keys/db")
    assert web1.groups == ["all", "web", "db"] and web2.groups == ["all", "web", "canary"]


def test_resolve_a_host_a_group_with_children_and_all(nested: Inventory) -> None:
    def names(target: str) -> list[str]:
        return [h.name for h in nested.resolve(target)]

    assert names("web-2") == ["web-2"]
    assert names("canary") == ["web-2"]
    assert names("web") == ["web-1", "web-2"]
    assert names("db") == ["web-1", "db-1"]
    assert names("all") == ["web-1", "web-2", "db-1"]
    assert nested.host("db-1").name == "db-1"


def test_top_level_groups_are_children_of_all(tmp_path: Path) -> None:
    text = "all:\n  vars: {medic_x: 1}\nweb:\n  hosts:\n    web-1:\n"
    inv = Inventory.load(write_inventory(tmp_path, text))
    assert [h.name for h in inv.resolve("all")] == ["web-1"]
    assert inv.hosts["web-1"].vars == {"medic_x": 1}
    assert inv.hosts["web-1"].groups == ["all", "web"]


def test_an_unknown_target_lists_the_known_names(nested: Inventory) -> None:
    with pytest.raises(UnknownTargetError) as info:
        nested.resolve("web-9")
    assert str(info.value) == ("unknown target 'web-9': not a host or group of the inventory "
                               "(known: db-1, web-1, web-2, all, canary, db, web)")
    with pytest.raises(UnknownTargetError, match=r"'canary'.*\(known: db-1, web-1, web-2\)"):
        nested.host("canary")


UNSAFE = ["web-1; rm -rf /", "$(reboot)", "web 1", "../x", "", "-web", "web-1\n", "a" * 64]


@pytest.mark.parametrize("name", UNSAFE)
def test_an_unsafe_name_is_refused_before_lookup(nested: Inventory, name: str) -> None:
    for lookup in (nested.resolve, nested.host, check_name):
        with pytest.raises(UnsafeValueError) as info:
            lookup(name)
        refused = f"{name!r} is refused: names may only contain letters, digits, '.', '-' and '_'"
        assert refused in str(info.value)
        assert str(info.value).endswith("nothing was run")


def test_an_unsafe_name_inside_the_inventory_is_refused(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, "all:\n  hosts:\n    'web-1; id':\n")
    with pytest.raises(UnsafeValueError, match=rf"inventory host in {path} 'web-1; id' is refused"):
        Inventory.load(path)


@pytest.mark.parametrize(("text", "message"), [
    ("all:\n  hosts: [web-1\n", "is not valid YAML: while parsing a flow sequence"),
    ("- web-1\n", "expected a YAML mapping of groups (Ansible YAML inventory)"),
    ("", "expected a YAML mapping of groups (Ansible YAML inventory)"),
    ("all:\n  hosts: [web-1, web-2]\n", "hosts of group 'all' must be a mapping, not list"),
    ("all:\n  children:\n    web: [web-1]\n", "group 'web' must be a mapping, not list"),
    ("web:\n  vars: medic_x=1\n  hosts: {web-1: }\n", "vars of group 'web' must be a mapping, not str"),
])
def test_a_malformed_inventory_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = write_inventory(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        Inventory.load(path)
    assert str(info.value).startswith(f"inventory {path}")
    assert message in str(info.value)


def test_a_missing_or_unconfigured_inventory_says_what_to_do(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    what_to_do = r"start the lab \(`medic lab up`\) or set MEDIC_INVENTORY$"
    with pytest.raises(InventoryError, match=rf"missing\.yml does not exist; {what_to_do}"):
        Inventory.load(tmp_path / "missing.yml")
    monkeypatch.setenv("MEDIC_LAB_DIR", str(tmp_path))  # no lab state here
    monkeypatch.delenv("MEDIC_INVENTORY", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(InventoryError, match=rf"^no inventory configured: {what_to_do}"):
            load_inventory()
    finally:
        get_settings.cache_clear()
