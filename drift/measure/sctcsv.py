"""Read and write morphometry CSVs in Spinal Cord Toolbox's layout.

``sct_process_segmentation`` writes one row per slice, per level or per level range with the
columns below. Two layouts are in use: the older 23-column one (e.g. the PAM50 normative
database r20250321) and SCT 7.4's 29-column one, which adds ``diameter_AP_ellipse``,
``length_anterior`` and ``length_posterior``. The two ``diameter_AP`` columns do not hold the
same quantity: since SCT PR #4958 (29 columns) it is the measured AP extent through the
centre and the ellipse's minor axis moved to ``diameter_AP_ellipse``; in 23-column files it
is the ellipse. :func:`diameter_ap_kind` tells them apart. Both layouts are read;
``cordwatch morphometry`` writes SCT 7.4's 29 columns (the normative tools keep writing the
23-column layout of the database they update).

The "tidy" table used everywhere else in cordwatch has one row per (subject, contrast, level,
slice) and plain metric names (``area``, ``diameter_AP``, ...).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drift.measure.morphometry import METRIC_COLUMNS
from registry.errors import InputError
from registry.fsutil import atomic_path

if TYPE_CHECKING:
    import pandas as pd

    from drift.measure.levels import SctRows

# pandas is imported by the readers only: writing a CSV (cordwatch morphometry) needs none.

#: Per-slice metrics of the 23-column layout with a MEAN/STD pair (length has SUM only).
METRICS: tuple[str, ...] = (
    "area",
    "angle_AP",
    "angle_RL",
    "diameter_AP",
    "diameter_RL",
    "eccentricity",
    "orientation",
    "solidity",
)
#: Extra metrics of the 29-column layout.
METRICS_29: tuple[str, ...] = ("diameter_AP_ellipse", "length_anterior", "length_posterior")
#: The 29-column layout's metrics in SCT 7.4's order (KEYS_DEFAULT without length).
METRICS_74: tuple[str, ...] = tuple(m for m in METRIC_COLUMNS if m != "length")

ID_COLUMNS: tuple[str, ...] = (
    "Timestamp",
    "SCT Version",
    "Filename",
    "Slice (I->S)",
    "VertLevel",
    "DistancePMJ",
)


def _metric_columns(metrics: Sequence[str]) -> list[str]:
    cols: list[str] = []
    for m in metrics:
        cols += [f"MEAN({m})", f"STD({m})"]
    return cols


COLUMNS_23: list[str] = [*ID_COLUMNS, *_metric_columns(METRICS), "SUM(length)"]
COLUMNS_29: list[str] = [*ID_COLUMNS, *_metric_columns(METRICS_74), "SUM(length)"]


def diameter_ap_kind(columns: Sequence[str]) -> str:
    """Which quantity a table's ``diameter_AP`` holds: ``"measured"`` (SCT >= 7.4, PR #4958:
    the file also has ``diameter_AP_ellipse``) or ``"ellipse"`` (older 23-column files, e.g.
    the normative database r20250321: the ellipse's minor axis).

    >>> diameter_ap_kind(COLUMNS_29), diameter_ap_kind(COLUMNS_23)
    ('measured', 'ellipse')
    >>> diameter_ap_kind(["area", "diameter_AP", "diameter_AP_ellipse"])
    'measured'
    """
    names = set(columns)
    return "measured" if names & {"MEAN(diameter_AP_ellipse)", "diameter_AP_ellipse"} else "ellipse"


_REQUIRED = ("Slice (I->S)", "VertLevel", "MEAN(area)")
#: Metrics that cannot be negative (mm², mm); every metric must be finite or empty (NaN).
NON_NEGATIVE = ("area", "diameter_AP", "diameter_RL", "diameter_AP_ellipse", "length")


def check_complete(data: bytes, path: str | Path) -> None:
    """InputError when the file's last line is cut off (no final newline: truncated copy)."""
    if data and not data.endswith((b"\n", b"\r")):
        raise InputError("truncated: the last line is incomplete (no final newline)", path)


def check_values(columns: dict[str, object], path: str | Path) -> None:
    """InputError naming the file and the line (header = line 1) of the first impossible
    value: a negative area, diameter or length, or an infinite value in any metric column
    (``MEAN(m)``/``SUM(m)``; empty cells are NaN and allowed)."""
    import numpy as np

    for col, values in columns.items():
        if not (col.startswith(("MEAN(", "SUM(")) and col.endswith(")")):
            continue
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":
            v = values  # already floats (the pyarrow folder reader): no pandas round trip
        else:
            import pandas as pd

            v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
        infinite = np.isinf(v)
        bad = infinite | ((v < 0) if col[col.index("(") + 1 : -1] in NON_NEGATIVE else False)
        if bad.any():
            i = int(np.argmax(bad))
            why = "not finite" if infinite[i] else "negative"
            raise InputError(
                f"line {i + 2}: {col} is {v[i]:g}, physically impossible ({why}; "
                f"{int(bad.sum())} such row(s))",
                path,
            )


def read_arrow_table(
    path: Path, column_types: Callable[[list[str]], dict[str, Any] | None]
) -> tuple[list[str], Any] | None:
    """The folder readers' fast path: the file read by pyarrow with the column types that
    ``column_types(header names)`` gives, as (names, pyarrow table); None when the file is not
    for this fast path (``column_types`` said None, not UTF-8, cut off, a value pyarrow
    refuses, no rows): the caller's per-file pandas reader then reads it, or names the file
    and the problem."""
    import csv

    import pyarrow as pa
    from pyarrow import csv as pacsv

    try:
        data = path.read_bytes()
        data.decode("utf-8")  # pandas refuses a file that is not UTF-8 anywhere: so do we
        end = data.find(b"\n")
        header = next(csv.reader([data[: end if end >= 0 else len(data)].decode()]))
    except (OSError, UnicodeDecodeError, StopIteration, csv.Error):
        return None
    if not data.endswith((b"\n", b"\r")):
        return None  # cut off: read_sct_csv names the file and the problem
    names = [n.strip("\r") for n in header]
    types = column_types(names)
    if types is None:
        return None
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(use_threads=False),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=list(types), strings_can_be_null=False
            ),
        )
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows == 0:
        return None  # the pandas reader decides what an empty table means
    return names, table


