"""Placeholders: a value can never change a command's or a query's meaning, wherever the author
put the placeholder. Shell renderings are run through a real bash to prove it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from medic.errors import RunbookError
from medic.core.inventory import Host
from medic.core.paths import RUNBOOKS_DIR
from medic.core.runbook import load_runbooks
from medic.core.templates import placeholders, render_promql, render_shell


def host_with(**medic_vars: object) -> Host:
    return Host(name="web-1", address="127.0.0.1", vars={f"medic_{k}": v for k, v in medic_vars.items()})


def bash(command: str, cwd: Path) -> str:
    done = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout


EVIL = [
    "; touch pwned",
    "$(touch pwned)",
    "`touch pwned`",
    "it's \"quoted\" \\ back",
    "a  b\nc",
    "' ; touch pwned ; '",
    '" ; touch pwned ; "',
    "$HOME",
    "",
]

# (template, what echo must print around the value)
CONTEXTS = [
    ("echo $v", "{}"),
    ("echo ${v}", "{}"),
    ("echo x${v}y", "x{}y"),
    ('echo "port :$v end"', "port :{} end"),
    ("echo 'say $v now'", "say {} now"),
    ("echo \"it's\" $v '\"$v\"'", "it's {} \"{}\""),
]


@pytest.mark.parametrize("value", EVIL)
@pytest.mark.parametrize(("template", "shape"), CONTEXTS)
def test_a_host_value_is_one_literal_word_in_any_quoting_context(tmp_path: Path, value: str, template: str,
                                                                 shape: str) -> None:
    command = render_shell(template, host_with(v=value))
    assert bash(command, tmp_path) == shape.format(value, value) + "\n"
    assert not (tmp_path / "pwned").exists()


def test_host_extra_values_and_a_literal_dollar(tmp_path: Path) -> None:
    host = host_with(port=8080)
    assert render_shell("echo $host:$port $$x", host) == "echo web-1:8080 $x"
    assert render_shell("echo $port", host, extra={"port": "9; id"}) == "echo '9; id'"


def test_a_placeholder_the_host_does_not_define_is_named(tmp_path: Path) -> None:
    with pytest.raises(RunbookError) as info:
        render_shell("du -sh ${data_dir} $cache", host_with(), where="diagnose command 'size'")
    assert str(info.value) == (
        "<runbook>: diagnose command 'size' uses $cache, $data_dir, which the host does not define; "
        "expected: an inventory variable medic_<name> on the host, or $host; "
        "found: du -sh ${data_dir} $cache")


def test_promql_values_are_string_literals() -> None:
    host = Host(name='we"b\\1', address="127.0.0.1")
    assert render_promql("up{host=$host}", host) == 'up{host="we\\"b\\\\1"}'
    assert render_promql('up{job="web"}', None) == 'up{job="web"}'
    with pytest.raises(RunbookError, match=r"query uses \$host, which the host does not define"):
        render_promql("up{host=$host}", None)


def test_placeholders_lists_names_and_refuses_a_stray_dollar() -> None:
    assert placeholders("a $x ${y} $$z") == {"x", "y"}
    with pytest.raises(ValueError, match=r"malformed placeholder '\$1' at character 6"):
        placeholders("echo $1")


def test_every_real_runbook_command_renders_to_valid_shell(tmp_path: Path) -> None:
    host = host_with(data_dir="/srv/my data", host_dir="/srv/h", service_port=8080,
                     servicectl="/srv/h/bin/ctl")
    commands = [c.run for rb in load_runbooks(RUNBOOKS_DIR).values() for c in rb.diagnose.commands]
    assert len(commands) == 7
    for command in commands:
        rendered = render_shell(command, host)
        assert "$" not in rendered.replace("$(", "")  # every placeholder was filled
        bash(f"bash -n -c {render_shell('$c', host, extra={'c': rendered})}", tmp_path)
