"""The drift gate: a declarative policy, the conditions it yields, and the verdict.

A :class:`Policy` (``reference_data/policy.yaml`` by default) names the gated metrics with
their margins, the levels, alpha and the minimum evidence. :func:`evaluate` applies it to a
:class:`~drift.gate.compare.Comparison` and returns one :class:`Condition` per check, each naming
its metric, level, test, threshold and actual value and describing itself in one line
(Evidently-style), e.g. ``area C3: scaling 0.9870 outside ±1.0 % (TOST p=0.31 >= 0.05)``.

The rule (also in the YAML's comments), per gated (metric, level), with TOST on the subject
log-ratios (see :mod:`drift.gate.compare`):

* **fail**: equivalence within ±``fail_margin_pct`` is not shown (TOST ``p >= alpha``, i.e.
  the ``1 - 2 alpha`` t-interval of the scaling factor is not inside ``[1 - fail, 1 + fail]``),
  or fewer than ``min_subjects`` subjects are paired at the level, or the candidate paired
  fewer than ``min_coverage_pct`` % of the baseline's valid measurements there;
* **warn**: equivalence within ±fail is shown, but not within ±``warn_margin_pct``;
* **pass**: equivalence within ±warn is shown (±fail when the metric has no warn margin).

The verdict is the worst status over all conditions (every level must pass:
intersection-union, no multiplicity correction). A ``min_dice`` condition is ``skip`` (does
not count) when no Dice table was given. Fewer than ``min_subjects`` subjects present in both
versions raises :class:`~registry.errors.InputError` (exit 2): never a pass.

:func:`drift_result` runs the comparison and the gate in one call and returns a
:class:`DriftResult` whose :meth:`DriftResult.to_dict` is the JSON document of both CLI
commands.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from drift.gate.compare import (
    METRIC_UNITS,
    RATIO_METRICS,
    Comparison,
    compare_tables,
    tost_pvalue,
)
from drift.gate.schema import fail, load_yaml, validate
from drift.measure.levels import level_name, level_number
from registry.errors import InputError

#: The default policy file of a source checkout.
DEFAULT_POLICY_PATH = Path(__file__).resolve().parents[2] / "reference_data" / "policy.yaml"
#: Levels gated when the policy names none: C2 .. T1 (SCT numbers 2..8), where data exist.
DEFAULT_LEVEL_RANGE: tuple[int, int] = (2, 8)
STATUSES: tuple[str, ...] = ("pass", "warn", "fail", "skip")
_SEVERITY = {"skip": -1, "pass": 0, "warn": 1, "fail": 2}


# --------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------

#: Verdicts that may become champion when the policy names none (``promotable``).
DEFAULT_PROMOTABLE: tuple[str, ...] = ("pass",)


@dataclass(frozen=True)
class MetricMargins:
    """Equivalence margins of one metric's scaling factor, in percent."""

    fail_pct: float
    warn_pct: float | None = None


@dataclass(frozen=True)
class Policy:
    """A validated gate policy (see the module doc and ``reference_data/policy.yaml``).

    ``source`` (the file it came from) is informative only: it is not compared, not
    serialised by :meth:`to_dict` and not part of :func:`policy_sha256`. ``promotable`` (the
    verdicts allowed to become champion) is serialised only when it is not the default
    ``("pass",)``, so a policy without it hashes as it did before the key existed.
    """

    metrics: Mapping[str, MetricMargins]
    alpha: float = 0.05
    min_subjects: int = 5
    min_coverage_pct: float = 95.0
    min_dice: float | None = None
    levels: tuple[str, ...] | None = None
    source: str | None = field(default=None, compare=False)
    promotable: tuple[str, ...] = DEFAULT_PROMOTABLE

    def to_dict(self) -> dict[str, Any]:
        """The YAML document of this policy (round-trips through :func:`parse_policy`)."""
        doc: dict[str, Any] = {
            "schema": 1,
            "alpha": self.alpha,
            "min_subjects": self.min_subjects,
            "min_coverage_pct": self.min_coverage_pct,
            "min_dice": self.min_dice,
            "levels": None if self.levels is None else list(self.levels),
            "metrics": {
                name: {"fail_margin_pct": m.fail_pct, "warn_margin_pct": m.warn_pct}
                for name, m in self.metrics.items()
            },
        }
        if tuple(self.promotable) != DEFAULT_PROMOTABLE:
            doc["promotable"] = list(self.promotable)
        return doc

    def fail_margins(self) -> dict[str, float]:
        """Fail margins as fractions (0.01 = ±1 %), as :func:`~drift.gate.compare.compare_tables`
        takes them."""
        return {name: m.fail_pct / 100.0 for name, m in self.metrics.items()}


