"""Where medic's own files live (the checkout: runbooks, playbooks, lab templates), and where medic serve
listens by default. Imports nothing heavy: the CLI reads it before parsing its arguments."""

from __future__ import annotations

from pathlib import Path

#: The project checkout (medic is installed editable from it).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS_DIR = PROJECT_ROOT / "runbooks"
PLAYBOOKS_DIR = PROJECT_ROOT / "playbooks"
SLOS_DIR = PROJECT_ROOT / "slos"
LAB_TEMPLATES_DIR = PROJECT_ROOT / "lab"
DEFAULT_LAB_DIR = PROJECT_ROOT / ".lab"

#: Where the lab's Alertmanager posts by default: `medic serve`'s default address.
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:8787/alertmanager"
