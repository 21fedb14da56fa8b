"""SCT's normative layout on disk: reading and validating a database folder, and writing
SCT's per-slice rows.

A database folder (what SCT ships as ``PAM50-normalized-metrics``)::

    spinal_cord/sub-XXX_<contrast>_PAM50.csv   one per subject, SCT's per-PAM50-slice CSV
    participants.tsv                            participant_id, sex, age, manufacturer, ...
    README.md, participants.json, LICENSE        kept as they are when present

Pure file I/O and tables: no registry, no MLflow. Also the seeded synthetic database of the
tests and benchmarks (:func:`write_synthetic_db`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drift.measure.levels import pam50_levels
from drift.measure.sctcsv import (
    COLUMNS_23,
    COLUMNS_29,
    METRICS,
    METRICS_29,
    read_sct_csv,
)
from registry.errors import InputError

DATA_DIR = "spinal_cord"


PARTICIPANTS = "participants.tsv"


#: Top-level files kept byte for byte when the source has them (besides participants.tsv).
EXTRA_FILES: tuple[str, ...] = ("README.md", "participants.json", "LICENSE", "CITATION.cff")


_CSV_NAME = re.compile(r"^(sub-[A-Za-z0-9]+)_(.+)_PAM50\.csv$")


@dataclass
class NormativeData:
    """A database folder read into tables: ``tidy`` (subject, contrast, level, slice,
    metrics...), ``participants`` (participants.tsv as text) and the CSVs by subject.

    In the multi-dataset layout (:mod:`drift.normative.datasets`) a *record* (one CSV) is
    keyed ``DATASET/sub-XXX`` (``DATASET/sub-XXX/ses-YYY`` with sessions): that key is the
    tidy table's ``subject``, the tidy table has a ``dataset`` column, ``participants`` is the
    union of the datasets' tables with a ``dataset`` column first, ``row_keys`` is the key of
    each participants row and ``record_rows`` maps a record to its participants row.
    """

    tidy: pd.DataFrame
    participants: pd.DataFrame
    files: dict[str, Path]
    contrast: str
    layout: int  # 23 or 29 columns
    kind: str = "single"  # or "datasets"
    datasets: tuple[str, ...] = ()
    row_keys: list[str] | None = None
    record_rows: dict[str, str] | None = None

    def participant_keys(self) -> list[str]:
        """The key of each participants row (participant_id in the single-folder layout)."""
        if self.row_keys is not None:
            return list(self.row_keys)
        return self.participants["participant_id"].astype(str).tolist()

    def records_of(self, rows: Sequence[str]) -> set[str]:
        """The records (tidy ``subject`` keys) whose participants row is among ``rows``."""
        chosen = set(rows)
        if self.record_rows is None:
            return chosen & set(self.files)
        return {rec for rec, row in self.record_rows.items() if row in chosen}

    @property
    def n_subjects(self) -> int:
        """Distinct subjects: (dataset, participant) pairs; a session is not a subject."""
        if self.record_rows is None:
            return len(self.files)
        return len({"/".join(rec.split("/")[:2]) for rec in self.files})


def csv_subject(name: str) -> tuple[str, str] | None:
    """(subject, contrast) of ``sub-XXX_<contrast>_PAM50.csv``, else None.

    >>> csv_subject("sub-amu01_T2w_PAM50.csv"), csv_subject("notes.csv")
    (('sub-amu01', 'T2w'), None)
    """
    m = _CSV_NAME.match(name)
    return (m.group(1), m.group(2)) if m else None


def locate_layout(src: str | Path) -> tuple[Path, Path]:
    """(folder of the per-subject CSVs, participants.tsv) of an SCT normative layout:
    ``SRC/spinal_cord/`` + ``SRC/participants.tsv``, or SRC itself holding the CSVs with
    participants.tsv in it or beside it."""
    root = Path(src)
    if not root.is_dir():
        raise InputError("not a directory (expected SCT's normative layout)", root)
    data = root / DATA_DIR if (root / DATA_DIR).is_dir() else root
    if not any(csv_subject(p.name) for p in data.iterdir() if p.is_file()):
        raise InputError(
            f"no sub-*_*_PAM50.csv files (expected {DATA_DIR}/sub-XXX_<contrast>_PAM50.csv)", data
        )
    for candidate in (root / PARTICIPANTS, root.parent / PARTICIPANTS):
        if candidate.is_file():
            return data, candidate
    raise InputError(f"no {PARTICIPANTS} beside the per-subject CSVs", root)


def read_participants(path: Path, sessions: bool = False) -> pd.DataFrame:
    """participants.tsv as text columns; needs ``participant_id``, unique (with ``sessions``
    and a ``session_id`` column, BIDS's one row per session: the pair is unique)."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"not a readable TSV ({type(err).__name__})", path) from err
    if "participant_id" not in table.columns:
        raise InputError("no participant_id column", path)
    keys = ["participant_id"]
    if sessions and "session_id" in table.columns:
        keys.append("session_id")
    twice = table.duplicated(keys)
    if twice.any():
        first = table.loc[twice, keys].iloc[0]
        raise InputError(f"participant {' '.join(first)} listed twice", path)
    if "age" in table.columns:
        _check_ages(table, path)
    return table


#: Ages (years) a participant can have; participants.tsv writes a missing one as n/a.
AGE_RANGE: tuple[float, float] = (0.0, 120.0)
_MISSING = frozenset({"", "n/a", "na", "nan"})


def _check_ages(table: pd.DataFrame, path: Path) -> None:
    """InputError naming the first row (line of the file) whose age is not a number in
    :data:`AGE_RANGE` (``n/a`` or empty: unknown, allowed)."""
    lo, hi = AGE_RANGE
    for i, text in enumerate(table["age"].astype(str)):
        if text.strip().lower() in _MISSING:
            continue
        try:
            age = float(text)
        except ValueError:
            age = math.nan
        if not (math.isfinite(age) and lo <= age <= hi):
            who = table["participant_id"].iloc[i]
            raise InputError(
                f"line {i + 2} ({who}): age {text!r} is not a number from {lo:g} to {hi:g}", path
            )


#: Metrics that are lengths or areas: a negative or non-finite value is impossible.
PHYSICAL_METRICS: tuple[str, ...] = ("area", "diameter_AP", "diameter_RL", "diameter_AP_ellipse")
_PHYSICAL_STD = frozenset(f"STD({m})" for m in PHYSICAL_METRICS)
_PHYSICAL_CHECKED = frozenset(
    {*_PHYSICAL_STD, *(f"MEAN({m})" for m in PHYSICAL_METRICS), "SUM(length)"}
)


def _check_values(raw: pd.DataFrame, path: Path) -> None:
    """InputError naming the first line whose ``MEAN``/``STD`` of an area or diameter is text,
    negative or infinite (an empty cell, SCT's "no value", is allowed)."""
    for metric in PHYSICAL_METRICS:
        for col in (f"MEAN({metric})", f"STD({metric})"):
            if col not in raw.columns:
                continue
            cells = raw[col]
            if pd.api.types.is_float_dtype(cells.dtype) or pd.api.types.is_integer_dtype(
                cells.dtype
            ):
                # Parsed as numbers (the usual case): NaN is an empty cell; no text to look at.
                values = cells.to_numpy(dtype=float)
                missing = np.isnan(values)
            else:
                values = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=float)
                text = cells.astype(str).str.strip().str.lower()
                missing = cells.isna().to_numpy() | text.isin(_MISSING).to_numpy()
            bad = ~missing & (~np.isfinite(values) | (values < 0))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                cell = cells.iloc[i]
                shown = repr(float(cell)) if isinstance(cell, int | float) else repr(str(cell))
                raise InputError(
                    f"line {i + 2}: {col} is {shown} (an area or a diameter is a "
                    "finite number >= 0)",
                    path,
                )


