"""The shape of medic/: no import circles, small modules.

The import graph is read from the source with `ast` — imports at module level, inside functions and
under `if TYPE_CHECKING:` alike — because an import hidden in a function still couples two modules
both ways: it only hides the circle from Python until the wrong call order meets it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medic"
MAX_LINES = 350


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # file:line, and the function when the import is inside one


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, str | None]]:
    """Every import statement, with the function it sits in (None at module level)."""
    def walk(node: ast.AST, function: str | None) -> Iterator[tuple[ast.Import | ast.ImportFrom, str | None]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, function
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            yield from walk(child, inner)

    yield from walk(tree, None)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The medic modules an import statement loads (`from pkg import mod` counts as pkg.mod)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    for name in names:
        while name and name not in known:  # `import medic.core.audit.x` → the deepest known module
            name = name.rpartition(".")[0]
        if name and name != module:
            yield name


def import_graph() -> list[Edge]:
    found = modules()
    known = set(found)
    edges: list[Edge] = []
    for module, path in found.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, function in _imports(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                where = f"{path.relative_to(ROOT)}:{node.lineno}" + (f" in {function}()" if function else "")
                edges.append(Edge(module, target, where))
    return edges


Cycle = tuple[list[str], list[Edge]]  # the modules tied together, and one circle through them


def cycles(edges: list[Edge]) -> list[Cycle]:
    """Each strongly connected group of modules (Tarjan), with one circle through it as its edges."""
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge)
        graph.setdefault(edge.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph[node]:
            if edge.target not in index:
                connect(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [(sorted(group), _one_cycle(graph, group)) for group in groups]


def _one_cycle(graph: dict[str, list[Edge]], group: set[str]) -> list[Edge]:
    """A shortest way from the group's first module back to itself, staying inside the group."""
    start = min(group)
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target == start:
                    return paths[node] + [edge]
                if edge.target in group and edge.target not in paths:
                    paths[edge.target] = paths[node] + [edge]
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no cycle found in strongly connected group {sorted(group)}")


def describe(found: Cycle) -> str:
    group, cycle = found
    chain = " → ".join([cycle[0].source] + [edge.target for edge in cycle])
    lines = [chain] + [f"    {edge.source} imports {edge.target} at {edge.where}" for edge in cycle]
    if len(group) > len(cycle):
        lines.append(f"    (tied together with it: {', '.join(m for m in group if m not in chain.split(' → '))})")
    return "\n".join(lines)


def oversized(package: Path = PACKAGE) -> list[str]:
    sizes = {path: len(path.read_text().splitlines()) for path in sorted(package.rglob("*.py"))}
    return [f"{path.relative_to(package.parent)} ({lines} lines)" for path, lines in sizes.items() if lines > MAX_LINES]


# --- the rules -------------------------------------------------------------------------------------


def test_medic_has_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in medic/ (break each by moving what both sides need into a third module):\n" + \
        "\n".join(describe(c) for c in found)


def test_no_module_in_medic_is_over_350_lines() -> None:
    found = oversized()
    assert not found, f"split these modules below {MAX_LINES} lines (by concern, so each reads on its own): " + \
        ", ".join(found)


# --- the checks check: each rule fails on what it must refuse ---------------------------------------


def test_a_circle_hidden_in_a_function_is_found_and_named() -> None:
    edges = [Edge("medic.a", "medic.b", "medic/a.py:3"), Edge("medic.b", "medic.c", "medic/b.py:9 in handler()"),
             Edge("medic.c", "medic.a", "medic/c.py:2"), Edge("medic.c", "medic.d", "medic/c.py:4")]
    [cycle] = cycles(edges)
    text = describe(cycle)
    assert cycle[0] == ["medic.a", "medic.b", "medic.c"]
    assert text.splitlines()[0] == "medic.a → medic.b → medic.c → medic.a"
    assert "medic/b.py:9 in handler()" in text


def test_a_module_over_the_limit_is_named(tmp_path: Path) -> None:
    package = tmp_path / "medic"
    (package / "core").mkdir(parents=True)
    (package / "core" / "small.py").write_text("x = 1\n" * MAX_LINES)
    (package / "core" / "big.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert oversized(package) == [f"medic/core/big.py ({MAX_LINES + 1} lines)"]


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    source = "from . import audit\n\ndef f():\n    from medic.core.report import utcnow\n    import medic.settings\n"
    tree = ast.parse(source)
    known = {"medic.core.audit", "medic.core.report", "medic.settings", "medic.core.inventory"}
    found = {(t, fn) for node, fn in _imports(tree) for t in _targets(node, "medic.core.inventory", False, known)}
    assert found == {("medic.core.audit", None), ("medic.core.report", "f"), ("medic.settings", "f")}
