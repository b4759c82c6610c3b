"""Error types. A `FluxError` is a user-facing problem: the CLI prints it without a traceback."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    """One validation finding, located in a file (line or JSON path) with a hint of what to do."""

    file: str
    message: str
    line: int | None = None
    json_path: str | None = None
    hint: str | None = None
    severity: str = "error"  # "error" | "warning"
    column: int | None = None

    def location(self) -> str:
        loc = self.file
        if self.line is not None:
            loc += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        if self.json_path:
            loc += f" ({self.json_path})"
        return loc

    def render(self) -> str:
        text = f"{self.location()}: {self.severity}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class FluxError(Exception):
    """A problem the user can fix. Message names the file and what to do; no traceback is shown."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        return self.message + (f"\n  hint: {self.hint}" if self.hint else "")


@dataclass
class ValidationFailed(FluxError):
    """Raised when scanning finds errors; carries every problem found, not only the first."""

    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        errors = [p for p in self.problems if p.severity == "error"]
        FluxError.__init__(self, f"{len(errors)} error(s) in the project")

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)


class StateError(FluxError):
    """State file corrupted, of an unknown version, or moved on under a saved plan."""


class LockError(FluxError):
    """The stage is locked by another process; message carries the holder's info and lock id."""


class ProviderError(Exception):
    """A provider operation failed for good (not retried)."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


class TransientProviderError(ProviderError):
    """Throttling, 5xx, timeouts: the engine retries these with exponential backoff + jitter."""
