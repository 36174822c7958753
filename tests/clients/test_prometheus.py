"""PrometheusClient against the lab's real Prometheus (1 s scrapes)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from medic.errors import PrometheusError, PrometheusUnreachable, PromQLError, UnsafeValueError
from medic_lab.state import LabState
from medic.clients.prometheus import PrometheusClient, label_matcher, promql_string
from tests.support.closed_port import closed_port  # noqa: F401  (a fixture: a port held closed)
from tests.support.flows import metric
from tests.support.lab_health import wait_web_lab_healthy
from tests.support.waits import wait_for


@pytest.fixture
def prom(lab: LabState) -> Iterator[PrometheusClient]:
    with PrometheusClient() as client:  # URL from the settings, i.e. the running lab
        yield client


@pytest.fixture
def steady(lab: LabState) -> LabState:
    """Every lab target up, and the web hosts up for the last 6 s: an earlier test may have restarted
    a service a moment ago, and these tests read `up` as it is now and over the last 5 s."""
    wait_web_lab_healthy(lab)
    wait_for(lambda: metric(lab, 'up == 0 or min_over_time(up{job="web"}[6s]) < 1'),
             what="every target up (web hosts: for 6 s)", timeout=30, done=lambda down: not down)
    return lab


def test_client_defaults_to_the_labs_prometheus(lab: LabState, prom: PrometheusClient) -> None:
    assert prom.url == lab.prometheus_url
    assert prom.healthy()


def test_instant_query_up_has_every_lab_target(steady: LabState, prom: PrometheusClient) -> None:
    lab = steady
    samples = prom.query("up")
    by_job: dict[str, list] = {}
    for s in samples:
        by_job.setdefault(s.labels["job"], []).append(s)
    assert sorted(s.labels["host"] for s in by_job["web"]) == sorted(h.name for h in lab.hosts)
    assert {"prometheus", "alertmanager", "node"} <= set(by_job)
    assert all(s.value == 1.0 and s.timestamp > 0 for s in samples)


def test_instant_query_at_a_past_time(prom: PrometheusClient) -> None:
    at = time.time() - 3600  # long before the lab started: nothing was scraped yet
    assert prom.query("up", at=at) == []
    [sample] = prom.query("time()", at=at)
    assert sample.value == pytest.approx(at, abs=0.01)


def test_scalar_and_string_results(steady: LabState, prom: PrometheusClient) -> None:
    [scalar] = prom.query("scalar(count(up)) * 2")
    assert scalar.labels == {} and scalar.value == 2 * len(prom.query("up"))
    [text] = prom.query('"hello"')
    assert text.text == "hello" and text.labels == {}


def test_range_query_returns_points_per_series(steady: LabState, prom: PrometheusClient) -> None:
    lab = steady
    end = time.time()
    series = prom.query_range('up{job="web"}', start=end - 5, end=end, step=1)
    assert sorted(s.labels["host"] for s in series) == sorted(h.name for h in lab.hosts)
    for s in series:
        assert len(s.points) >= 2
        assert [t for t, _ in s.points] == sorted(t for t, _ in s.points)
        assert all(v == 1.0 for _, v in s.points)


def test_value_single_empty_and_ambiguous(steady: LabState, prom: PrometheusClient) -> None:
    lab = steady
    assert prom.value('sum(up{job="web"})') == len(lab.hosts)
    assert prom.value('up{job="no-such-job"}') is None
    with pytest.raises(PromQLError, match="returned .* series"):
        prom.value('up{job="web"}')


def test_invalid_promql_carries_prometheus_parse_error(prom: PrometheusClient) -> None:
    with pytest.raises(PromQLError) as info:
        prom.query("rate(up)")
    assert "expected type range vector" in str(info.value)
    assert info.value.query == "rate(up)" and info.value.error_type == "bad_data"
    with pytest.raises(PromQLError, match="parse error"):
        prom.query_range("up{", start=time.time() - 5, end=time.time(), step=1)


def test_closed_port_is_unreachable_with_advice(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    client = PrometheusClient(url, timeout=2)
    assert not client.healthy()
    with pytest.raises(PrometheusUnreachable) as info:
        client.query("up")
    assert url in str(info.value) and "MEDIC_PROMETHEUS_URL" in str(info.value)


def test_server_that_never_answers_times_out_as_unreachable() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(PrometheusUnreachable, match="did not answer within 0.3 s"):
            PrometheusClient(url, timeout=0.3).query("up")


@pytest.mark.parametrize("status", [503, 502])
def test_a_prometheus_not_ready_yet_is_unreachable_not_broken(status: int) -> None:
    """A restarting Prometheus answers 503 "Service Unavailable" (text) until its TSDB is loaded: that is
    "try again" (verify and re-check retry PrometheusUnreachable), not a misconfigured URL — the soak saw
    a run that had repaired its host fail in verify on it, and a second run act again."""
    import http.server
    import threading

    class NotReady(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"Service Unavailable")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotReady)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(PrometheusUnreachable, match=f"not ready \\(HTTP {status}"):
            PrometheusClient(url, timeout=2).query("up")
    finally:
        server.shutdown()
        server.server_close()


def test_not_prometheus_is_reported(lab: LabState) -> None:
    with pytest.raises(PrometheusError, match="without a Prometheus API body"):
        PrometheusClient(lab.alertmanager_url).query("up")


@pytest.mark.parametrize("value", ['we"ird', "back\\slash", "new\nline", 'all\\" "of\n\\them', "ünï", ""])
def test_promql_string_round_trips_through_prometheus(prom: PrometheusClient, value: str) -> None:
    [sample] = prom.query(f'label_replace(vector(1), "v", {promql_string(value)}, "", "")')
    assert sample.labels.get("v", "") == value


def test_quoted_value_cannot_change_the_query(prom: PrometheusClient) -> None:
    hostile = 'web-1"} or up{job="web'
    assert prom.query(f"up{{{label_matcher('host', hostile)}}}") == []
    assert len(prom.query(f"up{{{label_matcher('host', 'web-1')}}}")) == 1


@pytest.mark.parametrize("name", ["1host", "host-name", 'host"}', "", "a b"])
def test_label_matcher_refuses_bad_label_names(name: str) -> None:
    with pytest.raises(UnsafeValueError, match="label name"):
        label_matcher(name, "x")


def test_label_matcher_quotes_the_value() -> None:
    assert label_matcher("host", 'a"b') == 'host="a\\"b"'
    assert label_matcher("_x1", "v", op="!~") == '_x1!~"v"'
    with pytest.raises(UnsafeValueError, match="operator"):
        label_matcher("host", "x", op="==")
