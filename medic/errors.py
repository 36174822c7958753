"""The one exception tree of medic, and the exit code each branch means.

Exceptions are for medic's own faults (a bad spec, a missing lab, Prometheus down). A remote command
or playbook that fails is a *result*, never an exception. Every class carries the `medic` exit code
it stands for (`exit_code`); `medic.cli.main.main` maps any MedicError through it, in one place.

    MedicError                     1  a fault of medic itself (or of the lab)
    ├── InputError                 2  bad input: fix what medic was given, then run again
    │   ├── ConfigError               settings or environment are wrong (no lab, SSH key missing, bad URL)
    │   │   └── MaintenanceConfigError   a maintenance window or batch size that cannot be understood
    │   │       └── UpgradeConfigError   an upgrade parameter that is not acceptable (version, gate, limits)
    │   ├── InventoryError            the inventory file is missing or malformed
    │   │   └── UnknownTargetError    a host or group that the inventory does not have
    │   ├── UnsafeValueError          a value refused before it could reach a shell or a PromQL string
    │   │   └── LoadBalancerNameError a name refused before it reached HAProxy (also a LoadBalancerError)
    │   ├── RunbookError              a runbook spec is invalid (file, line, field, expected, found)
    │   ├── FailoverError             the cluster is not described well enough to fail it over
    │   ├── ApprovalError             an approval request or decision is invalid
    │   ├── DetectError               a detector's parameters or a metric series / NAB corpus are invalid
    │   ├── IntakeRefused             an Alertmanager webhook request medic cannot use (.status)
    │   └── SlackRequestRefused       a Slack interactivity request medic will not act on (.status)
    ├── DependencyError            5  a system medic depends on cannot be reached or is failing
    │   ├── PrefectError              the Prefect API cannot be reached or refused a request
    │   ├── PrometheusError           Prometheus cannot answer
    │   │   ├── PrometheusUnreachable no HTTP answer from Prometheus
    │   │   └── PromQLError        2  Prometheus rejected a query: fix the query (its error text is kept)
    │   ├── AlertmanagerError         Alertmanager cannot be reached or refused a request
    │   ├── LoadBalancerError         HAProxy's runtime API cannot be reached or refused a command
    │   ├── PostgresError             a PostgreSQL check could not run at all (e.g. no psql)
    │   ├── AnsibleError              ansible-runner could not start a playbook at all
    │   └── SlackError                Slack refused a request after retries
    ├── LabError                   1  the ops lab cannot start, stop or inject a fault
    │   └── PortInUseError            a lab port is taken by another process
    └── WaitTimeout                1  a bounded wait ran out (says what it waited for, what it last saw)

Exit codes (README, "Exit codes of `medic run`"): 0 recovered / not needed / dry run, 1 failed,
2 bad input, 3 rejected / approval timed out, 4 already running, 5 a dependency unreachable.
Outcomes of a run map to the same codes (`medic.core.report.Outcome.exit_code`).

Every message says what failed, where, and what to do.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What the `medic` command's exit status means (the README's table)."""

    OK = 0  # recovered, not needed, dry run; the command did what was asked
    FAILED = 1  # the run failed or did not recover; or a fault of medic itself
    BAD_INPUT = 2  # unknown runbook/target, unsafe name, invalid spec or settings, bad arguments
    NOT_APPROVED = 3  # rejected by a human, or no decision before the approval timeout
    ALREADY_RUNNING = 4  # another run of the same runbook on the same target holds the slot
    DEPENDENCY = 5  # Prefect, Prometheus, Alertmanager, HAProxy, Ansible … unreachable or failing