def read_sct_csv(path: str | Path) -> pd.DataFrame:
    """Read an SCT morphometry CSV (23- or 29-column layout); columns keep SCT's names.

    Raises InputError naming the file when it is missing, empty, truncated, lacks SCT's
    columns or holds a physically impossible value (:func:`check_values`).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        with open(path, "rb") as fh:
            fh.seek(-1 if path.stat().st_size else 0, 2)
            check_complete(fh.read(1), path)
        df = pd.read_csv(path, dtype={"Slice (I->S)": str, "VertLevel": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"not a readable CSV ({type(err).__name__})", path) from err
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"not an SCT morphometry CSV: missing column(s) {missing}", path)
    check_values({c: df[c] for c in df.columns}, path)
    return df


def _level_numbers(values: pd.Series) -> pd.Series:
    """VertLevel holds "3" per slice/level, "2:4" for a range, or nothing; ranges -> NaN."""
    import pandas as pd

    return pd.to_numeric(values.astype(str).str.strip(), errors="coerce")


def sct_to_tidy(df: pd.DataFrame, subject: str, contrast: str) -> pd.DataFrame:
    """Per-slice SCT table -> tidy table (subject, contrast, level, slice, metrics...).

    Rows without a single integer level or slice are dropped (SCT writes empty VertLevel
    outside the labelled levels).

    >>> import pandas as pd
    >>> raw = pd.DataFrame({"Slice (I->S)": ["10", "11"], "VertLevel": ["3", ""],
    ...                     "MEAN(area)": [70.0, 71.0]})
    >>> sct_to_tidy(raw, "sub-01", "T2w")[["subject", "level", "slice", "area"]].values.tolist()
    [['sub-01', 3, 10, 70.0]]
    """
    import pandas as pd

    level = _level_numbers(df["VertLevel"])
    slice_ = pd.to_numeric(df["Slice (I->S)"], errors="coerce")
    keep = level.notna() & slice_.notna()
    out = pd.DataFrame(
        {
            "subject": subject,
            "contrast": contrast,
            "level": level[keep].astype(int).to_numpy(),
            "slice": slice_[keep].astype(int).to_numpy(),
        }
    )
    for m in (*METRICS, *METRICS_29):
        col = f"MEAN({m})"
        if col in df.columns:
            out[m] = pd.to_numeric(df.loc[keep, col], errors="coerce").to_numpy(dtype=float)
    if "SUM(length)" in df.columns:
        out["length"] = pd.to_numeric(df.loc[keep, "SUM(length)"], errors="coerce").to_numpy(
            dtype=float
        )
    return out


def write_sct_csv(
    rows: pd.DataFrame | SctRows,
    path: str | Path,
    *,
    filename: str,
    version: str,
    layout: int = 29,
) -> Path:
    """Write rows (columns ``Slice (I->S)``, ``VertLevel``, ``DistancePMJ`` and SCT's
    MEAN/STD/SUM columns; a DataFrame or :class:`drift.measure.levels.SctRows`) as an SCT
    CSV, atomically: SCT 7.4's 29 columns, or the older 23 (``layout=23``). Missing metric
    columns are left empty. Written with the csv module, as pandas' ``to_csv`` wrote it
    (``repr`` of floats, empty cells for NaN / None / NA)."""
    import csv

    from drift.measure.levels import SctRows

    columns = COLUMNS_29 if layout == 29 else COLUMNS_23
    if isinstance(rows, SctRows):
        records = rows.records
    else:
        present = [c for c in columns if c in rows.columns]
        cells = [rows[c].tolist() for c in present]
        records = [dict(zip(present, values, strict=True)) for values in zip(*cells, strict=True)]
        if not present:
            records = [{} for _ in range(len(rows))]
    fixed = {
        "Timestamp": _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "SCT Version": version,
        "Filename": filename,
    }
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow(
                [_cell(fixed[c]) if c in fixed else _cell(record.get(c)) for c in columns]
            )
    return path


def _cell(value: object) -> str:
    """One CSV cell as pandas' to_csv writes it: '' for None / NaN / NA, else str()."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return ""
    return str(value)


