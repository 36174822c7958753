"""The cluster's medic processes: `medic deploy`, two `medic worker`s "each on its own machine", and
`medic serve` as intake only.

A worker's machine is a directory of the lab's public dir, ``cluster/workers/<name>/``, and a unix
user of its own (``mlab-<name>``; the ``mlab-`` prefix lets `down` find what it leaves behind):

    <name>/             root:<user> 0750   the machine's credentials and config, read through the group
      inventory.yml     root:<user> 0640   the lab's inventory, ssh paths rewritten to this machine's
      ssh/              root:<user> 0750
        id_ed25519      root:<user> 0640   its own key pair (public half in the lab's authorized_keys)
        known_hosts     root:<user> 0640
      home/ tmp/ work/ state/ prefect/  <user> 0700  HOME, TMPDIR, working dir, MEDIC_STATE_DIR, PREFECT_HOME

Nothing of it is readable by other users (the key never is), and the worker can change none of its
config. Its environment carries PREFECT_API_URL + PREFECT_API_AUTH_STRING and explicit MEDIC_*
settings; MEDIC_LAB_DIR points at its own machine dir, so it never reads the lab's settings.json
(it could not: the lab dir may be root's 0700 folder) — a worker knows only what a remote machine would.

Their Python: the checkout's virtualenv runs an interpreter under root's home (pyenv, 0700 here),
which other users cannot execute. So the machines share one "install" in the public dir: a venv of
Debian's /usr/bin/python3 (same 3.11 ABI) whose one .pth adds the checkout's site-packages, and copies
of the checkout's console scripts (medic, ansible-playbook, ...) with its interpreter in the shebang.

No network namespace per worker: the lab's services listen on 127.0.0.1 of the root namespace, and a
new namespace has a loopback of its own — reaching them would take a veth pair plus NAT/forwarding
rules per worker, more lab machinery than the isolation is worth here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from medic.core.paths import PROJECT_ROOT
from medic.core.polling import wait_until
from medic.errors import LabError
from medic_lab.cluster_prefect import (APPROVAL_KEY, ClusterPorts, auth_headers, client_env, cluster_secret,
                                       private_dir, public_dir)
from medic_lab.hosts import ensure_user, write_keypair
from medic_lab.processes import spawn, spawned_pid
from medic_lab.state import LabState

WORKERS = ("cluster-w1", "cluster-w2")
POOL = "medic"
INTAKE = "cluster-intake"
MEDIC = Path(sys.executable).parent / "medic"
SYSTEM_PYTHON = Path("/usr/bin/python3")


def worker_user(name: str) -> str:
    return f"mlab-{name}"


def machine_dir(lab: LabState, name: str) -> Path:
    return public_dir(lab) / "workers" / name


def intake_url(lab: LabState) -> str:
    return f"http://127.0.0.1:{ClusterPorts.of(lab).intake}"


def _common_env(lab: LabState) -> dict[str, str]:
    return {**client_env(lab), APPROVAL_KEY: cluster_secret(lab.lab_dir, APPROVAL_KEY).get_secret_value(),
            "MEDIC_PREFECT_API_URL": lab.prefect_api_url, "MEDIC_PROMETHEUS_URL": lab.prometheus_url,
            "MEDIC_ALERTMANAGER_URL": lab.alertmanager_url, "MEDIC_EXECUTION": "workers", "MEDIC_WORK_POOL": POOL,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def root_env(lab: LabState, home: Path) -> dict[str, str]:
    """`medic deploy` and the intake run as root with the lab's own files (settings.json is not written
    until the whole lab is up, so everything is explicit)."""
    return {**_common_env(lab), "MEDIC_LAB_DIR": str(lab.lab_dir), "MEDIC_INVENTORY": str(lab.inventory),
            "MEDIC_SSH_KEY": str(lab.ssh_key), "MEDIC_KNOWN_HOSTS": str(lab.known_hosts), "PREFECT_HOME": str(home)}


def worker_env(lab: LabState, name: str) -> dict[str, str]:
    m, user = machine_dir(lab, name), worker_user(name)
    return {**_common_env(lab), "MEDIC_LAB_DIR": str(m), "MEDIC_INVENTORY": str(m / "inventory.yml"),
            "MEDIC_SSH_KEY": str(m / "ssh" / "id_ed25519"), "MEDIC_KNOWN_HOSTS": str(m / "ssh" / "known_hosts"),
            "MEDIC_STATE_DIR": str(m / "state"), "MEDIC_WORKER_NAME": name, "PREFECT_HOME": str(m / "prefect"),
            "HOME": str(m / "home"), "TMPDIR": str(m / "tmp"), "USER": user, "LOGNAME": user}


# -- layout ------------------------------------------------------------------------------------------


def install_dir(lab: LabState) -> Path:
    return public_dir(lab) / "install"


#: What a worker machine needs of the checkout when it cannot read the checkout itself.
_SOURCE = ("medic", "medic_lab", "flows", "lab", "runbooks", "playbooks", "slos", "prefect.yaml", "approvers.yaml",
           "pyproject.toml")


def _others_can_reach(path: Path) -> bool:
    """Whether any user can traverse every directory down to `path` (a private 0700 checkout: no)."""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents) if p.is_dir())


def _link_copy_checkout(venv: Path, checkout_site: Path, site: Path) -> None:
    """A checkout in a private folder (e.g. CI's 0700 clone): the worker users cannot read it, so the
    install gets hard-linked copies (same file system, no extra space, ~1-3 s) of its packages and of
    medic's source; the editable-install hook, which points back into the checkout, is left out."""
    packages, source = venv / "checkout-site", venv / "checkout"
    source.mkdir()
    for what, where in ((checkout_site, packages), *((PROJECT_ROOT / n, source / n) for n in _SOURCE)):
        if what.exists():
            done = subprocess.run(["cp", "-al", str(what), str(where)], capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise LabError(f"could not link {what} into the workers' install: {done.stderr.strip()[-300:]}")
    for hook in packages.glob("__editable__*"):
        hook.unlink()
    (site / "medic-checkout.pth").write_text(f"{source}\nimport site; site.addsitedir({str(packages)!r})\n")


def lay_out_install(lab: LabState) -> None:
    """The workers' Python (see the module docstring): a venv over the checkout's site-packages."""
    venv, bin_dir = install_dir(lab), Path(sys.executable).parent
    shutil.rmtree(venv, ignore_errors=True)
    made = subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                          text=True, timeout=60)
    if made.returncode != 0:
        raise LabError(f"could not make the workers' venv {venv} with {SYSTEM_PYTHON}: {made.stderr.strip()[-300:]}")
    site = next((venv / "lib").glob("python3.*/site-packages"))
    if site.parent.name != f"python{sys.version_info[0]}.{sys.version_info[1]}":
        raise LabError(f"{SYSTEM_PYTHON} is {site.parent.name}, the checkout's venv Python "
                       f"{sys.version_info[0]}.{sys.version_info[1]}: the workers cannot share its packages")
    checkout_site = next((bin_dir.parent / "lib").glob("python3.*/site-packages"))
    if _others_can_reach(checkout_site) and _others_can_reach(PROJECT_ROOT):
        (site / "medic-checkout.pth").write_text(f"import site; site.addsitedir({str(checkout_site)!r})\n")
    else:
        _link_copy_checkout(venv, checkout_site, site)
    shebang = f"#!{bin_dir / 'python'}".encode()
    for script in bin_dir.iterdir():
        if script.is_file() and not (venv / "bin" / script.name).exists():
            head, _, rest = script.read_bytes().partition(b"\n")
            if head == shebang:
                target = venv / "bin" / script.name
                target.write_bytes(f"#!{venv / 'bin' / 'python'}\n".encode() + rest)
                target.chmod(0o755)
    for dirpath, dirnames, filenames in os.walk(venv):
        if Path(dirpath) == venv:  # hard links share their inode: never change the checkout's modes
            dirnames[:] = [d for d in dirnames if d not in ("checkout", "checkout-site")]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o055 if path.is_dir() else path.stat().st_mode | 0o044)


