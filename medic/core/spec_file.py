"""Reading a YAML spec file so that every error points at a line.

Why apart from the runbook models: the models say what a spec *is*; this says how a file becomes
one and how a refusal names the file, the line, the field, what was expected and what was found.
libyaml parses (~10x faster); only when something is wrong is the pure-Python composer used, to map
each key path to its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from medic.errors import RunbookError

__all__ = ["line_of", "load_named_spec", "read_mapping", "validation_error"]

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_EXPECTED = {
    "missing": "this field to be present",
    "extra_forbidden": "only the documented fields",
}


def _parse(text: str) -> Any:
    """Fast path with libyaml; on an error, the pure-Python parser gives the more precise message."""
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError:
        return yaml.safe_load(text)


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map each key path in the YAML document to its 1-based line number."""
    index: dict[tuple[Any, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        index[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                index[(*path, key.value)] = key.start_mark.line + 1
                walk(value, (*path, key.value))
                index[(*path, key.value)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return index


def _field_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """pydantic's error location without its validator steps (``function-after[...]``)."""
    return tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line of a key path, else of its nearest parent that has one."""
    index, path = _line_index(text), _field_path(loc)
    while path:
        if path in index:
            return index[path]
        path = path[:-1]
    return index.get(())


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def read_mapping(path: Path, model: type[BaseModel]) -> tuple[str, dict[str, Any]]:
    """The file's text and its YAML mapping; RunbookError (with the line) if it is neither readable nor one."""
    file = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RunbookError(f"cannot read runbook: {exc.strerror}", file=file) from exc
    try:
        data = _parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        message = f"not valid YAML: {getattr(exc, 'problem', None) or exc}"
        if context and context_mark:
            message += f" ({context} that starts at line {context_mark.line + 1})"
        if context == "while scanning a quoted scalar" and context_mark:
            mark = context_mark  # the quote that never closes, not the end of the file
        raise RunbookError(message, file=file, line=mark.line + 1 if mark else None,
                           expected="a YAML mapping") from exc
    if not isinstance(data, dict):
        raise RunbookError("a runbook must be a YAML mapping", file=file, line=1,
                           expected=f"fields: {', '.join(_field_names(model))}",
                           found="an empty file" if data is None else f"a YAML {type(data).__name__}")
    return text, data


def validation_error(exc: ValidationError, *, text: str, file: str) -> RunbookError:
    """The first problem pydantic found, as a RunbookError naming its line, field, expected and found."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    field = ".".join(str(p) for p in _field_path(loc))
    kind = err["type"]
    if kind == "extra_forbidden":
        message = f"unknown field {loc[-1]!r}"
    elif kind == "missing":
        message = f"missing field {loc[-1]!r}"
    else:
        message = f"invalid value for {field!r}"
    found = None if kind == "missing" else repr(err.get("input"))[:200]
    expected = _EXPECTED.get(kind) or str(err["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        expected = f"one of the documented fields of {'.'.join(str(p) for p in loc[:-1]) or 'a runbook'}"
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    return RunbookError(message + more, file=file, line=line_of(text, loc), field=field,
                        expected=expected, found=found)


M = TypeVar("M", bound=BaseModel)


def load_named_spec(path: Path, model: type[M], *, kind: str) -> M:
    """Read and validate one spec whose `name` must equal its file name; errors point at the line."""
    text, data = read_mapping(path, model)
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, text=text, file=str(path)) from None
    name = getattr(spec, "name", None)
    if name != path.stem:
        raise RunbookError(f"the {kind}'s name must match its file name", file=str(path),
                           line=line_of(text, ("name",)), field="name", expected=path.stem, found=name)
    return spec
