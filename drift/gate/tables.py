"""Folders of per-subject SCT morphometry CSVs read as one tidy table (``drift compare``).

One pass over all files: each CSV is parsed by pyarrow's C++ reader (only the columns the
tidy table needs, typed up front), the columns of all files are concatenated, and the tidy
conversion of :func:`drift.measure.sctcsv.sct_to_tidy` runs once on the concatenation. A file
pyarrow does not take as it is (ragged or truncated rows, odd cells, bad encoding, missing
columns) is read by :func:`drift.measure.sctcsv.read_sct_csv` instead, so it gets exactly the
validation and the one-line errors of the per-file reader (or, when that reader accepts it,
its values).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

_CSV_NAME = re.compile(r"^(sub-[A-Za-z0-9]+)(?:_(.+))?\.csv$")

#: A folder read shows a progress bar (on stderr, terminals only) once it is expected to take
#: longer than this many seconds.
PROGRESS_AFTER_S = 2.0
#: ... judged after this much time has passed (the projection needs a few files read).
_PROGRESS_JUDGE_S = 0.3
_READ_THREADS = 4

_SLICE, _LEVEL = "Slice (I->S)", "VertLevel"


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


def read_csv_dir(
    directory: str | Path, role: str, *, progress: bool = False
) -> tuple[pd.DataFrame, list[Path]]:
    """All ``sub-*.csv`` of ``directory`` as one tidy table (see :mod:`drift.measure.sctcsv`)
    and the files read. ``role`` (``baseline``/``candidate``) words the errors and the
    progress bar; ``progress`` shows one (stderr) when the read takes more than ~2 s.

    Raises InputError naming the directory (missing, no CSV) or the file (unreadable, or a
    second file for the same subject and contrast).
    """
    path = Path(directory)
    if not path.is_dir():
        raise InputError(f"{role} directory not found", path)
    named = [(f, parse_csv_name(f.name)) for f in sorted(path.iterdir()) if f.is_file()]
    found = [(f, key) for f, key in named if key is not None]
    if not found:
        raise InputError(f"no sub-*.csv morphometry files in the {role} directory", path)
    seen: dict[tuple[str, str], Path] = {}
    for f, key in found:
        if key in seen:
            raise InputError(f"second file for {key[0]} {key[1]} (first: {seen[key].name})", f)
        seen[key] = f
    files = [(f, key[0], key[1]) for f, key in found]
    return read_sct_tidy(files, progress=progress, label=f"reading {role}"), [f for f, _ in found]


def read_sct_tidy(
    files: Sequence[tuple[Path, str, str]], *, progress: bool = False, label: str = "reading"
) -> pd.DataFrame:
    """``(path, subject, contrast)`` SCT CSVs -> one tidy table, the same as concatenating
    :func:`~drift.measure.sctcsv.sct_to_tidy` of :func:`~drift.measure.sctcsv.read_sct_csv`
    of each file, in one vectorised pass. Raises InputError naming the first bad file."""
    from concurrent.futures import ThreadPoolExecutor

    raws = []
    with _progress(progress, len(files), label) as tick, ThreadPoolExecutor(_READ_THREADS) as pool:
        for raw in pool.map(_read_raw, [f for f, _, _ in files]):
            raws.append(raw)
            tick()
    try:
        tidy = _tidy(raws, [(s, c) for _, s, c in files])
    except (ValueError, KeyError, TypeError, OverflowError):
        # Name the file: the per-file conversion raises on the first bad one.
        from drift.measure.sctcsv import read_sct_csv, sct_to_tidy

        for f, subject, contrast in files:
            try:
                sct_to_tidy(read_sct_csv(f), subject, contrast)
            except (ValueError, KeyError, TypeError) as err:
                raise InputError(f"cannot read SCT morphometry ({err})", f) from err
        raise
    # Which diameter_AP the files hold (SCT 7.4 measured vs the older ellipse): one kind.
    from drift.measure.sctcsv import DIAMETER_AP_ATTR

    kinds = ["measured" if "MEAN(diameter_AP_ellipse)" in r else "ellipse" for r in raws]
    for (f, _, _), kind in zip(files, kinds, strict=True):
        if kind != kinds[0]:
            raise InputError(
                f"is {kind} diameter_AP among {kinds[0]} ones: SCT 7.4 (29-column) and older "
                "(23-column) files do not hold the same diameter_AP",
                f,
            )
    if kinds:
        tidy.attrs[DIAMETER_AP_ATTR] = kinds[0]
    return tidy


#: A file's raw columns: ``Slice (I->S)`` and ``VertLevel`` as pyarrow text arrays (a
#: missing cell is "" or null), the metric columns (``MEAN(m)``, ``SUM(length)``) as floats.
_Raw = dict[str, Any]


def _metric_sources() -> list[tuple[str, str]]:
    from drift.measure.sctcsv import METRICS, METRICS_29

    return [(f"MEAN({m})", m) for m in (*METRICS, *METRICS_29)] + [("SUM(length)", "length")]


def _read_raw(path: Path) -> _Raw:
    """One file's raw columns, by pyarrow when it takes the file as it is, else by the
    per-file pandas reader (which raises InputError naming the file when it is bad)."""
    from drift.measure.sctcsv import check_values

    raw = _read_raw_arrow(path)
    if raw is None:
        return _read_raw_pandas(path)  # read_sct_csv checks the values
    check_values(raw, path)
    return raw


def _read_raw_arrow(path: Path) -> _Raw | None:
    import pyarrow as pa

    from drift.measure.sctcsv import _REQUIRED, read_arrow_table

    def column_types(names: list[str]) -> dict[str, Any] | None:
        if len(set(names)) != len(names) or any(c not in names for c in _REQUIRED):
            return None
        types: dict[str, Any] = {_SLICE: pa.string(), _LEVEL: pa.string()}
        types.update({src: pa.float64() for src, _ in _metric_sources() if src in names})
        return types

    read = read_arrow_table(path, column_types)
    if read is None:
        return None
    _, table = read  # its columns in column_types' order
    raw: _Raw = {name: table.column(name).combine_chunks() for name in (_SLICE, _LEVEL)}
    raw.update(
        {name: table.column(name).to_numpy() for name in table.column_names if name not in raw}
    )
    return raw


def _read_raw_pandas(path: Path) -> _Raw:
    import pandas as pd
    import pyarrow as pa

    from drift.measure.sctcsv import read_sct_csv

    df = read_sct_csv(path)
    raw: _Raw = {
        name: pa.array(df[name].astype(object).to_numpy(), type=pa.string(), from_pandas=True)
        for name in (_SLICE, _LEVEL)
    }
    for src, _ in _metric_sources():
        if src in df.columns:
            raw[src] = pd.to_numeric(df[src], errors="coerce").to_numpy(dtype=float)
    return raw


def _numbers(text: Any, *, strip: bool) -> np.ndarray:
    """``pd.to_numeric(text[.str.strip()], errors="coerce")`` as floats, fast: plain digit
    strings are cast by pyarrow, empty cells are NaN, and only what is left (ranges like
    ``2:4``, signs, decimals) goes through pandas."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if strip:
        text = pc.utf8_trim_whitespace(text)
    out = np.full(len(text), np.nan)
    digits = pc.fill_null(pc.match_substring_regex(text, r"^[0-9]{1,15}$"), False)
    hit = digits.to_numpy(zero_copy_only=False)
    out[hit] = pc.cast(pc.filter(text, digits), pa.int64()).to_numpy()
    rest = pc.and_(pc.invert(digits), pc.fill_null(pc.not_equal(text, ""), False))
    other = rest.to_numpy(zero_copy_only=False)
    if other.any():
        values = pd.Series(pc.filter(text, rest).to_pylist(), dtype=str)
        out[other] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return out


