"""Not collected by the suite (no `test_` prefix): tests/lab/test_private_lab.py runs it in a pytest of its
own, with a small session lab, and SIGTERMs that pytest while this test holds the lab."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from medic_lab.state import LabState

HOLD_S = 300


def test_hold_the_session_lab_until_sigterm(lab: LabState) -> None:
    Path(os.environ["MEDIC_PROBE_READY"]).write_text(str(lab.lab_dir))
    threading.Event().wait(HOLD_S)  # a lock wait: the SIGTERM handler's KeyboardInterrupt ends it
    pytest.fail(f"no SIGTERM came within {HOLD_S} s")
