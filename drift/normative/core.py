"""Versioned normative morphometric databases, each linked to the model version that made it.

A normative database holds healthy subjects' PAM50-normalised per-slice metrics in Spinal
Cord Toolbox's layout (what SCT ships as ``PAM50-normalized-metrics`` and reads in
``sct_compute_compression -normalize-hc 1``)::

    spinal_cord/sub-XXX_<contrast>_PAM50.csv   one per subject, SCT's per-PAM50-slice CSV
    participants.tsv                            participant_id, sex, age, manufacturer, ...
    README.md, participants.json, LICENSE        kept as they are when present

Storage (in the cordwatch registry, MLflow): database ``NAME`` is the experiment
``cordwatch-normative/NAME``; version ``V`` (an integer, ordered as one) is one FINISHED run
tagged ``cordwatch.kind=normative-version`` and ``cordwatch.normative.*`` (``name``,
``version``, ``kind`` = import | rescale | recompute, ``source``, ``model`` = the
segmentation model ``NAME/VERSION`` that produced the values, ``parent``, ``files_sha256``,
``sha256`` of the manifest, ``n_subjects``, ``created_by``, ``created_utc``, ...). Its
artifacts are the files above, byte for byte, plus ``manifest.json`` (path, size and sha256
of every other artifact; the run's ``sha256`` tag authenticates it) and, for a rescale or a
recompute, the records under ``cordwatch/`` (factor tables, the drift result used, notes).

Writing is all-or-nothing: the run is created (RUNNING), the files uploaded, downloaded
again and verified, and only then marked FINISHED; readers ignore every other run. Reading
always verifies the manifest: a changed, missing or extra artifact is an IntegrityError
naming the stored file (exit 2).

Updating after a model change (``update``):

* **rescale** (default when the cohort images are not available): from a drift result
  (``cordwatch drift check --json``), whose factors are candidate / baseline, the new database
  (for the candidate model) = old values x factor, per PAM50 slice (the slice profile where it
  has enough pairs, else the level factor): ``area`` by the area factor, ``diameter_AP`` and
  ``diameter_RL`` by their own; shape metrics (eccentricity, solidity, orientation, angles)
  and lengths are left as they are. Refused when the scaling is not uniform enough (the
  policy in ``reference_data/normative_policy.yaml``) or when the drift result's baseline is
  not the model the database was made with. A rescale is recorded as such, never passed off
  as a recompute.
* **recompute**: segment a cohort with the new model
  (:func:`drift.cohort.evaluate.evaluate_version`,
  cached) and write fresh SCT-layout CSVs.

Compute (summaries, z-scores, rescaling plans, CSV rewriting) is pure and comes first; the
registry store and the operations that touch it come last. MLflow is imported only when a
registry is touched.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from drift import __version__
from drift.measure.levels import level_name, level_number, pam50_levels
from drift.measure.sctcsv import (
    COLUMNS_23,
    COLUMNS_29,
    METRICS,
    METRICS_29,
    read_sct_csv,
    write_sct_csv,
)
from registry.errors import InputError, IntegrityError, RegistryError
from registry.manifest import Manifest, build_manifest, read_verified_manifest, verify_tree
from registry.refs import check_model_name, parse_ref

if TYPE_CHECKING:
    from mlflow.entities import Run

    from registry.api import Registry

EXPERIMENT_PREFIX = "cordwatch-normative/"
DATA_DIR = "spinal_cord"
PARTICIPANTS = "participants.tsv"
MANIFEST = "manifest.json"
RECORDS_DIR = "cordwatch"
#: Top-level files kept byte for byte when the source has them (besides participants.tsv).
EXTRA_FILES: tuple[str, ...] = ("README.md", "participants.json", "LICENSE", "CITATION.cff")
KINDS: tuple[str, ...] = ("import", "rescale", "recompute")
KIND_TAG = "cordwatch.kind"
KIND_VALUE = "normative-version"
TAG = "cordwatch.normative."
#: Metrics summarised per level (SCT's ``MEAN(<metric>)`` columns).
SUMMARY_METRICS: tuple[str, ...] = (
    "area",
    "diameter_AP",
    "diameter_RL",
    "eccentricity",
    "solidity",
    "orientation",
    "angle_AP",
    "angle_RL",
)
#: Metrics a subject is z-scored on by default.
ZSCORE_METRICS: tuple[str, ...] = ("area", "diameter_AP", "diameter_RL", "eccentricity", "solidity")
#: Metrics a rescale multiplies by their own scaling factor (MEAN and STD columns); every
#: other column (angles, eccentricity, solidity, orientation, lengths, ids) is left as it is.
RESCALED_METRICS: tuple[str, ...] = ("area", "diameter_AP", "diameter_RL", "diameter_AP_ellipse")
PERCENTILES: tuple[float, ...] = (2.5, 5.0, 25.0, 50.0, 75.0, 95.0, 97.5)
DEFAULT_POLICY_PATH = (
    Path(__file__).resolve().parents[2] / "reference_data" / "normative_policy.yaml"
)
RESCALE_NOTE = (
    "RESCALE, not a recompute: the parent's per-slice values multiplied by the scaling factors "
    "measured between the two models on a drift cohort (candidate / baseline). area, "
    "diameter_AP and diameter_RL are rescaled; shape metrics (eccentricity, solidity, "
    "orientation, angles) and lengths are the parent's values, unchanged."
)
_CSV_NAME = re.compile(r"^(sub-[A-Za-z0-9]+)_(.+)_PAM50\.csv$")
_VERSION_TEXT = re.compile(r"^[vV]?(\d+)$")


# --------------------------------------------------------------------------------------------
# References and filters
# --------------------------------------------------------------------------------------------


def check_db_name(name: str) -> str:
    """A database name: letters, digits and ``._+-`` (no ``/``, ``@`` or spaces).

    >>> check_db_name("pam50-hc")
    'pam50-hc'
    """
    try:
        return check_model_name(name)
    except InputError as err:
        raise InputError(
            "invalid normative database name: use letters, digits and . _ + -", name or "''"
        ) from err


def parse_db_ref(text: str) -> tuple[str, int | None]:
    """``NAME@VERSION``, ``NAME@vVERSION``, ``NAME@latest`` or ``NAME`` -> (name, version);
    version None means the latest.

    >>> parse_db_ref("pam50@3"), parse_db_ref("pam50@latest"), parse_db_ref("pam50")
    (('pam50', 3), ('pam50', None), ('pam50', None))
    """
    raw = (text or "").strip()
    name, sep, version = raw.partition("@")
    check_db_name(name)
    if not sep or version.lower() == "latest":
        return name, None
    m = _VERSION_TEXT.match(version)
    if not m or int(m.group(1)) < 1:
        raise InputError("expected NAME@VERSION (a positive integer), NAME@latest or NAME", raw)
    return name, int(m.group(1))


def parse_age_range(text: str | None) -> tuple[float | None, float | None] | None:
    """``20:40`` -> (20, 40), inclusive; ``60:`` and ``:30`` are open-ended; None -> None.

    >>> parse_age_range("20:40"), parse_age_range("60:"), parse_age_range(None)
    ((20.0, 40.0), (60.0, None), None)
    """
    if text is None or not text.strip():
        return None
    lo, sep, hi = text.strip().partition(":")
    try:
        if not sep:
            raise ValueError
        low = float(lo) if lo.strip() else None
        high = float(hi) if hi.strip() else None
    except ValueError as err:
        raise InputError("age range must look like LO:HI (e.g. 20:40, 60: or :30)", text) from err
    if low is not None and high is not None and low > high:
        raise InputError("age range: LO is greater than HI", text)
    return low, high


@dataclass(frozen=True)
class Filters:
    """Which reference subjects to use: sex (``M``/``F``), inclusive age range, vendor
    (``manufacturer`` column); None = any."""

    sex: str | None = None
    age: tuple[float | None, float | None] | None = None
    vendor: str | None = None

    def __post_init__(self) -> None:
        if self.sex is not None:
            sex = self.sex.strip().upper()
            if sex not in ("M", "F"):
                raise InputError("sex must be M or F", self.sex)
            object.__setattr__(self, "sex", sex)
        if self.vendor is not None:
            object.__setattr__(self, "vendor", self.vendor.strip() or None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sex": self.sex,
            "age": None if self.age is None else list(self.age),
            "vendor": self.vendor,
        }

    def describe(self) -> str:
        """One line for people.

        >>> Filters(sex="F", age=(20, None)).describe()
        'sex F, age >= 20'
        """
        parts = []
        if self.sex:
            parts.append(f"sex {self.sex}")
        if self.age is not None:
            lo, hi = self.age
            if lo is not None and hi is not None:
                parts.append(f"age {lo:g}-{hi:g}")
            elif lo is not None:
                parts.append(f"age >= {lo:g}")
            elif hi is not None:
                parts.append(f"age <= {hi:g}")
        if self.vendor:
            parts.append(f"vendor {self.vendor}")
        return ", ".join(parts) or "all subjects"


def select_subjects(participants: pd.DataFrame, filters: Filters) -> list[str]:
    """participant_id of the rows matching ``filters`` (sex and vendor case-insensitive; a
    subject with no usable value for a filtered field is left out).

    >>> p = pd.DataFrame({"participant_id": ["sub-1", "sub-2", "sub-3"], "sex": ["F", "M", "f"],
    ...                   "age": ["25", "n/a", "61"], "manufacturer": ["GE", "GE", "Siemens"]})
    >>> select_subjects(p, Filters(sex="F")), select_subjects(p, Filters(age=(20, 40)))
    (['sub-1', 'sub-3'], ['sub-1'])
    """
    keep = pd.Series(True, index=participants.index)
    if filters.sex:
        if "sex" not in participants.columns:
            raise InputError("participants.tsv has no 'sex' column to filter on", PARTICIPANTS)
        keep &= participants["sex"].astype(str).str.strip().str.upper() == filters.sex.upper()
    if filters.age is not None:
        if "age" not in participants.columns:
            raise InputError("participants.tsv has no 'age' column to filter on", PARTICIPANTS)
        age = pd.to_numeric(participants["age"], errors="coerce")
        lo, hi = filters.age
        keep &= age.notna()
        if lo is not None:
            keep &= age >= lo
        if hi is not None:
            keep &= age <= hi
    if filters.vendor:
        if "manufacturer" not in participants.columns:
            raise InputError(
                "participants.tsv has no 'manufacturer' column to filter on", PARTICIPANTS
            )
        vendor = participants["manufacturer"].astype(str).str.strip().str.lower()
        keep &= vendor == filters.vendor.strip().lower()
    return participants.loc[keep, "participant_id"].astype(str).tolist()


# --------------------------------------------------------------------------------------------
# Reading a database folder
# --------------------------------------------------------------------------------------------


@dataclass
class NormativeData:
    """A database folder read into tables: ``tidy`` (subject, contrast, level, slice,
    metrics...), ``participants`` (participants.tsv as text) and the CSVs by subject."""

    tidy: pd.DataFrame
    participants: pd.DataFrame
    files: dict[str, Path]
    contrast: str
    layout: int  # 23 or 29 columns


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


def read_participants(path: Path) -> pd.DataFrame:
    """participants.tsv as text columns; needs ``participant_id``, unique."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"not a readable TSV ({type(err).__name__})", path) from err
    if "participant_id" not in table.columns:
        raise InputError("no participant_id column", path)
    dup = table["participant_id"][table["participant_id"].duplicated()]
    if not dup.empty:
        raise InputError(f"participant {dup.iloc[0]} listed twice", path)
    return table


