"""The fault-injection suite's fixtures: inject a fault through the lab, and always undo it afterwards.

Every test here is marked `chaos` (`pytestmark` in each module; `make chaos` runs them all); the slow
ones also `slow`, which `make test` leaves out (pyproject: addopts). Each test's docstring says what
"nothing lost" means for it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from medic_lab import faults
from medic_lab.state import LabState
from tests.support.chaos import Inject
from tests.support.server import MedicServer, cancel_leftover_runs, medic_server


@pytest.fixture(scope="package")
def server(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedicServer]:
    """A real `medic serve` on the session lab, one for the suite (flap guard off: other modules'
    repairs would count; a busy-slot retry after 2 s)."""
    cancel_leftover_runs(lab.prefect_api_url)
    env = {"MEDIC_FLAP_WINDOW_S": "1", "MEDIC_ALREADY_RUNNING_RETRY_S": "2"}
    with medic_server(tmp_path_factory.mktemp("chaos-serve"), env=env) as srv:
        yield srv


@pytest.fixture
def inject(lab: LabState) -> Iterator[Inject]:
    """`inject(fault, host=None)` breaks the lab; every fault injected is fixed at teardown, pass or fail."""
    done: list[tuple[str, str | None]] = []

    def do(fault: str, host: str | None = None) -> str:
        said = faults.break_host(lab, fault, host)
        done.append((fault, host))
        return said

    yield do
    for fault, host in reversed(done):
        faults.fix_host(lab, fault, host)
