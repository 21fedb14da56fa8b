"""Summaries and z-scores: per-subject level means, per-level summaries over subjects, a
subject's z-scores and percentiles against a database version, subject filters.

The statistics (:func:`subject_level_means`, :func:`level_summary`, :func:`zscore_table`) are
pure; :func:`summary`, :func:`zscore` and :func:`show` read a stored version (a verified copy,
see :mod:`drift.normative.store`) and apply them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from drift.measure.levels import level_name
from drift.normative.datasets import load_data
from drift.normative.layout import PARTICIPANTS, NormativeData, read_subject_csv
from drift.normative.store import (
    RECORDS_DIR,
    NormativeVersion,
    jsonable,
    model_version_ref,
    read_records,
    store_for,
)
from registry.errors import InputError
from registry.refs import parse_ref

if TYPE_CHECKING:
    from registry.api import Registry


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


PERCENTILES: tuple[float, ...] = (2.5, 5.0, 25.0, 50.0, 75.0, 95.0, 97.5)


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
    keep = subject_mask(participants, filters)
    return participants.loc[keep, "participant_id"].astype(str).tolist()


def subject_mask(participants: pd.DataFrame, filters: Filters) -> pd.Series:
    """Which participants rows match ``filters`` (see :func:`select_subjects`)."""
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
    return keep


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


def _reference_means(
    data: NormativeData, filters: Filters, metrics: Sequence[str], where: str
) -> pd.DataFrame:
    # A record is one CSV: a subject (single layout), or a dataset's subject or session.
    keys = pd.Series(data.participant_keys(), index=data.participants.index)
    chosen = data.records_of(keys[subject_mask(data.participants, filters)].tolist())
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
    store = store_for(registry)
    with store.opened(ref) as (version, folder):
        data = load_data(folder)
    means = _reference_means(data, Filters(sex, age, vendor), metrics, version.ref)
    return level_summary(means, metrics)


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
    store = store_for(registry)
    version = store.resolve(db_ref)
    warnings: list[str] = []
    subject_model = None
    if model_ref:
        ref = parse_ref(model_ref)
        subject_model = str(ref) if ref.alias is None else model_version_ref(store.reg, model_ref)
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
                # The override first: the CLI cuts an error line at 300 characters.
                message + " (--allow-model-mismatch to go on anyway, or make a database with "
                f"that model: `cordwatch normative update {version.name} --model "
                f"{subject_model} ...`)",
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
    store = store_for(registry)
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
