"""The one exception hierarchy of cordwatch, mapped to exit codes at the CLI boundary.

Exit codes (STYLE.md): 0 pass/success, 1 drift gate failed, 2 bad input / usage / infrastructure.
Every error names the file (or registry object) it is about and says what is wrong in one line.
"""

from __future__ import annotations

from pathlib import Path


class CordwatchError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(CordwatchError):
    """A file or argument given by the user is missing, unreadable or invalid."""


class IntegrityError(CordwatchError):
    """A file does not match its recorded sha256 (tampered, truncated, or a different file)."""


class RegistryError(CordwatchError):
    """The registry is unreachable or does not hold what was asked for."""


class UnsafeArchiveError(InputError):
    """A zip archive tries path traversal, links, duplicate names or a decompression bomb."""


class GateFailed(CordwatchError):
    """The drift gate's verdict is fail."""

    exit_code = 1
