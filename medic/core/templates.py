"""Placeholders in runbook commands and queries: values reach a shell as data, PromQL as literals.

Runbooks write ``$host`` or ``${data_dir}`` (``$$`` for a literal ``$``). The runbook author's text is
trusted (it is reviewed code in the repo); the *values* are not. Values other than ``host`` come from
the host's inventory variable ``medic_<name>``.

Shell: values are never pasted into the command text. ``render_shell`` turns the author's text into
a fixed script in which every placeholder became a reference to a shell variable (``"${medic_port}"``,
double-quoted so it is one word, never split or globbed) and returns a ``ShellCommand``: that script
plus the values, which ``sh -c SCRIPT medic VALUE…`` receives as positional parameters and copies
into those variables. Over SSH each word of that argv is ``shlex.quote``d once for the remote shell,
so a value is only ever the data of a parameter: ``$(touch x)`` in a value is never run, whatever
quotes or ``$(…)`` surround its placeholder. Quote tracking only decides how the *reference* is
written (``"${v}"`` outside quotes, ``${v}`` inside ``"…"``, ``'"${v}"'`` inside ``'…'``); a mistake
there could at worst split a value, never run it. Refused: a placeholder inside ``$((…))`` (shell
arithmetic evaluates a variable's text as an expression) and text whose quotes do not balance.

PromQL: each value becomes a double-quoted string literal.
"""

from __future__ import annotations

import re
import shlex
from string import Template
from typing import Any

from pydantic import BaseModel, ConfigDict

from medic.core.inventory import Host
from medic.errors import RunbookError, UnsafeValueError

__all__ = ["LABEL_NAME", "ShellCommand", "check_shell", "host_values", "label_matcher", "placeholders",
           "promql_string", "render_promql", "render_shell", "shell_script"]