DEFAULT_POLICY = Policy(
    metrics={
        "area": MetricMargins(1.0, 0.5),
        "diameter_AP": MetricMargins(2.0, 1.0),
        "diameter_RL": MetricMargins(2.0, 1.0),
    },
    alpha=0.05,
    min_subjects=5,
    min_coverage_pct=95.0,
    min_dice=None,
    levels=None,
    source="builtin default",
)


def policy_sha256(policy: Policy) -> str:
    """sha256 of the policy's canonical JSON (sorted keys): two files that say the same thing
    (comments, key order, ``1`` vs ``1.0``) hash the same.

    >>> policy_sha256(DEFAULT_POLICY) == policy_sha256(parse_policy(DEFAULT_POLICY.to_dict()))
    True
    """
    canon = _canonical(policy.to_dict())
    text = json.dumps(canon, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if isinstance(obj, int | float) and not isinstance(obj, bool):
        return float(obj)
    return obj


# The file format (pydantic): strict types, unknown keys refused, ranges in the JSON Schema.

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
#: What an out-of-range value should have been, per key (the rest say it themselves).
_EXPECTED = {
    "alpha": "must be in (0, 0.5)",
    "min_subjects": "expected an integer >= 3",
    "min_coverage_pct": "must be in [0, 100]",
    "min_dice": "must be in (0, 1] or null",
    "levels": "expected a non-empty list of level names or null",
    "metrics": "expected a non-empty mapping of metric names",
    "fail_margin_pct": "must be in (0, 100)",
    "warn_margin_pct": "must be in (0, fail_margin_pct]",
    "promotable": "expected a non-empty list of verdicts (pass, warn)",
}


def _ratio_metric(name: str) -> str:
    if name not in RATIO_METRICS:
        raise fail(f"not a ratio-scale metric (one of {', '.join(RATIO_METRICS)})")
    return name


class MetricFile(BaseModel):
    """One gated metric: equivalence margins of its scaling factor, in percent."""

    model_config = _STRICT

    fail_margin_pct: float = Field(
        gt=0, lt=100, allow_inf_nan=False, description="fail outside ±this % (TOST not shown)"
    )
    warn_margin_pct: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="warn outside ±this % (<= fail_margin_pct); null: pass or fail only",
    )

    @field_validator("warn_margin_pct")
    @classmethod
    def _within_fail(cls, warn: float | None, info: ValidationInfo) -> float | None:
        fail_pct = info.data.get("fail_margin_pct")
        if warn is not None and fail_pct is not None and not 0 < warn <= fail_pct:
            raise fail(f"must be in (0, fail_margin_pct={fail_pct}], got {warn}")
        return warn


def _default_metrics() -> dict[str, MetricFile]:
    return {
        name: MetricFile(fail_margin_pct=m.fail_pct, warn_margin_pct=m.warn_pct)
        for name, m in DEFAULT_POLICY.metrics.items()
    }


def _default_promotable() -> list[Literal["pass", "warn"]]:
    return ["pass"]


