"""The one exception hierarchy of cordwatch, mapped to exit codes at the CLI boundary.

Exit codes (STYLE.md): 0 pass/success, 1 drift gate failed, 2 bad input / usage / infrastructure.
Every error names the file (or registry object) it is about and says what is wrong in one line.
"""

from __future__ import annotations

import re
from pathlib import Path

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|token|secret|access_token|api_key|apikey|key|sig|"
    r"signature|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token)=)[^&;\s]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***``.

    >>> redact("cannot reach http://user:s3cret@host:5000/x?token=abc&a=1")
    'cannot reach http://***@host:5000/x?token=***&a=1'
    >>> redact("postgresql://mlflow@db/mlflow")
    'postgresql://***@db/mlflow'
    """
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", str(text))
    return _SECRET_QUERY.sub(lambda m: m.group("key") + "***", text)


class CordwatchError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        # Credentials never reach a message: URIs of a registry may carry user:password.
        self.message = redact(message)
        self.path = None if path is None else redact(str(path))
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
