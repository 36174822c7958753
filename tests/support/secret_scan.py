"""Grep every file medic and ansible-runner wrote for secrets that must never reach disk.

Used by tests/clients/test_no_secrets_on_disk.py (canaries set for one module) and by the session
check in tests/conftest.py (canaries for the whole suite with MEDIC_TEST_SECRET_CANARIES=1, plus the
suite's own fixed test secrets). A secret is looked for as its bytes and as the base64 forms it takes
in an HTTP Authorization header, in every file (SQLite databases and their WAL included)."""

from __future__ import annotations

import base64
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

#: The secrets the brief names; each gets a recognisable fake value.
CANARY_NAMES = ("MEDIC_SLACK_BOT_TOKEN", "MEDIC_SLACK_SIGNING_SECRET", "MEDIC_APPROVAL_KEY",
                "PREFECT_API_AUTH_STRING", "MEDIC_INTAKE_TOKEN")
_CHUNK = 1 << 20


def make_canaries() -> dict[str, str]:
    """NAME → SECRET-CANARY-<name>-<random>: unique per run, so an old file never matches."""
    return {name: f"SECRET-CANARY-{name.lower()}-{secrets.token_hex(6)}" for name in CANARY_NAMES}


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    forms = [raw]
    for prefix in (b"", b"medic:", b"user:"):  # basic auth encodes "user:password" as a whole
        forms.append(base64.b64encode(prefix + raw).rstrip(b"="))
    return forms


def places_written(lab_dir: Path | None = None) -> list[Path]:
    """Where medic and ansible-runner write: the lab dir (state dirs, Prefect home and its SQLite DB
    live there), run dirs left in the temp dir, ~/.ansible, and any MEDIC_STATE_DIR/PREFECT_HOME."""
    roots = [lab_dir] if lab_dir else []
    tmp = Path(tempfile.gettempdir())
    roots += sorted(tmp.glob("medic-ansible-*"))
    roots.append(Path.home() / ".ansible")
    for var in ("MEDIC_STATE_DIR", "PREFECT_HOME", "MEDIC_LAB_DIR"):
        if os.environ.get(var):
            roots.append(Path(os.environ[var]))
    return [r for r in dict.fromkeys(roots) if r.exists()]


def _files(roots: Iterable[Path]) -> Iterable[Path]:
    for root in roots:
        if root.is_file():
            yield root
            continue
        for dirpath, _dirs, names in os.walk(root, followlinks=False):
            for name in names:
                path = Path(dirpath) / name
                try:
                    if stat.S_ISREG(path.lstat().st_mode):
                        yield path
                except OSError:
                    continue  # removed while we walked (a running lab)


def find_secrets(roots: Iterable[Path], needles: Mapping[str, str]) -> list[str]:
    """'<file>: <secret name>' for every file that holds a secret (in any of its forms)."""
    forms = {name: _forms(value) for name, value in needles.items() if value}
    longest = max((len(f) for fs in forms.values() for f in fs), default=1)
    found = []
    for path in _files(roots):
        hits: set[str] = set()
        try:
            with path.open("rb") as f:
                tail = b""
                while chunk := f.read(_CHUNK):
                    window = tail + chunk
                    hits |= {name for name, fs in forms.items() if any(x in window for x in fs)}
                    tail = window[-longest:]
        except OSError:
            continue
        found += [f"{path}: {name}" for name in sorted(hits)]
    return found


def session_secrets() -> dict[str, str]:
    """The secrets the whole test session holds: the session's approval key (tests/conftest.py), the
    fake Slack's bot token and signing secret, and any SECRET-CANARY value in the environment."""
    from tests.fakes.slack_api import DEFAULT_TOKEN
    from tests.fakes.slack_signing import SIGNING_SECRET

    found = {"fake Slack bot token": DEFAULT_TOKEN, "fake Slack signing secret": SIGNING_SECRET}
    if os.environ.get("MEDIC_APPROVAL_KEY"):
        found["MEDIC_APPROVAL_KEY"] = os.environ["MEDIC_APPROVAL_KEY"]
    found.update({k: v for k, v in os.environ.items() if v.startswith("SECRET-CANARY-")})
    return found


def session_leaks(lab_dir: Path, public_dir: Path | None = None) -> str | None:
    """The end-of-session check: a loud message naming every file that holds a session secret, or None.
    MEDIC_TEST_SECRET_SCAN=0 skips it."""
    if os.environ.get("MEDIC_TEST_SECRET_SCAN", "1") == "0":
        return None
    roots = [*places_written(lab_dir), *([public_dir] if public_dir and public_dir.exists() else [])]
    leaks = find_secrets(roots, session_secrets())
    if not leaks:
        return None
    return ("SECRETS ON DISK (issue 11): these files hold a secret of the test session:\n  " + "\n  ".join(leaks)
            + "\nFind who wrote them; nothing secret may be written to artifacts, logs, state or Prefect.")