#: Prometheus's own rule for label names.
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: $0 of the script (shown in the shell's own error messages).
SCRIPT_NAME = "medic"
#: Prefix of the shell variables placeholders become (``$port`` → ``${medic_port}``).
VAR_PREFIX = "medic_"


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


# --- shell --------------------------------------------------------------------------------------


class ShellCommand(BaseModel):
    """A fixed script and the values it receives as positional parameters: ``sh -c script medic *args``.

    ``names[i]`` is the placeholder whose value is ``args[i]``. ``str()`` is the command line a
    POSIX shell would parse into exactly that argv (what medic shows and what SSH sends).
    """

    model_config = ConfigDict(frozen=True)

    script: str
    names: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    text: str = ""

    def argv(self) -> list[str]:
        return ["sh", "-c", self.script, SCRIPT_NAME, *self.args]

    def preview(self) -> str:
        """The author's text with each value shown shell-quoted: for people (a dry run's "would run"),
        never executed."""
        if not self.text:
            return str(self)
        return Template(self.text).substitute({n: shlex.quote(a) for n, a in zip(self.names, self.args)})

    def __str__(self) -> str:
        return self.script if not self.args else " ".join(shlex.quote(word) for word in self.argv())


_UNQUOTED = ("top", "$(", "(", "`")


def _word_start(out: list[str]) -> bool:
    """True when the next character starts a shell word (so a '#' there begins a comment)."""
    last = out[-1][-1:] if out else ""
    return last in ("", " ", "\t", "\n", ";", "&", "|", "(", ")")


def _reference(name: str, stack: list[str], text: str, at: int) -> str:
    """How a placeholder is written in the script, given the quoting context it stands in."""
    var = "${" + VAR_PREFIX + name + "}"
    context = stack[-1]
    if context == "$((":
        raise ValueError(f"placeholder ${name} at character {at + 1} is inside $((…)): shell arithmetic would "
                         f"evaluate its value as an expression; compute outside the arithmetic")
    if context == "'":
        return "'\"" + var + "\"'"
    if context == '"' or (context == "${" and len(stack) > 1 and stack[-2] == '"'):
        return var
    return '"' + var + '"'


def shell_script(text: str) -> tuple[str, tuple[str, ...]]:
    """The author's text with every placeholder rewritten to a quoted shell variable reference.

    Returns (script body, placeholder names in order of first use). Raises ``ValueError`` for text
    medic cannot follow (a malformed ``$``, unbalanced quotes, a placeholder in arithmetic).
    """
    placeholders(text)  # malformed '$' first, with its own message
    out: list[str] = []
    names: list[str] = []
    stack = ["top"]
    i = 0
    while i < len(text):
        ch, top = text[i], stack[-1]
        if ch == "$":
            m = Template.pattern.match(text, i)
            assert m is not None  # Template.pattern always matches at a '$'
            i = m.end()
            if m.group("escaped") is None:
                name = m.group("named") or m.group("braced")
                if m.start() > 0 and text[m.start() - 1] == "\\" and top != "'":
                    raise ValueError(f"backslash before placeholder ${name} at character {m.start() + 1}: "
                                     f"a value is always one quoted word; remove the backslash")
                if name not in names:
                    names.append(name)
                out.append(_reference(name, stack, text, m.start()))
                continue
            out.append("$")  # a literal '$': it may open $( $(( or ${ in the author's script
            if top != "'" and text.startswith("((", i):
                stack.append("$((")
                out.append("((")
                i += 2
            elif top != "'" and text[i:i + 1] in ("(", "{"):
                stack.append("$(" if text[i] == "(" else "${")
                out.append(text[i])
                i += 1
            continue
        if top == "'":
            if ch == "'":
                stack.pop()
        elif ch == "\\" and i + 1 < len(text) and text[i + 1] != "$":
            out.append(text[i:i + 2])
            i += 2
            continue
        elif top == '"':
            if ch == '"':
                stack.pop()
            elif ch == "`":
                stack.append("`")
        elif ch == "#" and top in _UNQUOTED and _word_start(out):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            if "$" in text[i:end].replace("$$", ""):
                raise ValueError(f"placeholder in a shell comment at character {i + 1}: remove it or use $$")
            out.append(text[i:end])
            i = end
            continue
        elif ch in "'\"":
            stack.append(ch)
        elif ch == "`":
            if top == "`":
                stack.pop()
            else:
                stack.append("`")
        elif ch == "(" and top in ("$(", "(", "$(("):
            stack.append("(")
        elif ch == ")" and top in ("$(", "("):
            stack.pop()
        elif ch == ")" and top == "$((" and text.startswith("))", i):
            stack.pop()
            out.append("))")
            i += 2
            continue
        elif ch == "}" and top == "${":
            stack.pop()
        out.append(ch)
        i += 1
    if stack != ["top"] and names:
        raise ValueError(f"cannot follow the quoting of this command (still inside {stack[-1]!r} at its end): "
                         f"close every quote, $$(…) and $${{…}} so medic can pass its values safely")
    return "".join(out), tuple(names)


def check_shell(text: str) -> str:
    """Validator for runbook commands: the text can be turned into a safe script (else ValueError)."""
    shell_script(text)
    return text


def render_shell(text: str, host: Host, *, where: str = "command", extra: dict[str, Any] | None = None) -> ShellCommand:
    """The command for this host: a fixed script plus its values as positional parameters."""
    values = host_values(host, extra)
    _check_defined(text, values, where=where)
    try:
        body, names = shell_script(text)
    except ValueError as exc:
        raise RunbookError(f"{where}: {exc}", expected="a command medic can pass values to safely",
                           found=text) from exc
    if not names:
        return ShellCommand(script=body, text=text)
    prelude = " ".join(f'{VAR_PREFIX}{name}="${{{i}}}"' for i, name in enumerate(names, 1))
    return ShellCommand(script=f"{prelude}; {body}", names=names, args=tuple(values[n] for n in names), text=text)


def render_promql(text: str, host: Host | None, *, where: str = "query") -> str:
    values = host_values(host) if host is not None else {}
    _check_defined(text, values, where=where)
    return Template(text).substitute({k: promql_string(v) for k, v in values.items()})
