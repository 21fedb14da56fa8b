"""Read and write morphometry CSVs in Spinal Cord Toolbox's layout.

``sct_process_segmentation`` writes one row per slice, per level or per level range with the
columns below. Two layouts are in use: the older 23-column one (e.g. the PAM50 normative
database r20250321) and the current 29-column one, which adds ``diameter_AP_ellipse``,
``length_anterior`` and ``length_posterior``. Both are read; cordwatch writes the 23-column
layout, which every published script understands.

The "tidy" table used everywhere else in cordwatch has one row per (subject, contrast, level,
slice) and plain metric names (``area``, ``diameter_AP``, ...).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from drift.measure.morphometry import METRIC_COLUMNS
from registry.errors import InputError
from registry.fsutil import atomic_path

#: Per-slice metrics with a MEAN/STD pair, in SCT's column order (length has SUM only).
METRICS: tuple[str, ...] = tuple(m for m in METRIC_COLUMNS if m != "length")
#: Extra metrics of the 29-column layout.
METRICS_29: tuple[str, ...] = ("diameter_AP_ellipse", "length_anterior", "length_posterior")

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
COLUMNS_29: list[str] = [
    *ID_COLUMNS,
    *_metric_columns(
        (
            "area",
            "angle_AP",
            "angle_RL",
            "diameter_AP",
            "diameter_AP_ellipse",
            "diameter_RL",
            "length_anterior",
            "length_posterior",
            "eccentricity",
            "orientation",
            "solidity",
        )
    ),
    "SUM(length)",
]
_REQUIRED = ("Slice (I->S)", "VertLevel", "MEAN(area)")


def read_sct_csv(path: str | Path) -> pd.DataFrame:
    """Read an SCT morphometry CSV (23- or 29-column layout); columns keep SCT's names.

    Raises InputError naming the file when it is missing, empty or lacks SCT's columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        df = pd.read_csv(path, dtype={"Slice (I->S)": str, "VertLevel": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"not a readable CSV ({type(err).__name__})", path) from err
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"not an SCT morphometry CSV: missing column(s) {missing}", path)
    return df


def _level_numbers(values: pd.Series) -> pd.Series:
    """VertLevel holds "3" per slice/level, "2:4" for a range, or nothing; ranges -> NaN."""
    return pd.to_numeric(values.astype(str).str.strip(), errors="coerce")


def sct_to_tidy(df: pd.DataFrame, subject: str, contrast: str) -> pd.DataFrame:
    """Per-slice SCT table -> tidy table (subject, contrast, level, slice, metrics...).

    Rows without a single integer level or slice are dropped (SCT writes empty VertLevel
    outside the labelled levels).

    >>> raw = pd.DataFrame({"Slice (I->S)": ["10", "11"], "VertLevel": ["3", ""],
    ...                     "MEAN(area)": [70.0, 71.0]})
    >>> sct_to_tidy(raw, "sub-01", "T2w")[["subject", "level", "slice", "area"]].values.tolist()
    [['sub-01', 3, 10, 70.0]]
    """
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
    rows: pd.DataFrame,
    path: str | Path,
    *,
    filename: str,
    version: str,
) -> Path:
    """Write rows (columns ``Slice (I->S)``, ``VertLevel`` and SCT's MEAN/STD/SUM columns) as
    a 23-column SCT CSV, atomically. Missing metric columns are left empty."""
    out = pd.DataFrame(index=rows.index, columns=COLUMNS_23, dtype=object)
    for col in COLUMNS_23:
        if col in rows.columns:
            out[col] = rows[col]
    out["Timestamp"] = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    out["SCT Version"] = version
    out["Filename"] = filename
    path = Path(path)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, na_rep="")
    return path
