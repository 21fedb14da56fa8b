"""Model references: ``NAME@ALIAS`` or ``NAME/VERSION`` (an optional ``models:/`` prefix is
accepted), plus the rules for model, alias and tag names.

>>> parse_ref("sc-seg@champion")
Ref(name='sc-seg', version=None, alias='champion')
>>> str(parse_ref("models:/sc-seg/12"))
'sc-seg/12'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")
_VERSION_LIKE = re.compile(r"^[vV]\d+$")
_TAG_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/: ]{0,249}$")

#: Tag-key prefixes written only by cordwatch itself (never by ``--tag``).
RESERVED_TAG_PREFIXES = ("cordwatch.", "mlflow.")


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of ``version`` and ``alias`` is set."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


def check_model_name(name: str) -> str:
    """A registered-model name usable in refs: letters, digits, ``._+-``; no ``/`` or ``@``."""
    if not _NAME.match(name or ""):
        raise InputError(
            "invalid model name: use letters, digits and . _ + - (no '/', '@' or spaces), "
            "starting with a letter or digit",
            name or "''",
        )
    return name


def check_alias(alias: str) -> str:
    """An alias name MLflow accepts: letters, digits, ``_-``; not ``latest``, not ``v<N>``.

    >>> check_alias("champion")
    'champion'
    """
    if not _ALIAS.match(alias or "") or alias.lower() == "latest" or _VERSION_LIKE.match(alias):
        raise InputError(
            "invalid alias: use letters, digits, _ and -, starting with a letter; "
            "'latest' and v<N> are reserved",
            alias or "''",
        )
    return alias


def check_tag_key(key: str, *, allow_reserved: bool = False) -> str:
    """A user tag key; ``cordwatch.*`` and ``mlflow.*`` are reserved unless allowed."""
    if not _TAG_KEY.match(key or ""):
        raise InputError("invalid tag key", key or "''")
    if not allow_reserved and key.lower().startswith(RESERVED_TAG_PREFIXES):
        raise InputError("tag keys starting with 'cordwatch.' or 'mlflow.' are reserved", key)
    return key


def parse_tag(text: str) -> tuple[str, str]:
    """``K=V`` -> (K, V); the value may contain ``=`` and may be empty.

    >>> parse_tag("task=spinal cord")
    ('task', 'spinal cord')
    """
    key, sep, value = text.partition("=")
    if not sep:
        raise InputError("a tag must look like KEY=VALUE", text)
    return check_tag_key(key.strip()), value


def parse_ref(text: str) -> Ref:
    """Parse ``NAME@ALIAS`` or ``NAME/VERSION`` (VERSION a positive integer)."""
    raw = text.strip()
    body = raw.removeprefix("models:/")
    if "@" in body:
        name, _, alias = body.partition("@")
        return Ref(check_model_name(name), alias=check_alias(alias))
    name, sep, version = body.partition("/")
    if not sep or not version.isdigit() or int(version) < 1:
        raise InputError("expected NAME@ALIAS or NAME/VERSION (a positive integer)", raw or "''")
    return Ref(check_model_name(name), version=int(version))
