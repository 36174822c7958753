"""What ansible-playbook receives from medic: an allowlisted environment, extra vars that are data,
and a run directory that holds nothing secret.

Why: ansible-runner starts from a copy of the whole process environment and writes it, with the
command line, to ``artifacts/<ident>/command`` for every run — in medic's process that environment
holds the Slack token, Prefect's auth string, the approval key. And extra vars passed on the command
line are *trusted* by Ansible: ``{{ lookup('pipe', 'touch x') }}`` in a cleanup pattern from a
deployment run would be rendered, i.e. run on the controller.

So: ``clean_env`` keeps only what a playbook needs (PATH, HOME, locale, ANSIBLE_*, SSH agent, the
variables ansible-runner itself adds) and never a MEDIC_*, PREFECT_* or SLACK_* variable;
``write_extravars`` writes the extra vars as a YAML file in which every string is tagged ``!unsafe``
(Ansible's marker for "data, never a template"), passed as ``-e @file``; ``run_dir`` makes the
private data dir (0700, named after medic's pid so a later run removes what a SIGKILLed one left —
which, by the above, holds no secret anyway).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from medic.errors import AnsibleError

__all__ = ["clean_env", "run_dir", "runner_envvars", "write_extravars", "ALLOWED_ENV", "DENIED_ENV_PREFIXES"]

#: Exact names a playbook run may inherit from medic's environment.
ALLOWED_ENV = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR", "TERM",
                         "SSH_AUTH_SOCK", "PYTHONDONTWRITEBYTECODE",
                         # set by ansible-runner itself for its event callback
                         "ORIGINAL_STDOUT_CALLBACK", "AD_HOC_COMMAND_ID"})
#: Prefixes a playbook run may inherit (Ansible's own settings; ansible-runner's callback settings).
ALLOWED_ENV_PREFIXES = ("ANSIBLE_", "LC_", "RUNNER_", "AWX_")
#: Never passed, whatever the allowlist says: medic's, Prefect's and Slack's settings and secrets.
DENIED_ENV_PREFIXES = ("MEDIC_", "PREFECT_", "SLACK_")

_DIR_PREFIX = "medic-ansible-"
_STALE = re.compile(rf"^{_DIR_PREFIX}(?:syntax-)?(?P<pid>\d+)-")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """The allowlisted part of an environment (the one ansible-runner prepared for the run)."""
    return {k: v for k, v in env.items()
            if not k.upper().startswith(DENIED_ENV_PREFIXES)
            and (k in ALLOWED_ENV or k.startswith(ALLOWED_ENV_PREFIXES))}


def runner_envvars(private_dir: Path) -> dict[str, str]:
    """The environment ansible-playbook gets on top of the allowlist: safe defaults, no state left behind."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "/usr/bin:/bin")]),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        # One SSH round trip per task instead of three (put file, chmod, run): 4.0 s → 2.4 s for
        # the restart playbook. Needs no `requiretty` in sudoers, which medic does not use.
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_LOCAL_TEMP": str(private_dir / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }


class _UnsafeDumper(yaml.SafeDumper):
    """Every string becomes ``!unsafe "…"``: Ansible never renders it as a template."""


def _unsafe_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("!unsafe", value, style='"')


def _mapping(dumper: yaml.SafeDumper, value: dict) -> yaml.MappingNode:
    node = dumper.represent_mapping("tag:yaml.org,2002:map", value)
    for key, _ in node.value:  # a key that is a variable name holds no template: a plain string
        if key.tag == "!unsafe" and _VAR_NAME.match(key.value):
            key.tag, key.style = "tag:yaml.org,2002:str", None
    return node


_UnsafeDumper.add_representer(str, _unsafe_str)
_UnsafeDumper.add_representer(dict, _mapping)


def unsafe_yaml(extravars: Mapping[str, Any]) -> str:
    """The extra vars as YAML with every string (in lists and mappings too) tagged ``!unsafe``."""
    for name in extravars:
        if not isinstance(name, str) or not _VAR_NAME.match(name):
            raise AnsibleError(f"extra var name {name!r} is refused: Ansible variable names match "
                               f"[A-Za-z_][A-Za-z0-9_]*; nothing was run")
    try:
        return yaml.dump(dict(extravars), Dumper=_UnsafeDumper, allow_unicode=True, sort_keys=True, width=2**20)
    except yaml.YAMLError as exc:
        raise AnsibleError(f"extra vars could not be written as data ({exc}): pass strings, numbers, booleans, "
                           f"lists and mappings only; nothing was run") from exc


def write_extravars(private_dir: Path, extravars: Mapping[str, Any]) -> Path:
    """Write the extra vars file for ``-e @file`` (0600, inside the run's private dir)."""
    path = private_dir / "medic-extravars.yml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(unsafe_yaml(extravars))
    return path


def _alive(pid: int, since: float | None = None) -> bool:
    """Whether `pid` runs — and, given the dir's creation time `since`, is still the process that made
    it: on a busy host pids wrap within a minute (pid_max 32768), and a newer process reusing a dead
    medic's pid must not keep that medic's leftovers alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if since is not None:
        started = _started_at(pid)
        if started is not None and started > since + 1:
            return False
    return True


def _started_at(pid: int) -> float | None:
    """The process's start (epoch seconds): /proc/<pid>/stat field 22 (ticks after boot) + /proc/stat btime."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def sweep_stale(parent: Path | None = None) -> list[Path]:
    """Remove run dirs whose medic process is gone (SIGKILL, OOM), after stopping what still runs from
    them: an ansible-playbook (and its workers, their ssh) outlives a SIGKILLed medic and would go on
    changing a host for a run that is already marked Crashed."""
    from medic.clients.ansible_procs import stop_leftovers

    parent = Path(parent or tempfile.gettempdir())
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _STALE.match(entry.name)
        if m and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"]), since=_mtime(entry)):
            try:
                if entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid == os.getuid():
                    stop_leftovers(entry)
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
            except OSError:
                continue
    return removed


def run_dir(kind: str = "") -> Path:
    """A fresh private data dir (0700) for one ansible-runner call, after sweeping stale ones."""
    sweep_stale()
    return Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{kind + '-' if kind else ''}{os.getpid()}-"))
