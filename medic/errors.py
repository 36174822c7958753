"""The one exception tree of medic.

Exceptions are for medic's own faults (a bad spec, a missing lab, Prometheus down). A remote command
or playbook that fails is a *result*, never an exception.

    MedicError
    ├── ConfigError            settings or environment are wrong (no lab, not root, bad URL)
    ├── LabError               the ops lab cannot start, stop or inject a fault
    │   └── PortInUseError     a lab port is taken by another process
    ├── InventoryError         the inventory file is missing or malformed
    │   └── UnknownTargetError a host or group that the inventory does not have
    ├── UnsafeValueError       a value refused before it could reach a shell or a PromQL string
    ├── RunbookError           a runbook spec is invalid (file, line, field, expected, found)
    ├── PrometheusError        Prometheus cannot answer
    │   ├── PrometheusUnreachable
    │   └── PromQLError        Prometheus rejected the query (its own error text is kept)
    ├── AnsibleError           ansible-runner could not start a playbook at all
    ├── PrefectError           the Prefect API cannot be reached or refused a request
    ├── ApprovalError          an approval request or decision is invalid
    └── SlackError             Slack refused a request after retries

Every message says what failed, where, and what to do.
"""

from __future__ import annotations


class MedicError(Exception):
    """Base of every error medic raises on purpose."""


class ConfigError(MedicError):
    """Settings or the environment are wrong."""


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


class InventoryError(MedicError):
    """The inventory file is missing or malformed."""


class UnknownTargetError(InventoryError):
    """A host or group that is not in the inventory."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        shown = ", ".join(known[:12]) + (" …" if len(known) > 12 else "")
        super().__init__(f"unknown target {name!r}: not a host or group of the inventory (known: {shown})")


class UnsafeValueError(MedicError):
    """A value that would reach a shell or PromQL string was refused."""


class RunbookError(MedicError):
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


class PrometheusError(MedicError):
    """Prometheus cannot answer."""


class PrometheusUnreachable(PrometheusError):
    """No HTTP answer from Prometheus."""


class PromQLError(PrometheusError):
    """Prometheus rejected the query; the message carries its own error text."""


class AnsibleError(MedicError):
    """ansible-runner could not start a playbook at all (not: a playbook that failed)."""


class PrefectError(MedicError):
    """The Prefect API cannot be reached or refused a request."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status Prefect answered, when it answered


class ApprovalError(MedicError):
    """An approval request or decision is invalid."""


class SlackError(MedicError):
    """Slack refused a request after retries."""