def pam50_level_of_slice() -> np.ndarray:
    table = pam50_levels()
    out = np.zeros(int(table["slice_max"].max()) + 1, dtype=int)
    for row in table.itertuples():
        out[int(row.slice_min) : int(row.slice_max) + 1] = int(row.level)
    return out


def pam50_mismatch(tidy: pd.DataFrame) -> pd.Series:
    """Per subject: the share of rows whose VertLevel is not the PAM50 level of their slice
    (0 for a PAM50-normalised table; large for native-space slice numbers)."""
    lookup = pam50_level_of_slice()
    slices = tidy["slice"].to_numpy(dtype=int)
    inside = (slices >= 0) & (slices < len(lookup))
    expected = np.where(inside, lookup[np.clip(slices, 0, len(lookup) - 1)], -1)
    wrong = pd.Series(expected != tidy["level"].to_numpy(dtype=int), index=tidy.index)
    return wrong.groupby(tidy["subject"]).mean()


def _as_number(cells: pd.Series) -> pd.Series:
    """Text cells (``" 3"``, ``""``, ``"2:4"``) as numbers (NaN when not one); numbers as is."""
    if pd.api.types.is_float_dtype(cells.dtype) or pd.api.types.is_integer_dtype(cells.dtype):
        return cells.astype(float)
    return pd.to_numeric(cells.astype(str).str.strip(), errors="coerce")


