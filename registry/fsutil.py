"""Small file-system helpers shared by the registry and the drift monitor."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from registry.errors import InputError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    A crash, Ctrl-C or exception leaves no partial ``target`` behind (the temporary file is
    removed), which is how every output of cordwatch is written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            # mkstemp creates 0600; give the output the mode a plain open() would (umask).
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Used to serialise writers that share one file across processes (the embedded sqlite
    registry, the package cache). Blocks until the lock is free; released on exit, also when
    the process dies.
    """
    import fcntl  # POSIX only; imported here so that the module stays importable elsewhere

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_target(option: str, out: Path, folder: bool) -> None:
    """The output can be created where it is named: no file in the way, no file as parent."""
    if out.exists() and not folder and out.is_dir():
        raise InputError(f"{option} names a folder, not a file", out)
    if out.exists() and folder and not out.is_dir():
        raise InputError(f"{option} names a file, not a folder", out)
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} lies under {parent}, which is a file", out)
            break


def refuse_outputs_onto_inputs(
    outputs: Mapping[str, str | Path | None],
    inputs: Iterable[str | Path | None],
    folders: Iterable[str] = (),
) -> None:
    """InputError (exit 2) when an output would land on an input, before any work is done.

    ``outputs`` maps the option that names it (``--json``) to the path. An output is refused
    when it resolves (symbolic links and ``..`` followed) to an input, is the same file as
    an input (a hard link: same device and inode), or lies inside an input folder; and two
    outputs may not be the same path. Unset (None) entries are ignored. Also refused: a
    file output that is an existing folder, a folder output (options in ``folders``) that is
    an existing file, and any output below an existing file.

    >>> refuse_outputs_onto_inputs({"-o": "a/../in.csv"}, ["in.csv"])
    Traceback (most recent call last):
    ...
    registry.errors.InputError: a/../in.csv: -o would overwrite the input in.csv
    """
    given = [(str(p), Path(p)) for p in inputs if p is not None and str(p) != ""]
    # An input that does not exist yet (a cache folder) is treated as a folder.
    resolved = [
        (text, path.resolve(), _identity(path), path.is_dir() or not path.exists())
        for text, path in given
    ]
    seen: dict[Path, str] = {}
    for option, out in outputs.items():
        if out is None or str(out) == "":
            continue
        out_path = Path(out)
        _check_target(option, out_path, option in set(folders))
        real = out_path.resolve()
        ident = _identity(out_path)
        for text, inp, inp_ident, _ in resolved:
            if real == inp or (ident is not None and ident == inp_ident):
                raise InputError(f"{option} would overwrite the input {text}", out)
        for text, inp, _, is_dir in resolved:
            if is_dir and _within(real, inp):
                raise InputError(f"{option} would write inside the input folder {text}", out)
        if real in seen:
            raise InputError(f"{option} and {seen[real]} name the same output", out)
        seen[real] = option
