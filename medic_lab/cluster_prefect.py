"""The cluster's Prefect: its own PostgreSQL, Prefect server on it with API auth, and the lab's secrets.

PostgreSQL 15 (Debian's binaries, as for the `db` component) runs as its own lab user
``mlab-cluster-pg`` from a data dir in the lab's public dir (the lab dir may be a private 0700
folder the PostgreSQL user cannot enter), started by `processes.spawn` (so `down` and the reaper
stop it). Local socket connections are ``trust`` (the socket dir is 0700, the PostgreSQL user's);
TCP needs a password (scram): the ``prefect`` role's password is random, per lab.

**Secrets**: ``<lab_dir>/cluster/secrets.env`` (root, 0600) holds the API auth string, the database
password and the approval key (shared by the intake and the workers), as ``KEY=value`` lines. It is the lab's stand-in for a secret store: never in settings.json,
never in a command line, only in the environment of the processes that need it. Tests and commands
read it with `cluster_secret` / `client_env`.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import httpx
from pydantic import BaseModel, SecretStr

from medic.core.polling import wait_until
from medic.errors import LabError
from medic.orchestration.embedded_server import server_command, server_env
from medic_lab.hosts import ensure_user
from medic_lab.postgres_nodes import PG_BIN
from medic_lab.processes import spawn
from medic_lab.state import LabState

PG_USER = "mlab-cluster-pg"
DB_NAME = DB_ROLE = "prefect"
#: The user name of Prefect's basic auth (the password part is random per lab).
AUTH_USER = "medic"
SECRETS_FILE = Path("cluster") / "secrets.env"
AUTH_KEY = "PREFECT_API_AUTH_STRING"
DB_PASSWORD_KEY = "MEDIC_LAB_PREFECT_DB_PASSWORD"
#: Signs and verifies approvals: the same key on the intake and every worker (issue 11).
APPROVAL_KEY = "MEDIC_APPROVAL_KEY"


class ClusterPorts(BaseModel):
    """base+170..179 belong to the cluster component."""

    postgres: int
    intake: int

    @classmethod
    def of(cls, lab: LabState) -> "ClusterPorts":
        b = lab.ports.base + 170
        return cls(postgres=b, intake=b + 1)


def private_dir(lab: LabState) -> Path:
    """Root's: secrets, the Prefect server's home, the intake's state."""
    return lab.lab_dir / "cluster"


def public_dir(lab: LabState) -> Path:
    """What the cluster's own users must reach: PostgreSQL's data, each worker's 'machine'."""
    return lab.public_dir / "cluster"


def pg_dir(lab: LabState) -> Path:
    return public_dir(lab) / "postgres"


# -- secrets ---------------------------------------------------------------------------------------