def _pam50_level_of_slice() -> np.ndarray:
    table = pam50_levels()
    out = np.zeros(int(table["slice_max"].max()) + 1, dtype=int)
    for row in table.itertuples():
        out[int(row.slice_min) : int(row.slice_max) + 1] = int(row.level)
    return out


def pam50_mismatch(tidy: pd.DataFrame) -> pd.Series:
    """Per subject: the share of rows whose VertLevel is not the PAM50 level of their slice
    (0 for a PAM50-normalised table; large for native-space slice numbers)."""
    lookup = _pam50_level_of_slice()
    slices = tidy["slice"].to_numpy(dtype=int)
    inside = (slices >= 0) & (slices < len(lookup))
    expected = np.where(inside, lookup[np.clip(slices, 0, len(lookup) - 1)], -1)
    wrong = pd.Series(expected != tidy["level"].to_numpy(dtype=int), index=tidy.index)
    return wrong.groupby(tidy["subject"]).mean()


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
    level = pd.to_numeric(raw["VertLevel"].astype(str).str.strip(), errors="coerce")
    slc = pd.to_numeric(raw["Slice (I->S)"].astype(str).str.strip(), errors="coerce")
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


def _read_raw(path: Path) -> tuple[pd.DataFrame, int]:
    """An SCT per-slice CSV as read by :func:`read_sct_csv`, with its layout (23 or 29)."""
    raw = read_sct_csv(path)
    columns = list(raw.columns)
    if columns == COLUMNS_23:
        return raw, 23
    if columns == COLUMNS_29:
        return raw, 29
    raise InputError("columns are not SCT's 23- or 29-column per-slice layout", path)


def _checked_tidy(raws: Sequence[pd.DataFrame], paths: Mapping[str, Path]) -> pd.DataFrame:
    tidy = tidy_from_sct(pd.concat(raws, ignore_index=True))
    for subject, path in paths.items():
        if not (tidy["subject"] == subject).any():
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
    raw = raw.assign(subject=subject, contrast=contrast)
    return _checked_tidy([raw], {subject: path}), layout


def read_database(data_dir: Path, participants_path: Path) -> NormativeData:
    """Read and validate a database folder (every CSV, participants.tsv); InputError naming
    the first bad file. Only ``sub-*_*_PAM50.csv`` may be in the CSV folder."""
    files: dict[str, Path] = {}
    contrasts: set[str] = set()
    layouts: set[int] = set()
    raws = []
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
        raws.append(raw.assign(subject=subject, contrast=contrast))
    tidy = _checked_tidy(raws, files)
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


# --------------------------------------------------------------------------------------------
# Pure statistics: level means, summaries, z-scores
# --------------------------------------------------------------------------------------------


