"""The approver directory (`approvers.yaml`): who may approve at all, by name, with their Slack id.

Why a directory: an approval counts only from an identity medic can verify, and identities must be
the same whichever way a person decides — alice clicking in Slack and alice running `medic approve`
are one approver, so N-of-M counts people, not channels. Each entry is a `name` (the identity shown on
cards, reports and the audit log) and an optional `slack_id`. Removing an entry revokes that person
at once: every decision is checked against the file as it is when the decision arrives.

    approvers:
      - name: alice
        slack_id: U0ALICE
      - name: bob

A runbook's `approval.approvers` names entries of this file (a Slack id is accepted and mapped to its
entry); `approval.approver_group` (a Slack user group) admits the entries whose `slack_id` is a member.
A policy naming nobody admits every entry (`medic validate` warns about it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medic.core.spec_file import validation_error
from medic.errors import ConfigError, RunbookError

__all__ = ["Approver", "ApproverDirectory", "allowed_names", "load_directory", "unknown_approvers"]

#: Names travel in HMAC messages, Prefect variable names (hashed) and audit lines: keep them plain.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class Approver(BaseModel):
    """One person who may approve: the identity medic issues a credential to."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="the identity: lowercase letters, digits, . _ -")
    slack_id: str | None = Field(None, pattern=r"^[UW][A-Z0-9]{2,}$", description="their Slack user id")


class ApproverDirectory(BaseModel):
    """Every approver of this site; names and Slack ids are unique."""

    model_config = ConfigDict(extra="forbid")

    approvers: list[Approver] = Field(default_factory=list)
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> "ApproverDirectory":
        for attr in ("name", "slack_id"):
            seen: set[str] = set()
            for entry in self.approvers:
                value = getattr(entry, attr)
                if value is not None and value in seen:
                    raise ValueError(f"{attr} {value!r} appears twice")
                seen.add(value)
        return self

    def get(self, name: str) -> Approver | None:
        return next((a for a in self.approvers if a.name == name), None)

    def by_slack_id(self, user_id: str) -> Approver | None:
        return next((a for a in self.approvers if a.slack_id == user_id), None)

    def resolve(self, entry: str) -> str | None:
        """A runbook's approvers entry (a name or a Slack id) → the directory name, None if unknown."""
        found = self.get(entry) or self.by_slack_id(entry)
        return found.name if found else None


def load_directory(path: Path) -> ApproverDirectory:
    """Read and validate `approvers.yaml`; a missing file is an empty directory (nobody may approve)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ApproverDirectory(source=path)
    except OSError as exc:
        raise ConfigError(f"cannot read the approver directory {path}: {exc.strerror}; "
                          f"fix its permissions or point MEDIC_APPROVERS_FILE elsewhere") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RunbookError(f"not valid YAML: {exc}", file=str(path), expected="approvers: [{name, slack_id}]") from exc
    if not isinstance(data, dict):
        raise RunbookError("the approver directory must be a YAML mapping", file=str(path), line=1,
                           expected="approvers: [{name, slack_id}]", found=type(data).__name__)
    try:
        directory = ApproverDirectory.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, text=text, file=str(path)) from None
    directory.source = path
    return directory


def unknown_approvers(approvers: list[str], directory: ApproverDirectory) -> list[str]:
    """The entries of a runbook's `approval.approvers` that name nobody in the directory."""
    return [entry for entry in approvers if directory.resolve(entry) is None]


def allowed_names(approvers: list[str], approver_group: str | None, directory: ApproverDirectory,
                  group_members: Callable[[str], set[str] | None] | None = None) -> set[str]:
    """The directory names a policy admits: its named approvers, the members of its Slack group that
    are in the directory, or — naming nobody — every entry. Unknown entries admit nobody."""
    if not approvers and not approver_group:
        return {a.name for a in directory.approvers}
    names = {name for name in (directory.resolve(e) for e in approvers) if name}
    if approver_group and group_members is not None:
        members = group_members(approver_group) or set()
        names |= {a.name for a in directory.approvers if a.slack_id and a.slack_id in members}
    return names
