"""Safe import of release zips: every entry is checked before a single byte is written.

Refused (``UnsafeArchiveError``, one line naming the archive and the entry):

- path traversal: absolute names, drive letters, ``..`` components, backslashes, NUL bytes;
- symbolic links and other special files (Unix mode bits in the entry);
- duplicate names, also names equal up to case, and a file that is also a directory;
- encrypted entries;
- bombs: more than ``max_files`` entries, more than ``max_total_bytes`` uncompressed (all
  entries together), an entry larger than ``ratio_min_bytes`` that expands more than
  ``max_ratio`` times, an archive whose entries together expand more than
  ``max_ratio_total`` times its size (many small entries, each under the per-entry
  threshold), and entries whose data overlap (the "better zip bomb" construction).

Limits come from :class:`ZipLimits` (defaults below; ``CORDWATCH_ZIP_MAX_BYTES``,
``CORDWATCH_ZIP_MAX_FILES``, ``CORDWATCH_ZIP_MAX_RATIO`` and
``CORDWATCH_ZIP_MAX_TOTAL_RATIO`` override them). While
extracting, the bytes actually written are counted against the declared sizes, and zipfile's
CRC check catches corrupt data.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from registry.errors import InputError, UnsafeArchiveError
from registry.manifest import JUNK_NAMES

_GiB = 1 << 30
_MiB = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
#: Directories that archivers add and that never belong to a package.
JUNK_DIRS = frozenset({"__MACOSX"})


@dataclass(frozen=True)
class ZipLimits:
    """Upper bounds for one archive (an nnU-Net 5-fold package is about 1-2 GB)."""

    max_total_bytes: int = 16 * _GiB
    max_files: int = 10_000
    max_ratio: float = 200.0
    ratio_min_bytes: int = _MiB
    #: Whole archive: uncompressed total / archive size (checkpoints of float weights
    #: compress about 1.1 times; JSON plans and logs more, but they are small).
    max_ratio_total: float = 50.0
    ratio_total_min_bytes: int = 16 * _MiB

    @classmethod
    def from_env(cls) -> ZipLimits:
        """Defaults, overridden by ``CORDWATCH_ZIP_MAX_BYTES/_FILES/_RATIO`` when set."""
        base = cls()
        try:
            return cls(
                max_total_bytes=int(
                    os.environ.get("CORDWATCH_ZIP_MAX_BYTES", base.max_total_bytes)
                ),
                max_files=int(os.environ.get("CORDWATCH_ZIP_MAX_FILES", base.max_files)),
                max_ratio=float(os.environ.get("CORDWATCH_ZIP_MAX_RATIO", base.max_ratio)),
                ratio_min_bytes=base.ratio_min_bytes,
                max_ratio_total=float(
                    os.environ.get("CORDWATCH_ZIP_MAX_TOTAL_RATIO", base.max_ratio_total)
                ),
                ratio_total_min_bytes=base.ratio_total_min_bytes,
            )
        except ValueError as err:
            raise InputError(f"bad zip limit in the environment: {err}") from err


def _member_path(info: zipfile.ZipInfo, archive: Path) -> tuple[str, ...]:
    """The entry's path components, or UnsafeArchiveError."""
    raw = info.orig_filename
    name = info.filename

    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"entry {raw!r}: {why}", archive)

    if "\x00" in raw:
        raise refuse("NUL byte in the name")
    if "\\" in name:
        raise refuse("backslash in the name (path separator on Windows)")
    if name.startswith("/") or _DRIVE.match(name):
        raise refuse("absolute path")
    parts = [p for p in name.rstrip("/").split("/") if p != "."]
    if ".." in parts:
        raise refuse("path traversal ('..')")
    if not parts or "" in parts:
        raise refuse("empty path component")
    return tuple(parts)


