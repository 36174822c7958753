"""Ansible playbooks through ansible-runner, returning a typed per-host result.

This is the only module that imports ansible_runner. A playbook that fails or cannot reach a host
is a ``PlaybookResult`` (per host: ok/changed/failed/unreachable/skipped counts, every task's status
and message), never an exception; ``AnsibleError`` is only for "could not start it at all".

Safety, because ansible-runner's defaults are not ours:

* host-key checking is switched back **on** (ansible-runner turns it off unless told otherwise);
* ansible-playbook gets an allowlisted environment (no MEDIC_*, PREFECT_*, SLACK_*: nothing secret
  reaches the ``artifacts/<ident>/command`` file ansible-runner writes) and extra vars as a YAML file
  whose strings are all ``!unsafe`` — data, never Jinja (see ``medic.clients.ansible_env``);
* every run gets a fresh private_data_dir that is deleted afterwards (or by the next run, if medic
  was killed), with ``suppress_env_files`` so no cmdline/extravars/env (and no earlier ``--check``)
  can leak into a later run; events are kept in memory, not written as artifacts;
* targets are only ever inventory hosts: the run is limited to the given hosts' names, each checked
  against the inventory first.

Return values: a playbook reports values to medic per host with a ``set_fact`` of ``medic_result``
(a mapping), e.g.::

    - name: report what was freed
      ansible.builtin.set_fact:
        medic_result:
          bytes_freed: "{{ freed.stdout | int }}"

Every ``medic_result`` mapping a host sets is merged (later keys win) into
``PlaybookResult.hosts[<host>].return_values``. ``set_fact`` runs in check mode too, so a dry run can
report what it *would* do.

Measured fixed cost (shared 2-core machine, ansible-core 2.19, one lab host): an empty playbook takes
1.1-1.4 s through ``run_playbook`` — the same as bare ``ansible-playbook`` (1.1-1.2 s), so the wrapper
adds nothing measurable — and 1.8-1.9 s under heavier load (``bench/ssh_fanout.py`` prints it); each
module task adds ~0.8 s more on one host. Prefer an SSH command for one quick check.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import ansible_runner
from pydantic import BaseModel, Field

from medic.clients.ansible_env import clean_env, run_dir, runner_envvars, write_extravars
from medic.clients.ansible_procs import stop_leftovers
from medic.errors import AnsibleError
from medic.core.inventory import Host, Inventory
from medic.settings import get_settings

__all__ = ["HostPlaybookResult", "PlaybookResult", "SyntaxProblem", "TaskResult", "RETURN_FACT", "run_playbook",
           "syntax_check"]

log = logging.getLogger(__name__)

#: The fact a playbook sets to report values back to medic (see the module docstring).
RETURN_FACT = "medic_result"

TaskStatus = Literal["ok", "changed", "failed", "skipped", "unreachable"]
RunStatus = Literal["successful", "failed", "timeout", "canceled"]

_EVENT_STATUS: dict[str, TaskStatus] = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}
_MSG_LIMIT = 2000


class TaskResult(BaseModel):
    """One task on one host."""

    task: str
    status: TaskStatus
    msg: str = ""
    changed: bool = False

    @property
    def failed(self) -> bool:
        """The task failed, or could not reach its host."""
        return self.status in ("failed", "unreachable")


class HostPlaybookResult(BaseModel):
    """What the playbook did on one host: Ansible's recap counts, the tasks, and reported values."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    tasks: list[TaskResult] = Field(default_factory=list)
    return_values: dict[str, Any] = Field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return not self.failed and not self.unreachable


class PlaybookResult(BaseModel):
    playbook: str
    status: RunStatus
    rc: int | None
    duration_s: float
    check: bool = False
    hosts: dict[str, HostPlaybookResult] = Field(default_factory=dict)
    error: str | None = Field(None, description="ansible-playbook's output tail when it stopped before its recap")

    @property
    def ok(self) -> bool:
        return self.status == "successful" and all(h.succeeded for h in self.hosts.values())


def _message(res: dict[str, Any]) -> str:
    """The most useful line(s) of a task result for a human: msg, else stderr, else stdout."""
    for field in ("msg", "stderr", "stdout"):
        value = res.get(field)
        if value:
            text = value if isinstance(value, str) else str(value)
            return text[:_MSG_LIMIT]
    return ""


