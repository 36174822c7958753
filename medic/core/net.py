"""Loopback ports and "is it up yet": the one free-port and one wait-until-healthy helper of the repo."""

from __future__ import annotations

import functools
import socket
import ssl
import subprocess
import time

import httpx

from medic.core.polling import wait_until
from medic.errors import MedicError, WaitTimeout

__all__ = ["free_port", "tls_verifying_context", "wait_healthy"]


@functools.cache
def tls_verifying_context() -> ssl.SSLContext:
    """The certificate-verifying TLS context medic's HTTP clients share: exactly what httpx builds for
    `verify=True` (certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR as read at first use), loaded once
    per process. Each load costs 25-30 ms, and a run opens several clients (Prometheus, Alertmanager)."""
    return httpx.create_ssl_context()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (bound, then released).

    Good for a server a test or bench starts itself, and as a "closed port" to connect to. Another
    process could take it between this call and its use; on this single-user loopback that has not
    been seen, and a collision fails loudly (address in use), not silently.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_healthy(
    url: str,
    *,
    what: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    interval: float = 0.2,
    error: type[MedicError] = WaitTimeout,
) -> float:
    """Wait until GET `url` answers 200; return the seconds waited.

    With `proc`, stop at once if that process exits (its exit code is in the error). On timeout raise
    `error` naming `what`, the URL and the last answer (an HTTP status or the connection error).
    """
    began = time.monotonic()
    with httpx.Client(timeout=2.0) as client:

        def check() -> int:
            if proc is not None and proc.poll() is not None:
                raise error(f"{what} exited with code {proc.returncode} before answering at {url}; see its log")
            return client.get(url).status_code

        wait_until(check, what=f"{what} answering 200 at {url}", timeout=timeout, interval=interval,
                   done=lambda status: status == 200, ignore=httpx.HTTPError, error=error)
    return time.monotonic() - began
