"""The grep that proves it: only medic/orchestration/prefect_compat.py touches Prefect's internals.

Scans medic/, flows/, medic_lab/, bench/ and scripts/ (not tests/) with `ast`: imports of private Prefect
modules or names, of Prefect's server internals and of the undocumented names the compat module
wraps; private attributes of Prefect objects; forced state changes; Prefect's message texts.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCANNED = ("medic", "flows", "medic_lab", "bench", "scripts")
COMPAT = ROOT / "medic" / "orchestration" / "prefect_compat.py"
# Public-looking names that are not Prefect's documented API (each has its item in prefect_compat).
UNDOCUMENTED = {
    ("prefect.flow_engine", "run_flow"), ("prefect.context", "SyncClientContext"),
    ("prefect.input", "keyset_from_base_key"), ("prefect.input.run_input", "keyset_from_base_key"),
    ("prefect.input.run_input", "run_input_subclass_from_type"), ("prefect.events.worker", "EventsWorker"),
    ("prefect.logging.handlers", "APILogWorker"),
}
# Private attributes of Prefect objects reached through a variable (`w._drain()`), flagged on any owner.
PRIVATE_ATTRS = {"_drain", "_instances"}
# Texts of Prefect's answers, and setting names, that only the compat module may depend on.
TEXTS = ("schema not found", "must be created", "paused-", "heartbeat_frequency")


def _private_prefect_uses(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    from_prefect: set[str] = set()
    found: list[str] = []

    def private(name: str) -> bool:
        return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))

    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefect":
            module = node.module or ""
            for alias in node.names:
                from_prefect.add(alias.asname or alias.name)
                if private(module) or private(alias.name) or (module, alias.name) in UNDOCUMENTED:
                    found.append(f"{where} from {module} import {alias.name}")
                if module.startswith("prefect.server"):
                    found.append(f"{where} server internals: from {module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "prefect" and (private(alias.name) or alias.name.startswith("prefect.server")):
                    found.append(f"{where} import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRS:
            found.append(f"{where} {ast.unparse(node)}")
        elif isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            while isinstance(owner, ast.Attribute):
                owner = owner.value
            if isinstance(owner, ast.Name) and (owner.id in from_prefect or owner.id == "prefect"):
                found.append(f"{where} {ast.unparse(node)}")
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name.endswith("set_flow_run_state") and any(k.arg == "force" for k in node.keywords):
                found.append(f"{where} forced state change: {ast.unparse(node)[:80]}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            hits = [t for t in TEXTS if t in node.value.lower()] + (["423"] if node.value.strip() == "423" else [])
            if hits:
                found.append(f"{where} matches Prefect's text {hits[0]!r}: {node.value[:60]!r}")
    return found


def test_only_the_compat_module_touches_prefect_internals() -> None:
    files = [p for d in SCANNED if (ROOT / d).is_dir() for p in sorted((ROOT / d).rglob("*.py")) if p != COMPAT]
    assert len(files) > 50, f"scanned only {len(files)} files: is ROOT ({ROOT}) right?"
    found = [hit for p in files for hit in _private_prefect_uses(p)]
    assert not found, "private or undocumented Prefect names outside prefect_compat.py:\n" + "\n".join(found)


def test_the_scan_finds_what_it_is_meant_to_find(tmp_path: Path) -> None:
    """The scanner itself: each kind of use it must flag."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError\n"
        "from prefect.flow_engine import run_flow\n"
        "from prefect.events.worker import EventsWorker\n"
        "EventsWorker._instances\n"
        "worker._drain(at_exit=False)\n"
        "client.set_flow_run_state(run_id, state, force=True)\n"
        "if 'schema not found' in reason: pass\n"
        "from prefect.server.database import provide_database_interface\n"
    )
    found = _private_prefect_uses(sample, root=tmp_path)
    assert len(found) == 8, "\n".join(found)  # one per line of the sample
