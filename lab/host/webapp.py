#!/usr/bin/env python3
"""Demo web service of one lab host (stdlib only: it runs with the host's system Python).

Serves `/`, `/healthz` and `/metrics` (Prometheus text format): a request-latency histogram and the
usage of the host's data dir against its configured capacity. SIGUSR1 puts the process in a degraded
state where every request is slow (the `slow` fault); only a restart or SIGUSR2 clears it, so
"restart the slow instance" is a real repair. Two slow faults no fixed threshold of lab/rules.yml
catches, for the anomaly detectors (only a restart or SIGRTMIN+2 clears them):
SIGRTMIN starts a memory leak (LEAK_BYTES_PER_S, really allocated: the resident size grows);
SIGRTMIN+1 starts a latency drift (DRIFT_PER_S more per second, never above DRIFT_MAX_S).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW_DELAY_S = 0.6
LEAK_BYTES_PER_S = 1_000_000
DRIFT_PER_S = 0.002
DRIFT_MAX_S = 0.15  # p90 stays under HighLatency's 0.25 s: no rule fires
PAGE = os.sysconf("SC_PAGE_SIZE")


class State:
    def __init__(self, host: str, data_dir: str, capacity: int) -> None:
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

    def observe(self, seconds: float) -> None:
        with self.lock:
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.counts[i] += 1
            self.counts[-1] += 1
            self.total += 1
            self.sum += seconds

    def delay(self) -> float:
        """Seconds every request waits: the `slow` fault, or the drift grown since it started."""
        if self.slow:
            return SLOW_DELAY_S
        if self.drift_since is not None:
            return min(DRIFT_MAX_S, DRIFT_PER_S * (time.time() - self.drift_since))
        return 0.0

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
            elif self.path == "/":
                began = time.perf_counter()
                delay = state.delay()
                if delay:
                    time.sleep(delay)
                self._send(200, f"hello from {state.host}\n")
                state.observe(time.perf_counter() - began)
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

    state = State(args.host_name, args.data_dir, args.capacity_bytes)

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
    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            return  # load-balancer health checks reset their connections; that is not an error

    server = QuietServer(("127.0.0.1", args.port), make_handler(state))
    server.daemon_threads = True
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
