"""Who may make medic act over HTTP, and how much they may send (issue 11, part 3).

medic serve's real app, guard and uvicorn on a real loopback socket (in this process, with settings of
the test's own: `guarded`), and at the end a real `medic serve` subprocess that the lab's real
Alertmanager delivers to with the token the lab gave it. Request bodies too large to send are never
sent: raw sockets show the answer arrives before them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.remediate import remediate
from medic.errors import ConfigError
from medic.service.app import create_app
from medic.service.credentials import NOT_CONFIGURED, Credentials, refuse_open_bind, tls_options
from medic.service.guard import TokenBuckets
from medic.service.intake import MAX_BODY_BYTES
from medic.service.state import build_state
from medic.settings import Settings
from medic_lab import control
from medic_lab.state import LabState
from tests.support.app_server import BodyCounter, serve_app
from tests.support.intake import intake_headers
from tests.support.server import MedicServer, alert_payload, cancel_leftover_runs, medic_server
from tests.support.tls_ca import make_ca
from tests.support.waits import wait_for

TOKEN = "test-intake-token-" + uuid.uuid4().hex
CLIENT_TOKEN = "test-client-token-" + uuid.uuid4().hex
BASIC = ("alertmanager", "test-basic-password-" + uuid.uuid4().hex)
BEARER = {"authorization": f"Bearer {TOKEN}"}
UVICORN_PIECE = 64 * 1024 + 256 * 1024  # the most uvicorn hands over in one receive()


# --- a stand-in for Prefect's API that counts what it is asked ------------------------------------


class CountingPrefect:
    """Answers /api/health and /api/flow_runs/count like Prefect and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: bytes) -> None:
                counter.calls += 1
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self._answer(b"true")

            def do_POST(self) -> None:  # noqa: N802
                self._answer(b"0")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.api_url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "CountingPrefect":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prefect() -> Iterator[CountingPrefect]:
    with CountingPrefect() as fake:
        yield fake


Guarded = Callable[..., Any]


