"""What the intake guard costs, and how fast it refuses: medic serve's real app on a real socket.

Prints the median time of one Alertmanager notification (an alert without a runbook, so no run
starts and only the HTTP path is measured) through the app with its guard (credential, content
type, body limit, rate limit) and through the same routes without it; then how long a refusal of a
10 GiB Content-Length and of a chunked body past 1 MiB takes, and how much of the body was read.
Needs nothing running: Prefect is never asked (health is not measured).

    .venv/bin/python bench/intake_guard.py -n 500
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from starlette.applications import Starlette  # noqa: E402

from flows.remediate import remediate  # noqa: E402
from medic.service.app import create_app  # noqa: E402
from medic.service.state import build_state  # noqa: E402
from medic.settings import Settings  # noqa: E402
from tests.support.app_server import BodyCounter, serve_app  # noqa: E402
from tests.support.server import alert_payload  # noqa: E402

TOKEN = "bench-intake-token"


def _median_ms(url: str, n: int, headers: dict[str, str]) -> float:
    payload = alert_payload("NoRunbookForThis", "web-1", fingerprint="bench")
    times = []
    with httpx.Client(headers=headers) as client:
        for _ in range(n):
            began = time.perf_counter()
            client.post(f"{url}/alertmanager", json=payload).raise_for_status()
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def _refusal(url: str, head: bytes, chunked: bool) -> tuple[float, bytes]:
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        began = time.perf_counter()
        sock.sendall(head)
        if chunked:
            chunk = b" " * 65536
            threading.Thread(target=lambda: _send_chunks(sock, chunk), daemon=True).start()
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
        return (time.perf_counter() - began) * 1000, answer.split(b"\r\n", 1)[0]


def _send_chunks(sock: socket.socket, chunk: bytes) -> None:
    try:
        for _ in range(1024):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="notifications to time, each way")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medic-bench-guard-") as tmp:
        inventory = Path(tmp) / "inventory.yml"
        inventory.write_text("all:\n  hosts:\n    web-1: {ansible_host: 127.0.0.1}\n")
        settings = Settings(lab_dir=Path(tmp), state_dir=Path(tmp) / "state", inventory=inventory,
                            prefect_api_url="http://127.0.0.1:9/api", intake_token=TOKEN, intake_burst=10 ** 6)
        app = create_app(build_state(settings, remediate))
        counter = BodyCounter(app)
        bearer = {"authorization": f"Bearer {TOKEN}"}
        unguarded = Starlette(routes=app.routes)  # the same routes and state, no middleware
        unguarded.state.medic, unguarded.state.prefect_probe = app.state.medic, app.state.prefect_probe
        with serve_app(counter) as guarded, serve_app(unguarded) as bare:
            _median_ms(guarded, 20, bearer), _median_ms(bare, 20, {})  # warm up
            with_guard = _median_ms(guarded, args.n, bearer)
            without = _median_ms(bare, args.n, {})
            print(f"POST /alertmanager, median of {args.n}: {with_guard:.2f} ms with the guard, "
                  f"{without:.2f} ms without (guard: {with_guard - without:+.2f} ms, ×{with_guard / without:.2f})")
            head = (b"POST /alertmanager HTTP/1.1\r\nHost: medic\r\nContent-Type: application/json\r\n"
                    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n")
            ms, status = _refusal(guarded, head + b"Content-Length: 10737418240\r\n\r\n", chunked=False)
            print(f"10 GiB Content-Length: {status.decode()} in {ms:.1f} ms, {counter.read[-1]} body bytes read")
            ms, status = _refusal(guarded, head + b"Transfer-Encoding: chunked\r\n\r\n", chunked=True)
            print(f"chunked body, 64 KiB chunks without end: {status.decode()} in {ms:.1f} ms, "
                  f"{counter.read[-1]} body bytes read (limit 1048576)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