class PolicyFile(BaseModel):
    """The gate policy file (``reference_data/policy.yaml``; see the comments there).

    Missing keys take the default's values; ``metrics``, when given, replaces the default
    metrics entirely.
    """

    model_config = _STRICT

    schema_version: int = Field(default=1, alias="schema", description="format version: 1")
    alpha: float = Field(
        default=0.05, gt=0, lt=0.5, allow_inf_nan=False, description="TOST significance level"
    )
    min_subjects: int = Field(
        default=5, ge=3, description="fewer in both versions: input error; at a level: fail"
    )
    min_coverage_pct: float = Field(
        default=95.0,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="paired / baseline valid measurements per gated (metric, level), in %",
    )
    min_dice: float | None = Field(
        default=None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="minimum mean Dice of the candidate (when a Dice table is given)",
    )
    levels: list[str] | None = Field(
        default=None,
        min_length=1,
        description="levels to gate (C1..C7, T1..T12, L1..L5); null: C2..T1 where data exist",
    )
    metrics: dict[Annotated[str, AfterValidator(_ratio_metric)], MetricFile] = Field(
        default_factory=_default_metrics,
        min_length=1,
        description="gated ratio-scale metrics and their margins",
    )
    promotable: list[Literal["pass", "warn"]] = Field(
        default_factory=_default_promotable,
        min_length=1,
        description="verdicts allowed to become champion",
    )

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != 1:
            raise fail(f"only schema 1 is known, got {value!r}")
        return value

    @field_validator("levels")
    @classmethod
    def _level_names(cls, levels: list[str] | None) -> list[str] | None:
        if levels is None:
            return None
        try:
            names = [level_name(level_number(item)) for item in levels]
        except ValueError as err:
            raise fail(str(err)) from err
        if len(set(names)) != len(names):
            raise fail(f"duplicated level in {levels!r}")
        return sorted(names, key=level_number)

    @field_validator("promotable")
    @classmethod
    def _unique(cls, verdicts: list[str]) -> list[str]:
        if len(set(verdicts)) != len(verdicts):
            raise fail(f"duplicated verdict in {verdicts!r}")
        return verdicts

    def to_policy(self, source: str | None) -> Policy:
        return Policy(
            metrics={
                str(name): MetricMargins(m.fail_margin_pct, m.warn_margin_pct)
                for name, m in self.metrics.items()
            },
            alpha=self.alpha,
            min_subjects=self.min_subjects,
            min_coverage_pct=self.min_coverage_pct,
            min_dice=self.min_dice,
            levels=None if self.levels is None else tuple(self.levels),
            source=source,
            promotable=tuple(self.promotable),
        )


