"""Runbook specs: the three real runbooks load as intended, and every malformed spec is refused
with an error that names the file, the line, the field, what was expected and what was found."""

from __future__ import annotations

from pathlib import Path

import pytest

from medic.errors import RunbookError, UnknownTargetError
from medic.core.inventory import Inventory
from medic.core.paths import PLAYBOOKS_DIR, RUNBOOKS_DIR
from medic.core.runbook import find_runbook, load_runbook, load_runbooks
from medic.procedures.stages import plan

# A small valid spec; the cases below edit one line of it, so the line numbers are fixed here.
SPEC = """\
name: svc
description: test runbook
targets:
  default: web-1
  within: web
detect:
  query: up{host=$host}
  condition: "== 0"
  for: 1s
diagnose:
  commands:
    - name: status
      run: systemctl status web
  queries:
    - name: scrape
      query: up{host=$host}
recover:
  playbook: restart.yml
  timeout: 60s
verify:
  query: up{host=$host}
  condition: "== 1"
  timeout: 30s
limits:
  max_parallel: 2
"""

INVENTORY = """\
all:
  children:
    web:
      hosts:
        web-1:
        web-2:
    db:
      hosts:
        db-1:
"""


def edited(old: str, new: str) -> str:
    """SPEC with one exact piece replaced (the piece must be there once)."""
    assert SPEC.count(old) == 1, old
    return SPEC.replace(old, new)


def write_spec(directory: Path, text: str, name: str = "svc") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def spec_error(tmp_path: Path, text: str, name: str = "svc") -> RunbookError:
    path = write_spec(tmp_path, text, name)
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    return info.value


def inventory(tmp_path: Path, text: str = INVENTORY) -> Inventory:
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    return Inventory.load(path)


# --- the real runbooks ------------------------------------------------------------------------


def test_the_real_runbooks_load_with_the_intended_fields() -> None:
    books = load_runbooks(RUNBOOKS_DIR)
    assert sorted(books) == ["disk-full", "high-latency", "latency-drift", "memory-leak", "postgres-failover",
                             "service-down"]
    failover = books["postgres-failover"]
    assert failover.kind == "failover" and failover.failover.members == "db"
    assert failover.failover.max_lag_bytes == 16 * 1024 * 1024 and failover.approval.policy == "required"
    assert all(b.kind == "remediation" and b.failover is None for n, b in books.items() if n != "postgres-failover")

    disk = books["disk-full"]
    assert disk.approval.policy == "required"
    assert disk.approval.timeout == 600.0
    assert (disk.detect.condition.op, disk.detect.condition.threshold) == (">", 0.9)
    assert disk.detect.condition.holds(0.95) and not disk.detect.condition.holds(0.9)
    assert str(disk.verify.condition) == "< 0.8"
    assert (disk.detect.hold, disk.detect.settle) == (1.0, 5.0)
    assert (disk.verify.timeout, disk.recover.timeout) == (30.0, 120.0)
    assert disk.recover.vars == {"cleanup_patterns": "*.tmp,*.log.[0-9]*", "cleanup_min_age": "1d"}
    assert disk.targets.within == "web" and disk.targets.default is None
    assert disk.trigger is not None and disk.trigger.alertname == "DiskAlmostFull"
    assert disk.limits.max_parallel == 5

    down = books["service-down"]
    assert down.approval.policy == "none"
    assert str(down.detect.condition) == "== 0" and str(down.verify.condition) == "== 1"
    assert down.detect.per_host and down.verify.per_host
    assert down.recover.vars == {"restart_if_running": False}
    assert [c.name for c in down.diagnose.commands] == [
        "service status", "last log lines", "listening on the service port"]

    slow = books["high-latency"]
    assert slow.approval.policy == "none"
    assert slow.targets.default == "web" and slow.limits.max_parallel == 1
    assert not slow.detect.per_host  # one query for all hosts, split by the host label
    assert slow.detect.settle == 10.0 and slow.verify.timeout == 45.0

    leak, drift = books["memory-leak"].detect.anomaly, books["latency-drift"].detect.anomaly
    assert leak is not None and (leak.detector, leak.params["direction"]) == ("rate_of_change", "up")  # + limit
    assert drift is not None and (drift.detector, drift.params["direction"]) == ("ewma", "up")
    assert books["memory-leak"].trigger.alertname == "MemoryLeakSuspected"  # type: ignore[union-attr]

    for rb in books.values():
        assert rb.source == RUNBOOKS_DIR / f"{rb.name}.yaml"
        assert rb.recover.playbook and (PLAYBOOKS_DIR / rb.recover.playbook).is_file()