def lay_out_machine(lab: LabState, name: str) -> None:
    """The machine's dirs and its own key pair (the public half joins the lab's authorized_keys)."""
    account = ensure_user(worker_user(name))
    uid, gid = account.pw_uid, account.pw_gid
    m = machine_dir(lab, name)
    shutil.rmtree(m, ignore_errors=True)
    for d in (public_dir(lab), m.parent):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    for d, owner, mode in ((m, 0, 0o750), (m / "ssh", 0, 0o750)):
        d.mkdir()
        os.chown(d, owner, gid)
        d.chmod(mode)
    for sub in ("home", "tmp", "work", "state", "prefect"):
        (m / sub).mkdir(mode=0o700)
        os.chown(m / sub, uid, gid)
    key = m / "ssh" / "id_ed25519"
    public = write_keypair(key)
    for path in (key, key.with_suffix(".pub")):
        os.chown(path, 0, gid)
        path.chmod(0o640)
    with open(lab.authorized_keys, "a") as keys:
        keys.write(public + "\n")


def copy_config(lab: LabState, name: str) -> None:
    """known_hosts and the inventory (written by `up` after `prepare`), as this machine's copies.

    Without ssh ControlMaster: a control socket's path must fit in 108 bytes, and one under the
    machine dir does not (/var/lib/medic-lab/labs/<lab>-<hash>/cluster/workers/<name>/... + a 40-char
    hash); a shorter dir elsewhere would leave mux processes `down` cannot tell from other labs'.
    Each Ansible task opens its own connection instead (~0.1 s more per task)."""
    m, gid = machine_dir(lab, name), ensure_user(worker_user(name)).pw_gid
    lab_ssh, own_ssh = str(lab.lab_dir / "ssh"), str(m / "ssh")
    data = yaml.safe_load(lab.inventory.read_text().replace(lab_ssh + "/", own_ssh + "/"))
    common = data["all"]["vars"]["ansible_ssh_common_args"].split()
    options = [common[i + 1] for i in range(0, len(common) - 1, 2) if common[i] == "-o"]
    kept = [o for o in options if o.split("=", 1)[0] not in ("ControlMaster", "ControlPersist", "ControlPath")]
    data["all"]["vars"]["ansible_ssh_common_args"] = " ".join(f"-o {o}" for o in kept)
    data["all"]["vars"]["ansible_ssh_args"] = "-o ControlMaster=no"  # replaces Ansible's default ControlPersist
    inventory = f"# {name}'s copy of the lab's inventory (medic_lab.cluster_workers)\n" + yaml.safe_dump(
        data, sort_keys=False)
    for path, text in ((m / "inventory.yml", inventory), (m / "ssh" / "known_hosts", lab.known_hosts.read_text())):
        path.write_text(text)
        os.chown(path, 0, gid)
        path.chmod(0o640)