class _Collector:
    """Builds per-host results from ansible-runner's events as they arrive (nothing is written to disk)."""

    def __init__(self, names: list[str]) -> None:
        self.hosts = {name: HostPlaybookResult() for name in names}
        self.stats: dict[str, dict[str, int]] | None = None

    def __call__(self, event: dict[str, Any]) -> bool:
        kind, data = event.get("event", ""), event.get("event_data") or {}
        if kind == "playbook_on_stats":
            self.stats = data
        elif kind in _EVENT_STATUS and data.get("host") in self.hosts:
            self._task(kind, data)
        return False  # False: ansible-runner does not write the event to the artifact dir

    def _task(self, kind: str, data: dict[str, Any]) -> None:
        res = data.get("res") or {}
        changed = bool(res.get("changed"))
        status = _EVENT_STATUS[kind]
        if status == "ok" and changed:
            status = "changed"
        host = self.hosts[data["host"]]
        host.tasks.append(TaskResult(task=data.get("task", ""), status=status, msg=_message(res), changed=changed))
        reported = (res.get("ansible_facts") or {}).get(RETURN_FACT)
        if isinstance(reported, dict):
            host.return_values.update(reported)

    def results(self) -> dict[str, HostPlaybookResult]:
        """Per-host results; the counts come from Ansible's own recap when the run got that far."""
        stats = self.stats or {}
        for name, host in self.hosts.items():
            if stats:
                host.ok = stats.get("ok", {}).get(name, 0)
                host.changed = stats.get("changed", {}).get(name, 0)
                host.failed = stats.get("failures", {}).get(name, 0)
                host.unreachable = stats.get("dark", {}).get(name, 0)
                host.skipped = stats.get("skipped", {}).get(name, 0)
            else:  # timeout/cancel before the recap: count what was seen
                counts = {s: sum(t.status == s for t in host.tasks) for s in _EVENT_STATUS.values()}
                host.ok = counts["ok"] + sum(t.changed for t in host.tasks)
                host.changed = sum(t.changed for t in host.tasks)
                host.failed, host.unreachable = counts["failed"], counts["unreachable"]
                host.skipped = counts["skipped"]
        return self.hosts


def _output_tail(runner: Any) -> str:
    """The end of ansible-playbook's output (e.g. a syntax error), read before the run dir is deleted."""
    try:
        with runner.stdout as stream:
            return stream.read()[-_MSG_LIMIT:].strip() or f"ansible-playbook ended with rc {runner.rc}"
    except (OSError, ansible_runner.AnsibleRunnerException):
        return f"ansible-playbook ended with rc {runner.rc} and no output"


def _check_targets(hosts: list[Host], inventory: Path) -> None:
    if not hosts:
        raise AnsibleError("no hosts given: refusing to run a playbook without an explicit target list")
    known = Inventory.load(inventory)
    for host in hosts:
        known.host(host.name)  # UnknownTargetError/UnsafeValueError for anything not in the inventory


def _clean(runner: Any) -> Any:
    """The runner with only the allowlisted environment (ansible-runner seeds it with all of ours)."""
    runner.config.env = clean_env(runner.config.env)
    return runner


def run_playbook(
    playbook: Path,
    *,
    hosts: list[Host],
    inventory: Path | None = None,
    extravars: dict[str, Any] | None = None,
    check: bool = False,
    timeout: float = 300,
) -> PlaybookResult:
    """Run a playbook on exactly these inventory hosts; failures and unreachable hosts are in the result.
    The playbook gets ``medic_timeout_s`` to bound its remote commands (e.g. `timeout` in a command task)."""
    playbook = Path(playbook).resolve()
    if not playbook.is_file():
        raise AnsibleError(f"playbook {playbook} does not exist; check the runbook's `playbook:` path")
    if inventory is None:
        inventory = get_settings().inventory
        if inventory is None:
            raise AnsibleError("no inventory configured: start the lab (`medic lab up`) or set MEDIC_INVENTORY")
    inventory = Path(inventory).resolve()
    _check_targets(hosts, inventory)
    names = [h.name for h in hosts]
    collector = _Collector(names)
    private_dir = run_dir()
    started = time.monotonic()
    log.info("ansible: %s on %s%s", playbook.name, ",".join(names), " (check)" if check else "")
    try:
        values = {"medic_timeout_s": max(1, int(timeout)), **(extravars or {})}
        cmdline = f"-e @{shlex.quote(str(write_extravars(private_dir, values)))}"
        runner = _clean(ansible_runner.interface.init_runner(
            private_data_dir=str(private_dir),
            playbook=str(playbook),
            inventory=str(inventory),
            limit=",".join(names),
            cmdline=cmdline + (" --check --diff" if check else ""),
            envvars=runner_envvars(private_dir),
            suppress_env_files=True,
            timeout=max(1, int(timeout)),
            quiet=True,
            event_handler=collector,
        ))
        runner.run()
        error = None if collector.stats else _output_tail(runner)
    except AnsibleError:
        raise
    except Exception as exc:  # noqa: BLE001 - ansible-runner raises many types when it cannot start at all
        raise AnsibleError(f"could not start ansible-playbook for {playbook}: {type(exc).__name__}: {exc}") from exc
    finally:
        stop_leftovers(private_dir)  # a stopped run's workers (own sessions) and their ssh
        shutil.rmtree(private_dir, ignore_errors=True)
    duration = round(time.monotonic() - started, 3)
    if runner.rc == 127:
        raise AnsibleError(f"ansible-playbook was not found (rc 127); install ansible-core in {sys.prefix}")
    result = PlaybookResult(
        playbook=str(playbook),
        status=runner.status if runner.status in ("successful", "failed", "timeout", "canceled") else "failed",
        rc=runner.rc,
        duration_s=duration,
        check=check,
        hosts=collector.results(),
        error=error,
    )
    log.info("ansible: %s → %s (rc %s) in %.2f s", playbook.name, result.status, result.rc, duration)
    return result


