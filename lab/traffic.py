#!/usr/bin/env python3
"""Steady request traffic to every lab web service, so latency metrics always have data.

One thread per service, one request every INTERVAL seconds; errors are ignored (a dead service is
exactly what the lab simulates). Stdlib only.
"""

from __future__ import annotations

import argparse
import threading
import time
import urllib.request


def hammer(port: int, interval: float, stop: threading.Event) -> None:
    url = f"http://127.0.0.1:{port}/"
    while not stop.is_set():
        try:
            urllib.request.urlopen(url, timeout=2).read()
        except Exception:  # noqa: BLE001 - a failing service is expected in the lab
            pass
        stop.wait(interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lab-dir", required=True, help="marks this process as the lab's")
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("ports", type=int, nargs="+")
    args = parser.parse_args()
    stop = threading.Event()
    for port in args.ports:
        threading.Thread(target=hammer, args=(port, args.interval, stop), daemon=True).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop.set()


if __name__ == "__main__":
    main()