def subject_level_means(tidy: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per (subject, level): the mean of each metric over the level's finite slices.

    >>> t = pd.DataFrame({"subject": ["s", "s", "s"], "level": [3, 3, 4],
    ...                   "area": [70.0, np.nan, 60.0]})
    >>> subject_level_means(t, ["area"]).values.tolist()
    [['s', 3, 70.0], ['s', 4, 60.0]]
    """
    cols = [m for m in metrics if m in tidy.columns]
    out = tidy.groupby(["subject", "level"], sort=True)[cols].mean()
    return out.reset_index()


def _summary_row(values: np.ndarray) -> dict[str, float]:
    row: dict[str, float] = {
        "n": float(values.size),
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if values.size > 1 else math.nan,
    }
    for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True):
        row[f"p{q:g}"] = float(v)
    return row


def level_summary(means: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per (metric, level) over subjects: ``n`` subjects with a finite level mean, ``mean``,
    ``sd`` (ddof=1) and the percentiles 2.5, 5, 25, 50, 75, 95, 97.5 (linear interpolation).

    >>> m = pd.DataFrame({"subject": list("abcd"), "level": 3, "area": [1.0, 2.0, 3.0, 4.0]})
    >>> level_summary(m, ["area"])[["level_name", "n", "mean", "p50"]].values.tolist()
    [['C3', 4, 2.5, 2.5]]
    """
    columns = [
        "metric",
        "level",
        "level_name",
        "n",
        "mean",
        "sd",
        *(f"p{q:g}" for q in PERCENTILES),
    ]
    rows = []
    for metric in metrics:
        if metric not in means.columns:
            continue
        for level, grp in means.groupby("level", sort=True):
            values = grp[metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            rows.append(
                {"metric": metric, "level": int(level), "level_name": level_name(int(level))}
                | _summary_row(values)
            )
    out = pd.DataFrame(rows, columns=columns)
    out["n"] = out["n"].astype(int)
    return out


def zscore_table(
    subject_means: pd.DataFrame, reference_means: pd.DataFrame, metrics: Sequence[str]
) -> pd.DataFrame:
    """Per (metric, level) where the subject has a value and the reference >= 2 subjects:
    ``value``, reference ``n``/``mean``/``sd``, ``z`` = (value - mean) / sd and ``percentile``
    (share of reference subjects below the value, ties counted half, in %).

    >>> ref = pd.DataFrame({"subject": list("abcd"), "level": 3, "area": [60.0, 70, 80, 90]})
    >>> sub = pd.DataFrame({"subject": ["x"], "level": [3], "area": [75.0]})
    >>> r = zscore_table(sub, ref, ["area"]).iloc[0]
    >>> float(round(r["z"], 6)), float(r["percentile"])
    (0.0, 50.0)
    """
    rows = []
    for metric in metrics:
        if metric not in subject_means.columns or metric not in reference_means.columns:
            continue
        for row in subject_means.itertuples(index=False):
            level = int(row.level)
            value = float(getattr(row, metric))
            if not math.isfinite(value):
                continue
            ref = reference_means.loc[reference_means["level"] == level, metric]
            ref_values = ref.to_numpy(dtype=float)
            ref_values = ref_values[np.isfinite(ref_values)]
            if ref_values.size < 2:
                continue
            mean, sd = float(ref_values.mean()), float(ref_values.std(ddof=1))
            below = float((ref_values < value).sum() + 0.5 * (ref_values == value).sum())
            rows.append(
                {
                    "metric": metric,
                    "level": level,
                    "level_name": level_name(level),
                    "value": value,
                    "n": int(ref_values.size),
                    "mean": mean,
                    "sd": sd,
                    "z": (value - mean) / sd if sd > 0 else math.nan,
                    "percentile": 100.0 * below / ref_values.size,
                }
            )
    cols = ["metric", "level", "level_name", "value", "n", "mean", "sd", "z", "percentile"]
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------------------------
# The rescale policy
# --------------------------------------------------------------------------------------------

_POLICY_KEYS = (
    "schema",
    "max_slicewise_cov_pct",
    "max_level_spread_pct",
    "max_ci_width_pct",
    "min_subjects",
    "slice_factors",
    "min_slice_pairs",
    "uncovered_levels",
)


@dataclass(frozen=True)
class NormativePolicy:
    """When a database may be rescaled instead of recomputed (see the YAML's comments)."""

    max_slicewise_cov_pct: float = 2.0
    max_level_spread_pct: float = 2.0
    max_ci_width_pct: float | None = 2.0
    min_subjects: int = 5
    slice_factors: str = "profile"
    min_slice_pairs: int = 5
    uncovered_levels: str = "blank"
    source: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1} | {k: getattr(self, k) for k in _POLICY_KEYS[1:]}

    @property
    def sha256(self) -> str:
        """sha256 of the canonical JSON of the values (not of the file's text)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a repeated key would silently win)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    for key in keys:
        if keys.count(key) > 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_normative_policy(data: Any, source: str | Path | None = None) -> NormativePolicy:
    """Validate a policy document (a mapping); InputError naming ``source`` otherwise."""
    where = None if source is None else str(source)

    def bad(message: str) -> InputError:
        return InputError(f"normative policy: {message}", where)

    if not isinstance(data, Mapping):
        raise bad("expected a mapping of settings")
    unknown = sorted(set(map(str, data)) - set(_POLICY_KEYS))
    if unknown:
        raise bad(f"unknown key(s) {unknown} (allowed: {list(_POLICY_KEYS)})")
    if data.get("schema", 1) != 1:
        raise bad(f"schema must be 1, not {data.get('schema')!r}")
    defaults = NormativePolicy()

    def number(key: str, *, optional: bool = False, integer: bool = False) -> Any:
        value = data.get(key, getattr(defaults, key))
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(f"{key} must be a number{' or null' if optional else ''}, not {value!r}")
        if integer and (not float(value).is_integer() or value < 1):
            raise bad(f"{key} must be a positive integer, not {value!r}")
        if not math.isfinite(float(value)) or value < 0:
            raise bad(f"{key} must be a finite number >= 0, not {value!r}")
        return int(value) if integer else float(value)

    def choice(key: str, allowed: Sequence[str]) -> str:
        value = data.get(key, getattr(defaults, key))
        if value not in allowed:
            raise bad(f"{key} must be one of {list(allowed)}, not {value!r}")
        return str(value)

    return NormativePolicy(
        max_slicewise_cov_pct=number("max_slicewise_cov_pct"),
        max_level_spread_pct=number("max_level_spread_pct"),
        max_ci_width_pct=number("max_ci_width_pct", optional=True),
        min_subjects=number("min_subjects", integer=True),
        slice_factors=choice("slice_factors", ("profile", "level")),
        min_slice_pairs=number("min_slice_pairs", integer=True),
        uncovered_levels=choice("uncovered_levels", ("blank", "refuse")),
        source=where,
    )


def load_normative_policy(path: str | Path | None = None) -> NormativePolicy:
    """The policy in ``path`` (default ``reference_data/normative_policy.yaml``; the built-in
    defaults when that file is not there)."""
    target = Path(path) if path is not None else DEFAULT_POLICY_PATH
    if not target.is_file():
        if path is None:
            return NormativePolicy(source="builtin default")
        raise InputError("policy file not found", target)
    try:
        data = yaml.load(target.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        why = getattr(err, "problem", None) or err.__class__.__name__
        raise InputError(f"not valid YAML ({why})", target) from err
    return parse_normative_policy(data, target)


# --------------------------------------------------------------------------------------------
# Pure rescaling: drift result -> factor plan -> rewritten CSV text
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scaling:
    """The parts of a drift result a rescale uses."""

    levels: (
        pd.DataFrame
    )  # metric, level, scaling_factor, ci95_low, ci95_high, slicewise_cov, n_subjects
    profile: pd.DataFrame  # metric, slice, level, n, scaling_factor[, q025, q975]
    baseline: str | None
    candidate: str | None
    verdict: str | None


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def parse_scaling(doc: Any, source: str | Path | None = None) -> Scaling:
    """Validate the drift result JSON (``cordwatch drift check/compare --json``)."""
    where = None if source is None else str(source)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("metrics"), Mapping):
        raise InputError("not a cordwatch drift result (no 'metrics' object)", where)
    level_rows, profile_rows = [], []
    for metric, entry in doc["metrics"].items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("levels"), Mapping):
            raise InputError(f"drift result: metrics.{metric} has no 'levels' object", where)
        for name, lv in entry["levels"].items():
            try:
                number = level_number(str(name))
                ci = lv.get("ci95") or [None, None]
                level_rows.append(
                    {
                        "metric": str(metric),
                        "level": number,
                        "scaling_factor": _num(lv["scaling_factor"]),
                        "ci95_low": _num(ci[0]),
                        "ci95_high": _num(ci[1]),
                        "slicewise_cov": _num(lv.get("slicewise_cov")),
                        "n_subjects": int(lv.get("n_subjects") or 0),
                    }
                )
            except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
                raise InputError(
                    f"drift result: bad entry metrics.{metric}.levels.{name} ({err})", where
                ) from err
        prof = entry.get("slice_profile") or {}
        if prof:
            try:
                n = len(prof["slice"])
                for i in range(n):
                    row = {
                        "metric": str(metric),
                        "slice": int(prof["slice"][i]),
                        "level": int(prof["level"][i]),
                        "n": int(prof["n"][i]),
                        "scaling_factor": _num(prof["scaling_factor"][i]),
                    }
                    for extra in ("q025", "q975"):
                        if extra in prof:
                            row[extra] = _num(prof[extra][i])
                    profile_rows.append(row)
            except (KeyError, TypeError, ValueError, IndexError) as err:
                raise InputError(
                    f"drift result: bad metrics.{metric}.slice_profile ({err})", where
                ) from err
    prov = doc.get("provenance") or {}

    def ref(role: str) -> str | None:
        value = prov.get(role) if isinstance(prov, Mapping) else None
        if isinstance(value, Mapping):
            value = value.get("ref")
        return str(value) if value else None

    level_cols = [
        "metric",
        "level",
        "scaling_factor",
        "ci95_low",
        "ci95_high",
        "slicewise_cov",
        "n_subjects",
    ]
    return Scaling(
        levels=pd.DataFrame(level_rows, columns=level_cols),
        profile=pd.DataFrame(
            profile_rows,
            columns=["metric", "slice", "level", "n", "scaling_factor"]
            + [c for c in ("q025", "q975") if any(c in r for r in profile_rows)],
        ),
        baseline=ref("baseline"),
        candidate=ref("candidate"),
        verdict=str(doc["verdict"]) if doc.get("verdict") else None,
    )


@dataclass
class RescalePlan:
    """Factors per (metric, level, slice) of the database rows, and how they were chosen.

    ``lookup[(metric, level, slice)]`` is the factor, or None: blank the value (no usable
    factor at that level). ``levels`` and ``slices`` are the recorded factor tables.
    """

    lookup: dict[tuple[str, int, int], float | None]
    levels: pd.DataFrame
    slices: pd.DataFrame
    blanked: dict[str, list[str]]
    metrics: list[str]


def rescale_plan(
    scaling: Scaling,
    db_rows: pd.DataFrame,
    policy: NormativePolicy,
) -> RescalePlan:
    """Choose a factor for every database row (``db_rows``: metric, level, slice of the
    rows holding a value) or refuse with every reason (InputError, one line).

    Refused when a rescaled metric has no factors at all, when a used level's slice-wise CoV
    exceeds ``max_slicewise_cov_pct`` (or is unknown), its 95 % CI is wider than
    ``max_ci_width_pct``, when a metric's level factors spread more than
    ``max_level_spread_pct`` ((max - min) / mean), or, with ``uncovered_levels: refuse``,
    when a database level has no factor measured on >= ``min_subjects`` subjects.
    """
    reasons: list[str] = []
    metrics = [m for m in RESCALED_METRICS if m in set(db_rows["metric"])]
    lookup: dict[tuple[str, int, int], float | None] = {}
    level_records, slice_records = [], []
    blanked: dict[str, list[str]] = {}
    for metric in metrics:
        rows = db_rows[db_rows["metric"] == metric]
        lv = scaling.levels[scaling.levels["metric"] == metric].set_index("level")
        if lv.empty:
            reasons.append(f"{metric}: the drift result has no scaling factors for it")
            continue
        db_levels = sorted(int(x) for x in rows["level"].unique())
        usable = [
            lvl
            for lvl in db_levels
            if lvl in lv.index
            and lv.loc[lvl, "n_subjects"] >= policy.min_subjects
            and math.isfinite(lv.loc[lvl, "scaling_factor"])
            and lv.loc[lvl, "scaling_factor"] > 0
        ]
        uncovered = [lvl for lvl in db_levels if lvl not in usable]
        if uncovered:
            names = [level_name(x) for x in uncovered]
            if policy.uncovered_levels == "refuse":
                reasons.append(
                    f"{metric}: no factor from >= {policy.min_subjects} subjects at "
                    f"{', '.join(names)} (uncovered_levels: refuse)"
                )
            blanked[metric] = names
        for lvl in usable:
            f = float(lv.loc[lvl, "scaling_factor"])
            cov = float(lv.loc[lvl, "slicewise_cov"])
            where = f"{metric} {level_name(lvl)}"
            if not math.isfinite(cov):
                reasons.append(f"{where}: slice-wise CoV unknown (no per-slice ratios)")
            elif cov > policy.max_slicewise_cov_pct:
                reasons.append(
                    f"{where}: slice-wise CoV {cov:.2f} % > {policy.max_slicewise_cov_pct:.2f} %"
                )
            lo, hi = float(lv.loc[lvl, "ci95_low"]), float(lv.loc[lvl, "ci95_high"])
            if policy.max_ci_width_pct is not None:
                width = 100.0 * (hi - lo) / f
                if not math.isfinite(width):
                    reasons.append(f"{where}: 95 % CI of the factor unknown")
                elif width > policy.max_ci_width_pct:
                    reasons.append(
                        f"{where}: 95 % CI [{lo:.4f}, {hi:.4f}] is {width:.2f} % wide > "
                        f"{policy.max_ci_width_pct:.2f} %"
                    )
        if len(usable) > 1:
            factors = lv.loc[usable, "scaling_factor"].astype(float)
            spread = 100.0 * (factors.max() - factors.min()) / factors.mean()
            if spread > policy.max_level_spread_pct:
                reasons.append(
                    f"{metric}: level factors spread {spread:.2f} % "
                    f"({level_name(int(factors.idxmin()))} {factors.min():.4f} .. "
                    f"{level_name(int(factors.idxmax()))} {factors.max():.4f}) > "
                    f"{policy.max_level_spread_pct:.2f} %"
                )
        for lvl in db_levels:
            row = lv.loc[lvl] if lvl in lv.index else None
            level_records.append(
                {
                    "metric": metric,
                    "level": lvl,
                    "level_name": level_name(lvl),
                    "scaling_factor": math.nan if row is None else float(row["scaling_factor"]),
                    "ci95_low": math.nan if row is None else float(row["ci95_low"]),
                    "ci95_high": math.nan if row is None else float(row["ci95_high"]),
                    "slicewise_cov_pct": math.nan if row is None else float(row["slicewise_cov"]),
                    "n_subjects": 0 if row is None else int(row["n_subjects"]),
                    "used": lvl in usable,
                }
            )
        prof = scaling.profile[scaling.profile["metric"] == metric]
        by_slice = {int(r["slice"]): r for r in prof.to_dict("records")}
        for lvl, slc in sorted(
            {(int(a), int(b)) for a, b in zip(rows["level"], rows["slice"], strict=True)}
        ):
            record: dict[str, Any] = {
                "metric": metric,
                "slice": slc,
                "level": lvl,
                "level_name": level_name(lvl),
                "factor": math.nan,
                "source": "blank",
                "n_pairs": 0,
                "q025": math.nan,
                "q975": math.nan,
                "ci95_low": math.nan,
                "ci95_high": math.nan,
            }
            factor: float | None = None
            if lvl in usable:
                p = by_slice.get(slc)
                if (
                    policy.slice_factors == "profile"
                    and p is not None
                    and int(p["level"]) == lvl
                    and int(p["n"]) >= policy.min_slice_pairs
                    and math.isfinite(p["scaling_factor"])
                    and p["scaling_factor"] > 0
                ):
                    factor = float(p["scaling_factor"])
                    record.update(
                        source="profile",
                        n_pairs=int(p["n"]),
                        q025=p.get("q025", math.nan),
                        q975=p.get("q975", math.nan),
                    )
                else:
                    factor = float(lv.loc[lvl, "scaling_factor"])
                    record.update(
                        source="level",
                        n_pairs=int(p["n"]) if p is not None else 0,
                        ci95_low=float(lv.loc[lvl, "ci95_low"]),
                        ci95_high=float(lv.loc[lvl, "ci95_high"]),
                    )
                record["factor"] = factor
            lookup[(metric, lvl, slc)] = factor
            slice_records.append(record)
    if reasons:
        raise InputError(
            "refusing to rescale (scaling not uniform enough or not measured; recompute "
            f"instead): {'; '.join(reasons)} (policy {policy.source or 'builtin default'})"
        )
    return RescalePlan(
        lookup=lookup,
        levels=pd.DataFrame(level_records),
        slices=pd.DataFrame(slice_records),
        blanked=blanked,
        metrics=metrics,
    )


def _format_float(value: float) -> str:
    """Python's shortest round-trip repr (what pandas writes), e.g. ``50.67974134073073``."""
    return repr(float(value))


def rescale_sct_text(
    text: str,
    factor: Callable[[str, int | None, int | None], float | None],
    metrics: Sequence[str] = RESCALED_METRICS,
) -> str:
    """Rewrite an SCT per-slice CSV: ``MEAN(m)`` and ``STD(m)`` of each metric in ``metrics``
    multiplied by ``factor(m, level, slice)`` (None: emptied); empty cells stay empty and
    every other cell is kept as written (same text, same line endings).

    >>> text = ("Slice (I->S),VertLevel,MEAN(area),STD(area),MEAN(solidity)\\n"
    ...         "5,3,10.0,0.0,0.9\\n6,3,,,\\n")
    >>> print(rescale_sct_text(text, lambda m, lv, s: 0.5), end="")
    Slice (I->S),VertLevel,MEAN(area),STD(area),MEAN(solidity)
    5,3,5.0,0.0,0.9
    6,3,,,
    """
    newline = "\r\n" if "\r\n" in text else "\n"
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return text
    header = rows[0]
    i_slice = header.index("Slice (I->S)")
    i_level = header.index("VertLevel")
    targets = [
        (m, header.index(col))
        for m in metrics
        for col in (f"MEAN({m})", f"STD({m})")
        if col in header
    ]
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(header)
    for row in rows[1:]:
        if not row:
            continue
        level = _int_or_none(row[i_level])
        slc = _int_or_none(row[i_slice])
        for metric, idx in targets:
            cell = row[idx].strip()
            if not cell:
                continue
            value = float(cell)
            if not math.isfinite(value):
                continue
            f = factor(metric, level, slc)
            row[idx] = "" if f is None else _format_float(value * f)
        writer.writerow(row)
    result = out.getvalue()
    return result if text.endswith(("\n", "\r")) else result.rstrip("\r\n")


def _int_or_none(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value.is_integer() else None


# --------------------------------------------------------------------------------------------
# A synthetic database (tests, benchmarks, examples)
# --------------------------------------------------------------------------------------------

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
    lookup = _pam50_level_of_slice()
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


# --------------------------------------------------------------------------------------------
# Versions in the registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormativeVersion:
    """One stored version of a normative database."""

    name: str
    version: int
    kind: str
    source: str
    model: str | None
    parent: int | None
    files_sha256: str
    sha256: str
    n_subjects: int
    n_files: int
    contrast: str
    created_by: str
    created: str
    run_id: str
    artifact_uri: str
    tags: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def stored(self, rel: str) -> str:
        """Where an artifact of this version is stored (for messages)."""
        return f"{self.artifact_uri.rstrip('/')}/{rel}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "kind": self.kind,
            "source": self.source,
            "model": self.model,
            "parent": self.parent,
            "files_sha256": self.files_sha256,
            "sha256": self.sha256,
            "n_subjects": self.n_subjects,
            "n_files": self.n_files,
            "contrast": self.contrast,
            "created_by": self.created_by,
            "created": self.created,
            "run_id": self.run_id,
            "artifact_uri": self.artifact_uri,
            "tags": dict(sorted(self.tags.items())),
        }


def _version_from_run(run: Run) -> NormativeVersion:
    tags = dict(run.data.tags)

    def tag(key: str, default: str = "") -> str:
        return tags.get(TAG + key, default)

    parent = tag("parent")
    return NormativeVersion(
        name=tag("name"),
        version=int(tag("version", "0")),
        kind=tag("kind"),
        source=tag("source"),
        model=tag("model") or None,
        parent=int(parent) if parent.isdigit() else None,
        files_sha256=tag("files_sha256"),
        sha256=tag("sha256"),
        n_subjects=int(tag("n_subjects", "0") or 0),
        n_files=int(tag("n_files", "0") or 0),
        contrast=tag("contrast"),
        created_by=tag("created_by"),
        created=tag("created_utc"),
        run_id=run.info.run_id,
        artifact_uri=run.info.artifact_uri or "",
        tags={k: v for k, v in tags.items() if k.startswith(TAG)},
    )


def files_sha256(manifest: Manifest) -> str:
    """One sha256 over a manifest's files: of the sorted ``"<path> <sha256>\\n"`` lines."""
    lines = sorted(f"{f.path} {f.sha256}\n" for f in manifest.files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def jsonable(obj: Any) -> Any:
    """Recursively: NaN/inf -> None, numpy scalars -> Python, tuples -> lists (for JSON).

    >>> jsonable({"a": np.float64("nan"), "b": (np.int64(2), 1.5)})
    {'a': None, 'b': [2, 1.5]}
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NormativeStore:
    """Normative database versions in one registry (see the module doc for the layout)."""

    def __init__(self, registry: Registry) -> None:
        self.reg = registry

    # -- reading ----------------------------------------------------------------------------
    def _errors(self, subject: str) -> contextlib.AbstractContextManager[None]:
        from registry.api import _mlflow_errors

        return _mlflow_errors(subject, self.reg.tracking_uri)

    def _experiment_id(self, name: str) -> str | None:
        exp = self.reg.client.get_experiment_by_name(EXPERIMENT_PREFIX + name)
        return None if exp is None or exp.lifecycle_stage != "active" else str(exp.experiment_id)

    def _runs(self, exp_id: str, extra: str = "") -> list[Run]:
        query = f"tags.`{KIND_TAG}` = '{KIND_VALUE}'" + (f" and {extra}" if extra else "")
        found: list[Run] = []
        token = None
        while True:
            page = self.reg.client.search_runs(
                [exp_id], filter_string=query, max_results=1000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                return found

    def names(self) -> list[str]:
        """Every database name, sorted."""
        with self._errors(self.reg.tracking_uri):
            exps = self.reg.client.search_experiments(
                filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'"
            )
        return sorted(e.name[len(EXPERIMENT_PREFIX) :] for e in exps)

    def versions(self, name: str) -> list[NormativeVersion]:
        """The finished versions of ``name``, ordered by version number (an integer)."""
        check_db_name(name)
        with self._errors(name):
            exp_id = self._experiment_id(name)
            if exp_id is None:
                return []
            runs = self._runs(exp_id, "attributes.status = 'FINISHED'")
        found: dict[int, NormativeVersion] = {}
        for run in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
            v = _version_from_run(run)
            found.setdefault(v.version, v)  # a duplicate number (should not happen): the first
        return [found[k] for k in sorted(found)]

    def resolve(self, ref: str) -> NormativeVersion:
        """The version ``NAME@VERSION`` / ``NAME@latest`` / ``NAME`` points at."""
        name, number = parse_db_ref(ref)
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no normative database {name!r} in {self.reg.tracking_uri}", ref)
        if number is None:
            return versions[-1]
        for v in versions:
            if v.version == number:
                return v
        raise RegistryError(
            f"no version {number} (versions: {', '.join(str(v.version) for v in versions)})", ref
        )

    def fetch(self, version: NormativeVersion, dest: Path) -> Path:
        """Download a version's artifacts into the empty folder ``dest`` and verify them
        against the manifest (and the manifest against the run's sha256 tag); returns
        ``dest``. A tampered, missing or extra file is an IntegrityError naming it."""
        with self._errors(version.ref):
            local = Path(self.reg.client.download_artifacts(version.run_id, "", str(dest)))
        try:
            manifest = read_verified_manifest(local / MANIFEST, version.sha256)
            if files_sha256(manifest) != version.files_sha256:
                raise IntegrityError("manifest does not match the files_sha256 tag", MANIFEST)
            verify_tree(local, manifest, extra_allowed=[MANIFEST])
        except IntegrityError as err:
            rel = err.path or MANIFEST
            with contextlib.suppress(ValueError):
                rel = Path(rel).relative_to(local).as_posix()
            raise IntegrityError(
                f"{err.message} (normative {version.ref})", version.stored(rel)
            ) from err
        return local

    @contextlib.contextmanager
    def opened(self, ref: str | NormativeVersion) -> Iterator[tuple[NormativeVersion, Path]]:
        """A verified temporary copy of a version: ``with store.opened("db@2") as (v, folder)``."""
        version = ref if isinstance(ref, NormativeVersion) else self.resolve(ref)
        with tempfile.TemporaryDirectory(prefix="cordwatch-normative-") as tmp:
            yield version, self.fetch(version, Path(tmp))

    # -- writing ----------------------------------------------------------------------------
    def _live_versions(self, exp_id: str) -> list[tuple[int, int, str]]:
        """(version, start_time, run_id) of every run that holds a number (not failed)."""
        out = []
        for run in self._runs(exp_id):
            if run.info.status in ("FAILED", "KILLED"):
                continue
            text = run.data.tags.get(TAG + "version", "")
            if text.isdigit():
                out.append((int(text), int(run.info.start_time or 0), run.info.run_id))
        return out

    def _settle(self, exp_id: str, run_id: str, version: int) -> int:
        """Re-check under the write lock that no earlier live run holds ``version`` (two
        writers on a server may have drawn the same number); if one does, take the next
        free number. Returns the number this run keeps."""
        while True:
            live = self._live_versions(exp_id)
            mine = next(((s, r) for v, s, r in live if r == run_id), (0, run_id))
            earlier = [r for v, s, r in live if v == version and r != run_id and (s, r) < mine]
            if not earlier:
                return version
            version = max(v for v, _, _ in live) + 1
            self.reg.client.set_tag(run_id, TAG + "version", str(version))

    def store(self, name: str, folder: Path, tags: Mapping[str, str]) -> NormativeVersion:
        """Store ``folder`` (the staged database files, without manifest.json) as the next
        version of ``name``; nothing is visible unless every step succeeds."""
        from registry.api import current_user

        check_db_name(name)
        if (folder / MANIFEST).exists():
            raise InputError(f"{MANIFEST} is reserved", folder / MANIFEST)
        manifest = build_manifest(folder)
        (folder / MANIFEST).write_bytes(manifest.to_bytes())
        exp_id = self.reg.ensure_experiment(EXPERIMENT_PREFIX + name)
        data_files = [f for f in manifest.files if f.path.startswith(DATA_DIR + "/")]
        all_tags = {
            **{TAG + k: v for k, v in tags.items()},
            KIND_TAG: KIND_VALUE,
            TAG + "name": name,
            TAG + "sha256": manifest.sha256,
            TAG + "files_sha256": files_sha256(manifest),
            TAG + "n_files": str(len(data_files)),
            TAG + "bytes": str(manifest.total_bytes),
            TAG + "created_by": current_user(),
            TAG + "created_utc": _now(),
            TAG + "cordwatch_version": __version__,
            "mlflow.user": current_user(),
        }
        with self._errors(name):
            with self.reg.write_lock():
                live = self._live_versions(exp_id)
                version = max((v for v, _, _ in live), default=0) + 1
                run = self.reg.client.create_run(
                    exp_id,
                    run_name=f"{name}@{version}",
                    tags=all_tags | {TAG + "version": str(version)},
                )
            run_id = run.info.run_id
            try:
                self.reg.client.log_artifacts(run_id, str(folder))
                with tempfile.TemporaryDirectory(prefix="cordwatch-normative-check-") as tmp:
                    stored = self.reg.client.get_run(run_id)
                    self.fetch(_version_from_run(stored), Path(tmp))
                with self.reg.write_lock():
                    version = self._settle(exp_id, run_id, version)
                    self.reg.client.set_tag(run_id, "mlflow.runName", f"{name}@{version}")
                    self.reg.client.set_terminated(run_id, "FINISHED")
            except BaseException:
                with contextlib.suppress(Exception), self.reg.write_lock():
                    self.reg.client.set_terminated(run_id, "FAILED")
                raise
            return _version_from_run(self.reg.client.get_run(run_id))


def _store_for(registry: Registry | None) -> NormativeStore:
    from registry.api import connect

    return NormativeStore(registry if registry is not None else connect())


def _model_ref(reg: Registry, ref: str, what: str = "--model") -> str:
    """``NAME/VERSION`` of a registered model version (aliases resolved)."""
    parse_ref(ref)
    try:
        return reg.resolve(ref).ref
    except RegistryError as err:
        raise InputError(f"{what}: {err.message}", ref) from err


# --------------------------------------------------------------------------------------------
# The operations
# --------------------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def import_db(
    src_dir: str | Path,
    name: str,
    model_ref: str | None = None,
    *,
    registry: Registry | None = None,
) -> NormativeVersion:
    """Store SCT's normative layout at ``src_dir`` as the next version of ``name``.

    Every CSV is read and validated first (InputError naming the first bad file; nothing is
    stored then); the stored files are byte-identical copies. ``model_ref`` (a registered
    model version, aliases resolved) records which segmentation model made the values.
    """
    check_db_name(name)
    data_dir, participants = locate_layout(src_dir)
    data = read_database(data_dir, participants)
    store = _store_for(registry)
    model = _model_ref(store.reg, model_ref) if model_ref else ""
    with tempfile.TemporaryDirectory(prefix="cordwatch-normative-import-") as tmp:
        staged = Path(tmp)
        for path in data.files.values():
            _copy(path, staged / DATA_DIR / path.name)
        _copy(participants, staged / PARTICIPANTS)
        for extra in EXTRA_FILES:
            candidate = participants.parent / extra
            if candidate.is_file() and not candidate.is_symlink():
                _copy(candidate, staged / extra)
        # What was validated is what is stored: re-read the staged copy's hashes only.
        tags = {
            "kind": "import",
            "source": str(Path(src_dir).resolve()),
            "model": model,
            "parent": "",
            "n_subjects": str(len(data.files)),
            "contrast": data.contrast,
            "layout": str(data.layout),
        }
        return store.store(name, staged, tags)


def list_databases(*, registry: Registry | None = None) -> list[NormativeVersion]:
    """Every version of every database, by name then version number."""
    store = _store_for(registry)
    return [v for name in store.names() for v in store.versions(name)]


def resolve(ref: str, *, registry: Registry | None = None) -> NormativeVersion:
    """The version a ``NAME@VERSION`` / ``NAME@latest`` / ``NAME`` reference points at."""
    return _store_for(registry).resolve(ref)


def load_data(folder: Path) -> NormativeData:
    """A fetched version folder as tables (see :func:`read_database`)."""
    return read_database(folder / DATA_DIR, folder / PARTICIPANTS)


def read_records(folder: Path) -> dict[str, Any]:
    """The JSON records under ``cordwatch/`` of a fetched version (rescale.json, ...)."""
    out: dict[str, Any] = {}
    records = folder / RECORDS_DIR
    if records.is_dir():
        for path in sorted(records.glob("*.json")):
            if path.name != "drift_result.json":
                out[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    return out


def _reference_means(
    data: NormativeData, filters: Filters, metrics: Sequence[str], where: str
) -> pd.DataFrame:
    chosen = set(select_subjects(data.participants, filters)) & set(data.files)
    if not chosen:
        raise InputError(f"no subject of the database matches {filters.describe()}", where)
    tidy = data.tidy[data.tidy["subject"].isin(chosen)]
    return subject_level_means(tidy, metrics)


def summary(
    ref: str,
    sex: str | None = None,
    age: tuple[float | None, float | None] | None = None,
    vendor: str | None = None,
    *,
    metrics: Sequence[str] = SUMMARY_METRICS,
    registry: Registry | None = None,
) -> pd.DataFrame:
    """Per (metric, level) summary of the per-subject level means (see :func:`level_summary`)
    of the database version ``ref``, over the subjects matching the filters."""
    store = _store_for(registry)
    with store.opened(ref) as (version, folder):
        data = load_data(folder)
    means = _reference_means(data, Filters(sex, age, vendor), metrics, version.ref)
    return level_summary(means, metrics)


def export_db(ref: str, dest_dir: str | Path, *, registry: Registry | None = None) -> Path:
    """Write version ``ref`` in SCT's layout into ``dest_dir`` (new or empty folder):
    ``spinal_cord/*.csv``, ``participants.tsv`` and the kept extras exactly as stored,
    ``PROVENANCE.md`` and ``cordwatch/`` (manifest, version record, rescale records).
    Written into a temporary folder and renamed into place: an error leaves nothing."""
    from drift.provenance import base_provenance

    dest = Path(dest_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError("export folder exists and is not empty", dest)
    store = _store_for(registry)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with store.opened(ref) as (version, folder):
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    rel = path.relative_to(folder).as_posix()
                    target = work / (f"{RECORDS_DIR}/{MANIFEST}" if rel == MANIFEST else rel)
                    _copy(path, target)
            records = read_records(folder)
            meta = {
                "format": "cordwatch-normative-export/1",
                "version": version.to_dict(),
                "exported": base_provenance(),
            }
            (work / RECORDS_DIR).mkdir(exist_ok=True)
            (work / RECORDS_DIR / "version.json").write_text(
                json.dumps(meta, indent=2) + "\n", encoding="utf-8"
            )
            (work / "PROVENANCE.md").write_text(
                provenance_markdown(version, records), encoding="utf-8"
            )
            if dest.exists():
                dest.rmdir()
            work.rename(dest)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return dest


def provenance_markdown(version: NormativeVersion, records: Mapping[str, Any]) -> str:
    """The human-readable provenance file of an export."""
    lines = [
        f"# Normative database {version.ref}",
        "",
        "Exported by cordwatch in Spinal Cord Toolbox's layout (`spinal_cord/*_PAM50.csv` +",
        "`participants.tsv`), usable by `sct_compute_compression -normalize-hc 1`.",
        "",
        f"- kind: **{version.kind}**",
        f"- segmentation model: {version.model or 'not recorded'}",
        f"- source: {version.source}",
        f"- parent version: {version.parent if version.parent is not None else '-'}",
        f"- subjects: {version.n_subjects} ({version.contrast})",
        f"- files sha256 (sorted `path sha256` lines): `{version.files_sha256}`",
        f"- manifest sha256: `{version.sha256}` (cordwatch/manifest.json)",
        f"- created: {version.created} by {version.created_by}",
        "",
    ]
    rescale = records.get("rescale")
    if rescale:
        lines += [
            "## Rescale, not a recompute",
            "",
            str(rescale.get("note", RESCALE_NOTE)),
            "",
            f"- baseline model (parent's): {rescale.get('baseline_model')}",
            f"- candidate model (this version's): {rescale.get('candidate_model')}",
            f"- drift result sha256: `{rescale.get('drift_result_sha256')}`",
            "- factors: cordwatch/factors_level.csv, cordwatch/factors_slice.csv",
            "",
        ]
    recompute = records.get("recompute")
    if recompute:
        lines += [
            "## Recomputed",
            "",
            f"Segmented with {recompute.get('model')} on cohort {recompute.get('cohort')} "
            f"({recompute.get('cohort_manifest_sha256')}).",
            "",
        ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- update -----


@dataclass
class UpdateResult:
    """A new version made by :func:`update`, with what a person should be told."""

    version: NormativeVersion
    notes: list[str] = field(default_factory=list)


def _csv_rows(tidy: pd.DataFrame) -> pd.DataFrame:
    """(metric, level, slice) of every database row holding a finite rescaled-metric value."""
    parts = []
    for m in RESCALED_METRICS:
        if m in tidy.columns:
            ok = np.isfinite(tidy[m].to_numpy(dtype=float))
            part = tidy.loc[ok, ["level", "slice"]].drop_duplicates()
            parts.append(part.assign(metric=m))
    if not parts:
        return pd.DataFrame(columns=["metric", "level", "slice"])
    return pd.concat(parts, ignore_index=True)


def update(
    name: str,
    model_ref: str,
    scaling_json: str | Path | None = None,
    *,
    recompute: bool = False,
    cohort: str | Path | None = None,
    root: str | Path | None = None,
    contrast: str | None = None,
    participants: str | Path | None = None,
    device: str = "auto",
    progress: bool = False,
    assume_baseline: bool = False,
    policy_path: str | Path | None = None,
    registry: Registry | None = None,
) -> UpdateResult:
    """Make the next version of ``name`` for the model ``model_ref``: a rescale from the drift
    result ``scaling_json``, or (``recompute=True``) a recompute on ``cohort``."""
    check_db_name(name)
    if (scaling_json is None) == (not recompute):
        raise InputError("give exactly one of --scaling RESULT.json and --recompute", name)
    store = _store_for(registry)
    model = _model_ref(store.reg, model_ref)
    if recompute:
        if cohort is None:
            raise InputError("--recompute needs --cohort MANIFEST (the images to segment)", name)
        return _recompute(
            store, name, model, cohort, root, contrast, participants, device, progress
        )
    assert scaling_json is not None
    return _rescale(store, name, model, Path(scaling_json), assume_baseline, policy_path)


def _rescale(
    store: NormativeStore,
    name: str,
    model: str,
    scaling_path: Path,
    assume_baseline: bool,
    policy_path: str | Path | None,
) -> UpdateResult:
    policy = load_normative_policy(policy_path)
    if not scaling_path.is_file():
        raise InputError("drift result not found", scaling_path)
    raw = scaling_path.read_bytes()
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"not valid JSON ({err.__class__.__name__})", scaling_path) from err
    scaling = parse_scaling(doc, scaling_path)
    parent = store.resolve(name)
    notes: list[str] = []
    if parent.model == model:
        raise InputError(
            f"{parent.ref} was already made with {model}: nothing to rescale", scaling_path
        )
    if scaling.candidate is not None and scaling.candidate != model:
        raise InputError(
            f"the drift result's candidate is {scaling.candidate}, not --model {model}",
            scaling_path,
        )
    problems = []
    if scaling.candidate is None:
        problems.append("the drift result does not name its candidate model")
    if parent.model is None:
        problems.append(f"{parent.ref} records no model")
    if scaling.baseline is None:
        problems.append("the drift result does not name its baseline model")
    elif parent.model is not None and scaling.baseline != parent.model:
        problems.append(
            f"the drift result's baseline is {scaling.baseline} but {parent.ref} was made "
            f"with {parent.model}"
        )
    if problems and not assume_baseline:
        raise InputError(
            "refusing to rescale: "
            + "; ".join(problems)
            + " (the factors must map the database's model to --model; "
            "override with --assume-baseline, which is recorded)",
            scaling_path,
        )
    if problems:
        notes.append("--assume-baseline overrode: " + "; ".join(problems))
    with tempfile.TemporaryDirectory(prefix="cordwatch-normative-rescale-") as tmp:
        work = Path(tmp)
        folder = store.fetch(parent, work / "parent")
        data = load_data(folder)
        plan = rescale_plan(scaling, _csv_rows(data.tidy), policy)

        def factor(metric: str, level: int | None, slc: int | None) -> float | None:
            if level is None or slc is None:
                return None
            return plan.lookup.get((metric, level, slc))

        staged = work / "new"
        for path in sorted((folder / DATA_DIR).iterdir()):
            text = path.read_bytes().decode("utf-8")
            out = staged / DATA_DIR / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(rescale_sct_text(text, factor, plan.metrics).encode("utf-8"))
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name != MANIFEST:
                _copy(path, staged / path.name)
        records = staged / RECORDS_DIR
        records.mkdir()
        (records / "drift_result.json").write_bytes(raw)
        plan.levels.to_csv(records / "factors_level.csv", index=False)
        plan.slices.to_csv(records / "factors_slice.csv", index=False)
        counts = plan.slices.groupby(["metric", "source"]).size() if len(plan.slices) else None
        record: dict[str, Any] = {
            "kind": "rescale",
            "note": RESCALE_NOTE,
            "parent": parent.ref,
            "parent_sha256": parent.sha256,
            "baseline_model": parent.model,
            "candidate_model": model,
            "drift_result": str(scaling_path.resolve()),
            "drift_result_sha256": hashlib.sha256(raw).hexdigest(),
            "drift_result_baseline": scaling.baseline,
            "drift_result_candidate": scaling.candidate,
            "drift_verdict": scaling.verdict,
            "assume_baseline": bool(problems),
            "overrides": problems,
            "policy": policy.to_dict(),
            "policy_sha256": policy.sha256,
            "policy_source": policy.source,
            "rescaled_metrics": plan.metrics,
            "blanked_levels": plan.blanked,
            "slice_factor_sources": {}
            if counts is None
            else {f"{m}:{s}": int(n) for (m, s), n in counts.items()},
        }
        (records / "rescale.json").write_text(json.dumps(record, indent=2) + "\n")
        if plan.blanked:
            notes.append(
                "no usable factor at "
                + "; ".join(f"{m}: {', '.join(v)}" for m, v in plan.blanked.items())
                + " (values emptied there)"
            )
        tags = {
            "kind": "rescale",
            "source": f"rescale of {parent.ref}",
            "model": model,
            "parent": str(parent.version),
            "n_subjects": str(parent.n_subjects),
            "contrast": parent.contrast,
            "layout": parent.tags.get(TAG + "layout", ""),
            "baseline_model": parent.model or "",
            "drift_result_sha256": str(record["drift_result_sha256"]),
            "policy_sha256": policy.sha256,
            "assume_baseline": "true" if problems else "false",
        }
        version = store.store(name, staged, tags)
    return UpdateResult(version, notes)


def _recompute(
    store: NormativeStore,
    name: str,
    model: str,
    cohort_ref: str | Path,
    root: str | Path | None,
    contrast: str | None,
    participants_path: str | Path | None,
    device: str,
    progress: bool,
) -> UpdateResult:
    from drift.cohort.evaluate import evaluate_version
    from drift.cohort.manifest import load_cohort
    from drift.cohort.roots import ensure_root
    from drift.cohort.verify import verify_cohort
    from drift.provenance import base_provenance

    parents = store.versions(name)
    parent = parents[-1] if parents else None
    cohort = load_cohort(cohort_ref)
    cohort_root = ensure_root(cohort, root)
    verify_cohort(cohort, cohort_root).raise_for_problems()
    wanted = contrast or (parent.contrast if parent and "," not in parent.contrast else "T2w")
    if wanted not in cohort.contrasts:
        raise InputError(
            f"the cohort has no {wanted} images (contrasts: {', '.join(cohort.contrasts)}); "
            "choose one with --contrast",
            cohort.manifest,
        )
    info = store.reg.resolve(model)
    provenance = base_provenance() | {"cohort": cohort.provenance(), "model": model}
    # The whole cohort is evaluated (and cached, shared with drift checks): a run logged for
    # a subset under the cohort's hash would be reused for the whole cohort later.
    measured = evaluate_version(
        store.reg,
        info,
        cohort,
        cohort_root,
        cache_dir=store.reg.settings.home / "cache" / "segmentations",
        device=device,
        progress=progress,
        provenance=provenance,
    )
    table = pam50_measurements(measured.table[measured.table["contrast"] == wanted])
    if table.empty:
        raise InputError(f"no {wanted} image of the cohort could be measured", cohort.manifest)
    notes = [f"{len(measured.failures)} image(s) of the cohort failed"] if measured.failures else []
    with tempfile.TemporaryDirectory(prefix="cordwatch-normative-recompute-") as tmp:
        staged = Path(tmp) / "new"
        subjects = sorted(table["subject"].unique())
        images = {it.subject: it.image.path for it in cohort.items if it.contrast == wanted}
        for subject in subjects:
            rows = pam50_rows(table[table["subject"] == subject])
            write_sct_csv(
                rows,
                staged / DATA_DIR / f"{subject}_{wanted}_PAM50.csv",
                filename=images.get(subject, subject),
                version=f"cordwatch {__version__} ({model})",
            )
        parts = _participants_for(
            subjects,
            Path(participants_path) if participants_path else None,
            store,
            parent,
            Path(tmp),
        )
        parts.to_csv(staged / PARTICIPANTS, sep="\t", index=False)
        (staged / RECORDS_DIR).mkdir()
        record = {
            "kind": "recompute",
            "model": model,
            "package_sha256": info.sha256,
            "cohort": cohort.name,
            "cohort_manifest_sha256": cohort.manifest_sha256,
            "contrast": wanted,
            "subjects": subjects,
            "failures": measured.failures,
            "parent": None if parent is None else parent.ref,
            "provenance": provenance,
        }
        (staged / RECORDS_DIR / "recompute.json").write_text(
            json.dumps(record, indent=2, default=str) + "\n"
        )
        tags = {
            "kind": "recompute",
            "source": f"recompute on cohort {cohort.name} ({cohort.manifest_sha256[:12]})",
            "model": model,
            "parent": "" if parent is None else str(parent.version),
            "n_subjects": str(len(subjects)),
            "contrast": wanted,
            "layout": "23",
            "cohort": cohort.name,
            "cohort_sha256": cohort.manifest_sha256,
        }
        version = store.store(name, staged, tags)
    return UpdateResult(version, notes)


def pam50_measurements(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a tidy PAM50 table that hold a measurement at a slice of its own PAM50
    level, one per (subject, contrast, slice). (A table reloaded from a logged run may also
    hold empty rows for other (level, slice) combinations.)

    >>> t = pd.DataFrame({"subject": "s", "contrast": "T2w", "level": [3, 4, 3],
    ...                   "slice": [880, 880, 881], "area": [70.0, np.nan, np.nan]})
    >>> pam50_measurements(t)[["level", "slice", "area"]].values.tolist()
    [[3.0, 880.0, 70.0]]
    """
    metrics = [c for c in table.columns if c not in ("subject", "contrast", "level", "slice")]
    lookup = _pam50_level_of_slice()
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
    lookup = _pam50_level_of_slice()
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


def _participants_for(
    subjects: Sequence[str],
    explicit: Path | None,
    store: NormativeStore,
    parent: NormativeVersion | None,
    tmp: Path,
) -> pd.DataFrame:
    """participants.tsv rows of ``subjects``: from ``explicit``, else the parent version's,
    else a bare ``participant_id`` table; subjects not listed get ``n/a``."""
    if explicit is not None:
        source = read_participants(explicit)
    elif parent is not None:
        folder = store.fetch(parent, tmp / "parent")
        source = read_participants(folder / PARTICIPANTS)
    else:
        source = pd.DataFrame({"participant_id": [], "sex": [], "age": [], "manufacturer": []})
    table = source.set_index("participant_id")
    rows = table.reindex(list(subjects)).astype(object).fillna("n/a")
    return rows.reset_index()


# ------------------------------------------------------------------------------- zscore -----


@dataclass
class ZScoreResult:
    """Per-level z-scores of one subject against a database version, and the model check."""

    table: pd.DataFrame
    database: NormativeVersion
    subject: str
    subject_csv: str
    subject_model: str | None
    model_check: str  # match | mismatch-allowed | unchecked
    warnings: list[str]
    filters: Filters
    n_reference: int

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "subject": self.subject,
                "subject_csv": self.subject_csv,
                "subject_model": self.subject_model,
                "database": self.database.ref,
                "database_model": self.database.model,
                "database_files_sha256": self.database.files_sha256,
                "model_check": self.model_check,
                "warnings": self.warnings,
                "filters": self.filters.to_dict(),
                "n_reference_subjects": self.n_reference,
                "levels": self.table.to_dict("records"),
            }
        )


def zscore(
    subject_csv: str | Path,
    db_ref: str,
    sex: str | None = None,
    age: tuple[float | None, float | None] | None = None,
    vendor: str | None = None,
    model_ref: str | None = None,
    *,
    allow_model_mismatch: bool = False,
    metrics: Sequence[str] = ZSCORE_METRICS,
    registry: Registry | None = None,
) -> ZScoreResult:
    """Per-level z-scores and percentiles of a subject's PAM50-normalised per-slice CSV (its
    level means) against the database's per-subject level means (filtered).

    ``model_ref`` is the model that measured the subject: when it differs from the model the
    database was made with, InputError (exit 2) unless ``allow_model_mismatch`` (then a loud
    warning). Without it, or when the database records no model, the result carries a
    warning that consistency could not be checked.
    """
    path = Path(subject_csv)
    tidy, _ = read_subject_csv(path)
    store = _store_for(registry)
    version = store.resolve(db_ref)
    warnings: list[str] = []
    subject_model = None
    if model_ref:
        ref = parse_ref(model_ref)
        subject_model = str(ref) if ref.alias is None else _model_ref(store.reg, model_ref)
    if subject_model is None:
        check = "unchecked"
        warnings.append(
            "the subject's model is not given (--model NAME/VERSION): cannot check that it "
            f"was measured with the database's model ({version.model or 'not recorded'})"
        )
    elif version.model is None:
        check = "unchecked"
        warnings.append(f"{version.ref} records no model: cannot check model consistency")
    elif subject_model != version.model:
        message = (
            f"the subject was measured with {subject_model} but {version.ref} was made with "
            f"{version.model}: z-scores would mix two measuring instruments"
        )
        if not allow_model_mismatch:
            raise InputError(
                message + " (use a database made with the same model, e.g. "
                f"`cordwatch normative update {version.name} --model {subject_model} ...`, "
                "or --allow-model-mismatch)",
                path,
            )
        check = "mismatch-allowed"
        warnings.append(message + " (--allow-model-mismatch)")
    else:
        check = "match"
    filters = Filters(sex, age, vendor)
    with store.opened(version) as (_, folder):
        data = load_data(folder)
    reference = _reference_means(data, filters, metrics, version.ref)
    table = zscore_table(subject_level_means(tidy, metrics), reference, metrics)
    subject = str(tidy["subject"].iloc[0])
    return ZScoreResult(
        table=table,
        database=version,
        subject=subject,
        subject_csv=str(path),
        subject_model=subject_model,
        model_check=check,
        warnings=warnings,
        filters=filters,
        n_reference=int(reference["subject"].nunique()),
    )


def show(ref: str, *, registry: Registry | None = None) -> dict[str, Any]:
    """Metadata, records and the per-level summary (all subjects) of one version."""
    store = _store_for(registry)
    with store.opened(ref) as (version, folder):
        data = load_data(folder)
        records = read_records(folder)
        factors = None
        if (folder / RECORDS_DIR / "factors_level.csv").is_file():
            factors = pd.read_csv(folder / RECORDS_DIR / "factors_level.csv")
    means = subject_level_means(data.tidy, SUMMARY_METRICS)
    table = level_summary(means, SUMMARY_METRICS)
    return {
        "version": version,
        "records": records,
        "summary": table,
        "factors": factors,
        "n_participants": len(data.participants),
    }


__all__ = [
    "DEFAULT_POLICY_PATH",
    "EXPERIMENT_PREFIX",
    "Filters",
    "NormativeData",
    "NormativePolicy",
    "NormativeStore",
    "NormativeVersion",
    "RescalePlan",
    "Scaling",
    "UpdateResult",
    "ZScoreResult",
    "export_db",
    "import_db",
    "jsonable",
    "level_summary",
    "list_databases",
    "load_normative_policy",
    "parse_age_range",
    "parse_db_ref",
    "parse_scaling",
    "rescale_plan",
    "rescale_sct_text",
    "resolve",
    "select_subjects",
    "show",
    "subject_level_means",
    "summary",
    "update",
    "write_synthetic_db",
    "zscore",
    "zscore_table",
]
