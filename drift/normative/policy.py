"""The normative policy (when a rescale may stand in for a recompute) and the drift result
format a rescale reads (``cordwatch drift check/compare --json``), each on a pydantic model.

Both are validated strictly (:mod:`drift.gate.schema`): unknown keys, duplicate YAML keys,
wrong types or out-of-range values are an InputError naming the file and the key (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from drift.gate.schema import fail, load_yaml, validate
from drift.measure.levels import level_number
from registry.errors import InputError

#: Metrics a rescale multiplies by their own scaling factor (MEAN and STD columns); every
#: other column (angles, eccentricity, solidity, orientation, lengths, ids) is left as it is.
RESCALED_METRICS: tuple[str, ...] = ("area", "diameter_AP", "diameter_RL", "diameter_AP_ellipse")


DEFAULT_POLICY_PATH = (
    Path(__file__).resolve().parents[2] / "reference_data" / "normative_policy.yaml"
)


RESCALE_NOTE = (
    "RESCALE, not a recompute: the parent's per-slice values multiplied by the scaling factors "
    "measured between the two models on a drift cohort (candidate / baseline). area, "
    "diameter_AP and diameter_RL are rescaled; shape metrics (eccentricity, solidity, "
    "orientation, angles) and lengths are the parent's values, unchanged."
)


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


_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
_POLICY_EXPECTED = {
    "max_slicewise_cov_pct": "must be a number >= 0",
    "max_level_spread_pct": "must be a number >= 0",
    "max_ci_width_pct": "must be a number >= 0 or null",
    "min_subjects": "must be a positive integer",
    "min_slice_pairs": "must be a positive integer",
    "slice_factors": "must be one of ['profile', 'level']",
    "uncovered_levels": "must be one of ['blank', 'refuse']",
}


def _percent(default: float | None, description: str) -> Any:
    return Field(default=default, ge=0, allow_inf_nan=False, description=description)


class NormativePolicyFile(BaseModel):
    """The normative policy file (``reference_data/normative_policy.yaml``; see its comments)."""

    model_config = _STRICT

    schema_version: int = Field(default=1, alias="schema", description="format version: 1")
    max_slicewise_cov_pct: float = _percent(2.0, "largest slice-wise CoV of a level factor, %")
    max_level_spread_pct: float = _percent(2.0, "largest (max - min) / mean of level factors, %")
    max_ci_width_pct: float | None = _percent(
        2.0, "widest 95 % CI of a level factor, % of it; null: not checked"
    )
    min_subjects: int = Field(default=5, ge=1, description="fewer: the level is uncovered")
    slice_factors: Literal["profile", "level"] = Field(
        default="profile", description="per-slice factor where measured, or the level's"
    )
    min_slice_pairs: int = Field(default=5, ge=1, description="pairs a slice factor needs")
    uncovered_levels: Literal["blank", "refuse"] = Field(
        default="blank", description="levels without a usable factor: emptied, or refused"
    )

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != 1:
            raise fail(f"schema must be 1, not {value!r}")
        return value


def parse_normative_policy(data: Any, source: str | Path | None = None) -> NormativePolicy:
    """Validate a policy document (a mapping); InputError naming ``source`` otherwise."""
    where = None if source is None else str(source)
    if not isinstance(data, dict):
        raise InputError("normative policy: expected a mapping of settings", where)
    doc: NormativePolicyFile = validate(
        NormativePolicyFile,
        data,
        where,
        prefix="normative policy: ",
        expected=_POLICY_EXPECTED,
        verb="must be",
    )
    return NormativePolicy(
        max_slicewise_cov_pct=doc.max_slicewise_cov_pct,
        max_level_spread_pct=doc.max_level_spread_pct,
        max_ci_width_pct=doc.max_ci_width_pct,
        min_subjects=doc.min_subjects,
        slice_factors=doc.slice_factors,
        min_slice_pairs=doc.min_slice_pairs,
        uncovered_levels=doc.uncovered_levels,
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
    return parse_normative_policy(load_yaml(target, "policy file"), target)


# --------------------------------------------------------------------------------------------
# The scaling result: the drift result document a rescale reads
# --------------------------------------------------------------------------------------------

#: Not read by a rescale: any JSON value.
_Reported = Any


def _level_key(name: str) -> str:
    try:
        level_number(name)
    except ValueError as err:
        raise fail(str(err)) from err
    return name


class LevelEntry(BaseModel):
    """One (metric, level) of a drift result; a rescale reads the first four fields."""

    model_config = _STRICT

    scaling_factor: float | None = Field(description="candidate / baseline (geometric mean)")
    ci95: list[float | None] | None = Field(
        default=None, min_length=2, max_length=2, description="bootstrap 95 % CI of the factor"
    )
    slicewise_cov: float | None = Field(default=None, description="CoV across slices, %")
    n_subjects: int | None = Field(default=None, ge=0, description="paired subjects")
    slicewise_mean_ratio: _Reported = None
    tost_p: _Reported = None
    wilcoxon_p: _Reported = None
    ba_bias: _Reported = None
    ba_loa: _Reported = None
    icc: _Reported = None
    status: _Reported = None
    gated: _Reported = None
    n_pairs: _Reported = None
    n_baseline: _Reported = None
    coverage: _Reported = None
    tost_margin: _Reported = None
    tost_ci: _Reported = None
    log_ratio_mean: _Reported = None
    log_ratio_sd: _Reported = None
    ba_bias_pct: _Reported = None
    ba_loa_pct: _Reported = None
    baseline_mean: _Reported = None
    candidate_mean: _Reported = None
    n_slices: _Reported = None


class SliceProfile(BaseModel):
    """Per-PAM50-slice factors of one metric (parallel lists)."""

    model_config = _STRICT

    slice: list[int]
    level: list[int]
    n: list[int]
    scaling_factor: list[float | None]
    q025: list[float | None] | None = None
    q975: list[float | None] | None = None

    @model_validator(mode="after")
    def _same_length(self) -> SliceProfile:
        n = len(self.slice)
        for name in ("level", "n", "scaling_factor", "q025", "q975"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise fail(f"{name} has {len(values)} values, slice has {n}")
        return self


class MetricEntry(BaseModel):
    """One metric of a drift result."""

    model_config = _STRICT

    levels: dict[Annotated[str, AfterValidator(_level_key)], LevelEntry]
    slice_profile: SliceProfile | None = None
    unit: _Reported = None
    per_contrast: _Reported = None
    contrast_spread: _Reported = None
    outliers: _Reported = None
    ground_truth: _Reported = None

    @field_validator("slice_profile", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None


class ScalingResult(BaseModel):
    """The drift result (``cordwatch drift check/compare --json``) as a rescale reads it."""

    model_config = _STRICT

    metrics: dict[str, MetricEntry]
    verdict: str | None = None
    provenance: dict[str, Any] | None = Field(
        default=None, description="baseline/candidate: the model refs ({'ref': NAME/VERSION})"
    )
    conditions: _Reported = None
    dice: _Reported = None
    subjects: _Reported = None
    policy: _Reported = None
    settings: _Reported = None
    units: _Reported = None


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
    baseline_sha256: str | None = None  # the package sha256s the result records
    candidate_sha256: str | None = None


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def parse_scaling(doc: Any, source: str | Path | None = None) -> Scaling:
    """Validate the drift result JSON (``cordwatch drift check/compare --json``)."""
    where = None if source is None else str(source)
    if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict):
        raise InputError("not a cordwatch drift result (no 'metrics' object)", where)
    result: ScalingResult = validate(ScalingResult, doc, where, prefix="drift result: ")
    level_rows, profile_rows = [], []
    for metric, entry in result.metrics.items():
        for name, lv in entry.levels.items():
            ci = lv.ci95 or [None, None]
            level_rows.append(
                {
                    "metric": str(metric),
                    "level": level_number(name),
                    "scaling_factor": _num(lv.scaling_factor),
                    "ci95_low": _num(ci[0]),
                    "ci95_high": _num(ci[1]),
                    "slicewise_cov": _num(lv.slicewise_cov),
                    "n_subjects": int(lv.n_subjects or 0),
                }
            )
        prof = entry.slice_profile
        if prof is not None:
            for i in range(len(prof.slice)):
                row = {
                    "metric": str(metric),
                    "slice": prof.slice[i],
                    "level": prof.level[i],
                    "n": prof.n[i],
                    "scaling_factor": _num(prof.scaling_factor[i]),
                }
                for extra in ("q025", "q975"):
                    values = getattr(prof, extra)
                    if values is not None:
                        row[extra] = _num(values[i])
                profile_rows.append(row)
    prov = result.provenance or {}

    def ref(role: str, key: str = "ref") -> str | None:
        value = prov.get(role)
        if isinstance(value, dict):
            value = value.get(key)
        elif key != "ref":
            value = None
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
        verdict=str(result.verdict) if result.verdict else None,
        baseline_sha256=ref("baseline", "sha256"),
        candidate_sha256=ref("candidate", "sha256"),
    )
