"""Hosts and groups from the Ansible inventory: the only way to name a target.

medic reads the same YAML inventory that Ansible uses, so the SSH fan-out and the playbooks always
agree on which machine "web-2" is. A target name is checked against a strict pattern *before* it is
looked up, so a name such as ``web-1; rm -rf /`` is refused as unsafe, not merely "unknown".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from medic.errors import InventoryError, UnknownTargetError, UnsafeValueError
from medic.settings import get_settings

#: Host and group names: letters, digits, dot, dash, underscore; no shell or PromQL metacharacters.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_name(value: str, *, what: str = "target") -> str:
    """Refuse a host/group name that could mean anything to a shell or a query language."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise UnsafeValueError(
            f"{what} {value!r} is refused: names may only contain letters, digits, '.', '-' and '_' "
            f"(and start with a letter or digit); nothing was run"
        )
    return value


class Host(BaseModel):
    """One inventory host, with what medic needs to reach it over SSH."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None
    groups: list[str] = Field(default_factory=list)
    vars: dict[str, Any] = Field(default_factory=dict)


class Inventory(BaseModel):
    path: Path
    hosts: dict[str, Host]
    groups: dict[str, list[str]]

    @classmethod
    def load(cls, path: Path) -> "Inventory":
        if not path.is_file():
            raise InventoryError(f"inventory {path} does not exist; start the lab (`medic lab up`) or set MEDIC_INVENTORY")
        try:
            data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as exc:
            raise InventoryError(f"inventory {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise InventoryError(f"inventory {path}: expected a YAML mapping of groups (Ansible YAML inventory)")
        group_vars: dict[str, dict[str, Any]] = {}  # each group's own vars
        depth: dict[str, int] = {}  # how far below `all`; deeper groups' vars win, as in Ansible
        own_vars: dict[str, dict[str, Any]] = {}  # each host's own vars, which beat any group's
        host_groups: dict[str, list[str]] = {}
        groups: dict[str, list[str]] = {}

        def mapping(value: Any, what: str) -> dict[Any, Any]:
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise InventoryError(
                    f"inventory {path}: {what} must be a mapping, not {type(value).__name__}")
            return value

        def walk(group: str, body: Any, lineage: list[str]) -> None:
            body = mapping(body, f"group {group!r}")
            own = mapping(body.get("vars"), f"vars of group {group!r}")
            group_vars[group] = {**group_vars.get(group, {}), **own}
            depth[group] = max(depth.get(group, 0), len(lineage))
            groups.setdefault(group, [])
            for name, hvars in mapping(body.get("hosts"), f"hosts of group {group!r}").items():
                check_name(str(name), what=f"inventory host in {path}")
                own_vars[name] = {**own_vars.get(name, {}), **mapping(hvars, f"host {name!r}")}
                host_groups.setdefault(name, [])
                for g in [*lineage, group]:
                    if g not in host_groups[name]:
                        host_groups[name].append(g)
                    if name not in groups.setdefault(g, []):
                        groups[g].append(name)
            for child, child_body in mapping(body.get("children"), f"children of group {group!r}").items():
                check_name(str(child), what=f"inventory group in {path}")
                walk(child, child_body, [*lineage, group])

        # As in Ansible, every group is below `all`, whether or not the file nests it there.
        walk("all", data.get("all"), [])
        for top, body in data.items():
            if top != "all":
                check_name(str(top), what=f"inventory group in {path}")
                walk(top, body, ["all"])
        host_vars: dict[str, dict[str, Any]] = {}
        for name, own in own_vars.items():
            merged: dict[str, Any] = {}
            for g in sorted(host_groups[name], key=lambda g: (depth[g], g)):
                merged.update(group_vars[g])
            host_vars[name] = {**merged, **own}
        hosts = {}
        for name, v in host_vars.items():
            hosts[name] = Host(
                name=name,
                address=str(v.get("ansible_host", name)),
                port=int(v.get("ansible_port", 22)),
                user=v.get("ansible_user"),
                key_file=Path(v["ansible_ssh_private_key_file"]) if v.get("ansible_ssh_private_key_file") else None,
                known_hosts=Path(v["medic_known_hosts"]) if v.get("medic_known_hosts") else None,
                groups=host_groups.get(name, []),
                vars=v,
            )
        return cls(path=path, hosts=hosts, groups=groups)

    def names(self) -> list[str]:
        return sorted(self.hosts) + sorted(g for g in self.groups if g not in self.hosts)

    def resolve(self, target: str) -> list[Host]:
        """The hosts a target names (a host, or every host of a group). Refuses unsafe names first."""
        check_name(target)
        if target in self.hosts:
            return [self.hosts[target]]
        if target in self.groups and self.groups[target]:
            return [self.hosts[h] for h in self.groups[target]]
        raise UnknownTargetError(target, self.names())

    def host(self, name: str) -> Host:
        check_name(name, what="host")
        if name not in self.hosts:
            raise UnknownTargetError(name, sorted(self.hosts))
        return self.hosts[name]


def load_inventory(path: Path | None = None) -> Inventory:
    """The configured inventory (by default the running lab's)."""
    path = path or get_settings().inventory
    if path is None:
        raise InventoryError("no inventory configured: start the lab (`medic lab up`) or set MEDIC_INVENTORY")
    return Inventory.load(path)