def test_find_runbook_by_name_and_refuses_unknown_or_path_like_names() -> None:
    assert find_runbook("disk-full", RUNBOOKS_DIR).name == "disk-full"
    for name in ("nope", "../runbooks/disk-full"):
        with pytest.raises(RunbookError) as info:
            find_runbook(name, RUNBOOKS_DIR)
        assert f"no runbook named {name!r}" in str(info.value)
        assert info.value.expected == ("one of: disk-full, high-latency, latency-drift, memory-leak, "
                                       "postgres-failover, service-down")


def test_durations_and_conditions_accept_every_documented_form(tmp_path: Path) -> None:
    text = edited('  for: 1s\n', '  for: 500ms\n  settle: 2\n').replace("timeout: 30s", "timeout: 1h")
    rb = load_runbook(write_spec(tmp_path, text.replace('condition: "== 0"', "condition: 0")))
    assert (rb.detect.hold, rb.detect.settle, rb.verify.timeout) == (0.5, 2.0, 3600.0)
    assert str(rb.detect.condition) == "== 0"


# --- malformed specs --------------------------------------------------------------------------

# (case, spec text, line, message, field, expected (part of), found)
MALFORMED = [
    ("unclosed quote", edited('condition: "== 1"', "condition: '== 1"), 22,
     "not valid YAML: found unexpected end of stream (while scanning a quoted scalar that starts at line 22)",
     None, "a YAML mapping", None),
    ("bad indentation", edited("  for: 1s", "    for: 1s"), 9,
     "not valid YAML: expected <block end>, but found '<block mapping start>' "
     "(while parsing a block mapping that starts at line 7)", None, "a YAML mapping", None),
    ("unknown top-level field", SPEC + "frobnicate: 1\n", 26, "unknown field 'frobnicate'",
     "frobnicate", "one of the documented fields of a runbook", "1"),
    ("unknown nested field", edited("  for: 1s\n", "  for: 1s\n  frobnicate: yes\n"), 10,
     "unknown field 'frobnicate'", "detect.frobnicate", "one of the documented fields of detect", "True"),
    ("missing verify",
     edited('verify:\n  query: up{host=$host}\n  condition: "== 1"\n  timeout: 30s\n', ""), 1,
     "missing field 'verify'", "verify", "this field to be present", None),
    ("condition in words", edited('"== 0"', '"bigger than 5"'), 8, "invalid value for 'detect.condition'",
     "detect.condition", "a comparison such as '> 0.9' or '== 0'", "'bigger than 5'"),
    ("duration in words", edited("for: 1s", "for: soon"), 9, "invalid value for 'detect.for'",
     "detect.for", "a duration such as 2s, 500ms, 10m", "'soon'"),
    ("max_parallel 0", edited("max_parallel: 2", "max_parallel: 0"), 25,
     "invalid value for 'limits.max_parallel'",
     "limits.max_parallel", "greater than or equal to 1", "0"),
    ("playbook and command",
     edited("  timeout: 60s\n", "  timeout: 60s\n  command: systemctl restart web\n"), 17,
     "invalid value for 'recover'", "recover", "exactly one of 'playbook' or 'command'", None),
    ("neither playbook nor command", edited("  playbook: restart.yml\n", ""), 17,
     "invalid value for 'recover'", "recover", "exactly one of 'playbook' or 'command'", None),
    ("playbook outside playbooks/", edited("restart.yml", "../../etc/passwd.yml"), 18,
     "invalid value for 'recover.playbook'", "recover.playbook",
     "a playbook file name under playbooks/ ending in .yml", "'../../etc/passwd.yml'"),
    ("detect query with an inventory var", edited("  query: up{host=$host}\n  condition: \"== 0\"",
                                                  "  query: up{dir=$data_dir}\n  condition: \"== 0\""), 7,
     "invalid value for 'detect.query'", "detect.query", "queries may only use $host, not $data_dir",
     "'up{dir=$data_dir}'"),
    ("diagnose query with an inventory var",
     edited("    query: up{host=$host}", "    query: up{dir=${data_dir}}"), 16,
     "invalid value for 'diagnose.queries.0.query'", "diagnose.queries.0.query",
     "queries may only use $host, not $data_dir", "'up{dir=${data_dir}}'"),
    ("malformed $ in a command", edited("systemctl status web", "systemctl status $ web"), 13,
     "invalid value for 'diagnose.commands.0.run'", "diagnose.commands.0.run",
     "malformed placeholder '$ web' at character 18: use $name or ${name}, or $$ for a literal $",
     "'systemctl status $ web'"),
    ("unclosed ${ in recover command",
     edited("  playbook: restart.yml", "  command: rm -rf ${data_dir/junk"), 18,
     "invalid value for 'recover.command'", "recover.command",
     "malformed placeholder '${data_dir/j' at character 8",
     "'rm -rf ${data_dir/junk'"),
    ("a list, not a mapping", "- name: svc\n", 1, "a runbook must be a YAML mapping",
     None, "fields: name, description, trigger, targets, detect,", "a YAML list"),
    ("an empty file", "", 1, "a runbook must be a YAML mapping",
     None, "fields: name, description,", "an empty file"),
]