def tidy_from_sct(raw: pd.DataFrame) -> pd.DataFrame:
    """Per-slice SCT rows with ``subject`` and ``contrast`` columns -> the tidy table
    (subject, contrast, level, slice, metrics...), as :func:`drift.measure.sctcsv.sct_to_tidy` but
    vectorised over many files at once. Rows without one integer level and slice are dropped.

    >>> raw = pd.DataFrame({"subject": ["s", "s"], "contrast": "T2w",
    ...                     "Slice (I->S)": ["10", "11"], "VertLevel": ["3", ""],
    ...                     "MEAN(area)": [70.0, 71.0]})
    >>> tidy_from_sct(raw)[["subject", "level", "slice", "area"]].values.tolist()
    [['s', 3, 10, 70.0]]
    """
    level, slc = (_as_number(raw[c]) for c in ("VertLevel", "Slice (I->S)"))
    keep = (
        level.notna().to_numpy()
        & slc.notna().to_numpy()
        & (np.mod(level.fillna(0.5).to_numpy(), 1) == 0)
        & (np.mod(slc.fillna(0.5).to_numpy(), 1) == 0)
    )
    out = pd.DataFrame(
        {
            "subject": raw["subject"].to_numpy()[keep],
            "contrast": raw["contrast"].to_numpy()[keep],
            "level": level.to_numpy()[keep].astype(int),
            "slice": slc.to_numpy()[keep].astype(int),
        }
    )
    for m in (*METRICS, *METRICS_29):
        col = f"MEAN({m})"
        if col in raw.columns:
            out[m] = pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=float)[keep]
    if "SUM(length)" in raw.columns:
        out["length"] = pd.to_numeric(raw["SUM(length)"], errors="coerce").to_numpy(float)[keep]
    return out


#: One file's columns that the tidy table is made of (``Slice (I->S)``, ``VertLevel`` as
#: text, ``MEAN(m)`` and ``SUM(length)``), as arrays: the files are joined once, not as one
#: DataFrame each (thousands of files at scale).
RawColumns = dict[str, np.ndarray]
_TEXT_COLUMNS = ("Slice (I->S)", "VertLevel")


def _read_raw(path: Path) -> tuple[RawColumns, int]:
    """An SCT per-slice CSV as read by :func:`read_sct_csv`, with its layout (23 or 29).

    A well-formed file is parsed by pyarrow's C++ reader (about 3x faster over a database;
    only the columns the checks and the tidy table use); anything it does not take as it is,
    or any value a check would refuse, goes through :func:`read_sct_csv` and the checks
    below, so the errors are the per-file reader's."""
    fast = _read_raw_arrow(path)
    if fast is not None:
        return fast
    raw = read_sct_csv(path)
    columns = list(raw.columns)
    if columns == COLUMNS_23:
        layout = 23
    elif columns == COLUMNS_29:
        layout = 29
    else:
        raise InputError("columns are not SCT's 23- or 29-column per-slice layout", path)
    _check_values(raw, path)
    kept = [c for c in columns if c in _TEXT_COLUMNS or c.startswith("MEAN(") or c == "SUM(length)"]
    return {c: raw[c].to_numpy() for c in kept}, layout


