"""The engine never imports the lab: the lab reaches medic as a settings file and a command plugin."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from medic.cli.main import COMMANDS_GROUP
from medic.core.paths import PROJECT_ROOT
from medic.errors import ConfigError
from medic.settings import LAB_PROVIDED, LAB_SETTINGS_FILE, Settings
from medic_lab.faults import catalog

ENGINE_DIRS = ("medic", "flows")


def _lab_imports(path: Path, root: Path = PROJECT_ROOT) -> list[str]:
    """`file:line  statement` for every import of medic_lab, static or through importlib/__import__."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        if any(n == "medic_lab" or n.startswith("medic_lab.") for n in names):
            found.append(f"{path.relative_to(root)}:{node.lineno}  {ast.unparse(node)}")
    return found


def test_no_module_of_the_engine_imports_the_lab() -> None:
    files = [f for d in ENGINE_DIRS for f in sorted((PROJECT_ROOT / d).rglob("*.py"))]
    assert len(files) > 30, f"expected the engine's modules under {ENGINE_DIRS}, found {len(files)}"
    offending = [hit for f in files for hit in _lab_imports(f)]
    assert offending == [], "the engine must not import the lab:\n" + "\n".join(offending)


def test_the_scan_sees_every_kind_of_lab_import(tmp_path: Path) -> None:
    """The scan above is only as good as its detector: each of these forms must be caught."""
    sample = tmp_path / "probe.py"
    sample.write_text("import medic_lab\nfrom medic_lab.state import LabState\nimport importlib\n"
                      "importlib.import_module('medic_lab.control')\n__import__('medic_lab.faults')\n"
                      "import medic_laboratory\n")
    hits = _lab_imports(sample, tmp_path)
    assert [h.split(":")[1].split()[0] for h in hits] == ["1", "2", "4", "5"], hits


def test_the_lab_commands_are_a_plugin_of_the_medic_command() -> None:
    providers = {ep.name: ep.value for ep in entry_points(group=COMMANDS_GROUP)}
    assert providers.get("lab") == "medic_lab.cli:add_commands", (
        f"entry points of {COMMANDS_GROUP}: {providers}; reinstall: "
        f"`.venv/bin/uv pip install --python .venv/bin/python --no-deps -e .`")


@pytest.mark.parametrize("action", ["break", "fix"])
def test_break_and_fix_help_lists_every_fault_on_one_line(action: str) -> None:
    result = subprocess.run([sys.executable, "-m", "medic", "lab", action, "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for fault in catalog():
        line = next((ln for ln in lines if ln.split()[:1] == [fault.name]), None)
        assert line is not None, f"{fault.name} missing from `medic lab {action} --help`:\n{result.stdout}"
        assert fault.summary in line, f"{fault.name}'s one line is not its summary: {line!r}"


# --- the lab's settings file as a settings source ------------------------------------------------


@pytest.fixture
def lab_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lab dir with a settings.json as `medic lab up` writes it, and no MEDIC_ variables set."""
    for name in ("LAB_DIR", *(key.upper() for key in LAB_PROVIDED)):
        monkeypatch.delenv(f"MEDIC_{name}", raising=False)
    (tmp_path / LAB_SETTINGS_FILE).write_text(json.dumps({
        "inventory": "/lab/inventory.yml", "prometheus_url": "http://127.0.0.1:1/lab",
        "prefect_api_url": "http://127.0.0.1:2/api", "slack_bot_token": "not-a-lab-setting"}))
    return tmp_path


def test_settings_take_what_the_lab_provides(lab_file: Path) -> None:
    settings = Settings(lab_dir=lab_file)
    assert settings.inventory == Path("/lab/inventory.yml")
    assert settings.prometheus_url == "http://127.0.0.1:1/lab"
    assert settings.prefect_ui_url == "http://127.0.0.1:2", "derived settings follow the lab's values"
    assert settings.slack_bot_token is None, "the lab file may only provide the lab's own settings"


def test_the_lab_dir_from_the_environment_picks_the_lab_file(lab_file: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIC_LAB_DIR", str(lab_file))
    assert Settings().prometheus_url == "http://127.0.0.1:1/lab"


def test_environment_beats_the_lab_file_and_init_beats_both(lab_file: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIC_PROMETHEUS_URL", "http://127.0.0.1:3/env")
    assert Settings(lab_dir=lab_file).prometheus_url == "http://127.0.0.1:3/env"
    assert Settings(lab_dir=lab_file, prometheus_url="http://127.0.0.1:4/init").prometheus_url == "http://127.0.0.1:4/init"


def test_an_empty_variable_means_unset_so_the_lab_file_applies(lab_file: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIC_INVENTORY", "")
    assert Settings(lab_dir=lab_file).inventory == Path("/lab/inventory.yml")


def test_without_a_lab_file_the_defaults_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDIC_PROMETHEUS_URL", raising=False)
    monkeypatch.delenv("MEDIC_INVENTORY", raising=False)
    settings = Settings(lab_dir=tmp_path)
    assert settings.prometheus_url is None and settings.inventory is None


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_broken_lab_file_says_which_file_and_what_to_do(lab_file: Path, content: str) -> None:
    (lab_file / LAB_SETTINGS_FILE).write_text(content)
    with pytest.raises(ConfigError) as raised:
        Settings(lab_dir=lab_file)
    assert str(lab_file / LAB_SETTINGS_FILE) in str(raised.value)
    assert "medic lab down" in str(raised.value)