@pytest.fixture
def guarded(tmp_path: Path, prefect: CountingPrefect) -> Iterator[Guarded]:
    """`guarded(**settings)` → (base URL, BodyCounter): medic serve's app on a real socket, with these
    settings on top of: no lab (its own dir), the counting Prefect, an inventory of one host."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  children:\n    web:\n      hosts:\n        web-1: {ansible_host: 127.0.0.1}\n")
    with ExitStack() as stack:
        def start(*, uvicorn_options: dict[str, Any] | None = None, **overrides: Any) -> tuple[str, BodyCounter]:
            settings = Settings(**{"lab_dir": tmp_path / "no-lab", "state_dir": tmp_path / "state",
                                   "prefect_api_url": prefect.api_url, "inventory": inventory, **overrides})
            app = BodyCounter(create_app(build_state(settings, remediate)))
            url = stack.enter_context(serve_app(app, **(uvicorn_options or {})))
            return url, app

        yield start


@pytest.fixture
def url(guarded: Guarded) -> str:
    """A guarded app taking a bearer token, a per-client token and basic auth."""
    return guarded(intake_token=TOKEN, intake_tokens={"eu": CLIENT_TOKEN}, intake_basic_auth=":".join(BASIC))[0]


def _alert() -> dict[str, Any]:
    return alert_payload("NoRunbookForThis", "web-1", fingerprint=f"guard-{uuid.uuid4().hex[:8]}")


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- credentials ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/alertmanager", "/runs"])
@pytest.mark.parametrize(("headers", "why"), [
    ({}, "no Authorization header"),
    ({"authorization": "Bearer not-the-token"}, "wrong bearer token"),
    (_basic(BASIC[0], "not-the-password"), "wrong basic auth"),
    ({"authorization": f"Token {TOKEN}"}, "unsupported Authorization scheme"),
])
def test_no_or_wrong_credential_is_refused_and_logged_without_it(url: str, path: str, headers: dict[str, str],
                                                                 why: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="medic.service.guard")
    response = httpx.post(f"{url}{path}", json=_alert(), headers=headers)
    assert response.status_code == 401, response.text
    assert why in response.json()["error"] and "Authorization: Bearer" in response.json()["error"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    logged = [r.getMessage() for r in caplog.records]
    assert any(f"refused POST {path} from 127.0.0.1: {why}" in line for line in logged), logged
    offered = headers.get("authorization", "").split(" ", 1)[-1]
    assert not offered or all(offered not in line for line in logged), "the offered credential was logged"


@pytest.mark.parametrize("headers", [BEARER, {"authorization": f"Bearer {CLIENT_TOKEN}"}, _basic(*BASIC)],
                         ids=["token", "per-client token", "basic auth"])
def test_the_right_credential_is_let_through(url: str, headers: dict[str, str]) -> None:
    answer = httpx.post(f"{url}/alertmanager", json=_alert(), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["alerts"][0]["action"] == "no runbook"
    # /runs too: past the guard, the handler itself answers (an unknown runbook is bad input)
    runs = httpx.post(f"{url}/runs", json={"runbook": "no-such-runbook"}, headers=headers)
    assert runs.status_code == 400 and "no-such-runbook" in runs.json()["error"], runs.text


def test_credentials_never_show_in_a_repr(tmp_path: Path) -> None:
    settings = Settings(lab_dir=tmp_path, intake_token=TOKEN, intake_basic_auth=":".join(BASIC),
                        intake_tokens={"eu": CLIENT_TOKEN})
    credentials = Credentials.from_settings(settings)
    assert credentials.identify(f"Bearer {CLIENT_TOKEN}") == ("client:eu", "")
    for text in (repr(settings), repr(credentials)):
        assert TOKEN not in text and CLIENT_TOKEN not in text and BASIC[1] not in text


def test_without_a_configured_credential_every_request_is_refused(guarded: Guarded) -> None:
    url, _ = guarded()
    for headers in ({}, BEARER, _basic(*BASIC)):
        response = httpx.post(f"{url}/alertmanager", json=_alert(), headers=headers)
        assert response.status_code == 401 and response.json()["error"] == NOT_CONFIGURED


def test_without_a_credential_medic_serve_listens_on_loopback_only(tmp_path: Path) -> None:
    bare = Settings(lab_dir=tmp_path)
    refuse_open_bind(bare, "127.0.0.1")  # the lab, the demo, a developer's machine
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0 without an intake credential"):
        refuse_open_bind(bare, "0.0.0.0")
    refuse_open_bind(Settings(lab_dir=tmp_path, intake_token=TOKEN), "0.0.0.0")
    # and the real command: exit 2 with the reason, before it starts anything
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIC_INTAKE")}
    env.update(MEDIC_LAB_DIR=str(tmp_path), MEDIC_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run([sys.executable, "-m", "medic", "serve", "--host", "0.0.0.0", "--port", "9"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "MEDIC_INTAKE_TOKEN" in result.stderr and not (tmp_path / "state" / "prefect").exists()


# --- content types --------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "content_type", "wanted"), [
    ("/alertmanager", "text/plain", "application/json"),
    ("/alertmanager", "application/x-www-form-urlencoded", "application/json"),
    ("/alertmanager", None, "application/json"),
    ("/runs", "text/plain;charset=UTF-8", "application/json"),
    ("/slack/actions", "application/json", "application/x-www-form-urlencoded"),
])
def test_other_content_types_are_refused(url: str, path: str, content_type: str | None, wanted: str) -> None:
    """What stops a web page in an operator's browser: it can post a form or text/plain, never JSON."""
    headers = {**BEARER, **({"content-type": content_type} if content_type else {})}
    response = httpx.post(f"{url}{path}", content=json.dumps(_alert()).encode(), headers=headers)
    assert response.status_code == 415, response.text
    assert f"expected {wanted}" in response.json()["error"]


# --- body size --------------------------------------------------------------------------------------


def _raw(url: str) -> socket.socket:
    host, port = url.split("//")[1].split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it hangs up (a refusal closes the connection)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # it hung up on the rest of our body: what it sent before counts
            break
        if not chunk:
            break
        data += chunk
    return data


def test_a_huge_content_length_is_refused_before_the_body_is_sent(url: str) -> None:
    with _raw(url) as sock:
        sock.sendall(b"POST /alertmanager HTTP/1.1\r\nHost: medic\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 10737418240\r\n\r\n{")
        answer = _read_answer(sock)  # not one more byte of the 10 GiB is ever sent
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"over the 1048576-byte limit" in answer


@pytest.mark.parametrize(("size", "status"), [(MAX_BODY_BYTES, 400), (MAX_BODY_BYTES + 1, 413)])
def test_the_limit_is_one_mebibyte_exactly(url: str, size: int, status: int) -> None:
    body = b"{" + b" " * (size - 2) + b"}"  # JSON of exactly `size` bytes (not a webhook: 400 past the guard)
    response = httpx.post(f"{url}/alertmanager", content=body, headers={**BEARER, "content-type": "application/json"})
    assert response.status_code == status, response.text