def write_secrets(lab: LabState) -> None:
    """New random secrets for this lab, in a root-only file (created 0600, never wider)."""
    path = lab.lab_dir / SECRETS_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    values = {AUTH_KEY: f"{AUTH_USER}:{secrets.token_urlsafe(24)}", DB_PASSWORD_KEY: secrets.token_urlsafe(24),
              APPROVAL_KEY: secrets.token_urlsafe(32)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# the cluster's secrets (the lab's stand-in for a secret store); root only\n")
        f.writelines(f"{k}={v}\n" for k, v in values.items())


def read_secrets(lab_dir: Path) -> dict[str, SecretStr]:
    path = lab_dir / SECRETS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise LabError(f"cannot read the cluster's secrets {path}: {exc}; is a lab with `--with cluster` "
                       f"running there (and are you root)?") from exc
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {key: SecretStr(value) for key, value in pairs}


def cluster_secret(lab_dir: Path, key: str = AUTH_KEY) -> SecretStr:
    """One secret of the running cluster (default: the Prefect API auth string, ``medic:<random>``)."""
    found = read_secrets(lab_dir)
    if key not in found:
        raise LabError(f"{lab_dir / SECRETS_FILE} has no {key}; restart the lab "
                       f"(`medic lab down`, `medic lab up --with cluster`)")
    return found[key]


def client_env(lab: LabState) -> dict[str, str]:
    """What any Prefect client of the cluster needs: the API URL and the auth string."""
    return {"PREFECT_API_URL": lab.prefect_api_url, AUTH_KEY: cluster_secret(lab.lab_dir).get_secret_value()}


def auth_headers(lab: LabState) -> dict[str, str]:
    auth = cluster_secret(lab.lab_dir).get_secret_value()
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


# -- PostgreSQL ------------------------------------------------------------------------------------


def _as_pg(*argv: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """initdb, pg_ctl and psql refuse root: run as the cluster's PostgreSQL user."""
    return subprocess.run(["runuser", "-u", PG_USER, "--", *argv], input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def _must(result: subprocess.CompletedProcess[str], what: str, log: Path) -> None:
    if result.returncode != 0:
        raise LabError(f"{what} failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()[-400:]}; "
                       f"see {log}")


def init_postgres(lab: LabState) -> None:
    if not (PG_BIN / "initdb").exists():
        raise LabError(f"{PG_BIN / 'initdb'} is missing; install the Debian package postgresql (`make setup`)")
    account = ensure_user(PG_USER)
    root = pg_dir(lab)
    shutil.rmtree(root, ignore_errors=True)
    for d in (public_dir(lab), root):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    for sub in ("data", "run"):
        (root / sub).mkdir(mode=0o700)
        os.chown(root / sub, account.pw_uid, account.pw_gid)
    _must(_as_pg(str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth-local=trust",
                 "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "-N"), "initdb of the cluster's PostgreSQL",
          lab.lab_dir / "logs")


#: PostgreSQL's processes rewrite their titles over their environment, so `down` finds only the
#: postmaster, and SIGTERM asks it for a *smart* shutdown (wait for clients to leave) — its children
#: then outlive `down`'s grace and write into a data dir being removed. This shell, which `down` finds,
#: turns SIGTERM into a *fast* shutdown (SIGINT) and exits only once the postmaster (and with it every
#: child) has.
FAST_SHUTDOWN = 'trap \'kill -INT "$pg"; wait "$pg"\' TERM INT; "$0" "$@" & pg=$!; wait "$pg"'


def start_postgres(lab: LabState) -> None:
    root, port = pg_dir(lab), ClusterPorts.of(lab).postgres
    postgres = [str(PG_BIN / "postgres"), "-D", str(root / "data"), "-p", str(port), "-k", str(root / "run"),
                "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=100", "-c", "shared_buffers=32MB",
                "-c", "log_min_messages=warning"]
    spawn("cluster-postgres", ["/bin/sh", "-c", FAST_SHUTDOWN, *postgres], lab_dir=lab.lab_dir, user=PG_USER, cwd=root)
    log = lab.lab_dir / "logs" / "cluster-postgres.log"
    wait_until(lambda: _as_pg(str(PG_BIN / "pg_isready"), "-q", "-h", str(root / "run"), "-p", str(port),
                              timeout=5).returncode,
               what=f"the cluster's PostgreSQL to accept connections on 127.0.0.1:{port} (pg_isready exit code; "
                    f"see {log})", timeout=30, interval=0.1, done=lambda rc: rc == 0, error=LabError)
    password = cluster_secret(lab.lab_dir, DB_PASSWORD_KEY).get_secret_value()
    # On stdin, not in argv: a command line is readable by every user of the machine.
    sql = (f"CREATE ROLE {DB_ROLE} LOGIN PASSWORD '{password}';\n"
           f"CREATE DATABASE {DB_NAME} OWNER {DB_ROLE};\n")
    _must(_as_pg(str(PG_BIN / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-h", str(root / "run"), "-p", str(port),
                 "-U", "postgres", "-d", "postgres", "-f", "-", stdin=sql),
          "creating the prefect role and database", log)


# -- Prefect server ----------------------------------------------------------------------------------


def start_prefect_server(lab: LabState) -> None:
    """Prefect server on the cluster's PostgreSQL, API auth on, on the lab's usual Prefect port."""
    home = private_dir(lab) / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    found = read_secrets(lab.lab_dir)
    password = found[DB_PASSWORD_KEY].get_secret_value()
    auth = found[AUTH_KEY].get_secret_value()
    port = ClusterPorts.of(lab).postgres
    database = f"postgresql+asyncpg://{DB_ROLE}:{password}@127.0.0.1:{port}/{DB_NAME}"
    env = {**server_env(home, lab.ports.prefect), "PREFECT_API_DATABASE_CONNECTION_URL": database,
           "PREFECT_SERVER_API_AUTH_STRING": auth, AUTH_KEY: auth}
    spawn("prefect", server_command(lab.ports.prefect), lab_dir=lab.lab_dir, env=env, cwd=home)


def api_status(lab: LabState, *, with_auth: bool) -> int:
    """The HTTP status of an authenticated endpoint (admin/version), with or without the auth string."""
    headers = auth_headers(lab) if with_auth else {}
    return httpx.get(f"{lab.prefect_api_url}/admin/version", headers=headers, timeout=3).status_code


def ui_asks_for_auth(lab: LabState) -> bool:
    """The UI's settings say BASIC: the UI shows its login form before anything else."""
    answer = httpx.get(f"{lab.prefect_api_url.removesuffix('/api')}/ui-settings", timeout=3)
    return answer.status_code == 200 and answer.json().get("auth") == "BASIC"