def parse_policy(data: Any, source: str | Path | None = None) -> Policy:
    """Validate a policy document (the parsed YAML) and return the :class:`Policy`.

    Missing top-level keys take the default's values; ``metrics``, when given, replaces the
    default metrics entirely. Raises InputError naming ``source`` and the offending key.

    >>> parse_policy({"metrics": {"area": {"fail_margin_pct": 2}}}).metrics["area"]
    MetricMargins(fail_pct=2.0, warn_pct=None)
    >>> parse_policy({"alpha": -1}, "p.yaml")
    Traceback (most recent call last):
    ...
    registry.errors.InputError: p.yaml: key 'alpha': must be in (0, 0.5), got -1.0
    """
    src = None if source is None else str(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping of policy keys, got {type(data).__name__}", src)
    doc: PolicyFile = validate(PolicyFile, data, src, expected=_EXPECTED)
    return doc.to_policy(src)


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate a policy YAML file; ``None``: the default policy file of the checkout
    (``reference_data/policy.yaml``), or the built-in :data:`DEFAULT_POLICY` when absent."""
    if path is None:
        if not DEFAULT_POLICY_PATH.is_file():
            return DEFAULT_POLICY
        path = DEFAULT_POLICY_PATH
    path = Path(path)
    return parse_policy(load_yaml(path, "policy file"), path)


# --------------------------------------------------------------------------------------------
# Conditions and the verdict
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One evaluated gate condition: what was tested, against what, what was measured, the
    outcome and a one-line description."""

    test: str  # "equivalence" | "coverage" | "dice"
    metric: str | None
    level: str | None
    threshold: Mapping[str, Any]
    actual: Mapping[str, Any]
    status: str  # pass | warn | fail | skip
    description: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN -> None)."""
        return _jsonable(
            {
                "test": self.test,
                "metric": self.metric,
                "level": self.level,
                "status": self.status,
                "threshold": dict(self.threshold),
                "actual": dict(self.actual),
                "description": self.description,
            }
        )


def _fmt_pct(m: float) -> str:
    return f"±{m:.1f} %" if round(m, 1) == m else f"±{m:g} %"


def _p_vs(p: float, alpha: float) -> str:
    """``p=0.31 >= 0.05``, ``p=0.012 < 0.05`` or ``p<0.0001``."""
    if not np.isfinite(p):
        return "p=n/a"
    if p < 1e-4:
        return "p<0.0001"
    return f"p={p:.2g} {'<' if p < alpha else '>='} {alpha:g}"


def equivalence_status(
    log_mean: float,
    log_se: float,
    n: int,
    *,
    fail_pct: float,
    warn_pct: float | None,
    alpha: float,
) -> tuple[str, float, float]:
    """The TOST rule on a mean log-ratio: ``(status, p at fail margin, p at warn margin)``.

    fail when ``p_fail >= alpha`` (equivalence within ±fail not shown), warn when ``p_fail <
    alpha <= p_warn``, else pass. NaN p-values (n < 2) fail.

    >>> equivalence_status(0.0, 0.001, 30, fail_pct=1, warn_pct=0.5, alpha=0.05)[0]
    'pass'
    >>> equivalence_status(math.log(1.007), 0.001, 30, fail_pct=1, warn_pct=0.5, alpha=0.05)[0]
    'warn'
    >>> equivalence_status(math.log(0.987), 0.001, 30, fail_pct=1, warn_pct=0.5, alpha=0.05)[0]
    'fail'
    """
    p_fail = tost_pvalue(log_mean, log_se, n - 1, fail_pct / 100.0)
    p_warn = math.nan if warn_pct is None else tost_pvalue(log_mean, log_se, n - 1, warn_pct / 100)
    if not (np.isfinite(p_fail) and p_fail < alpha):
        return "fail", p_fail, p_warn
    if warn_pct is not None and not (np.isfinite(p_warn) and p_warn < alpha):
        return "warn", p_fail, p_warn
    return "pass", p_fail, p_warn


def _equivalence_condition(row: pd.Series, margins: MetricMargins, alpha: float) -> Condition:
    metric, lname = str(row["metric"]), str(row["level_name"])
    n = int(row["n_subjects"])
    sf = float(row["scaling_factor"])
    status, p_fail, p_warn = equivalence_status(
        float(row["log_mean"]),
        float(row["log_se"]),
        n,
        fail_pct=margins.fail_pct,
        warn_pct=margins.warn_pct,
        alpha=alpha,
    )
    head = f"{metric} {lname}: scaling {sf:.4f}"
    fail_band, warn_band = _fmt_pct(margins.fail_pct), _fmt_pct(margins.warn_pct or 0)

    def where(pct: float) -> str:
        # Point estimate inside the band but its interval is not: "not shown within".
        inside = 1 - pct / 100 < sf < 1 + pct / 100
        return "not shown within" if inside else "outside"

    if n < 2 or not np.isfinite(p_fail):
        text = f"{head}: equivalence not testable with {n} paired subject(s)"
    elif status == "fail":
        text = f"{head} {where(margins.fail_pct)} {fail_band} (TOST {_p_vs(p_fail, alpha)})"
    elif status == "warn":
        text = (
            f"{head} within {fail_band} (TOST {_p_vs(p_fail, alpha)}) but "
            f"{where(margins.warn_pct or 0)} {warn_band} (TOST {_p_vs(p_warn, alpha)})"
        )
    else:
        band, p = (warn_band, p_warn) if margins.warn_pct is not None else (fail_band, p_fail)
        text = f"{head} within {band} (TOST {_p_vs(p, alpha)})"
    return Condition(
        test="equivalence",
        metric=metric,
        level=lname,
        threshold={
            "fail_margin_pct": margins.fail_pct,
            "warn_margin_pct": margins.warn_pct,
            "alpha": alpha,
        },
        actual={
            "scaling_factor": sf,
            "tost_p": p_fail,
            "tost_p_warn": p_warn,
            "tost_ci": [float(row["tost_ci_low"]), float(row["tost_ci_high"])],
            "n_subjects": n,
        },
        status=status,
        description=text,
    )


def _coverage_condition(row: pd.Series, policy: Policy) -> Condition:
    metric, lname = str(row["metric"]), str(row["level_name"])
    n, n_pairs, n_base = int(row["n_subjects"]), int(row["n_pairs"]), int(row["n_baseline"])
    cov = 100.0 * n_pairs / n_base if n_base else 0.0
    ok_n = n >= policy.min_subjects
    ok_cov = cov >= policy.min_coverage_pct
    head = f"{metric} {lname}:"
    if not ok_n:
        text = f"{head} {n} paired subject(s) < {policy.min_subjects} required"
    else:
        cmp = ">=" if ok_cov else "<"
        text = (
            f"{head} {n_pairs}/{n_base} baseline measurements paired "
            f"({cov:.1f} % {cmp} {policy.min_coverage_pct:g} %)"
        )
    return Condition(
        test="coverage",
        metric=metric,
        level=lname,
        threshold={
            "min_subjects": policy.min_subjects,
            "min_coverage_pct": policy.min_coverage_pct,
        },
        actual={"n_subjects": n, "n_pairs": n_pairs, "n_baseline": n_base, "coverage_pct": cov},
        status="pass" if ok_n and ok_cov else "fail",
        description=text,
    )


def _dice_condition(comparison: Comparison, min_dice: float) -> Condition:
    dice = comparison.dice
    cand = None if dice is None else dice[dice["version"] == "candidate"]
    threshold = {"min_dice": min_dice}
    if cand is None or cand.empty:
        text = f"Dice: not checked (no Dice table for the candidate; policy min {min_dice:g})"
        return Condition("dice", None, None, threshold, {}, "skip", text)
    row = cand.iloc[0]
    mean = float(row["mean"])
    ok = mean >= min_dice
    text = (
        f"Dice: candidate mean {mean:.3f} {'>=' if ok else '<'} {min_dice:g} "
        f"(n={int(row['n'])}, min {float(row['min']):.3f} in {row['min_subject']})"
    )
    actual = {"mean": mean, "min": float(row["min"]), "n": int(row["n"])}
    return Condition("dice", None, None, threshold, actual, "pass" if ok else "fail", text)


def gated_levels(comparison: Comparison, policy: Policy, metric: str) -> list[int]:
    """SCT numbers of the levels the policy gates for ``metric`` (see the module doc).

    Raises InputError when the policy names a level the baseline lacks (fewer than
    ``min_subjects`` subjects with a valid value) or when no default level qualifies.
    """
    lv = comparison.levels[comparison.levels["metric"] == metric]
    base_n = dict(zip(lv["level"].astype(int), lv["n_baseline_subjects"].astype(int), strict=True))
    if policy.levels is not None:
        wanted = [level_number(n) for n in policy.levels]
        for lev in wanted:
            if base_n.get(lev, 0) < policy.min_subjects:
                raise InputError(
                    f"policy gates {metric} {level_name(lev)}, but the baseline has a valid value "
                    f"there for {base_n.get(lev, 0)} subject(s) (< min_subjects "
                    f"{policy.min_subjects})",
                    policy.source,
                )
        return wanted
    first, last = DEFAULT_LEVEL_RANGE
    found = [
        lev for lev in sorted(base_n) if first <= lev <= last and base_n[lev] >= policy.min_subjects
    ]
    if not found:
        raise InputError(
            f"no level from {level_name(first)} to {level_name(last)} has a baseline {metric} "
            f"value for at least {policy.min_subjects} subjects: nothing to gate"
        )
    return found


def worst_status(statuses: Sequence[str]) -> str:
    """The verdict of a list of condition statuses (``skip`` counts for nothing).

    >>> worst_status(["pass", "warn", "skip"]), worst_status([]), worst_status(["fail", "pass"])
    ('warn', 'pass', 'fail')
    """
    worst = max((_SEVERITY[s] for s in statuses), default=0)
    return {-1: "pass", 0: "pass", 1: "warn", 2: "fail"}[worst]


@dataclass(frozen=True)
class GateResult:
    """The verdict and the conditions behind it."""

    verdict: str
    conditions: tuple[Condition, ...]

    @property
    def failing(self) -> list[Condition]:
        """The conditions with status ``fail``."""
        return [c for c in self.conditions if c.status == "fail"]

    def status_of(self, metric: str, level: str) -> str | None:
        """Worst status of the conditions on one (metric, level name); None if not gated."""
        hits = [c.status for c in self.conditions if c.metric == metric and c.level == level]
        return worst_status(hits) if hits else None


def evaluate(comparison: Comparison, policy: Policy) -> GateResult:
    """Apply ``policy`` to ``comparison`` (see the module doc for the rule).

    Raises InputError (exit 2, not a verdict) when fewer than ``min_subjects`` subjects are
    present in both versions, when a gated metric was not compared, or per
    :func:`gated_levels`.
    """
    common = comparison.subject_sets.get("common", comparison.subject_sets["paired"])
    if len(common) < policy.min_subjects:
        raise InputError(
            f"{len(common)} subject(s) present in both baseline and candidate; the policy "
            f"needs at least {policy.min_subjects}",
            policy.source if len(common) else None,
        )
    conditions: list[Condition] = []
    for metric, margins in policy.metrics.items():
        if metric not in comparison.metrics:
            raise InputError(
                f"policy gates {metric!r}, which the comparison does not hold "
                f"(compared: {', '.join(comparison.metrics)})",
                policy.source,
            )
        for lev in gated_levels(comparison, policy, metric):
            row = comparison.level_row(metric, lev)
            if row is None:  # gated_levels guarantees a baseline row; keep mypy honest
                continue
            conditions.append(_coverage_condition(row, policy))
            conditions.append(_equivalence_condition(row, margins, policy.alpha))
    if policy.min_dice is not None:
        conditions.append(_dice_condition(comparison, policy.min_dice))
    return GateResult(worst_status([c.status for c in conditions]), tuple(conditions))


# --------------------------------------------------------------------------------------------
# The result document
# --------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """Recursively: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    if pd.isna(obj):
        return None
    return str(obj)