def test_a_chunked_body_is_refused_once_past_the_limit_not_read_to_the_end(guarded: Guarded) -> None:
    url, counter = guarded(intake_token=TOKEN)
    chunk = b" " * 65536
    sent = [0]

    def send_forever(sock: socket.socket) -> None:  # up to 64 MiB, until the server hangs up
        try:
            for _ in range(1024):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent[0] += len(chunk)
        except OSError:
            pass

    with _raw(url) as sock:
        sock.sendall(b"POST /alertmanager HTTP/1.1\r\nHost: medic\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        sender = threading.Thread(target=send_forever, args=(sock,), daemon=True)
        sender.start()
        answer = _read_answer(sock)
        with suppress(OSError):  # already hung up by the server
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(timeout=30)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    # uvicorn hands the body over in pieces of up to its 64 KiB high-water mark plus one socket read
    # (asyncio reads up to 256 KiB): the guard stops at the first piece that passes the limit.
    read = counter.read[-1]
    assert MAX_BODY_BYTES < read <= MAX_BODY_BYTES + UVICORN_PIECE, f"medic read {read} bytes of the body"
    assert sent[0] < 1024 * len(chunk), "the server should hang up long before the 64 MiB are sent"


# --- rate limit -------------------------------------------------------------------------------------


def test_a_burst_above_the_limit_gets_429_with_retry_after_per_client(guarded: Guarded) -> None:
    url, _ = guarded(intake_token=TOKEN, intake_tokens={"eu": CLIENT_TOKEN}, intake_rate_per_s=0.01, intake_burst=5)
    answers = [httpx.post(f"{url}/alertmanager", json=_alert(), headers=BEARER) for _ in range(8)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 3
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert "too many requests from token" in answers[-1].json()["error"]
    # another client has its own bucket; so has a peer without a credential
    other = httpx.post(f"{url}/alertmanager", json=_alert(), headers={"authorization": f"Bearer {CLIENT_TOKEN}"})
    assert other.status_code == 200, other.text
    assert httpx.post(f"{url}/alertmanager", json=_alert()).status_code == 401


def test_the_default_limit_lets_a_1000_notification_storm_through() -> None:
    """100 notifications/s for 10 s from one Alertmanager, then the same 1000 all at once: none refused."""
    defaults = Settings.model_fields
    now = [0.0]
    buckets = TokenBuckets(defaults["intake_rate_per_s"].default, defaults["intake_burst"].default,
                           clock=lambda: now[0])
    for i in range(1000):
        now[0] = i * 0.01
        assert buckets.take("alertmanager") == 0.0, f"notification {i} refused"
    at_once = TokenBuckets(defaults["intake_rate_per_s"].default, defaults["intake_burst"].default, clock=lambda: 0.0)
    assert all(at_once.take("alertmanager") == 0.0 for _ in range(1000))
    assert at_once.take("alertmanager") > 0, "past the burst, with no time passing, the limit applies"


# --- /healthz and /metrics --------------------------------------------------------------------------


def test_healthz_tells_an_outsider_only_the_status(url: str) -> None:
    public = httpx.get(f"{url}/healthz")
    assert public.status_code == 200 and public.json() == {"status": "ok"}
    assert httpx.get(f"{url}/healthz?verbose=1").status_code == 401
    verbose = httpx.get(f"{url}/healthz?verbose=1", headers=BEARER).json()
    assert {"prefect_api", "runbooks", "active_runs"} <= set(verbose) and "service-down" in verbose["runbooks"]


@pytest.mark.parametrize(("cache_s", "calls"), [(3600.0, 2), (0.0, 20)])
def test_healthz_and_metrics_do_not_ask_prefect_on_every_hit(guarded: Guarded, prefect: CountingPrefect,
                                                             cache_s: float, calls: int) -> None:
    url, _ = guarded(intake_token=TOKEN, health_cache_s=cache_s)
    for _ in range(10):
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert "medic_approvals_pending 0.0" in httpx.get(f"{url}/metrics").text
    assert prefect.calls == calls  # one health check and one count, or (no cache) one per hit


# --- TLS --------------------------------------------------------------------------------------------


def test_tls_with_a_client_ca_refuses_a_client_without_a_certificate(guarded: Guarded, tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    tls = dict(tls_cert=ca.server_cert, tls_key=ca.server_key, tls_client_ca=ca.ca_cert)
    url, _ = guarded(intake_token=TOKEN, uvicorn_options=tls_options(Settings(lab_dir=tmp_path, **tls)), **tls)
    assert url.startswith("https://")
    trusts_ca = ssl.create_default_context(cafile=str(ca.ca_cert))
    with pytest.raises(httpx.TransportError):  # the handshake fails: no HTTP answer at all
        with httpx.Client(verify=trusts_ca) as anonymous:
            anonymous.get(f"{url}/healthz")
    with_cert = ssl.create_default_context(cafile=str(ca.ca_cert))
    with_cert.load_cert_chain(str(ca.client_cert), str(ca.client_key))
    with httpx.Client(verify=with_cert) as known:
        assert known.get(f"{url}/healthz").json() == {"status": "ok"}
        assert known.post(f"{url}/alertmanager", json=_alert(), headers=BEARER).status_code == 200
        assert known.post(f"{url}/alertmanager", json=_alert()).status_code == 401, "mTLS does not replace the token"


def test_tls_settings_that_cannot_work_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MEDIC_TLS_CERT is not"):
        tls_options(Settings(lab_dir=tmp_path, tls_client_ca=tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match="is not a readable file"):
        tls_options(Settings(lab_dir=tmp_path, tls_cert=tmp_path / "missing.pem"))


# --- end to end: the lab's Alertmanager, with the lab's token ---------------------------------------


@pytest.fixture(scope="module")
def serve(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedicServer]:
    """A real medic serve with the lab's settings (its intake token file), Alertmanager pointed at it."""
    cancel_leftover_runs(lab.prefect_api_url)
    before = lab.webhook_url
    with medic_server(tmp_path_factory.mktemp("serve")) as server:
        control.set_webhook(lab, f"{server.url}/alertmanager")
        try:
            yield server
        finally:
            control.set_webhook(lab, before)


def _metric(url: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_labs_alertmanager_delivers_with_its_token(lab: LabState, serve: MedicServer) -> None:
    assert intake_headers(), "the lab names its intake token file in its settings"
    config = (lab.lab_dir / "alertmanager" / "alertmanager.yml").read_text()
    assert "credentials_file" in config and intake_headers()["authorization"].split()[1] not in config
    delivered = _metric(lab.alertmanager_url, "alertmanager_notifications_total", integration="webhook")
    failed = _metric(lab.alertmanager_url, "alertmanager_notifications_failed_total", integration="webhook")
    seen = _metric(serve.url, "medic_alerts_received_total", action="no runbook")
    name = f"IntakeGuardProbe{uuid.uuid4().hex[:8]}"
    httpx.post(f"{lab.alertmanager_url}/api/v2/alerts", timeout=10,
               json=[{"labels": {"alertname": name, "host": "web-1"}, "annotations": {}}]).raise_for_status()
    wait_for(lambda: _metric(serve.url, "medic_alerts_received_total", action="no runbook"),
             what=f"medic serve to receive {name} from Alertmanager", timeout=30, done=lambda n: n > seen)
    assert _metric(lab.alertmanager_url, "alertmanager_notifications_total", integration="webhook") > delivered
    assert _metric(lab.alertmanager_url, "alertmanager_notifications_failed_total", integration="webhook") == failed
    public = httpx.get(f"{serve.url}/healthz")
    assert public.json() == {"status": "ok"}
    assert httpx.post(f"{serve.url}/alertmanager", json=_alert()).status_code == 401


def test_the_labs_alertmanager_with_a_wrong_token_is_refused(lab: LabState, serve: MedicServer) -> None:
    """Alertmanager reads its credentials_file on every notification: a wrong token there fails delivery."""
    good = lab.intake_token_file.read_text()
    failed = _metric(lab.alertmanager_url, "alertmanager_notifications_failed_total", integration="webhook")
    name = f"IntakeGuardWrongToken{uuid.uuid4().hex[:8]}"
    try:
        lab.intake_token_file.write_text("not-the-intake-token")
        httpx.post(f"{lab.alertmanager_url}/api/v2/alerts", timeout=10,
                   json=[{"labels": {"alertname": name, "host": "web-1"}, "annotations": {}}]).raise_for_status()
        wait_for(lambda: _metric(lab.alertmanager_url, "alertmanager_notifications_failed_total",
                                 integration="webhook"),
                 what=f"Alertmanager to fail delivering {name}", timeout=30, done=lambda n: n > failed)
    finally:
        lab.intake_token_file.write_text(good)
    logs = serve.logs()
    assert "refused POST /alertmanager from 127.0.0.1: wrong bearer token" in logs
    assert "not-the-intake-token" not in logs and good not in logs