def _tidy(raws: Sequence[_Raw], keys: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """:func:`~drift.measure.sctcsv.sct_to_tidy` of every file at once (same rules: rows
    without a single integer level or slice dropped, metrics to float)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    counts = np.array([len(r[_SLICE]) for r in raws], dtype=np.int64)
    level = _numbers(pa.chunked_array([r[_LEVEL] for r in raws], pa.string()), strip=True)
    slice_ = _numbers(pa.chunked_array([r[_SLICE] for r in raws], pa.string()), strip=False)
    keep = ~np.isnan(level) & ~np.isnan(slice_)
    file_of_row = pa.array(np.repeat(np.arange(len(raws)), counts)[keep])
    columns: dict[str, Any] = {
        "subject": pd.array(pa.array([s for s, _ in keys]).take(file_of_row), dtype=str),
        "contrast": pd.array(pa.array([c for _, c in keys]).take(file_of_row), dtype=str),
        "level": pd.Series(level[keep]).astype(int).to_numpy(),
        "slice": pd.Series(slice_[keep]).astype(int).to_numpy(),
    }
    # Column order as pandas' concat of the per-file tables: first appearance, file by file.
    order: list[tuple[str, str]] = []
    for raw in raws:
        order += [(s, m) for s, m in _metric_sources() if s in raw and (s, m) not in order]
    for src, metric in order:
        parts = [
            r[src] if src in r else np.full(n, np.nan) for r, n in zip(raws, counts, strict=True)
        ]
        columns[metric] = np.concatenate(parts).astype(float, copy=False)[keep]
    return pd.DataFrame(columns)


@contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator[Any]:
    """``tick()`` once per file; a rich bar on stderr appears once the projected time of
    the whole read passes :data:`PROGRESS_AFTER_S` (terminals only: logs and --json stay
    clean)."""
    state: dict[str, Any] = {"done": 0, "bar": None, "on": enabled}
    start = time.perf_counter()

    def tick() -> None:
        state["done"] += 1
        if not state["on"]:
            return
        bar = state["bar"]
        if bar is None:
            elapsed = time.perf_counter() - start
            if elapsed < _PROGRESS_JUDGE_S and PROGRESS_AFTER_S > 0:
                return
            if elapsed / state["done"] * total <= PROGRESS_AFTER_S or state["done"] >= total:
                return
            bar = state["bar"] = _start_bar(total, label)
            if bar is None:  # not a terminal: nothing to show, ever
                state["on"] = False
                return
        bar.update(bar.task_ids[0], completed=state["done"])

    try:
        yield tick
    finally:
        if state["bar"] is not None:
            state["bar"].stop()


def _start_bar(total: int, label: str) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        return None
    bar = Progress(
        f"[bold]{label}[/bold]",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    bar.add_task("", total=total)
    bar.start()
    return bar


def files_sha256(files: list[Path]) -> str:
    """One sha256 over a set of files: of the sorted ``"<name> <sha256>\\n"`` lines."""
    from registry.fsutil import sha256_file

    lines = sorted(f"{f.name} {sha256_file(f)}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()
