#!/usr/bin/env python3
"""Demo web service of one lab host (stdlib only: it runs with the host's system Python).

Serves `/`, `/healthz` and `/metrics` (Prometheus text format): a request-latency histogram and the
usage of the host's data dir against its configured capacity. SIGUSR1 puts the process in a degraded
state where every request is slow (the `slow` fault); only a restart or SIGUSR2 clears it, so
"restart the slow instance" is a real repair. Two slow faults no fixed threshold of lab/rules.yml
catches, for the anomaly detectors (only a restart or SIGRTMIN+2 clears them):
SIGRTMIN starts a memory leak (LEAK_BYTES_PER_S, really allocated: the resident size grows);
SIGRTMIN+1 starts a latency drift (DRIFT_PER_S more per second, never above DRIFT_MAX_S).

Versions: the service is installed like a package (playbooks/install-version.yml): this file and a
``version.json`` manifest in ``<host root>/versions/<version>/``, reached through the ``current``
symlink. The manifest, read once at start-up next to the real path of this file, sets what the
version does: ``latency_factor`` (v2-slow: 1.5 × the base service time), ``error_ratio`` (v2-errors:
5 % of requests answer 500) and ``crash_after_s`` (v2-crash: the process exits that long after it
started — a crash loop under any restart). ``demo_build_info{version=...}`` says what serves.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKETS = (0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW_DELAY_S = 0.6
LEAK_BYTES_PER_S = 1_000_000
DRIFT_PER_S = 0.002
DRIFT_MAX_S = 0.15  # p90 stays under HighLatency's 0.25 s: no rule fires
PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_QUEUE_S = 5.0  # capacity model: shed a request that would wait longer for the worker
#: Every request's own service time: uniform in BASE_DELAY_S × (1 ± BASE_JITTER), × the version's factor.
BASE_DELAY_S = 0.008
BASE_JITTER = 0.25
DEFAULT_MANIFEST = {"version": "v1", "latency_factor": 1.0, "error_ratio": 0.0, "crash_after_s": None}


def read_manifest() -> dict:
    """The installed version's manifest (next to the real path of this file); v1 when there is none."""
    path = os.path.join(os.path.dirname(os.path.realpath(__file__)), "version.json")
    try:
        with open(path) as f:
            return {**DEFAULT_MANIFEST, **json.load(f)}
    except (OSError, ValueError):
        return dict(DEFAULT_MANIFEST)