@pytest.mark.parametrize(("text", "line", "message", "field", "expected", "found"),
                         [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_a_malformed_spec_says_where_and_what(tmp_path: Path, text: str, line: int, message: str,
                                               field: str | None, expected: str, found: str | None) -> None:
    err = spec_error(tmp_path, text)
    path = tmp_path / "svc.yaml"
    assert str(err).startswith(f"{path}:{line}: {message}"), str(err)
    assert (err.file, err.line, err.field) == (str(path), line, field)
    assert expected in (err.expected or "")
    if found is not None:
        assert err.found == found
    if field:
        assert f"; field: {field}; expected: {err.expected}" in str(err)


def test_a_name_that_is_not_the_file_name_is_refused(tmp_path: Path) -> None:
    err = spec_error(tmp_path, SPEC, name="other")
    assert str(err) == (f"{tmp_path / 'other.yaml'}:1: the runbook's name must match its file name; "
                        "field: name; expected: other; found: svc")


def test_an_unreadable_runbook_says_so(tmp_path: Path) -> None:
    with pytest.raises(RunbookError, match=r"missing\.yaml: cannot read runbook: No such file or directory"):
        load_runbook(tmp_path / "missing.yaml")


def test_load_runbooks_stops_at_the_first_invalid_spec(tmp_path: Path) -> None:
    write_spec(tmp_path, SPEC)
    assert list(load_runbooks(tmp_path)) == ["svc"]
    write_spec(tmp_path, SPEC.replace("name: svc", "name: zzz") + "oops: 1\n", name="zzz")
    with pytest.raises(RunbookError, match=r"zzz\.yaml:26: unknown field 'oops'"):
        load_runbooks(tmp_path)


# --- planning: targets resolve through the inventory, within the runbook's group -------------


def test_plan_uses_the_default_target_or_the_given_one(tmp_path: Path) -> None:
    rb, inv = load_runbook(write_spec(tmp_path, SPEC)), inventory(tmp_path)
    assert [h.name for h in plan(rb, None, inv).hosts] == ["web-1"]
    assert [h.name for h in plan(rb, "web", inv).hosts] == ["web-1", "web-2"]


def test_plan_refuses_a_target_outside_the_runbooks_group(tmp_path: Path) -> None:
    rb, inv = load_runbook(write_spec(tmp_path, SPEC)), inventory(tmp_path)
    for target, outside in (("db-1", "db-1"), ("all", "db-1")):
        with pytest.raises(UnknownTargetError) as info:
            plan(rb, target, inv)
        assert f"{target} ({outside} outside group 'web' of runbook svc)" in str(info.value)
        assert info.value.known == ["web-1", "web-2"]


def test_plan_without_a_target_or_default_asks_for_one(tmp_path: Path) -> None:
    rb = load_runbook(write_spec(tmp_path, edited("  default: web-1\n", "")))
    with pytest.raises(RunbookError) as info:
        plan(rb, None, inventory(tmp_path))
    assert str(info.value) == (f"{tmp_path / 'svc.yaml'}: runbook 'svc' needs a target (a host or group of "
                               "the inventory); field: targets.default; expected: --target HOST")
