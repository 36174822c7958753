"""Placeholders: a value can never change a command's or a query's meaning, wherever the author
put the placeholder. Shell values are positional parameters of a fixed script; the renderings are
run through a real shell (bash parses the command line as the remote shell would, then `sh` runs)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from medic.errors import RunbookError
from medic.core.inventory import Host
from medic.core.paths import RUNBOOKS_DIR
from medic.core.runbook import load_runbooks
from medic.core.templates import ShellCommand, placeholders, render_promql, render_shell, shell_script


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
    "*",
    "-n",
    "",
]

# (template, what the command must print around the value)
CONTEXTS = [
    ("printf '%s\\n' $v", "{}"),
    ("printf '%s\\n' ${v}", "{}"),
    ("printf '%s\\n' x${v}y", "x{}y"),
    ('printf "%s\\n" "port :$v end"', "port :{} end"),
    ("printf '%s\\n' 'say $v now'", "say {} now"),
    ("printf '%s %s %s\\n' \"it's\" $v '\"$v\"'", "it's {} \"{}\""),
    # inside a command substitution, in and out of double quotes: the issue's case
    ('printf "%s\\n" "$$(printf "%s" "$v")"', "{}"),
    ("printf '%s\\n' \"$$(printf '%s' $v)\"", "{}"),
    ("printf '%s\\n' \"`printf '%s' $v`\"", "{}"),
    ('printf "%s\\n" "$${unset_variable:-$v}"', "{}"),
    ("f() { printf '%s\\n' \"$v\"; }; f other words", "{}"),
    ("printf '%s\\n' $v # a comment that's got a quote", "{}"),
]


def printed(value: str) -> str:
    """What printf shows for a value (a command substitution drops trailing newlines; ours have none)."""
    return value


@pytest.mark.parametrize("value", EVIL)
@pytest.mark.parametrize(("template", "shape"), CONTEXTS)
def test_a_host_value_arrives_byte_identical_in_any_quoting_context(tmp_path: Path, value: str, template: str,
                                                                    shape: str) -> None:
    command = render_shell(template, host_with(v=value))
    assert value not in command.script or not value  # the value is never part of the script text
    expected = shape.format(printed(value), printed(value)) + "\n"
    assert bash(str(command), tmp_path) == expected  # the command line, parsed once by a shell
    direct = subprocess.run(command.argv(), cwd=tmp_path, capture_output=True, text=True, timeout=10)
    assert direct.stdout == expected, direct.stderr  # the argv itself, no shell in between
    assert not (tmp_path / "pwned").exists()


def test_the_issue_case_a_value_in_cat_inside_command_substitution_is_inert(tmp_path: Path) -> None:
    """`printf "%s\\n" "$$(cat "${data_dir}/x")"` with data_dir `$(touch …)` ran the touch before."""
    marker = tmp_path / "pwned"
    host = host_with(data_dir=f"$(touch {marker})")
    command = render_shell('printf "%s\\n" "$$(cat "${data_dir}/x")"', host)
    done = subprocess.run(["bash", "-c", str(command)], cwd=tmp_path, capture_output=True, text=True, timeout=10)
    assert f"$(touch {marker})/x" in done.stderr  # cat was asked for the literal path
    assert not marker.exists()


def test_host_extra_values_and_a_literal_dollar(tmp_path: Path) -> None:
    host = host_with(port=8080)
    command = render_shell("echo $host:$port $$x", host)
    assert command == ShellCommand(script='medic_host="${1}" medic_port="${2}"; echo "${medic_host}":"${medic_port}" $x',
                                   names=("host", "port"), args=("web-1", "8080"), text="echo $host:$port $$x")
    assert render_shell("ls $d", host_with(d="my dir")).preview() == "ls 'my dir'"  # for people only
    assert bash(f"x=literal; {command}", tmp_path) == "web-1:8080\n"  # $x belongs to the script, not to medic
    assert render_shell("echo $port", host, extra={"port": "9; id"}).args == ("9; id",)
    assert str(render_shell("systemctl status", host)) == "systemctl status"  # no values: the script alone


def test_a_placeholder_the_host_does_not_define_is_named(tmp_path: Path) -> None:
    with pytest.raises(RunbookError) as info:
        render_shell("du -sh ${data_dir} $cache", host_with(), where="diagnose command 'size'")
    assert str(info.value) == (
        "<runbook>: diagnose command 'size' uses $cache, $data_dir, which the host does not define; "
        "expected: an inventory variable medic_<name> on the host, or $host; "
        "found: du -sh ${data_dir} $cache")


@pytest.mark.parametrize(("template", "message"), [
    ("echo $$(( $n + 1 ))", r"placeholder \$n at character 11 is inside \$\(\(…\)\): shell arithmetic would evaluate"),
    ("echo 'unclosed $n", r"cannot follow the quoting of this command \(still inside \"'\" at its end\)"),
    ('echo "$$(cat $n)', r"still inside '\"' at its end"),
    ("echo hi # $n", r"placeholder in a shell comment at character 9"),
    ("echo \\$n", r"backslash before placeholder \$n at character 7"),
])
def test_commands_medic_cannot_pass_values_to_safely_are_refused(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shell_script(template)
    with pytest.raises(RunbookError, match="expected: a command medic can pass values to safely"):
        render_shell(template, host_with(n="1"))


def test_a_runbook_with_a_command_medic_cannot_follow_is_refused_at_validation(tmp_path: Path) -> None:
    from medic.core.runbook import DiagnoseCommand

    with pytest.raises(ValueError, match=r"inside \$\(\(…\)\)"):
        DiagnoseCommand(name="x", run="echo $$(( $port + 1 ))")
    assert DiagnoseCommand(name="x", run="echo 'no placeholder, unbalanced").run  # nothing to pass: allowed


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
    commands += [rb.recover.command for rb in load_runbooks(RUNBOOKS_DIR).values()
                 if rb.recover is not None and rb.recover.command]
    assert len(commands) >= 7
    for command in commands:
        rendered = render_shell(command, host)
        assert set(rendered.names) == placeholders(command)  # every placeholder is a parameter
        bash(f"sh -n -c {shlex.quote(rendered.script)}", tmp_path)


# --- end to end: a real lab host over SSH -----------------------------------------------------------


def test_values_reach_a_real_host_over_ssh_byte_identical_and_inert(lab) -> None:  # noqa: ANN001 - LabState
    """Over SSH the remote login shell parses the command line once more: values still arrive as data."""
    from medic.clients.ssh import SSHSession
    from medic.core.inventory import load_inventory

    base = load_inventory().host(lab.hosts[0].name)
    marker = lab.hosts[0].data_dir / "templates-pwned"
    evil = [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}", "it's \"q\" \\ `b` $HOME",
            "line1\nline2\n", "*", "-n", ""]
    with SSHSession() as ssh:
        for value in evil:
            host = base.model_copy(update={"vars": {**base.vars, "medic_v": value, "medic_data_dir": value}})
            for template in ("printf '%s' $v", 'printf "%s" "$$(printf "%s" "$v")x"', "printf '%s' 'a$v'"):
                result = ssh.run(host, render_shell(template, host))
                expected = {"printf '%s' $v": value, "printf '%s' 'a$v'": "a" + value}.get(
                    template, value.rstrip("\n") + "x")  # $(…) drops trailing newlines, as shells do
                assert result.ok and result.stdout == expected, result
            issue = ssh.run(host, render_shell('printf "%s\\n" "$$(cat "${data_dir}/x")"', host))
            assert issue.stderr.startswith("cat: "), issue  # cat was given the literal path (no such file)
    assert not marker.exists()