def _entry_kind(info: zipfile.ZipInfo) -> str:
    """``file``, ``dir`` or the name of a refused special type."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if info.create_system == 3 and kind:  # Unix mode bits present
        if stat.S_ISLNK(mode):
            return "symbolic link"
        if stat.S_ISDIR(mode):
            return "dir"
        if not stat.S_ISREG(mode):
            return "special file"
    return "dir" if info.is_dir() else "file"


def check_zip(path: Path, limits: ZipLimits | None = None) -> list[tuple[zipfile.ZipInfo, str]]:
    """Validate every entry of ``path``; return (entry, relative path) for the files to extract.

    Raises InputError when ``path`` is not a readable zip and UnsafeArchiveError when an entry
    is refused. Junk (``__MACOSX/``, ``.DS_Store``) is checked like the rest, then left out.
    """
    limits = limits or ZipLimits.from_env()
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            start_dir = getattr(zf, "start_dir", None)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise InputError(f"not a readable zip archive: {err}", path) from err

    if len(infos) > limits.max_files:
        raise UnsafeArchiveError(
            f"{len(infos)} entries, more than the limit of {limits.max_files}", path
        )
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(
            f"uncompressed size {total} bytes exceeds the limit of {limits.max_total_bytes}", path
        )
    archive_bytes = max(path.stat().st_size, 1)
    if total > limits.ratio_total_min_bytes and total > limits.max_ratio_total * archive_bytes:
        raise UnsafeArchiveError(
            f"{len(infos)} entries expand {total / archive_bytes:.0f} times overall "
            f"({total} bytes from {archive_bytes}; limit {limits.max_ratio_total:.0f}): "
            "decompression bomb",
            path,
        )

    seen: dict[str, str] = {}  # lower-case path -> path
    dirs: set[str] = set()
    files: list[tuple[zipfile.ZipInfo, str]] = []
    for info in infos:
        parts = _member_path(info, path)
        rel = "/".join(parts)
        kind = _entry_kind(info)
        if kind not in ("file", "dir"):
            raise UnsafeArchiveError(f"entry {info.filename!r}: {kind} not allowed", path)
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"entry {info.filename!r}: encrypted", path)
        key = rel.lower()
        if key in seen and not (kind == "dir" and key in dirs):
            raise UnsafeArchiveError(f"entry {info.filename!r}: duplicate name", path)
        seen[key] = rel
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]).lower())
        if kind == "dir":
            dirs.add(key)
            continue
        if info.file_size > limits.ratio_min_bytes and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise UnsafeArchiveError(
                f"entry {info.filename!r}: expands "
                f"{info.file_size / max(info.compress_size, 1):.0f} times "
                f"(limit {limits.max_ratio:.0f}): decompression bomb",
                path,
            )
        if parts[0] in JUNK_DIRS or parts[-1] in JUNK_NAMES:
            continue
        files.append((info, rel))
    clash = sorted({f.lower() for _, f in files} & dirs)
    if clash:
        raise UnsafeArchiveError(f"entry {seen[clash[0]]!r} is both a file and a directory", path)
    _check_no_overlap(infos, start_dir, path)
    return files


def _check_no_overlap(infos: list[zipfile.ZipInfo], start_dir: int | None, path: Path) -> None:
    """Refuse entries whose compressed data overlap (lower bound of each entry's extent)."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for here, nxt in itertools.pairwise(ordered):
        end = here.header_offset + 30 + len(here.orig_filename.encode()) + here.compress_size
        if nxt.header_offset < end:
            raise UnsafeArchiveError(
                f"entries {here.filename!r} and {nxt.filename!r} overlap: decompression bomb",
                path,
            )
    if ordered and start_dir is not None:
        last = ordered[-1]
        end = last.header_offset + 30 + len(last.orig_filename.encode()) + last.compress_size
        if end > start_dir:
            raise UnsafeArchiveError(f"entry {last.filename!r} overlaps the directory", path)


def extract_zip(path: Path, dest: Path, limits: ZipLimits | None = None) -> None:
    """Check ``path`` (see :func:`check_zip`), then extract its files under ``dest``.

    ``dest`` must be an empty directory. Files are created new (never overwritten), without
    the archive's permission bits. A corrupt entry is an InputError naming it.
    """
    limits = limits or ZipLimits.from_env()
    members = check_zip(path, limits)
    dest = Path(dest)
    root = dest.resolve()
    written_total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info, rel in members:
                target = dest / rel
                if root not in target.resolve().parents:
                    raise UnsafeArchiveError(f"entry {info.filename!r} escapes the target", path)
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(target, "xb") as out:
                    while block := src.read(1 << 20):
                        written += len(block)
                        written_total += len(block)
                        if written > info.file_size or written_total > limits.max_total_bytes:
                            raise UnsafeArchiveError(
                                f"entry {info.filename!r} expands beyond its declared size", path
                            )
                        out.write(block)
                if written != info.file_size:
                    raise InputError(f"entry {info.filename!r}: truncated data", path)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as err:
        raise InputError(f"corrupt or unsupported zip entry: {err}", path) from err
