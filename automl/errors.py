"""The one error type users see: a single line naming the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input from the user. The CLI prints it as one line and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | Path | None = None, key: str | None = None,
                 fix: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.key = key
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        where = ": ".join(part for part in (self.file, self.key and f"key '{self.key}'") if part)
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text = f"{text} (fix: {self.fix})"
        return " ".join(text.split())  # always one line, whatever the pieces held


class RunFailed(UserError):
    """A job crashed (not the user's input): one line naming where to look, exit code 1."""

    exit_code = 1


def require_at_least(key: str, value: float | None, minimum: float, fix: str | None = None) -> None:
    """A count, size or budget below its minimum (zero or negative) is a user error naming the option."""
    if value is not None and value < minimum:
        raise UserError(f"{key} must be at least {minimum}, got {value}", key=key, fix=fix)


def require_positive(key: str, value: float | None, fix: str | None = None) -> None:
    if value is not None and not value > 0:
        raise UserError(f"{key} must be a positive number, got {value}", key=key, fix=fix)
