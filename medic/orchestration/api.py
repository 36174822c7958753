"""POST to the Prefect API with a fast retry on SQLite-busy answers (the two run-creating calls).

A flow run is created in a DEFERRED SQLite transaction (read, then insert). When the server's
task-run recorder or event persister commits in between, SQLite answers "database is locked" at
once, the server turns that into 503, and Prefect's client sleeps 2**n s (≈2 s) before retrying —
even with `PREFECT_CLIENT_MAX_RETRIES=0` it sleeps once before giving up (prefect/client/base.py).
So these POSTs go through a plain httpx client (same URL and credentials) that retries after
50 ms … 1 s instead (docs/prefect-runtime.md, "Where the time goes" 2).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import certifi
import httpx

from medic.core.polling import retry_async
from medic.errors import PrefectError

__all__ = ["CREATE_RETRY_DELAYS", "PrefectReader", "post_query", "post_with_fast_retry", "prefect_auth_headers"]

CREATE_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.0, 1.0)  # ≈5 s in all
_BUSY = (503, 429)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One CA-bundle load per process (each load costs ~30 ms)."""
    return ssl.create_default_context(cafile=certifi.where())


_AUTH_WORDS = ("auth_string", "api_key", "api.key", "[api]")  # where a Prefect config file might set credentials


def _config_files() -> list[Path]:
    """Where Prefect's settings read values besides the environment: the profiles file, and `.env`,
    `prefect.toml` and `pyproject.toml` in the working directory."""
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    return [profiles, Path(".env"), Path("prefect.toml"), Path("pyproject.toml")]


def _credentials_only_from_env() -> bool:
    """True when the environment alone decides the API URL and credentials: PREFECT_API_URL is set and
    no config file Prefect reads could add an auth string or key. Then medic's reads need not import
    Prefect's settings (half a second: most of `medic report`'s time)."""
    if "prefect.settings" in sys.modules or not os.environ.get("PREFECT_API_URL"):
        return False
    for path in _config_files():
        try:
            text = path.read_text(errors="replace").lower()
        except OSError:
            continue
        if any(word in text for word in _AUTH_WORDS):
            return False
    return True


def _api_settings() -> tuple[str | None, str | None, str | None]:
    """(API URL, auth string, API key) as Prefect resolves them."""
    if _credentials_only_from_env():
        env = os.environ
        return env["PREFECT_API_URL"], env.get("PREFECT_API_AUTH_STRING") or None, env.get("PREFECT_API_KEY") or None
    from prefect.settings import get_current_settings  # imported on use: see _credentials_only_from_env

    api = get_current_settings().api
    return (api.url, api.auth_string.get_secret_value() if api.auth_string is not None else None,
            api.key.get_secret_value() if api.key is not None else None)


def prefect_auth_headers() -> dict[str, str]:
    """The Authorization header Prefect's own client sends (PREFECT_API_AUTH_STRING as basic auth, or
    PREFECT_API_KEY), for medic's raw httpx calls to Prefect: a server with API auth on answers 401
    without it. Empty when neither is set."""
    _, auth_string, key = _api_settings()
    if auth_string is not None:
        return {"Authorization": f"Basic {base64.b64encode(auth_string.encode()).decode()}"}
    if key is not None:
        return {"Authorization": f"Bearer {key}"}
    return {}


def _headers() -> tuple[str, dict[str, str]]:
    """The configured API URL and the headers Prefect's own client would send (auth string or key)."""
    url = _api_settings()[0]
    if not url:
        raise PrefectError("PREFECT_API_URL is not set; point it at the Prefect server (…/api)")
    return url.rstrip("/"), {"Content-Type": "application/json", **prefect_auth_headers()}


async def post_with_fast_retry(what: str, path: str, body: dict[str, Any]) -> Any:
    """POST `body` to `<PREFECT_API_URL><path>` and return the JSON answer.

    503/429 are retried after `CREATE_RETRY_DELAYS`; any other refusal, the last busy answer and an
    unreachable server raise PrefectError (with `.status` when the server answered).
    """
    base, headers = _headers()
    async with httpx.AsyncClient(headers=headers, timeout=30, verify=_ssl_context()) as http:

        async def attempt() -> httpx.Response:
            try:
                return await http.post(base + path, json=body)
            except httpx.HTTPError as exc:
                raise PrefectError(f"cannot create {what}: Prefect API at {base} unreachable: {exc}") from exc

        response = await retry_async(attempt, delays=CREATE_RETRY_DELAYS,
                                     retry_if=lambda r: r.status_code in _BUSY)
    if response.status_code >= 300:
        busy = " (still busy after ≈5 s of retries)" if response.status_code in _BUSY else ""
        raise PrefectError(
            f"Prefect API refused to create {what}: {response.status_code} {response.text[:300]}{busy}",
            status=response.status_code,
        )
    return response.json()


async def post_query(what: str, path: str, body: dict[str, Any]) -> Any:
    """POST a read (`…/filter`) with explicit JSON: Prefect 3.8.8's client sends `null` for unset
    paging fields, which this server refuses with 422 (MACHINE-NOTES), so reads that page go here."""
    async with PrefectReader() as reader:
        return await reader.post(what, path, body)


class PrefectReader:
    """One HTTP connection for a batch of reads: a report reads hundreds of pages and state histories,
    and a new client per read costs a TLS context and a connection each time."""

    def __init__(self, parallel: int = 8) -> None:
        self._gate = asyncio.Semaphore(parallel)
        self._base = ""
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> PrefectReader:
        self._base, headers = _headers()
        self._http = httpx.AsyncClient(headers=headers, timeout=30, verify=_ssl_context())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def _send(self, what: str, method: str, path: str, **kwargs: Any) -> Any:
        assert self._http is not None, "use PrefectReader as `async with`"
        async with self._gate:
            try:
                response = await self._http.request(method, self._base + path, **kwargs)
            except httpx.HTTPError as exc:
                raise PrefectError(f"cannot read {what}: Prefect API at {self._base} unreachable: {exc}") from exc
        if response.status_code >= 300:
            raise PrefectError(f"Prefect API refused to read {what}: {response.status_code} {response.text[:300]}",
                               status=response.status_code)
        return response.json()

    async def post(self, what: str, path: str, body: dict[str, Any]) -> Any:
        return await self._send(what, "POST", path, json=body)

    async def get(self, what: str, path: str, params: dict[str, str] | None = None) -> Any:
        return await self._send(what, "GET", path, params=params)

    async def every(self, what: str, path: str, body: dict[str, Any], page: int = 200) -> list[Any]:
        """Every row `<kind>/filter` matches: the count first, then the pages at once (in the body's
        sort order); rows added meanwhile past the counted ones are read on by further pages."""
        assert path.endswith("/filter"), path
        where = {k: v for k, v in body.items() if k not in ("sort", "limit", "offset")}
        total = int(await self.post(what, path.removesuffix("/filter") + "/count", where))
        pages = await asyncio.gather(*(self.post(what, path, {**body, "limit": page, "offset": offset})
                                       for offset in range(0, max(total, 1), page)))
        rows = [row for p in pages for row in p]
        while pages[-1] and len(pages[-1]) == page and len(rows) % page == 0:
            pages = [await self.post(what, path, {**body, "limit": page, "offset": len(rows)})]
            rows += pages[0]
        return rows
