"""The lab's HAProxy and medic's runtime-API wrapper, against the real HAProxy of the session lab."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from medic.clients.haproxy import HAProxyRuntime, LoadBalancerError, LoadBalancerNameError
from medic.core.inventory import load_inventory
from medic_lab.state import LabState
from medic.procedures.rolling import lb_target
from tests.support.flows import metric, wait_metric
from tests.support.lab_health import restored  # noqa: F401 (a fixture)
from tests.support.waits import wait_for, wait_for_no_problems


@pytest.fixture
def runtime(lab: LabState) -> HAProxyRuntime:
    return HAProxyRuntime("127.0.0.1", lab.ports.haproxy_admin)


def _answers(lab: LabState, n: int) -> Counter[str]:
    with httpx.Client(base_url=f"http://127.0.0.1:{lab.ports.haproxy}", timeout=5) as client:
        return Counter(client.get("/").text.strip().removeprefix("hello from ") for _ in range(n))


def _not_serving(runtime: HAProxyRuntime) -> list[str]:
    return [f"{s.name}: {s.admin_state}, {s.status}, {s.check_status}" for s in runtime.servers("web")
            if not (s.up and s.admin_state == "ready" and s.status == "UP" and s.check_status == "L7OK")]


def test_balances_over_every_web_host_and_reports_them_up(lab: LabState, runtime: HAProxyRuntime) -> None:
    web = sorted(h.name for h in lab.hosts if h.group == "web")
    # An earlier test may have restarted a service a moment ago: HAProxy marks it UP after its next
    # passing health checks, so wait for that (bounded) rather than read one instant.
    wait_for_no_problems(lambda: _not_serving(runtime), what="every web server ready, UP and L7OK", timeout=30)
    servers = runtime.servers("web")
    assert sorted(s.name for s in servers) == web
    assert {s.port for s in servers} == {h.service_port for h in lab.hosts if h.group == "web"}
    assert sorted(_answers(lab, 3 * len(web))) == web
    assert metric(lab, 'up{job="haproxy"}')[0][1] == 1.0
    # Prometheus scrapes HAProxy once a second: it may still hold the state from before the wait.
    wait_metric(lab, 'count(haproxy_server_status{proxy="web",state="UP"} == 1)',
                lambda r: bool(r) and r[0][1] == len(web))


def test_inventory_says_where_each_host_sits_in_the_load_balancer(lab: LabState) -> None:
    host = load_inventory().host("web-2")
    target = lb_target(host)
    assert target is not None
    assert (target.admin, target.backend, target.server) == (f"127.0.0.1:{lab.ports.haproxy_admin}", "web", "web-2")


def test_drain_and_ready_change_what_haproxy_does(lab: LabState, runtime: HAProxyRuntime, restored: LabState) -> None:
    runtime.set_state("web", "web-6", "drain")
    drained = runtime.server("web", "web-6")
    assert (drained.admin_state, drained.status) == ("drain", "DRAIN")
    assert "web-6" not in _answers(lab, 30)
    assert runtime.wait_drained("web", "web-6", 5).drained
    runtime.set_state("web", "web-6", "maint")
    assert runtime.server("web", "web-6").status == "MAINT"
    runtime.set_state("web", "web-6", "ready")
    assert runtime.server("web", "web-6").admin_state == "ready"
    # out of maint, HAProxy sends it traffic once a health check (every 250 ms) has passed again
    wait_for(lambda: runtime.server("web", "web-6").status, what="web-6 UP again after maint", timeout=30,
             done=lambda status: status == "UP")
    assert "web-6" in _answers(lab, 30)


def test_set_address_moves_a_server_and_back(runtime: HAProxyRuntime, lab: LabState, restored: LabState) -> None:
    port = lab.host("web-6").service_port
    try:
        runtime.set_address("web", "web-6", "127.0.0.1", lab.host("web-5").service_port)
        assert runtime.server("web", "web-6").port == lab.host("web-5").service_port
    finally:
        runtime.set_address("web", "web-6", "127.0.0.1", port)
    assert runtime.server("web", "web-6").port == port


@pytest.mark.parametrize("backend, server, message", [
    ("web", "web-1; disable server web/web-2", "names may only contain"),
    ("web\nshow info", "web-1", "names may only contain"),
])
def test_unsafe_names_never_reach_haproxy(runtime: HAProxyRuntime, backend: str, server: str, message: str) -> None:
    with pytest.raises(LoadBalancerNameError, match=message):
        runtime.set_state(backend, server, "drain")
    assert all(s.admin_state == "ready" for s in runtime.servers("web"))


def test_clear_errors_for_unknown_names_bad_input_and_no_haproxy(runtime: HAProxyRuntime) -> None:
    with pytest.raises(LoadBalancerError, match="has no server 'web-99' in backend 'web' \\(servers: web-1"):
        runtime.server("web", "web-99")
    with pytest.raises(LoadBalancerError, match="Can't find backend"):
        runtime.servers("nope")
    with pytest.raises(LoadBalancerError, match="use ready, drain or maint"):
        runtime.set_state("web", "web-1", "up")  # type: ignore[arg-type]
    with pytest.raises(LoadBalancerNameError, match="give an IP address"):
        runtime.set_address("web", "web-1", "localhost; rm", 80)
    with pytest.raises(LoadBalancerError, match="cannot reach HAProxy's runtime API at 127.0.0.1:9"):
        HAProxyRuntime("127.0.0.1", 9, timeout=1).servers("web")
