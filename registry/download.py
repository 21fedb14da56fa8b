"""Download a release asset for registration: through a size limit, verified before use.

``cordwatch models register NAME URL --sha256 HEX`` is the release-asset path of the
workflows. The body is streamed to a file in a private folder while it is hashed and counted;
a body larger than the limit (``CORDWATCH_DOWNLOAD_MAX_BYTES``, default 8 GiB; a declared
Content-Length is checked first) is refused without reading on, and a sha256 that differs from
the given one is refused before anything is unpacked: the file is removed and nothing reaches
the registry. Only ``http`` and ``https`` URLs are accepted (no ``file:``, no ``ftp:``).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from registry.errors import InputError, IntegrityError, RegistryError

DEFAULT_MAX_BYTES = 8 << 30
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


def is_url(text: str) -> bool:
    """Whether a package argument is a URL (``http://`` or ``https://``)."""
    return text.lower().startswith(("http://", "https://"))


def max_bytes_from_env() -> int:
    """``CORDWATCH_DOWNLOAD_MAX_BYTES`` or the default (8 GiB)."""
    raw = os.environ.get("CORDWATCH_DOWNLOAD_MAX_BYTES")
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError as err:
        raise InputError(f"CORDWATCH_DOWNLOAD_MAX_BYTES must be an integer, not {raw!r}") from err
    if value <= 0:
        raise InputError("CORDWATCH_DOWNLOAD_MAX_BYTES must be positive")
    return value


def check_sha256(value: str) -> str:
    """A sha256 given on the command line, lower-cased, or InputError."""
    if not _SHA256.match(value.strip()):
        raise InputError(f"--sha256 must be 64 hexadecimal digits, not {value!r}")
    return value.strip().lower()


def asset_name(url: str) -> str:
    """A safe local file name for the asset (its URL's last path segment).

    >>> asset_name("https://github.com/o/r/releases/download/v4.0/model_20260628.zip?x=1")
    'model_20260628.zip'
    """
    path = urllib.parse.urlsplit(url).path
    name = _SAFE_NAME.sub("_", urllib.parse.unquote(path.rsplit("/", 1)[-1]))
    name = name.lstrip(".") or "package"
    return name if name.lower().endswith(".zip") else name + ".zip"


@dataclass(frozen=True)
class Downloaded:
    """A verified download."""

    url: str
    path: Path
    sha256: str
    size: int


def download(
    url: str,
    sha256: str,
    dest_dir: Path,
    *,
    max_bytes: int | None = None,
    timeout_s: float = 60.0,
) -> Downloaded:
    """Stream ``url`` into ``dest_dir`` (a new file); return it once its sha256 matches.

    Raises InputError (bad URL, too large), RegistryError (network, HTTP status) or
    IntegrityError (sha256 mismatch); in every case the partial file is removed.
    """
    expected = check_sha256(sha256)
    limit = max_bytes_from_env() if max_bytes is None else int(max_bytes)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError("only http:// and https:// URLs can be downloaded", url)
    target = Path(dest_dir) / asset_name(url)
    if target.exists():
        raise InputError("download target exists already", target)
    request = urllib.request.Request(url, headers={"User-Agent": "cordwatch"})
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise InputError(
                    f"download is {int(declared)} bytes, over the limit of {limit} "
                    "(CORDWATCH_DOWNLOAD_MAX_BYTES)",
                    url,
                )
            with open(target, "xb") as out:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise InputError(
                            f"download exceeds the limit of {limit} bytes "
                            "(CORDWATCH_DOWNLOAD_MAX_BYTES)",
                            url,
                        )
                    digest.update(chunk)
                    out.write(chunk)
    except (InputError, IntegrityError):
        target.unlink(missing_ok=True)
        raise
    except urllib.error.HTTPError as err:
        target.unlink(missing_ok=True)
        raise RegistryError(f"download failed: HTTP {err.code} {err.reason}", url) from err
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        target.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise RegistryError(f"download failed: {reason}", url) from err
    actual = digest.hexdigest()
    if actual != expected:
        target.unlink(missing_ok=True)
        raise IntegrityError(
            f"sha256 {actual[:12]}... does not match the given {expected[:12]}... "
            "(nothing was unpacked or registered)",
            url,
        )
    return Downloaded(url, target, actual, size)
