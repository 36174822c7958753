"""Result models shared by the SSH client and the reports, kept free of heavy imports (no paramiko)
so that reading or printing a report stays cheap."""

from __future__ import annotations

from pydantic import BaseModel


class CommandResult(BaseModel):
    """What one command did on one host."""

    host: str
    command: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    duration_s: float = 0.0
    error: str | None = None
    timed_out: bool = False
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0