# -- processes ---------------------------------------------------------------------------------------


def deploy(lab: LabState) -> str:
    """`medic deploy`: the work pool and every deployment in it (idempotent); returns its output."""
    home = private_dir(lab) / "client"
    home.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([str(MEDIC), "deploy"], env={**os.environ, **root_env(lab, home)}, capture_output=True,
                              text=True, timeout=300, cwd=home)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`medic deploy` did not finish within {exc.timeout:.0f} s "
                       f"against {lab.prefect_api_url}") from exc
    if done.returncode != 0:
        raise LabError(f"`medic deploy` failed (exit {done.returncode}) against {lab.prefect_api_url}: "
                       f"{(done.stderr or done.stdout).strip()[-600:]}")
    return done.stdout


def start_worker(lab: LabState, name: str) -> None:
    m = machine_dir(lab, name)
    spawn(name, [str(install_dir(lab) / "bin" / "medic"), "worker", "--name", name], lab_dir=lab.lab_dir,
          env=worker_env(lab, name), user=worker_user(name), cwd=m / "work")


def start_intake(lab: LabState) -> None:
    """`medic serve` with MEDIC_EXECUTION=workers: takes alerts, creates runs, executes none."""
    state = private_dir(lab) / "intake"
    (state / "prefect").mkdir(parents=True, exist_ok=True)
    env = {**root_env(lab, state / "prefect"), "MEDIC_STATE_DIR": str(state), "MEDIC_INSTANCE": INTAKE,
           "MEDIC_SERVER_HOST": "127.0.0.1", "MEDIC_SERVER_PORT": str(ClusterPorts.of(lab).intake),
           "MEDIC_INTAKE_TOKEN_FILE": str(lab.intake_token_file)}  # Alertmanager sends that bearer token
    spawn(INTAKE, [str(MEDIC), "serve"], lab_dir=lab.lab_dir, env=env, cwd=state)


def recorded_pid(lab: LabState, name: str) -> int | None:
    return spawned_pid(lab.lab_dir, name)


def pool_workers(lab: LabState) -> dict[str, str]:
    """Worker name → status (ONLINE/OFFLINE) as Prefect records them in the pool; {} without a pool."""
    answer = httpx.post(f"{lab.prefect_api_url}/work_pools/{POOL}/workers/filter", json={"limit": 100},
                        headers=auth_headers(lab), timeout=3)
    if answer.status_code == 404:
        return {}
    answer.raise_for_status()
    return {w["name"]: w["status"] for w in answer.json()}


def wait_workers_online(lab: LabState, *, timeout: float) -> None:
    def online() -> list[str]:
        for name in WORKERS:
            if recorded_pid(lab, name) is None:
                raise LabError(f"worker {name} exited while starting: {log_tail(lab, name)}")
        seen = pool_workers(lab)
        return [n for n in WORKERS if seen.get(n) != "ONLINE"]

    wait_until(online, what=f"workers ONLINE in pool {POOL!r} (still not) — see {lab.lab_dir}/logs/cluster-w*.log",
               timeout=timeout, interval=0.25, done=lambda pending: not pending, ignore=httpx.HTTPError, error=LabError)


def log_tail(lab: LabState, name: str) -> str:
    """The end of a process's log, in the error itself: a failed `up` removes the logs."""
    try:
        return (lab.lab_dir / "logs" / f"{name}.log").read_text(errors="replace").strip()[-800:] or "(empty log)"
    except OSError as exc:
        return f"(no log: {exc})"
