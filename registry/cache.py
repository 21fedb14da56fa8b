"""The content-addressed package cache: ``<CORDWATCH_HOME>/cache/packages/<package sha256>/``.

An entry holds the package files plus ``cordwatch_manifest.json``. It is created by renaming
a fully downloaded and verified temporary folder into place, so a crash never leaves a
half-written entry, and it is verified again (every file, every byte) each time it is used:
a tampered, truncated or added file is an IntegrityError naming the file. Cached files are
made read-only to discourage edits.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from registry.errors import InputError, IntegrityError
from registry.manifest import MANIFEST_NAME, Manifest, read_verified_manifest, verify_tree


def entry_dir(cache_dir: Path, sha256: str) -> Path:
    """Where the package with this sha256 lives in the cache."""
    return cache_dir / "packages" / sha256


def verify_package(folder: Path, sha256: str) -> Manifest:
    """Check ``folder`` (package files + manifest) against the registry's package sha256."""
    manifest = read_verified_manifest(folder / MANIFEST_NAME, sha256)
    verify_tree(folder, manifest, extra_allowed={MANIFEST_NAME})
    return manifest


def staging_dir(cache_dir: Path) -> Path:
    """A new empty folder on the cache's file system (for an atomic rename into place)."""
    tmp = cache_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="pull-", dir=tmp))


def _make_read_only(folder: Path) -> None:
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath) / name
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def install(staged: Path, cache_dir: Path, sha256: str) -> Path:
    """Verify ``staged`` and move it into the cache; return the entry.

    When another process installed the same package meanwhile, its entry is verified and
    kept, and ``staged`` is discarded.
    """
    verify_package(staged, sha256)
    _make_read_only(staged)
    final = entry_dir(cache_dir, sha256)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staged, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(staged, ignore_errors=True)
        verify_package(final, sha256)
    return final


def remove_entry(cache_dir: Path, sha256: str) -> None:
    """Drop a cache entry (used by ``pull --refresh``)."""
    final = entry_dir(cache_dir, sha256)
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix="trash-", dir=final.parent))
        try:
            os.rename(final, trash / sha256)
        except FileNotFoundError:  # another process removed it first
            pass
        finally:
            shutil.rmtree(trash, ignore_errors=True)


def copy_out(entry: Path, dest: Path, sha256: str) -> Path:
    """Copy a verified cache entry to ``dest`` (new or empty folder); verify the copy.

    A ``dest`` that already holds this very package (verified) is left as it is.
    """
    dest = dest.expanduser().resolve()
    if dest.exists():
        if not dest.is_dir():
            raise InputError("exists and is not a folder", dest)
        if (dest / MANIFEST_NAME).is_file():
            verify_package(dest, sha256)
            return dest
        if any(dest.iterdir()):
            raise InputError("folder exists and is not empty", dest)
        dest.rmdir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(entry, tmp, copy_function=shutil.copyfile, dirs_exist_ok=True)
        for dirpath, _, filenames in os.walk(tmp):
            for name in filenames:
                (Path(dirpath) / name).chmod(0o644)
        verify_package(tmp, sha256)
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process copied the same package there first: accept it if it verifies.
            if not (dest / MANIFEST_NAME).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            verify_package(dest, sha256)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def check_entry(cache_dir: Path, sha256: str) -> Path | None:
    """The verified cache entry for ``sha256``, None when absent; IntegrityError when altered."""
    final = entry_dir(cache_dir, sha256)
    if not final.is_dir():
        return None
    try:
        verify_package(final, sha256)
    except (IntegrityError, FileNotFoundError) as err:
        if not final.is_dir():  # removed meanwhile by a concurrent --refresh: absent
            return None
        if isinstance(err, FileNotFoundError):
            raise

        raise IntegrityError(
            f"{err.message} (cached copy altered; "
            "`cordwatch models pull --refresh` fetches it again)",
            err.path,
        ) from err
    return final
