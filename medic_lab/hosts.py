"""Lab hosts: a login user, an sshd with its own host key, a host directory, and the inventory.

Each host is "a machine" made of: its own sshd on a loopback port with its own ed25519 host key, a
dedicated unprivileged login user (``mlab-<host>``) that owns the host directory, and a demo web
service controlled by ``bin/servicectl``. One client key logs in to all of them and one generated
known_hosts pins every host key: host-key checking stays on everywhere.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medic.errors import LabError
from medic.core.paths import LAB_TEMPLATES_DIR
from medic_lab.reaper import LAB_USER_PREFIX
from medic_lab.state import PUBLIC_ROOT, LabHost, LabState

#: Capacity of each host's data dir as the demo service reports it; DiskAlmostFull fires above 90 %.
DATA_CAPACITY_BYTES = 64 * 1024 * 1024
USERS_HOME = PUBLIC_ROOT.parent
#: The web service's versions (lab/host/versions.json: what each does) and the one hosts start at.
VERSIONS_FILE = LAB_TEMPLATES_DIR / "host" / "versions.json"
START_VERSION = "v1"


def write_package(dest: Path, version: str) -> None:
    """One version of the web service as a package: its code and its manifest (version.json)."""
    catalog = json.loads(VERSIONS_FILE.read_text())
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(LAB_TEMPLATES_DIR / "host" / "webapp.py", dest / "webapp.py")
    (dest / "version.json").write_text(json.dumps({"version": version, **catalog[version]}, indent=1) + "\n")


def build_package_repo(lab: LabState) -> Path:
    """``<lab>/packages/web/<version>/``: what playbooks/install-version.yml installs from."""
    repo = lab.lab_dir / "packages" / "web"
    for version in json.loads(VERSIONS_FILE.read_text()):
        write_package(repo / version, version)
    return repo


def user_for(host: str) -> str:
    return f"{LAB_USER_PREFIX}{host}"


def ensure_user(name: str) -> pwd.struct_passwd:
    """Create the unprivileged login user once; later labs reuse it."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    home = USERS_HOME / name
    home.parent.mkdir(parents=True, exist_ok=True)
    # -p '*': a locked password but a usable account for key login (UsePAM no).
    result = subprocess.run(
        ["useradd", "--system", "--home-dir", str(home), "--create-home", "--shell", "/bin/sh", "-p", "*", name],
        capture_output=True,
        text=True,
    )
    if result.returncode not in (0, 9):  # 9: created concurrently by another lab
        raise LabError(f"could not create lab user {name!r}: {result.stderr.strip()} (medic lab must run as root)")
    return pwd.getpwnam(name)


def write_keypair(private_path: Path) -> str:
    """Write an ed25519 key pair in OpenSSH format; returns the public key line."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    private_path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = public.decode()
    private_path.with_suffix(".pub").write_text(public_line + "\n")
    return public_line


def sshd_config(host: LabHost, lab: LabState) -> str:
    sshd_dir = host.root / "sshd"
    return "\n".join(
        [
            f"# sshd of lab host {host.name}",
            f"ListenAddress 127.0.0.1:{host.ssh_port}",
            f"HostKey {sshd_dir / 'ssh_host_ed25519_key'}",
            f"PidFile {sshd_dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {lab.authorized_keys}",  # read as the login user: in the public dir
            f"AllowUsers {host.user}",
            "PermitRootLogin no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            "StrictModes no",  # keys live in the lab's public dir, not in a home directory
            "PrintMotd no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "MaxStartups 200:30:400",
            "MaxSessions 64",
            "LoginGraceTime 20",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
            "",
        ]
    )


def prepare_host(host: LabHost, lab: LabState) -> str:
    """Lay out one host's directory and sshd; returns its known_hosts line."""
    account = ensure_user(host.user)
    root = host.root
    if root.exists():
        shutil.rmtree(root)
    for sub in ("bin", "etc", "run", "log", "data/app", "data/cache", "sshd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # Installed like a package: versions/<v>/, `current` → it, bin/webapp.py → current/webapp.py.
    write_package(root / "versions" / START_VERSION, START_VERSION)
    (root / "current").symlink_to(Path("versions") / START_VERSION)
    (root / "bin" / "webapp.py").symlink_to(Path("..") / "current" / "webapp.py")
    shutil.copy2(LAB_TEMPLATES_DIR / "host" / "servicectl", root / "bin" / "servicectl")
    (root / "etc" / "service.env").write_text(
        f"HOST_NAME={host.name}\nSERVICE_PORT={host.service_port}\nCAPACITY_BYTES={DATA_CAPACITY_BYTES}\n"
    )
    # Real data the cleanup must never touch, and a fresh cache file it must keep (too young).
    (root / "data" / "app" / "orders.db").write_bytes(os.urandom(256 * 1024))
    (root / "data" / "cache" / "session.tmp").write_bytes(b"x" * 4096)
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath).name == "sshd" or Path(dirpath).parent.name == "sshd":
            continue
        os.lchown(dirpath, account.pw_uid, account.pw_gid)
        for f in filenames + [d for d in dirnames if d != "sshd"]:  # symlinks too (current, bin/webapp.py)
            os.lchown(os.path.join(dirpath, f), account.pw_uid, account.pw_gid)
    root.chmod(0o755)
    public = write_keypair(root / "sshd" / "ssh_host_ed25519_key")
    (root / "sshd" / "sshd_config").write_text(sshd_config(host, lab))
    key_type, key_b64 = public.split()[:2]
    return f"[127.0.0.1]:{host.ssh_port} {key_type} {key_b64}"


def write_inventory(lab: LabState, extra_vars: dict[str, dict] | None = None) -> Path:
    """The single list of hosts that medic's SSH client and Ansible both use."""
    ssh_dir = lab.lab_dir / "ssh"
    package_repo = build_package_repo(lab)
    groups: dict[str, dict] = {}
    for h in lab.hosts:
        groups.setdefault(h.group, {"hosts": {}})["hosts"][h.name] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": h.ssh_port,
            "ansible_user": h.user,
            "medic_service_port": h.service_port,
            "medic_host_dir": str(h.root),
            "medic_data_dir": str(h.data_dir),
            "medic_servicectl": str(h.root / "bin" / "servicectl"),
            "medic_package_repo": str(package_repo),
            **(extra_vars or {}).get(h.name, {}),
        }
        if h.group != "web":
            for key in ("medic_service_port", "medic_servicectl", "medic_package_repo"):
                groups[h.group]["hosts"][h.name].pop(key, None)
    common_args = " ".join(
        [
            f"-o UserKnownHostsFile={ssh_dir / 'known_hosts'}",
            "-o StrictHostKeyChecking=yes",
            "-o KexAlgorithms=curve25519-sha256",
            "-o ControlMaster=auto",
            "-o ControlPersist=60s",
            f"-o ControlPath={ssh_dir / 'cp'}/%C",
        ]
    )
    inventory = {
        "all": {
            "vars": {
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_private_key_file": str(ssh_dir / "id_ed25519"),
                "ansible_ssh_common_args": common_args,
                "medic_known_hosts": str(ssh_dir / "known_hosts"),
            },
            "children": groups,
        }
    }
    (ssh_dir / "cp").mkdir(parents=True, exist_ok=True)
    path = lab.inventory
    path.write_text("# Generated by `medic lab up`. The one list of lab hosts.\n" + yaml.safe_dump(inventory, sort_keys=False))
    return path