#: ``tidy.attrs`` key holding which ``diameter_AP`` a tidy table carries (diameter_ap_kind).
DIAMETER_AP_ATTR = "diameter_AP"


def pair_diameter_ap(
    baseline: pd.DataFrame, candidate: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """Make ``diameter_AP`` the same quantity in two tidy tables before they are paired.

    Each table's ``attrs["diameter_AP"]`` says what its files hold (see
    :func:`diameter_ap_kind`; absent for tables cordwatch measured itself, which follow the
    current instrument: ``measured``). When one side is SCT >= 7.4 (measured AP extent) and
    the other older (the ellipse's minor axis, e.g. the normative database r20250321), the
    measured side's ``diameter_AP`` is replaced by its ``diameter_AP_ellipse``: ellipse is
    compared with ellipse, never with the measured extent. Returns the two tables and a
    sentence saying what was compared (None when the kinds are not known on either side).

    >>> import pandas as pd
    >>> old = pd.DataFrame({"diameter_AP": [7.0]}); old.attrs["diameter_AP"] = "ellipse"
    >>> new = pd.DataFrame({"diameter_AP": [6.8], "diameter_AP_ellipse": [7.1]})
    >>> new.attrs["diameter_AP"] = "measured"
    >>> b, c, note = pair_diameter_ap(old, new)
    >>> c["diameter_AP"].tolist(), note.split(":")[0]
    ([7.1], 'diameter_AP compared as the ellipse minor axis on both sides')
    """
    kinds = [t.attrs.get(DIAMETER_AP_ATTR) for t in (baseline, candidate)]
    if kinds == [None, None]:
        return baseline, candidate, None
    b_kind, c_kind = (k or "measured" for k in kinds)
    if b_kind == c_kind:
        what = "SCT 7.4 measured AP extent" if b_kind == "measured" else "ellipse minor axis"
        return baseline, candidate, f"diameter_AP is the {what} on both sides"
    tables = [baseline, candidate]
    side = 0 if b_kind == "measured" else 1
    measured = tables[side]
    if "diameter_AP_ellipse" not in measured.columns:
        role = ("baseline", "candidate")[side]
        raise InputError(
            f"the {role} holds SCT 7.4's measured diameter_AP but no diameter_AP_ellipse to "
            "compare with the other side's ellipse diameter_AP"
        )
    swapped = measured.copy()
    swapped["diameter_AP"] = swapped["diameter_AP_ellipse"]
    swapped.attrs[DIAMETER_AP_ATTR] = "ellipse"
    tables[side] = swapped
    old, new = ("baseline", "candidate") if side == 1 else ("candidate", "baseline")
    note = (
        "diameter_AP compared as the ellipse minor axis on both sides: the "
        f"{old} files predate SCT 7.4 (23 columns, diameter_AP = ellipse), the {new} files "
        "are SCT 7.4's (diameter_AP_ellipse used; the measured diameter_AP is not compared)"
    )
    return tables[0], tables[1], note
