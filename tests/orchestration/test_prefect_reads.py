"""medic.orchestration.api's reads: credentials resolved as Prefect resolves them (without importing
Prefect when the environment alone decides), and `PrefectReader.every` reading every row of a filter."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from medic.orchestration.api import PrefectReader
from medic_lab.state import LabState

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json, sys
from medic.orchestration.api import _headers
url, headers = _headers()
imported = "prefect" in sys.modules
from prefect.settings import get_current_settings
api = get_current_settings().api
print(json.dumps({"url": url, "auth": headers.get("Authorization"), "imported_prefect": imported,
                  "prefect_url": api.url,
                  "prefect_auth": api.auth_string.get_secret_value() if api.auth_string else None,
                  "prefect_key": api.key.get_secret_value() if api.key else None}))
"""


def _probe(tmp_path: Path, env: dict[str, str]) -> dict:
    """`_headers()` in a new process whose Prefect home and working directory are `tmp_path`."""
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)
    base = {"PATH": "/usr/bin:/bin", "PREFECT_HOME": str(home), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_the_environment_alone_is_read_without_importing_prefect(tmp_path: Path) -> None:
    seen = _probe(tmp_path, {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_API_AUTH_STRING": "ops:s3cret"})
    assert seen["url"] == seen["prefect_url"] == "http://127.0.0.1:9/api"
    assert seen["auth"] == "Basic b3BzOnMzY3JldA==" and seen["prefect_auth"] == "ops:s3cret"
    assert seen["imported_prefect"] is False


def test_credentials_in_a_prefect_profile_are_found_through_prefect(tmp_path: Path) -> None:
    """The URL from the environment but the auth string from the profile: Prefect's own resolution."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "ops"\n\n[profiles.ops]\nPREFECT_API_AUTH_STRING = "ops:fromfile"\n')
    seen = _probe(tmp_path, {"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert seen["prefect_auth"] == "ops:fromfile"
    assert seen["auth"] == "Basic b3BzOmZyb21maWxl" and seen["imported_prefect"] is True


def test_a_key_in_a_dotenv_file_is_found_through_prefect(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PREFECT_API_KEY=k-from-dotenv\n")
    seen = _probe(tmp_path, {"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert seen["prefect_key"] == "k-from-dotenv"
    assert seen["auth"] == "Bearer k-from-dotenv" and seen["imported_prefect"] is True


def test_no_url_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "from medic.orchestration.api import _headers; _headers()"],
                          env={"PATH": "/usr/bin:/bin", "PREFECT_HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
                               "HOME": str(tmp_path)}, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "PREFECT_API_URL is not set" in done.stderr


@pytest.mark.lab
def test_every_reads_each_row_once_across_pages_in_order(lab: LabState) -> None:
    """More rows than a page (pages fetched at once after a count): all of them, once each, sorted."""
    prefix = f"medic-test-every-{uuid.uuid4().hex[:6]}-"
    names = [f"{prefix}{i:03d}" for i in range(57)]
    with httpx.Client(base_url=lab.prefect_api_url, timeout=30) as http:
        for name in names:
            assert http.post("/variables/", json={"name": name, "value": 1}).status_code == 201
    try:
        async def read(page: int) -> list[str]:
            async with PrefectReader() as reader:
                rows = await reader.every("test variables", "/variables/filter", {
                    "variables": {"name": {"like_": prefix}}, "sort": "NAME_ASC"}, page=page)
            return [r["name"] for r in rows]

        assert asyncio.run(read(10)) == names  # 6 pages, the last one short
        assert asyncio.run(read(57)) == names  # exactly one full page: one more read finds no more
    finally:
        with httpx.Client(base_url=lab.prefect_api_url, timeout=30) as http:
            for name in names:
                http.delete(f"/variables/name/{name}")
