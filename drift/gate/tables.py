"""Folders of per-subject SCT morphometry CSVs read as one tidy table (``drift compare``)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from registry.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

_CSV_NAME = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_(.+))?\.csv$")


def parse_csv_name(name: str) -> tuple[str, str] | None:
    """``(subject, contrast)`` of a BIDS-ish CSV name, or None when it is not ``sub-*.csv``.

    The contrast is every entity after the subject up to and including the first token
    without a hyphen (the BIDS suffix); later tokens (``label-SC``, ``seg``, ``PAM50``) are
    processing and ignored. Entities before the suffix stay, so MT-on and MT-off differ.

    >>> parse_csv_name("sub-amu01_T2w_PAM50.csv")
    ('sub-amu01', 'T2w')
    >>> parse_csv_name("sub-01_acq-sag_T2w_label-SC_seg_perslice.csv")
    ('sub-01', 'acq-sag_T2w')
    >>> parse_csv_name("sub-01_flip-1_mt-on_MTS.csv")
    ('sub-01', 'flip-1_mt-on_MTS')
    >>> parse_csv_name("sub-01.csv"), parse_csv_name("participants.csv")
    (('sub-01', 'unknown'), None)
    """
    m = _CSV_NAME.match(name)
    if not m:
        return None
    subject, rest = m.group(1), m.group(2)
    if not rest:
        return subject, "unknown"
    tokens = rest.split("_")
    kept: list[str] = []
    for tok in tokens:
        kept.append(tok)
        if "-" not in tok:
            break
    return subject, "_".join(kept)


def read_csv_dir(directory: str | Path, role: str) -> tuple[pd.DataFrame, list[Path]]:
    """All ``sub-*.csv`` of ``directory`` as one tidy table (see :mod:`drift.measure.sctcsv`)
    and the
    files read. ``role`` (``baseline``/``candidate``) only words the errors.

    Raises InputError naming the directory (missing, no CSV) or the file (unreadable, or a
    second file for the same subject and contrast).
    """
    import pandas as pd

    from drift.measure.sctcsv import read_sct_csv, sct_to_tidy

    path = Path(directory)
    if not path.is_dir():
        raise InputError(f"{role} directory not found", path)
    named = [(f, parse_csv_name(f.name)) for f in sorted(path.iterdir()) if f.is_file()]
    found = [(f, key) for f, key in named if key is not None]
    if not found:
        raise InputError(f"no sub-*.csv morphometry files in the {role} directory", path)
    seen: dict[tuple[str, str], Path] = {}
    tables = []
    for f, key in found:
        if key in seen:
            raise InputError(f"second file for {key[0]} {key[1]} (first: {seen[key].name})", f)
        seen[key] = f
        raw = read_sct_csv(f)
        try:
            tables.append(sct_to_tidy(raw, key[0], key[1]))
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"cannot read SCT morphometry ({err})", f) from err
    return pd.concat(tables, ignore_index=True), [f for f, _ in found]


def files_sha256(files: list[Path]) -> str:
    """One sha256 over a set of files: of the sorted ``"<name> <sha256>\\n"`` lines."""
    from registry.fsutil import sha256_file

    lines = sorted(f"{f.name} {sha256_file(f)}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()