def _numeric(names: list[str]) -> list[str]:
    """The metric columns of an SCT per-slice header (MEAN, SUM and the physical STDs)."""
    return [c for c in names if c.startswith(("MEAN(", "SUM(")) or c in _PHYSICAL_STD]


def _read_raw_arrow(path: Path) -> tuple[RawColumns, int] | None:
    import pyarrow as pa

    from drift.measure.sctcsv import read_arrow_table

    def column_types(names: list[str]) -> dict[str, Any] | None:
        if names != COLUMNS_23 and names != COLUMNS_29:
            return None
        # Slice and level as numbers too: in a per-slice file they are integers or empty; a
        # level range ("2:4") makes pyarrow refuse the file, and the pandas reader takes it.
        return {c: pa.float64() for c in (*_TEXT_COLUMNS, *_numeric(names))}

    read = read_arrow_table(path, column_types)
    if read is None:
        return None
    names, table = read
    layout = 23 if names == COLUMNS_23 else 29
    numeric = _numeric(names)
    values = {c: table.column(c).to_numpy() for c in numeric}
    for c in numeric:
        v = values[c]
        if np.isinf(v).any() or ((c in _PHYSICAL_CHECKED) and (v < 0).any()):
            return None  # the per-file reader words the error
    columns: RawColumns = {c: table.column(c).to_numpy() for c in _TEXT_COLUMNS}
    columns.update((c, values[c]) for c in numeric if c.startswith("MEAN(") or c == "SUM(length)")
    return columns, layout