# --- syntax check (`medic validate`) --------------------------------------------------------------


class SyntaxProblem(BaseModel):
    """One playbook that `ansible-playbook --syntax-check` refuses: where (file, line when known), why."""

    playbook: str
    file: str = Field(description="where the error is: the playbook or a file it includes")
    line: int | None = None
    message: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        return f"{where}: ansible-playbook --syntax-check: {self.message}"


_ORIGIN = re.compile(r"^Origin: (?P<file>.+?):(?P<line>\d+)(?::\d+)?\s*$", re.M)
_OLD_ORIGIN = re.compile(r"The error appears to be in '(?P<file>[^']+)': line (?P<line>\d+)")
_ERROR_LINE = re.compile(r"^(?:\[ERROR\]: |ERROR! )(?P<msg>.+)$", re.M)
_UNDEFINED = re.compile(r"Error processing keyword '\w+': '(?P<name>[A-Za-z_]\w*)' is undefined")
_MAX_PLACEHOLDERS = 5
_HOSTS_VARIABLE = re.compile(r"^\s*-?\s*hosts:\s*[\"']?\{\{\s*(?P<name>[A-Za-z_]\w*)", re.M)


def _syntax_run(playbooks: list[Path], timeout: float, placeholders: dict[str, str]) -> tuple[str, int]:
    """One `ansible-playbook --syntax-check -i localhost,` (no inventory needed); (stderr + stdout, rc)."""
    private_dir = run_dir("syntax")
    extra = [arg for name, value in placeholders.items() for arg in ("-e", f"{name}={value}")]
    try:
        runner = _clean(ansible_runner.interface.init_command_config(
            "ansible-playbook", cmdline_args=["--syntax-check", "-i", "localhost,", *extra, *map(str, playbooks)],
            private_data_dir=str(private_dir), envvars=runner_envvars(private_dir), runner_mode="subprocess",
            suppress_env_files=True, quiet=True, timeout=max(1, int(timeout))))
        runner.run()
        with runner.stdout as stdout, runner.stderr as stderr:
            out, err, rc = stdout.read(), stderr.read(), runner.rc
    except Exception as exc:  # noqa: BLE001 - ansible-runner raises many types when it cannot start at all
        raise AnsibleError(f"could not start ansible-playbook --syntax-check: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)
    if rc == 127:
        raise AnsibleError(f"ansible-playbook was not found (rc 127); install ansible-core in {sys.prefix}")
    return f"{err}\n{out}".strip(), rc


def _checked(playbooks: list[Path], timeout: float) -> tuple[str, int]:
    """Syntax-check; a play keyword naming a variable medic passes at run time (e.g. `hosts: "{{
    rejoin_host }}"`) gets a placeholder value, so the rest of the playbook is still checked."""
    placeholders = {m["name"]: "localhost" for p in playbooks if p.is_file()
                    for m in _HOSTS_VARIABLE.finditer(p.read_text(errors="replace"))}
    for _ in range(_MAX_PLACEHOLDERS + 1):
        output, rc = _syntax_run(playbooks, timeout, placeholders)
        missing = _UNDEFINED.search(output) if rc else None
        if missing is None or missing["name"] in placeholders:
            break
        placeholders[missing["name"]] = "localhost"
    return output, rc


def _problem(playbook: Path, output: str) -> SyntaxProblem:
    origin = _ORIGIN.search(output) or _OLD_ORIGIN.search(output)
    error = _ERROR_LINE.search(output)
    message = error["msg"].strip() if error else (output.splitlines() or ["no output"])[-1].strip()
    return SyntaxProblem(playbook=str(playbook), file=origin["file"] if origin else str(playbook),
                         line=int(origin["line"]) if origin else None, message=message[:_MSG_LIMIT])


def syntax_check(playbooks: list[Path], *, timeout: float = 120) -> list[SyntaxProblem]:
    """The playbooks `ansible-playbook --syntax-check` refuses (none: []), each with its file and line.

    One ansible-playbook for all of them when they are clean (~1.3 s on this machine); it stops at
    the first error, so when one fails each is checked on its own to name every broken file.
    """
    paths = [Path(p).resolve() for p in playbooks]
    if not paths or _checked(paths, timeout)[1] == 0:
        return []
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda p: (p, _checked([p], timeout)), paths))
    return [_problem(p, output) for p, (output, rc) in runs if rc != 0]
