"""Where medic's own files live: the checkout (runbooks, playbooks, lab templates)."""

from __future__ import annotations

from pathlib import Path

#: The project checkout (medic is installed editable from it).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNBOOKS_DIR = PROJECT_ROOT / "runbooks"
PLAYBOOKS_DIR = PROJECT_ROOT / "playbooks"
LAB_TEMPLATES_DIR = PROJECT_ROOT / "lab"
DEFAULT_LAB_DIR = PROJECT_ROOT / ".lab"
