"""Placeholders in runbook commands and queries, quoted for the language they end up in.

Runbooks write ``$host`` or ``${data_dir}``. The runbook author's text is trusted (it is reviewed
code in the repo); the *values* are not: each is quoted for its destination — ``shlex.quote`` for a
shell, a PromQL string literal for a query — so a value can never change the command's meaning.
Values other than ``host`` come from the host's inventory variable ``medic_<name>``.
"""

from __future__ import annotations

import re
import shlex
from string import Template
from typing import Any

from medic.core.inventory import Host
from medic.errors import RunbookError, UnsafeValueError

#: Prometheus's own rule for label names.
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def placeholders(text: str) -> set[str]:
    """Names a template refers to (``$x`` and ``${x}``); raises on a malformed ``$``."""
    names: set[str] = set()
    for match in Template.pattern.finditer(text):
        if match.group("invalid") is not None:
            start = match.start()  # the '$' itself, counted from 1 below
            raise ValueError(f"malformed placeholder {text[start:start + 12]!r} at character {start + 1}: "
                             f"use $name or ${{name}}, or $$ for a literal $")
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    return names


def promql_string(value: str) -> str:
    """A double-quoted PromQL string literal for ``value``: the value can only ever be data."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def label_matcher(name: str, value: str, *, op: str = "=") -> str:
    """``name="value"`` for a selector; the name is checked, the value is quoted."""
    if not isinstance(name, str) or not LABEL_NAME.fullmatch(name):
        raise UnsafeValueError(
            f"label name {name!r} is refused: PromQL label names match [a-zA-Z_][a-zA-Z0-9_]*; nothing was queried"
        )
    if op not in ("=", "!=", "=~", "!~"):
        raise UnsafeValueError(f"label matcher operator {op!r} is refused: use one of = != =~ !~")
    return f"{name}{op}{promql_string(value)}"


def host_values(host: Host, extra: dict[str, Any] | None = None) -> dict[str, str]:
    values = {k.removeprefix("medic_"): str(v) for k, v in host.vars.items() if k.startswith("medic_")}
    values.update({k: str(v) for k, v in (extra or {}).items()})
    values["host"] = host.name
    return values


def _check_defined(text: str, values: dict[str, str], *, where: str) -> None:
    missing = placeholders(text) - values.keys()
    if missing:
        raise RunbookError(
            f"{where} uses {', '.join('$' + m for m in sorted(missing))}, which the host does not define",
            expected="an inventory variable medic_<name> on the host, or $host",
            found=text,
        )


def _substitute(text: str, values: dict[str, str], quote: Any, *, where: str) -> str:
    _check_defined(text, values, where=where)
    return Template(text).substitute({k: quote(v) for k, v in values.items()})


def _shell_substitute(text: str, values: dict[str, str]) -> str:
    """Substitute each placeholder as one shell word, whatever quotes the author put around it.

    A placeholder inside '...' or "..." closes that quote, adds the shlex-quoted value and reopens it:
    ``"port :$p"`` becomes ``"port :"'8080'""``. Plain shlex.quote inside "..." would let ``$(...)`` run.
    """
    out: list[str] = []
    quote_char = ""  # '' outside quotes, else the quote we are inside
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "$":
            m = Template.pattern.match(text, i)
            assert m is not None  # Template.pattern always matches at a '$'
            if m.group("escaped") is not None:
                out.append("$")
            else:
                word = shlex.quote(values[m.group("named") or m.group("braced")])
                out.append(f"{quote_char}{word}{quote_char}")
            i = m.end()
            continue
        if ch == "\\" and quote_char != "'" and i + 1 < len(text) and text[i + 1] != "$":
            out.append(text[i:i + 2])
            i += 2
            continue
        if ch in "'\"" and quote_char in ("", ch):
            quote_char = "" if quote_char else ch
        out.append(ch)
        i += 1
    return "".join(out)


def render_shell(text: str, host: Host, *, where: str = "command", extra: dict[str, Any] | None = None) -> str:
    values = host_values(host, extra)
    _check_defined(text, values, where=where)
    return _shell_substitute(text, values)


def render_promql(text: str, host: Host | None, *, where: str = "query") -> str:
    values = host_values(host) if host is not None else {}
    return _substitute(text, values, promql_string, where=where)