class MedicError(Exception):
    """Base of every error medic raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILED


# --- bad input ------------------------------------------------------------------------------------


class InputError(MedicError):
    """Bad input: what medic was given (arguments, settings, inventory, specs) is wrong; fix it."""

    exit_code = ExitCode.BAD_INPUT


class ConfigError(InputError):
    """Settings or the environment are wrong."""


class MaintenanceConfigError(ConfigError):
    """A maintenance window or batch size that cannot be understood."""


class UpgradeConfigError(MaintenanceConfigError):
    """An upgrade parameter that is not acceptable (unknown version, bad gate or limits)."""


class InventoryError(InputError):
    """The inventory file is missing or malformed."""


class UnknownTargetError(InventoryError):
    """A host or group that is not in the inventory."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        shown = ", ".join(known[:12]) + (" …" if len(known) > 12 else "")
        super().__init__(f"unknown target {name!r}: not a host or group of the inventory (known: {shown})")


class UnsafeValueError(InputError):
    """A value that would reach a shell or PromQL string was refused."""


class RunbookError(InputError):
    """A runbook spec is invalid. Carries where (file, line, field) and what was expected/found."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        found: str | None = None,
    ) -> None:
        self.file, self.line, self.field = file, line, field
        self.expected, self.found = expected, found
        where = file or "<runbook>"
        if line is not None:
            where += f":{line}"
        parts = [f"{where}: {message}"]
        if field:
            parts.append(f"field: {field}")
        if expected:
            parts.append(f"expected: {expected}")
        if found is not None:
            parts.append(f"found: {found}")
        super().__init__("; ".join(parts))


class FailoverError(InputError):
    """The failover cannot even start: the cluster is not described well enough in the inventory."""


class ApprovalError(InputError):
    """An approval request or decision is invalid."""


class DetectError(InputError):
    """A detector's parameters, or a metric series / NAB corpus it was given, are invalid."""


class IntakeRefused(InputError):
    """An Alertmanager webhook request medic cannot use; `status` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


class SlackRequestRefused(InputError):
    """An interactivity request medic will not act on; ``status`` is the HTTP answer to give Slack."""

    def __init__(self, *, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"Slack request refused (HTTP {status}): {reason}")


# --- a dependency unreachable or failing ----------------------------------------------------------


class DependencyError(MedicError):
    """A system medic depends on cannot be reached or is failing; the message names it and its address."""

    exit_code = ExitCode.DEPENDENCY


class StateDiskError(DependencyError):
    """medic's own state directory (this machine's disk) refused a write; the message names the path."""


class PrefectError(DependencyError):
    """The Prefect API cannot be reached or refused a request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status Prefect answered, when it answered


class PrometheusError(DependencyError):
    """Prometheus cannot answer."""


class PrometheusUnreachable(PrometheusError):
    """No usable answer from Prometheus yet: unreachable, timed out, or not ready (502/503/504). Retried."""


class PromQLError(PrometheusError):
    """Prometheus rejected the query; the message carries its own error text. Bad input: fix the query."""

    exit_code = ExitCode.BAD_INPUT


class AlertmanagerError(DependencyError):
    """Alertmanager cannot be reached or refused a request (its own error text is kept)."""


class LoadBalancerError(DependencyError):
    """HAProxy's runtime API cannot be reached, or it refused a command (its own words are kept)."""


class LoadBalancerNameError(LoadBalancerError, UnsafeValueError):
    """A backend/server name or address refused before it could reach the runtime API."""

    exit_code = ExitCode.BAD_INPUT


class PostgresError(DependencyError):
    """medic could not run a PostgreSQL check at all (e.g. no psql); a failed check is a result."""


class AnsibleError(DependencyError):
    """ansible-runner could not start a playbook at all (not: a playbook that failed)."""


class SlackError(DependencyError):
    """Slack refused a request after retries."""


# --- medic's own faults ---------------------------------------------------------------------------


class LabError(MedicError):
    """The ops lab cannot start, stop or inject a fault."""


class PortInUseError(LabError):
    """A port the lab needs is already taken."""

    def __init__(self, component: str, port: int) -> None:
        self.component = component
        self.port = port
        super().__init__(
            f"port 127.0.0.1:{port} needed by {component} is already in use; stop what holds it "
            f"(`ss -ltnp 'sport = :{port}'`) or move the lab with MEDIC_LAB_BASE_PORT"
        )


class WaitTimeout(MedicError):
    """A bounded wait (`medic.core.polling.wait_until`) ran out; says what it waited for and last saw."""
