"""The tests' Prefect helper (tests/support/prefect_api.py) asks again while Prefect is busy, and
otherwise says what it asked and what came back (a scripted busy server; a port held closed)."""

from __future__ import annotations

import httpx
import pytest

from tests.support.busy_prefect import busy_prefect
from tests.support.closed_port import closed_port  # noqa: F401  (a fixture: a port held closed)
from tests.support.prefect_api import prefect_json, prefect_request


def test_busy_answers_are_asked_again_until_one_succeeds() -> None:
    with busy_prefect([503, 503, 429]) as server:
        assert prefect_json(server.url, "POST", "/flow_runs/", json={"flow_id": "f"}) == {"id": "f00d"}
        assert server.seen == 4


def test_an_error_answer_fails_naming_the_call_and_the_answer() -> None:
    with busy_prefect([422]) as server:
        with pytest.raises(AssertionError, match=r"POST .*/api/flow_runs/: Prefect answered 422: .*database is locked"):
            prefect_json(server.url, "POST", "/flow_runs/", json={})
        assert server.seen == 1  # not a busy answer: asked once
    with busy_prefect([503] * 1000) as server:
        assert prefect_request(server.url, "POST", "/x", retry_for=0.5).status_code == 503  # the last answer
        assert server.seen >= 2


def test_an_unreachable_prefect_raises_a_transport_error_naming_the_url(closed_port: int) -> None:
    with pytest.raises(httpx.TransportError, match=rf"GET http://127.0.0.1:{closed_port}/api/flow_runs/1: "
                                                   r"Prefect unreachable for 0.5 s"):
        prefect_request(f"http://127.0.0.1:{closed_port}/api", "GET", "/flow_runs/1", retry_for=0.5)
