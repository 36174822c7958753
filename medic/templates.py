"""Placeholders in runbook commands and queries, quoted for the language they end up in.

Runbooks write ``$host`` or ``${data_dir}``. The runbook author's text is trusted (it is reviewed
code in the repo); the *values* are not: each is quoted for its destination — ``shlex.quote`` for a
shell, a PromQL string literal for a query — so a value can never change the command's meaning.
Values other than ``host`` come from the host's inventory variable ``medic_<name>``.
"""

from __future__ import annotations

import shlex
from string import Template
from typing import Any

from medic.errors import RunbookError
from medic.inventory import Host
from medic.prometheus import promql_string


def placeholders(text: str) -> set[str]:
    """Names a template refers to (``$x`` and ``${x}``); raises on a malformed ``$``."""
    names: set[str] = set()
    for match in Template.pattern.finditer(text):
        if match.group("invalid") is not None:
            raise ValueError(f"malformed placeholder at position {match.start('invalid')}: use $name or ${{name}}")
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return names


def host_values(host: Host, extra: dict[str, Any] | None = None) -> dict[str, str]:
    values = {k.removeprefix("medic_"): str(v) for k, v in host.vars.items() if k.startswith("medic_")}
    values.update({k: str(v) for k, v in (extra or {}).items()})
    values["host"] = host.name
    return values


def _substitute(text: str, values: dict[str, str], quote: Any, *, where: str) -> str:
    missing = placeholders(text) - values.keys()
    if missing:
        raise RunbookError(
            f"{where} uses {', '.join('$' + m for m in sorted(missing))}, which the host does not define",
            expected="an inventory variable medic_<name> on the host, or $host",
            found=text,
        )
    return Template(text).substitute({k: quote(v) for k, v in values.items()})


def render_shell(text: str, host: Host, *, where: str = "command", extra: dict[str, Any] | None = None) -> str:
    return _substitute(text, host_values(host, extra), shlex.quote, where=where)


def render_promql(text: str, host: Host | None, *, where: str = "query") -> str:
    values = host_values(host) if host is not None else {}
    return _substitute(text, values, promql_string, where=where)
