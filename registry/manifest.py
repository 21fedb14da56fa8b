"""The sha256 manifest of a model package, and the checks of a folder against it.

A manifest lists every file of a package (POSIX relative path, size, sha256), sorted by
path. Its canonical serialisation (``Manifest.to_bytes``: sorted keys, two-space indent,
ASCII, final newline) is what is stored as ``cordwatch_manifest.json``; the *package sha256*
is the sha256 of those bytes. So the manifest file authenticates itself against the one
value kept in the registry's database (tag ``cordwatch.sha256``), and every file is checked
against the manifest before anything is loaded.

>>> m = Manifest((FileEntry("dataset.json", 2, "44136fa355b3678a1146ad16f7e8649e"
...                         "94fb4fc21fe77e8310c060f61caaff8a"),))
>>> m.total_bytes, len(m.sha256)
(2, 64)
>>> Manifest.from_bytes(m.to_bytes()) == m
True
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from registry.errors import InputError, IntegrityError
from registry.fsutil import sha256_file

MANIFEST_NAME = "cordwatch_manifest.json"
MANIFEST_FORMAT = "cordwatch-manifest/1"
#: Files that never belong to a package (desktop litter); skipped on import.
JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db"})


@dataclass(frozen=True, order=True)
class FileEntry:
    """One file of a package."""

    path: str
    size: int
    sha256: str


def _safe_relpath(path: str) -> bool:
    p = PurePosixPath(path)
    return (
        bool(path)
        and not p.is_absolute()
        and "\\" not in path
        and all(part not in ("", ".", "..") for part in path.split("/"))
    )


@dataclass(frozen=True)
class Manifest:
    """Every file of a package, sorted by path."""

    files: tuple[FileEntry, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(sorted(self.files)))

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }

    def to_bytes(self) -> bytes:
        return (
            json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=True) + "\n"
        ).encode()

    @property
    def sha256(self) -> str:
        """The package sha256: sha256 of the canonical manifest bytes."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str | Path = MANIFEST_NAME) -> Manifest:
        """Parse a stored manifest; a malformed one is an IntegrityError naming ``origin``."""
        try:
            obj = json.loads(data)
            if obj.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"unknown format {obj.get('format')!r}")
            files = []
            for item in obj["files"]:
                path, size, digest = str(item["path"]), int(item["size"]), str(item["sha256"])
                if not _safe_relpath(path) or size < 0 or len(digest) != 64:
                    raise ValueError(f"bad entry {item!r}")
                files.append(FileEntry(path, size, digest))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise IntegrityError(f"malformed package manifest: {err}", origin) from err
        if len({f.path for f in files}) != len(files):
            raise IntegrityError("malformed package manifest: duplicate paths", origin)
        return cls(tuple(files))


def package_files(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file under ``root``, sorted.

    Symbolic links and special files are refused (InputError naming them): a package is
    plain files, and a link could point anywhere.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            full = here / name
            mode = full.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise InputError("symbolic links are not allowed in a model package", full)
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise InputError("special files are not allowed in a model package", full)
        for name in filenames:
            if name not in JUNK_NAMES:
                found.append((here / name).relative_to(root).as_posix())
    return sorted(found)


def build_manifest(root: Path, skip: Iterable[str] = ()) -> Manifest:
    """Hash every file under ``root`` (except the relative paths in ``skip``)."""
    skipped = set(skip)
    entries = []
    for rel in package_files(root):
        if rel in skipped:
            continue
        full = root / rel
        entries.append(FileEntry(rel, full.stat().st_size, sha256_file(full)))
    return Manifest(tuple(entries))


def verify_tree(root: Path, manifest: Manifest, *, extra_allowed: Iterable[str] = ()) -> None:
    """Check that ``root`` holds exactly the manifest's files with their sizes and hashes.

    Raises IntegrityError naming the first offending file: missing, unexpected (an added
    file could be loaded as an extra fold), truncated/extended, or different content.
    Sizes are compared for all files before any file is hashed.
    """
    allowed = set(extra_allowed)
    try:
        present = set(package_files(root))
    except InputError as err:
        raise IntegrityError(err.message, err.path) from err
    expected = manifest.by_path()
    for rel in sorted(set(expected) - present):
        raise IntegrityError("missing from the package (listed in its manifest)", root / rel)
    for rel in sorted(present - set(expected) - allowed):
        raise IntegrityError("not in the package manifest (unexpected file)", root / rel)
    for entry in manifest.files:
        size = (root / entry.path).stat().st_size
        if size != entry.size:
            raise IntegrityError(
                f"size {size} bytes, manifest says {entry.size} (truncated or altered)",
                root / entry.path,
            )
    for entry in manifest.files:
        digest = sha256_file(root / entry.path)
        if digest != entry.sha256:
            raise IntegrityError(
                f"sha256 {digest[:12]}... does not match the manifest ({entry.sha256[:12]}...)",
                root / entry.path,
            )


def read_verified_manifest(path: Path, expected_sha256: str) -> Manifest:
    """Read a stored manifest file and check it against the registry's package sha256."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise IntegrityError(f"cannot read the package manifest: {err.strerror}", path) from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise IntegrityError(
            f"manifest sha256 {digest[:12]}... does not match the registry's package sha256 "
            f"({expected_sha256[:12]}...)",
            path,
        )
    return Manifest.from_bytes(data, path)
