"""Values that reach a playbook are data, never Jinja; a playbook sees none of medic's secrets.

Real ansible-playbook runs against the lab hosts (tests/playbooks/echo_vars.yml and the real
cleanup playbook). Without `!unsafe`, `{{ lookup('pipe', 'touch …') }}` in an extra var runs the
touch on the controller (checked by hand with plain `-e` JSON on ansible-core 2.19)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from medic.clients.ansible import run_playbook
from medic.clients.ansible_env import clean_env, unsafe_yaml
from medic.core.inventory import Host, load_inventory
from medic.errors import AnsibleError
from medic.settings import get_settings
from medic_lab.state import LabState

PLAYBOOKS = Path(__file__).parents[1] / "playbooks"


@pytest.fixture
def web1(lab: LabState) -> Host:
    return load_inventory().host("web-1")


def lookup_pipe(marker: Path) -> str:
    return "{{ lookup('pipe', 'touch " + str(marker) + "') }}"


def test_a_jinja_value_arrives_verbatim_and_runs_nothing(lab: LabState, web1: Host, tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex[:6]}"
    evil = lookup_pipe(marker)
    odd = "quotes ' \" {% raw %} ${x} $(id) `id` \\ ü\nsecond line\t"
    result = run_playbook(PLAYBOOKS / "echo_vars.yml", hosts=[web1],
                          extravars={"value": evil, "values": [evil, odd, 3, True], "mapping": {"k": evil}})
    values = result.hosts["web-1"].return_values
    assert result.ok, result
    assert values["value"] == evil
    assert values["values"] == [evil, odd, 3, True]
    assert values["mapping"] == {"k": evil}
    assert not marker.exists()


def test_the_cleanup_playbook_takes_a_jinja_pattern_as_a_glob(lab: LabState, web1: Host, tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex[:6]}"
    result = run_playbook(get_settings().playbooks_dir / "cleanup-data-dir.yml", hosts=[web1],
                          extravars={"cleanup_patterns": lookup_pipe(marker), "cleanup_min_age": "1d"})
    assert result.ok, result
    assert result.hosts["web-1"].return_values["files_deleted"] in ("0", 0)
    assert not marker.exists()


def test_the_playbook_sees_no_medic_prefect_or_slack_variable(lab: LabState, web1: Host,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEDIC_H2_CANARY", "PREFECT_H2_CANARY", "SLACK_H2_CANARY"):
        monkeypatch.setenv(name, "SECRET-CANARY-visible")
    values = run_playbook(PLAYBOOKS / "echo_vars.yml", hosts=[web1]).hosts["web-1"].return_values
    assert (values["env_medic"], values["env_prefect"], values["env_slack"]) == ("", "", "")
    assert values["env_home"]  # what a playbook needs still arrives


def test_clean_env_keeps_the_allowlist_only() -> None:
    env = {"PATH": "/bin", "HOME": "/root", "LC_ALL": "C", "ANSIBLE_NOCOLOR": "1", "RUNNER_OMIT_EVENTS": "False",
           "MEDIC_SLACK_BOT_TOKEN": "x", "PREFECT_API_AUTH_STRING": "x", "SLACK_TOKEN": "x", "AWS_SECRET": "x",
           "medic_lower": "x"}
    assert clean_env(env) == {"PATH": "/bin", "HOME": "/root", "LC_ALL": "C", "ANSIBLE_NOCOLOR": "1",
                              "RUNNER_OMIT_EVENTS": "False"}


def test_extra_var_names_must_be_variable_names() -> None:
    with pytest.raises(AnsibleError, match=r"extra var name 'a b' is refused"):
        unsafe_yaml({"a b": "x"})
    assert unsafe_yaml({"n": 1, "s": "{{ x }}"}) == 'n: 1\ns: !unsafe "{{ x }}"\n'


def test_without_the_allowlist_ansible_runner_would_write_the_environment(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Why clean_env exists: ansible-runner prepares the run with a copy of our whole environment,
    which it writes to artifacts/<ident>/command."""
    import ansible_runner

    monkeypatch.setenv("MEDIC_SLACK_BOT_TOKEN", "SECRET-CANARY-prepared")
    runner = ansible_runner.interface.init_runner(private_data_dir=str(tmp_path), playbook=str(PLAYBOOKS / "fail.yml"),
                                                  inventory="localhost,", suppress_env_files=True, quiet=True)
    assert runner.config.env["MEDIC_SLACK_BOT_TOKEN"] == "SECRET-CANARY-prepared"
    assert "MEDIC_SLACK_BOT_TOKEN" not in clean_env(runner.config.env)