class State:
    def __init__(self, host: str, data_dir: str, capacity: int, manifest: dict | None = None) -> None:
        self.manifest = manifest or dict(DEFAULT_MANIFEST)
        self.version = str(self.manifest["version"])
        self.host = host
        self.data_dir = data_dir
        self.capacity = capacity
        self.slow = False
        self.leaked: list[bytes] = []
        self.leaking = False
        self.drift_since: float | None = None
        self.started = time.time()
        self.lock = threading.Lock()
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0
        self.sum = 0.0
        self.responses: dict[str, int] = {"200": 0, "500": 0}
        self.free_at = 0.0  # capacity model (brief C): when the instance's one worker is next free

    def observe(self, seconds: float, code: int = 200) -> None:
        with self.lock:
            self.responses[str(code)] = self.responses.get(str(code), 0) + 1
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.counts[i] += 1
            self.counts[-1] += 1
            self.total += 1
            self.sum += seconds

    def delay(self) -> float:
        """Seconds a request waits: the `slow` fault, or the base service time of the version plus the
        drift grown since it started."""
        if self.slow:
            return SLOW_DELAY_S
        base = random.uniform(1 - BASE_JITTER, 1 + BASE_JITTER) * BASE_DELAY_S * float(self.manifest["latency_factor"])
        if self.drift_since is not None:
            return base + min(DRIFT_MAX_S, DRIFT_PER_S * (time.time() - self.drift_since))
        return base

    def queue(self, work_s: float) -> float | None:
        """Capacity model of the lab (issue 15): a request waits FIFO for the work queued ahead of it
        (``/?work_ms=N`` asks N ms of the instance's one worker), so latency grows as the load nears
        1000/N req/s; None = shed (503), the wait would be over MAX_QUEUE_S. No work queued: no wait."""
        with self.lock:
            now = time.monotonic()
            start = max(now, self.free_at)
            if start - now > MAX_QUEUE_S:
                self.responses["503"] = self.responses.get("503", 0) + 1
                return None
            self.free_at = start + work_s
            return self.free_at - now

    def fails(self) -> bool:
        """Whether this request answers 500 (the version's error ratio)."""
        return random.random() < float(self.manifest["error_ratio"] or 0.0)

    def leak(self) -> None:
        """Allocate and keep LEAK_BYTES_PER_S every second while leaking (written: really resident)."""
        while True:
            time.sleep(0.25)
            if self.leaking:
                self.leaked.append(b"x" * (LEAK_BYTES_PER_S // 4))

    @staticmethod
    def resident_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def data_used(self) -> int:
        used = 0
        for root, _dirs, files in os.walk(self.data_dir):
            for name in files:
                try:
                    used += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
        return used

    def metrics(self) -> str:
        label = f'host="{self.host}"'
        lines = [
            "# HELP demo_request_duration_seconds Time to answer a request to /.",
            "# TYPE demo_request_duration_seconds histogram",
        ]
        with self.lock:
            for bound, count in zip(BUCKETS, self.counts):
                lines.append(f'demo_request_duration_seconds_bucket{{{label},le="{bound}"}} {count}')
            lines.append(f'demo_request_duration_seconds_bucket{{{label},le="+Inf"}} {self.counts[-1]}')
            lines.append(f"demo_request_duration_seconds_sum{{{label}}} {self.sum:.6f}")
            lines.append(f"demo_request_duration_seconds_count{{{label}}} {self.total}")
            lines += ["# HELP demo_http_responses_total Answers to requests to /, by status code.",
                      "# TYPE demo_http_responses_total counter"]
            lines += [f'demo_http_responses_total{{{label},code="{code}"}} {n}' for code, n in sorted(self.responses.items())]
        lines += [
            "# HELP demo_data_dir_used_bytes Bytes used under the host's data dir.",
            "# TYPE demo_data_dir_used_bytes gauge",
            f"demo_data_dir_used_bytes{{{label}}} {self.data_used()}",
            "# HELP demo_data_dir_capacity_bytes Configured capacity of the host's data dir.",
            "# TYPE demo_data_dir_capacity_bytes gauge",
            f"demo_data_dir_capacity_bytes{{{label}}} {self.capacity}",
            "# HELP demo_process_resident_bytes Resident memory of the web service process.",
            "# TYPE demo_process_resident_bytes gauge",
            f"demo_process_resident_bytes{{{label}}} {self.resident_bytes()}",
            "# HELP demo_degraded 1 while the process is in its slow state.",
            "# TYPE demo_degraded gauge",
            f"demo_degraded{{{label}}} {int(self.slow)}",
            "# HELP demo_build_info The installed version that serves (from its manifest).",
            "# TYPE demo_build_info gauge",
            f'demo_build_info{{{label},version="{self.version}"}} 1',
            "# HELP demo_start_time_seconds When this process started.",
            "# TYPE demo_start_time_seconds gauge",
            f"demo_start_time_seconds{{{label}}} {self.started:.3f}",
        ]
        return "\n".join(lines) + "\n"


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: traffic is constant
            return

        def _send(self, code: int, body: str, ctype: str = "text/plain; charset=utf-8") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, state.metrics(), "text/plain; version=0.0.4")
            elif self.path == "/healthz":
                self._send(200, "ok\n")
            elif self.path.partition("?")[0] == "/":
                began = time.perf_counter()
                query = dict(p.partition("=")[::2] for p in self.path.partition("?")[2].split("&"))
                try:
                    work_s = min(max(float(query.get("work_ms") or 0), 0.0), 1000.0) / 1000
                    if work_s != work_s:  # NaN
                        raise ValueError
                except ValueError:
                    work_s = 0.0
                queued = state.queue(work_s)
                if queued is None:
                    self._send(503, "overloaded\n")
                    return
                if queued:
                    time.sleep(queued)
                delay = state.delay()
                if delay:
                    time.sleep(delay)
                code = 500 if state.fails() else 200
                self._send(code, f"hello from {state.host}\n" if code == 200 else "internal error\n")
                state.observe(time.perf_counter() - began, code)
            else:
                self._send(404, "not found\n")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host-name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--capacity-bytes", type=int, required=True)
    args = parser.parse_args()

    state = State(args.host_name, args.data_dir, args.capacity_bytes, read_manifest())

    def set_slow(value: bool) -> None:
        state.slow = value

    signal.signal(signal.SIGUSR1, lambda *_: set_slow(True))
    signal.signal(signal.SIGUSR2, lambda *_: set_slow(False))
    signal.signal(signal.SIGRTMIN, lambda *_: setattr(state, "leaking", True))
    signal.signal(signal.SIGRTMIN + 1, lambda *_: setattr(state, "drift_since", state.drift_since or time.time()))

    def heal(*_: object) -> None:
        state.leaking, state.drift_since = False, None
        state.leaked.clear()

    signal.signal(signal.SIGRTMIN + 2, heal)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=state.leak, name="leak", daemon=True).start()
    crash_after = state.manifest.get("crash_after_s")
    if crash_after is not None:  # a version that dies on its own: a crash loop under any restart
        threading.Timer(float(crash_after), lambda: os._exit(70)).start()
    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            return  # load-balancer health checks reset their connections; that is not an error

    server = QuietServer(("127.0.0.1", args.port), make_handler(state))
    server.daemon_threads = True
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