def _pair(row: Mapping[str, Any], lo: str, hi: str) -> list[float]:
    return [row[lo], row[hi]]


def _level_entry(row: Mapping[str, Any], status: str | None) -> dict[str, Any]:
    return {
        "scaling_factor": row["scaling_factor"],
        "ci95": _pair(row, "ci95_low", "ci95_high"),
        "slicewise_mean_ratio": row.get("slicewise_mean_ratio"),
        "slicewise_cov": row.get("slicewise_cov"),
        "n_subjects": row["n_subjects"],
        "tost_p": row["tost_p"],
        "wilcoxon_p": row["wilcoxon_p"],
        "ba_bias": row["ba_bias"],
        "ba_loa": _pair(row, "ba_loa_low", "ba_loa_high"),
        "icc": row["icc"],
        # extras
        "status": status,
        "gated": status is not None,
        "n_pairs": row.get("n_pairs"),
        "n_baseline": row.get("n_baseline"),
        "coverage": row.get("coverage"),
        "tost_margin": row["tost_margin"],
        "tost_ci": _pair(row, "tost_ci_low", "tost_ci_high"),
        "log_ratio_mean": row["log_mean"],
        "log_ratio_sd": row["log_sd"],
        "ba_bias_pct": row["ba_bias_pct"],
        "ba_loa_pct": _pair(row, "ba_loa_pct_low", "ba_loa_pct_high"),
        "baseline_mean": row["baseline_mean"],
        "candidate_mean": row["candidate_mean"],
        "n_slices": row.get("n_slices"),
    }


