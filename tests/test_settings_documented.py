"""Every `MEDIC_*` setting is documented where an operator looks: the README's settings table or docs/.

A setting nobody can find is a behaviour nobody can change at 3 a.m.; this fails naming the ones missing.
"""

from __future__ import annotations

from pathlib import Path

from medic.settings import PROJECT_ROOT, Settings


def test_every_setting_is_documented() -> None:
    text = (PROJECT_ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in sorted(Path(PROJECT_ROOT / "docs").glob("*.md")))
    prefix = Settings.model_config.get("env_prefix", "")
    missing = [f"{prefix}{name}".upper() for name in Settings.model_fields if f"{prefix}{name}".upper() not in text]
    assert not missing, f"settings documented nowhere (README settings table or docs/*.md): {missing}"