def _joined(raws: Sequence[RawColumns], keys: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The files' raw columns as one table with ``subject`` and ``contrast`` (``keys``)."""
    counts = [len(r[_TEXT_COLUMNS[0]]) for r in raws]
    names: list[str] = []
    for raw in raws:
        names += [c for c in raw if c not in names]
    columns: dict[str, Any] = {}
    for c in names:
        parts = [r[c] if c in r else np.full(n, np.nan) for r, n in zip(raws, counts, strict=True)]
        columns[c] = np.concatenate(parts) if parts else np.array([], dtype=object)
    columns["subject"] = np.repeat(np.array([k[0] for k in keys], dtype=object), counts)
    columns["contrast"] = np.repeat(np.array([k[1] for k in keys], dtype=object), counts)
    return pd.DataFrame(columns)


def _checked_tidy(
    raws: Sequence[RawColumns], keys: Sequence[tuple[str, str]], paths: Mapping[str, Path]
) -> pd.DataFrame:
    """The tidy table of the files' raw columns (``keys``: their subject and contrast), each
    subject with rows and PAM50-normalised (InputError naming the file)."""
    tidy = tidy_from_sct(_joined(raws, keys))
    present = set(tidy["subject"].unique())  # a set: thousands of files at scale
    for subject, path in paths.items():
        if subject not in present:
            raise InputError(
                "no row with a vertebral level and a slice number (a per-slice CSV is needed: "
                "sct_process_segmentation -perslice 1 -normalize-PAM50 1)",
                path,
            )
    for subject, wrong in pam50_mismatch(tidy).items():
        if wrong > 0.01:
            raise InputError(
                f"not PAM50-normalised: {100 * wrong:.0f} % of the rows have a VertLevel that "
                "is not the PAM50 level of their slice (use sct_process_segmentation "
                "-normalize-PAM50 1)",
                paths[str(subject)],
            )
    return tidy


def read_subject_csv(path: str | Path) -> tuple[pd.DataFrame, int]:
    """One per-subject PAM50 CSV -> (tidy table, layout 23 or 29); InputError naming it."""
    path = Path(path)
    raw, layout = _read_raw(path)
    subject, contrast = csv_subject(path.name) or (path.stem.split("_")[0], "unknown")
    return _checked_tidy([raw], [(subject, contrast)], {subject: path}), layout


def read_database(data_dir: Path, participants_path: Path) -> NormativeData:
    """Read and validate a database folder (every CSV, participants.tsv); InputError naming
    the first bad file. Only ``sub-*_*_PAM50.csv`` may be in the CSV folder."""
    files: dict[str, Path] = {}
    contrasts: set[str] = set()
    layouts: set[int] = set()
    raws = []
    keys: list[tuple[str, str]] = []
    layout_dir = data_dir.name == DATA_DIR
    for path in sorted(data_dir.iterdir()):
        key = csv_subject(path.name)
        if key is None or not path.is_file():
            # A spinal_cord/ folder holds only the per-subject CSVs (anything else would not
            # be exported); a flat folder also holds participants.tsv, README.md, ...
            if layout_dir or path.suffix.lower() == ".csv":
                raise InputError(
                    "not a sub-XXX_<contrast>_PAM50.csv file (would not be stored)", path
                )
            continue
        subject, contrast = key
        if subject in files:
            raise InputError(f"second file for {subject} (first: {files[subject].name})", path)
        raw, layout = _read_raw(path)
        if layouts and layout not in layouts:
            raise InputError(f"{layout}-column layout among {layouts.pop()}-column files", path)
        files[subject] = path
        contrasts.add(contrast)
        layouts.add(layout)
        raws.append(raw)
        keys.append((subject, contrast))
    tidy = _checked_tidy(raws, keys, files)
    participants = read_participants(participants_path)
    listed = set(participants["participant_id"])
    missing = sorted(set(files) - listed)
    if missing:
        raise InputError(
            f"{missing[0]} has a CSV but no row ({len(missing)} missing)", participants_path
        )
    return NormativeData(
        tidy=tidy,
        participants=participants,
        files=files,
        contrast=sorted(contrasts)[0] if len(contrasts) == 1 else ",".join(sorted(contrasts)),
        layout=layouts.pop(),
    )


#: Typical healthy CSA per level (mm², C1..T2), for the synthetic database.
_SYNTHETIC_AREA = {1: 74.0, 2: 72.0, 3: 72.5, 4: 77.0, 5: 76.0, 6: 69.0, 7: 57.0, 8: 47.0, 9: 42.0}


def write_synthetic_db(
    root: str | Path, n_subjects: int = 8, seed: int = 0, contrast: str = "T2w"
) -> Path:
    """Write a small normative database in SCT's layout (``root/spinal_cord/*.csv`` +
    ``root/participants.tsv``), seeded: every subject is the level means x its own scale
    (SD 8 %) x a gentle wave along the slices; levels C1..T2 are filled, the others empty
    (as in SCT's files). Sex alternates F/M, age 21, 24, ..., vendor Siemens/GE/Philips.
    Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    lookup = pam50_level_of_slice()
    slices = np.flatnonzero(lookup > 0)
    levels = lookup[slices]
    rows = []
    for i in range(n_subjects):
        subject = f"sub-syn{i + 1:02d}"
        scale = float(rng.normal(1.0, 0.08))
        base = np.array([_SYNTHETIC_AREA.get(int(lv), np.nan) for lv in levels])
        area = base * scale * (1 + 0.01 * np.sin(slices / 5.0 + i))
        frame = pd.DataFrame(
            {
                "Timestamp": "2025-01-30 15:37:23",
                "SCT Version": "synthetic",
                "Filename": f"{subject}/anat/{subject}_{contrast}_label-SC_seg.nii.gz",
                "Slice (I->S)": slices,
                "VertLevel": levels,
                "DistancePMJ": np.nan,
            }
        )
        shape = rng.normal(0.0, 1.0, 4)  # the subject's own shape, angles and orientation
        cord = np.isfinite(area)
        values = {
            "area": area,
            "angle_AP": np.where(cord, 0.5 * np.cos(slices / 30.0) + shape[0], np.nan),
            "angle_RL": np.where(cord, 10.0 * np.sin(slices / 40.0) + 3 * shape[1], np.nan),
            "diameter_AP": 0.85 * np.sqrt(area),
            "diameter_RL": 1.45 * np.sqrt(area),
            "eccentricity": np.where(
                cord, 0.75 + 0.02 * np.sin(slices / 7.0) + 0.03 * shape[2], np.nan
            ),
            "orientation": np.where(cord, 2.0 * np.cos(slices / 9.0) + shape[3], np.nan),
            "solidity": np.where(
                cord, 0.96 + 0.01 * np.cos(slices / 11.0) + 0.005 * shape[2], np.nan
            ),
        }
        for m, v in values.items():
            frame[f"MEAN({m})"] = v
            frame[f"STD({m})"] = np.where(np.isfinite(v), 0.0, np.nan)
        frame["SUM(length)"] = np.nan
        path = root / DATA_DIR / f"{subject}_{contrast}_PAM50.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame[COLUMNS_23].to_csv(path, index=False)
        rows.append(
            {
                "participant_id": subject,
                "sex": "FM"[i % 2],
                "age": 21 + 3 * i,
                "manufacturer": ("Siemens", "GE", "Philips")[i % 3],
            }
        )
    pd.DataFrame(rows).to_csv(root / PARTICIPANTS, sep="\t", index=False)
    return root


def load_data(folder: Path) -> NormativeData:
    """A fetched version folder as tables (see :func:`read_database`)."""
    return read_database(folder / DATA_DIR, folder / PARTICIPANTS)


def pam50_measurements(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a tidy PAM50 table that hold a measurement at a slice of its own PAM50
    level, one per (subject, contrast, slice). (A table reloaded from a logged run may also
    hold empty rows for other (level, slice) combinations.)

    >>> t = pd.DataFrame({"subject": "s", "contrast": "T2w", "level": [3, 4, 3],
    ...                   "slice": [880, 880, 881], "area": [70.0, np.nan, np.nan]})
    >>> pam50_measurements(t)[["level", "slice", "area"]].values.tolist()
    [[3.0, 880.0, 70.0]]
    """
    ids = ("subject", "contrast", "level", "slice", "dataset")
    metrics = [c for c in table.columns if c not in ids]
    lookup = pam50_level_of_slice()
    slices = table["slice"].to_numpy(dtype=int)
    inside = (slices >= 0) & (slices < len(lookup))
    own = inside & (lookup[np.clip(slices, 0, len(lookup) - 1)] == table["level"].to_numpy(int))
    keep = own & table[metrics].notna().any(axis=1).to_numpy()
    out = table[keep]
    return out.drop_duplicates(["subject", "contrast", "slice"]).reset_index(drop=True)


def pam50_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One subject's tidy PAM50 table -> SCT's per-slice rows: every PAM50 slice of the
    levels C1..L1 (ascending), ``MEAN(m)`` where measured, ``STD(m)`` 0.0 beside each value
    (one slice per row), empty elsewhere; ``SUM(length)`` and ``DistancePMJ`` empty, as in
    SCT's normative database.

    >>> t = pd.DataFrame({"level": [3], "slice": [880], "area": [70.0]})
    >>> rows = pam50_rows(t)
    >>> len(rows), rows.loc[rows["Slice (I->S)"] == 880, "MEAN(area)"].tolist()
    (945, [70.0])
    """
    levels = pam50_levels()
    slices = np.concatenate([np.arange(r.slice_min, r.slice_max + 1) for r in levels.itertuples()])
    lookup = pam50_level_of_slice()
    slices = np.sort(slices)
    out = pd.DataFrame({"Slice (I->S)": slices, "VertLevel": lookup[slices]})
    indexed = table.set_index("slice")
    for m in (
        "area",
        "angle_AP",
        "angle_RL",
        "diameter_AP",
        "diameter_RL",
        "eccentricity",
        "orientation",
        "solidity",
    ):
        if m in indexed.columns:
            values = indexed[m].reindex(slices).to_numpy(dtype=float)
            out[f"MEAN({m})"] = values
            out[f"STD({m})"] = np.where(np.isfinite(values), 0.0, np.nan)
    return out