#: Units of the per-level JSON fields that have one.
FIELD_UNITS: Mapping[str, str] = {
    "scaling_factor": "ratio candidate/baseline (geometric mean over subjects)",
    "ci95": "ratio; subject bootstrap percentile interval",
    "tost_ci": "ratio; (1 - 2 alpha) t-interval, the interval TOST checks",
    "slicewise_mean_ratio": "ratio; mean over (subject, contrast, slice) pairs",
    "slicewise_cov": "% (SD with ddof=1 / mean, across the level's slices)",
    "ba_bias": "metric units (candidate - baseline)",
    "ba_loa": "metric units; bias ± 1.96 SD",
    "ba_bias_pct": "% of the pair mean",
    "ba_loa_pct": "% of the pair mean",
    "log_ratio_mean": "natural log of the ratio",
    "tost_margin": "fraction (0.01 = ±1 %)",
    "coverage": "fraction of the baseline's valid measurements that are paired",
}


@dataclass
class DriftResult:
    """A comparison, the policy applied to it, the verdict and its provenance."""

    comparison: Comparison
    gate: GateResult
    policy: Policy
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """``pass``, ``warn`` or ``fail``."""
        return self.gate.verdict

    @property
    def exit_code(self) -> int:
        """0 for pass and warn, 1 for fail."""
        return 1 if self.verdict == "fail" else 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (schema of the issue plus extras); NaN becomes None."""
        comp = self.comparison
        metrics: dict[str, Any] = {}
        for metric in comp.metrics:
            lv = comp.levels[comp.levels["metric"] == metric]
            entry: dict[str, Any] = {
                "unit": METRIC_UNITS.get(metric, ""),
                "levels": {
                    r["level_name"]: _level_entry(r, self.gate.status_of(metric, r["level_name"]))
                    for r in lv.to_dict("records")
                },
            }
            pc = comp.per_contrast[comp.per_contrast["metric"] == metric]
            entry["per_contrast"] = {
                str(contrast): {
                    r["level_name"]: {
                        "scaling_factor": r["scaling_factor"],
                        "ci95": _pair(r, "ci95_low", "ci95_high"),
                        "n_subjects": r["n_subjects"],
                        "tost_p": r["tost_p"],
                        "wilcoxon_p": r["wilcoxon_p"],
                        "ba_bias": r["ba_bias"],
                        "ba_loa": _pair(r, "ba_loa_low", "ba_loa_high"),
                        "icc": r["icc"],
                        "baseline_mean": r["baseline_mean"],
                        "candidate_mean": r["candidate_mean"],
                    }
                    for r in grp.to_dict("records")
                }
                for contrast, grp in pc.groupby("contrast", sort=True)
            }
            cs = comp.contrast_spread[comp.contrast_spread["metric"] == metric]
            spread: dict[str, Any] = {}
            for r in cs.to_dict("records"):
                spread.setdefault(level_name(r["level"]), {})[r["version"]] = {
                    "n_subjects": r["n_subjects"],
                    "mean_cov_pct": r["mean_cov_pct"],
                    "median_cov_pct": r["median_cov_pct"],
                }
            entry["contrast_spread"] = spread
            out = comp.outliers[comp.outliers["metric"] == metric]
            entry["outliers"] = [
                {
                    "level": level_name(r["level"]),
                    "subject": r["subject"],
                    "ratio": r["ratio"],
                    "robust_z": r["robust_z"],
                }
                for r in out.to_dict("records")
            ]
            prof = comp.slice_profile[comp.slice_profile["metric"] == metric]
            entry["slice_profile"] = {
                col: prof[col].tolist() for col in ("slice", "level", "n", "scaling_factor")
            }
            if comp.ground_truth is not None:
                gt = comp.ground_truth[comp.ground_truth["metric"] == metric]
                gtd: dict[str, Any] = {}
                for r in gt.to_dict("records"):
                    gtd.setdefault(level_name(r["level"]), {})[r["version"]] = {
                        "n": r["n"],
                        "mean_error_pct": r["mean_error_pct"],
                        "mean_abs_error_pct": r["mean_abs_error_pct"],
                        "sd_error_pct": r["sd_error_pct"],
                    }
                entry["ground_truth"] = gtd
            metrics[metric] = entry
        dice = None
        if comp.dice is not None:
            dice = {r.pop("version"): r for r in comp.dice.to_dict("records")}
        sets = comp.subject_sets
        doc = {
            "verdict": self.verdict,
            "conditions": [c.to_dict() for c in self.gate.conditions],
            "metrics": metrics,
            "dice": dice,
            "subjects": {
                "n_paired": len(sets["paired"]),
                "paired": sets["paired"],
                "baseline_only": sets["baseline_only"],
                "candidate_only": sets["candidate_only"],
            },
            "policy": {**self.policy.to_dict(), "sha256": policy_sha256(self.policy)},
            "settings": comp.settings,
            "units": FIELD_UNITS,
            "provenance": self.provenance,
        }
        return _jsonable(doc)


def drift_result(
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    policy: Policy | None = None,
    *,
    metrics: Sequence[str] | None = None,
    ground_truth: pd.DataFrame | None = None,
    dice: pd.DataFrame | None = None,
    provenance: Mapping[str, Any] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> DriftResult:
    """Compare two tidy morphometrics tables and gate the result: the one call the CLI (and
    ``drift check``) makes. ``metrics`` adds reported-only metrics to the policy's gated ones.

    ``provenance`` is stored as given, plus ``policy_sha256`` and ``policy_source``.
    Raises InputError for bad tables or too few subjects (see :func:`evaluate`).
    """
    from drift.measure.sctcsv import pair_diameter_ap

    policy = DEFAULT_POLICY if policy is None else policy
    wanted = list(dict.fromkeys([*policy.metrics, *(metrics or [])]))
    # Like with like: SCT 7.4's measured diameter_AP is never paired with the older ellipse.
    baseline, candidate, diameter_note = pair_diameter_ap(baseline, candidate)
    comparison = compare_tables(
        baseline,
        candidate,
        metrics=wanted,
        margins=policy.fail_margins(),
        alpha=policy.alpha,
        ground_truth=ground_truth,
        dice=dice,
        n_boot=n_boot,
        seed=seed,
    )
    gate = evaluate(comparison, policy)
    prov = dict(provenance or {})
    if diameter_note is not None:
        prov["diameter_AP"] = diameter_note
    prov.setdefault("policy_sha256", policy_sha256(policy))
    prov.setdefault("policy_source", policy.source)
    return DriftResult(comparison=comparison, gate=gate, policy=policy, provenance=prov)
