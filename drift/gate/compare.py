"""Paired comparison of two morphometrics tables: how far did the candidate model move the cord?

Pure functions on pandas tables (no files, MLflow, NIfTI or CLI here). The input is the
"tidy" morphometrics table of :mod:`drift.measure.sctcsv`: one row per (subject, contrast, level,
slice) with columns ``subject`` (str), ``contrast`` (str), ``level`` (int, SCT numbering
1=C1 .. 7=C7, 8=T1 .. 19=T12, 20=L1 .. 24=L5), optionally ``slice`` (int; the PAM50 slice
when PAM50-normalised, else the native slice) and float metric columns (``area``,
``diameter_AP``, ...; NaN allowed). A table without ``slice`` holds one row per level.

How the two versions are paired, and what is the statistical unit
-----------------------------------------------------------------
1. Each version's *level mean* is the mean of the metric over the finite slices of one
   (subject, contrast, level), as ``sct_process_segmentation -perlevel`` reports it.
2. Level means are paired on (subject, contrast, level). A pair counts only when both values
   are finite and > 0 (ratios and logs of CSA and diameters need positive values).
3. The pair's log-ratio is ``log(candidate / baseline)``. Contrasts of one subject are not
   independent (same cord, same day), so the *subject* is the statistical unit: a subject's
   log-ratio is the mean of its contrasts' log-ratios, its level value per version is the
   mean over the same contrasts. With the same contrasts for every subject (the usual frozen
   cohort) the scaling factor equals the geometric mean over all (subject, contrast) pairs;
   with unbalanced contrasts every subject weighs the same.
4. Scaling factor = ``exp(mean of subject log-ratios)`` (geometric mean of the ratios of
   level means). Its 95 % CI is a percentile bootstrap resampling *subjects* (a cluster
   bootstrap over contrasts), seeded, vectorised over resamples.
5. TOST (two one-sided t-tests) on the subject log-ratios against the equivalence band
   ``[log(1 - m), log(1 + m)]`` for margin ``m`` (a fraction: 0.01 = ±1 %); its p-value is the
   larger of the two one-sided p-values, so ``p < alpha`` exactly when the ``1 - 2 alpha``
   t-interval of the geometric mean lies inside ``[1 - m, 1 + m]``.
6. Paired Wilcoxon signed-rank test on the subject log-ratios (H0: median ratio 1).
7. Bland-Altman on the subject level values: bias = mean(candidate - baseline) and limits of
   agreement bias ± 1.96 SD (metric units), and the same on the percent difference
   ``100 (c - b) / ((c + b) / 2)``.
8. ICC(A,1) (McGraw & Wong 1996; = Shrout & Fleiss ICC(2,1)) on the (subject x version)
   matrix of subject level values: two-way, absolute agreement, single measure.
9. The prior art's slice-wise ratio (needs ``slice``): pair slices on (subject, contrast,
   level, slice); ``slicewise_mean_ratio`` = mean over all pairs of the slice ratio;
   ``slicewise_cov`` = coefficient of variation (%, SD with ddof=1) across the level's slices
   of the per-slice mean ratio ("nearly constant among slices").
10. Per-contrast breakdown: items 4-8 restricted to one contrast.
11. Within-subject spread across contrasts, per version: CoV (%, ddof=1) of a subject's level
    means over its paired contrasts (subjects with >= 2), averaged over subjects.
12. Outlier subjects: ``|d - median(d)| > max(k * 1.4826 * MAD(d), floor)`` on subject
    log-ratios ``d`` (k = 3.5, the Iglewicz-Hoaglin modified z-score rule; the floor, 0.1 %,
    keeps rounding noise from flagging anyone when all ratios are equal).
13. Ground truth (optional tidy table from manual segmentations): percent error of each
    version's level means against it. Dice (optional table ``subject, contrast, version,
    dice`` with version ``baseline``/``candidate``): summary per version.

Everything is returned as tables in a :class:`Comparison`; :mod:`drift.gate.policy` turns it into
a verdict and JSON.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from drift.gate.stats import (
    bland_altman,
    bootstrap_mean_ci,
    bootstrap_mean_cis,
    icc_a1,
    robust_outliers,
    t_ppf,
    tost_pvalue,
    wilcoxon_pvalue,
    wilcoxon_pvalues,
)
from drift.measure.levels import LEVEL_PREFIXES, level_name
from registry.errors import InputError

#: Metrics measured on a ratio scale (positive, zero means nothing): the only ones a scaling
#: factor makes sense for. Angles and orientation can be zero or negative and are excluded.
RATIO_METRICS: tuple[str, ...] = (
    "area",
    "diameter_AP",
    "diameter_RL",
    "eccentricity",
    "solidity",
    "length",
    "diameter_AP_ellipse",
    "length_anterior",
    "length_posterior",
)
#: Metrics compared when none are named (those the default policy gates).
DEFAULT_METRICS: tuple[str, ...] = ("area", "diameter_AP", "diameter_RL")
#: TOST margins (fractions) used when none are given: the default policy's fail margins.
DEFAULT_MARGINS: Mapping[str, float] = {"area": 0.01, "diameter_AP": 0.02, "diameter_RL": 0.02}
#: Units of the metrics (for reports).
METRIC_UNITS: Mapping[str, str] = {
    "area": "mm²",
    "diameter_AP": "mm",
    "diameter_RL": "mm",
    "diameter_AP_ellipse": "mm",
    "length": "mm",
    "length_anterior": "mm",
    "length_posterior": "mm",
    "eccentricity": "",
    "solidity": "",
}
KEYS: tuple[str, ...] = ("subject", "contrast", "level")
SLICE_KEYS: tuple[str, ...] = (*KEYS, "slice")
VERSIONS: tuple[str, str] = ("baseline", "candidate")

_MAD_SCALE = 1.4826  # MAD -> SD for normal data
_Z975 = 1.959963984540054


# --------------------------------------------------------------------------------------------
# Table preparation
# --------------------------------------------------------------------------------------------


def checked_table(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Validate a tidy table against the contract and return it ready for the comparison:
    ``level`` as int, rows with level 0 (outside the labelled levels) dropped.

    Raises InputError naming the table for a missing key column, a non-integer or
    out-of-range level (valid: 0, 1..29), a non-integer slice, or duplicated rows.
    """
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"{name} table: expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in KEYS if c not in table.columns]
    if missing:
        raise InputError(f"{name} table: missing column(s) {missing}")
    for col in ("level", "slice"):
        if col not in table.columns:
            continue
        values = pd.to_numeric(table[col], errors="coerce")
        bad = ~(np.isfinite(values) & (values == np.round(values)))
        if col == "level":
            bad |= (values < 0) | (values > LEVEL_PREFIXES[-1][1])
        if bad.any():
            example = table.loc[bad, col].iloc[0]
            raise InputError(
                f"{name} table: column {col!r} must hold integers"
                + (" 0..29 (SCT level numbers)" if col == "level" else "")
                + f"; {int(bad.sum())} row(s) do not, e.g. {example!r}"
            )
    out = table[table["level"].astype(int) != 0].copy()
    out["level"] = out["level"].astype(int)
    if "slice" in out.columns:
        out["slice"] = out["slice"].astype(int)
    keys = list(SLICE_KEYS if "slice" in out.columns else KEYS)
    dup = out.duplicated(keys)
    if dup.any():
        first = out.loc[dup, keys].iloc[0].tolist()
        raise InputError(
            f"{name} table: {int(dup.sum())} duplicated ({', '.join(keys)}) row(s), e.g. {first}"
        )
    return out


def level_means(table: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean of each metric over the finite slices of every (subject, contrast, level).

    >>> t = pd.DataFrame({"subject": ["s1"] * 3, "contrast": ["T2w"] * 3, "level": [2, 2, 3],
    ...                   "slice": [1, 2, 3], "area": [70.0, np.nan, 80.0]})
    >>> level_means(t, ["area"])["area"].tolist()
    [70.0, 80.0]
    """
    cols = [m for m in metrics if m in table.columns]
    data = table[[*KEYS, *cols]].copy()
    data["level"] = data["level"].astype(int)
    data["subject"] = data["subject"].astype(str)
    data["contrast"] = data["contrast"].astype(str)
    for m in cols:
        data[m] = pd.to_numeric(data[m], errors="coerce").astype(float)
    return data.groupby(list(KEYS), sort=True, observed=True)[cols].mean().reset_index()


def _valid(x: pd.Series) -> pd.Series:
    return np.isfinite(x) & (x > 0)


def _row_keys(left: pd.DataFrame, right: pd.DataFrame, keys: Sequence[str]) -> tuple[Any, Any]:
    """One int64 per row standing for its ``keys`` values, comparable between the two
    tables (string columns factorised together, integers offset), or None when the
    columns do not fit in one int64 (then the caller merges with pandas)."""
    kl = np.zeros(len(left), dtype=np.int64)
    kr = np.zeros(len(right), dtype=np.int64)
    span = 1
    for k in keys:
        a, b = left[k], right[k]
        if a.dtype.kind in "iu" and b.dtype.kind in "iu":
            va, vb = a.to_numpy(dtype=np.int64), b.to_numpy(dtype=np.int64)
            lo = min(va.min(initial=0), vb.min(initial=0))
            va, vb = va - lo, vb - lo
            width = int(max(va.max(initial=0), vb.max(initial=0))) + 1
        else:
            codes, uniques = pd.factorize(pd.concat([a, b], ignore_index=True))
            if (codes < 0).any():
                return None, None  # a missing key: pandas decides how it pairs
            va, vb = codes[: len(a)], codes[len(a) :]
            width = max(len(uniques), 1)
        span *= width
        if span >= 2**62:
            return None, None
        kl = kl * width + va
        kr = kr * width + vb
    return kl, kr


def _inner_pairs(
    left: pd.DataFrame, right: pd.DataFrame, keys: Sequence[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Row positions ``(i_left, i_right)`` of an inner join on ``keys`` in the order of
    ``left.merge(right, on=keys, how="inner")`` (the left rows' order), or None when the
    keys are not unique on the right (or do not fit): then merge with pandas."""
    kl, kr = _row_keys(left, right, keys)
    if kl is None or kr is None:
        return None
    order = np.argsort(kr, kind="stable")
    sorted_r = kr[order]
    if sorted_r.size > 1 and bool((sorted_r[1:] == sorted_r[:-1]).any()):
        return None
    pos = np.searchsorted(sorted_r, kl)
    hit = pos < sorted_r.size
    hit[hit] = sorted_r[pos[hit]] == kl[hit]
    return np.flatnonzero(hit), order[pos[hit]]


def _paired_values(
    left: pd.DataFrame, right: pd.DataFrame, keys: Sequence[str], cols: Sequence[str]
) -> Iterator[tuple[str, pd.DataFrame, np.ndarray, np.ndarray]]:
    """Inner join of ``left`` and ``right`` on ``keys``, in ``left.merge(right)``'s row order:
    per column of ``cols`` the ``(column, key rows, left values, right values)`` of the rows
    where both values are finite and > 0 (values as floats, unreadable ones NaN)."""
    hits = _inner_pairs(left, right, keys)
    if hits is None:
        merged = left[[*keys, *cols]].merge(
            right[[*keys, *cols]], on=list(keys), how="inner", suffixes=("@b", "@c")
        )
        key_rows = merged[list(keys)]
        pairs = {m: (merged[f"{m}@b"], merged[f"{m}@c"]) for m in cols}
    else:
        il, ir = hits
        key_rows = left[list(keys)].take(il).reset_index(drop=True)
        pairs = {m: (left[m].take(il), right[m].take(ir)) for m in cols}
    for m in cols:
        vl, vr = (
            pd.to_numeric(v, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            for v in pairs[m]
        )
        ok = _valid(vl) & _valid(vr)
        yield m, key_rows[ok], vl[ok], vr[ok]


def paired_level_means(
    baseline_means: pd.DataFrame, candidate_means: pd.DataFrame, metrics: Sequence[str]
) -> pd.DataFrame:
    """Long table of paired level means: one row per (metric, subject, contrast, level) where
    both versions have a finite, positive value; columns ``metric, subject, contrast, level,
    baseline, candidate, log_ratio``."""
    parts = []
    for m, rows, b, c in _paired_values(baseline_means, candidate_means, KEYS, metrics):
        part = rows.copy()
        part.insert(0, "metric", m)
        part["baseline"] = b
        part["candidate"] = c
        parts.append(part)
    out = pd.concat(parts, ignore_index=True) if parts else _empty_pairs()
    out["log_ratio"] = np.log(out["candidate"] / out["baseline"])
    return out


def _empty_pairs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "metric": pd.Series(dtype=str),
            "subject": pd.Series(dtype=str),
            "contrast": pd.Series(dtype=str),
            "level": pd.Series(dtype=int),
            "baseline": pd.Series(dtype=float),
            "candidate": pd.Series(dtype=float),
        }
    )


def subject_pairs(pairs: pd.DataFrame, by: Sequence[str] = ("metric", "level")) -> pd.DataFrame:
    """Collapse contrasts: one row per (``by``..., subject) with the mean log-ratio and the
    mean level value of each version over the subject's paired contrasts."""
    keys = [*by, "subject"]
    g = pairs.groupby(keys, sort=True, observed=True)
    out = g[["baseline", "candidate", "log_ratio"]].mean()
    out["n_contrasts"] = g.size()
    return out.reset_index()


def paired_slices(
    baseline: pd.DataFrame, candidate: pd.DataFrame, metrics: Sequence[str]
) -> pd.DataFrame:
    """Long table of paired slices (both finite and > 0): ``metric, subject, contrast, level,
    slice, ratio``. Empty when either table has no ``slice`` column."""
    if "slice" not in baseline.columns or "slice" not in candidate.columns:
        return pd.DataFrame(columns=["metric", *SLICE_KEYS, "ratio"])
    cols = [m for m in metrics if m in baseline.columns and m in candidate.columns]
    parts = []
    for m, rows, b, c in _paired_values(baseline, candidate, SLICE_KEYS, cols):
        part = rows.copy()
        part.insert(0, "metric", m)
        part["ratio"] = c / b
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=["metric", *SLICE_KEYS, "ratio"])
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Grouped statistics
# --------------------------------------------------------------------------------------------


def _seed_for(seed: int, *parts: object) -> list[int]:
    # A stable seed per group, independent of which other groups exist or their order.
    return [int(seed), zlib.crc32("|".join(map(str, parts)).encode())]


_PAIRED_STAT_COLUMNS: tuple[str, ...] = (
    "n_subjects",
    "scaling_factor",
    "ci95_low",
    "ci95_high",
    "log_mean",
    "log_sd",
    "log_se",
    "tost_margin",
    "tost_p",
    "tost_ci_low",
    "tost_ci_high",
    "wilcoxon_p",
    "ba_bias",
    "ba_loa_low",
    "ba_loa_high",
    "ba_bias_pct",
    "ba_loa_pct_low",
    "ba_loa_pct_high",
    "icc",
    "baseline_mean",
    "candidate_mean",
)


def paired_stats(
    subj: pd.DataFrame,
    *,
    margin: float | None,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int | Sequence[int] = 0,
    wilcoxon_p: float | None = None,
    ci95_log: tuple[float, float] | None = None,
) -> dict[str, float]:
    """All paired statistics of one group of subject rows (columns ``baseline``,
    ``candidate``, ``log_ratio``): scaling factor and CI, TOST, Wilcoxon, Bland-Altman, ICC.
    ``wilcoxon_p`` / ``ci95_log``: the group's Wilcoxon p-value / bootstrap CI of the mean
    log-ratio when already computed for many groups at once (:func:`wilcoxon_pvalues`,
    :func:`bootstrap_mean_cis` with this ``seed``)."""
    d = subj["log_ratio"].to_numpy(dtype=float)
    n = d.size
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    se = sd / math.sqrt(n) if n > 1 else math.nan
    lo, hi = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed) if ci95_log is None else ci95_log
    if n > 1:
        half = t_ppf(1.0 - alpha, n - 1) * se
        ci90 = (math.exp(mean - half), math.exp(mean + half))
    else:
        ci90 = (math.nan, math.nan)
    b = subj["baseline"].to_numpy(dtype=float)
    c = subj["candidate"].to_numpy(dtype=float)
    ba = bland_altman(b, c)
    return {
        "n_subjects": n,
        "scaling_factor": math.exp(mean) if n else math.nan,
        "ci95_low": math.exp(lo) if n else math.nan,
        "ci95_high": math.exp(hi) if n else math.nan,
        "log_mean": mean,
        "log_sd": sd,
        "log_se": se,
        "tost_margin": margin if margin is not None else math.nan,
        "tost_p": tost_pvalue(mean, se, n - 1, margin) if margin is not None else math.nan,
        "tost_ci_low": ci90[0],
        "tost_ci_high": ci90[1],
        "wilcoxon_p": wilcoxon_pvalue(d) if wilcoxon_p is None else wilcoxon_p,
        "ba_bias": ba.bias,
        "ba_loa_low": ba.loa[0],
        "ba_loa_high": ba.loa[1],
        "ba_bias_pct": ba.bias_pct,
        "ba_loa_pct_low": ba.loa_pct[0],
        "ba_loa_pct_high": ba.loa_pct[1],
        "icc": icc_a1(np.column_stack([b, c])) if n > 1 else math.nan,
        "baseline_mean": float(b.mean()) if n else math.nan,
        "candidate_mean": float(c.mean()) if n else math.nan,
    }


def grouped_paired_stats(
    frame: pd.DataFrame,
    by: Sequence[str],
    *,
    margins: Mapping[str, float],
    alpha: float,
    n_boot: int,
    seed: int,
    sort: bool,
) -> list[dict[str, Any]]:
    """:func:`paired_stats` of every ``by`` group of subject rows (``by`` starts with
    ``metric``; the group's seed is :func:`_seed_for` of its key), one row dict per group
    with the key columns first (``level`` as int). The Wilcoxon tests and the bootstrap
    percentiles of all groups are computed together (same numbers as group by group)."""
    groups = list(frame.groupby(list(by), sort=sort, observed=True))
    logs = [g["log_ratio"].to_numpy(dtype=float) for _, g in groups]
    seeds = [_seed_for(seed, *key) for key, _ in groups]
    wilcoxon_ps = wilcoxon_pvalues(logs)
    cis = bootstrap_mean_cis(logs, seeds, n_boot=n_boot)
    rows = []
    for (key, grp), s, wp, ci in zip(groups, seeds, wilcoxon_ps, cis, strict=True):
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["level"] = int(row["level"])
        row.update(
            paired_stats(
                grp,
                margin=margins.get(str(key[0])),
                alpha=alpha,
                n_boot=n_boot,
                seed=s,
                wilcoxon_p=wp,
                ci95_log=ci,
            )
        )
        rows.append(row)
    return rows


def slicewise_ratios(slices: pd.DataFrame, by: Sequence[str] = ("metric", "level")) -> pd.DataFrame:
    """Prior art's slice-wise statistics per group: ``slicewise_mean_ratio`` (mean over all
    paired (subject, contrast, slice) of the slice ratio), ``slicewise_cov`` (CoV in %, ddof=1,
    across the group's slices of the per-slice mean ratio) and ``n_slices``."""
    cols = [*by, "slicewise_mean_ratio", "slicewise_cov", "n_slices"]
    if slices.empty:
        return pd.DataFrame(columns=cols)
    keys = list(by)
    mean_ratio = slices.groupby(keys, observed=True)["ratio"].mean().rename("slicewise_mean_ratio")
    per_slice = slices.groupby([*keys, "slice"], observed=True)["ratio"].mean()
    g = per_slice.groupby(level=list(range(len(keys))), observed=True)
    cov = (100.0 * g.std(ddof=1) / g.mean()).rename("slicewise_cov")
    n_slices = g.size().rename("n_slices")
    return pd.concat([mean_ratio, cov, n_slices], axis=1).reset_index()[cols]


def slice_profile(slices: pd.DataFrame) -> pd.DataFrame:
    """Scaling factor along the slice axis (the PAM50 axis when PAM50-normalised): one row
    per (metric, slice) with ``level`` (the slice's most frequent level), ``n`` pairs,
    ``scaling_factor`` (geometric mean of the slice ratios) and ``q025``/``q975`` (2.5 and
    97.5 percentiles of the ratios: the spread across subjects, not a CI)."""
    cols = ["metric", "slice", "level", "n", "scaling_factor", "q025", "q975"]
    if slices.empty:
        return pd.DataFrame(columns=cols)
    s = slices.assign(log_ratio=np.log(slices["ratio"]))
    g = s.groupby(["metric", "slice"], observed=True)
    out = pd.DataFrame({"n": g.size(), "scaling_factor": np.exp(g["log_ratio"].mean())})
    q = g["ratio"].quantile([0.025, 0.975]).unstack()
    out["q025"], out["q975"] = q[0.025], q[0.975]
    counts = s.groupby(["metric", "slice", "level"], observed=True).size().rename("k")
    top = counts.reset_index().sort_values(["metric", "slice", "k"], ascending=[True, True, False])
    top = top.drop_duplicates(["metric", "slice"]).set_index(["metric", "slice"])["level"]
    out["level"] = top
    return out.reset_index()[cols]


def contrast_spread(pairs: pd.DataFrame) -> pd.DataFrame:
    """Within-subject spread of level means across contrasts, per version: for every
    (metric, level, subject) with >= 2 paired contrasts the CoV (%, ddof=1) of its level means;
    summarised per (metric, level, version) as ``n_subjects``, ``mean_cov_pct``,
    ``median_cov_pct``."""
    cols = ["metric", "level", "version", "n_subjects", "mean_cov_pct", "median_cov_pct"]
    if pairs.empty:
        return pd.DataFrame(columns=cols)
    g = pairs.groupby(["metric", "level", "subject"], observed=True)
    n = g.size()
    rows = []
    for version in VERSIONS:
        cov = 100.0 * g[version].std(ddof=1) / g[version].mean()
        cov = cov[n >= 2]
        if cov.empty:
            continue
        gg = cov.groupby(level=["metric", "level"], observed=True)
        part = pd.DataFrame(
            {"n_subjects": gg.size(), "mean_cov_pct": gg.mean(), "median_cov_pct": gg.median()}
        ).reset_index()
        part["version"] = version
        rows.append(part)
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.concat(rows, ignore_index=True)[cols].sort_values(["metric", "level", "version"])


def outlier_subjects(subj: pd.DataFrame, *, k: float = 3.5, floor: float = 1e-3) -> pd.DataFrame:
    """Subjects whose log-ratio is far from the others' in their (metric, level): columns
    ``metric, level, subject, ratio, robust_z`` (see :func:`robust_outliers`)."""
    cols = ["metric", "level", "subject", "ratio", "robust_z"]
    found = []
    for (metric, level), grp in subj.groupby(["metric", "level"], sort=True, observed=True):
        mask, z = robust_outliers(grp["log_ratio"].to_numpy(), k=k, floor=floor)
        if mask.any():
            hit = grp.loc[mask, ["subject", "log_ratio"]]
            found.append(
                pd.DataFrame(
                    {
                        "metric": metric,
                        "level": level,
                        "subject": hit["subject"].to_numpy(),
                        "ratio": np.exp(hit["log_ratio"].to_numpy()),
                        "robust_z": z[mask],
                    }
                )
            )
    if not found:
        return pd.DataFrame(columns=cols)
    return pd.concat(found, ignore_index=True)[cols]


def ground_truth_errors(
    baseline_means: pd.DataFrame,
    candidate_means: pd.DataFrame,
    truth_means: pd.DataFrame,
    metrics: Sequence[str],
) -> pd.DataFrame:
    """Percent error of each version's level means against ground truth, paired on (subject,
    contrast, level): per (metric, level, version) ``n``, ``mean_error_pct`` (signed),
    ``mean_abs_error_pct``, ``sd_error_pct``."""
    rows = []
    for version, vm in zip(VERSIONS, (baseline_means, candidate_means), strict=True):
        pairs = paired_level_means(truth_means, vm, metrics)
        if pairs.empty:
            continue
        pairs["err"] = 100.0 * (pairs["candidate"] / pairs["baseline"] - 1.0)
        g = pairs.groupby(["metric", "level"], observed=True)["err"]
        part = pd.DataFrame(
            {
                "n": g.size(),
                "mean_error_pct": g.mean(),
                "mean_abs_error_pct": g.apply(lambda e: float(np.abs(e).mean())),
                "sd_error_pct": g.std(ddof=1),
            }
        ).reset_index()
        part["version"] = version
        rows.append(part)
    cols = ["metric", "level", "version", "n", "mean_error_pct", "mean_abs_error_pct"]
    cols.append("sd_error_pct")
    if not rows:
        return pd.DataFrame(columns=cols)
    return pd.concat(rows, ignore_index=True)[cols]


def dice_summary(dice: pd.DataFrame) -> pd.DataFrame:
    """Per version (``baseline``/``candidate``): ``n``, ``mean``, ``median``, ``min`` Dice and
    the subject with the lowest. Input columns: ``subject, contrast, version, dice``."""
    missing = [c for c in ("subject", "contrast", "version", "dice") if c not in dice.columns]
    if missing:
        raise InputError(f"dice table: missing column(s) {missing}")
    bad = sorted(set(dice["version"].astype(str)) - set(VERSIONS))
    if bad:
        raise InputError(f"dice table: version must be 'baseline' or 'candidate', got {bad}")
    d = dice.assign(dice=pd.to_numeric(dice["dice"], errors="coerce"))
    d = d[np.isfinite(d["dice"])]
    rows = []
    for version, grp in d.groupby("version", sort=True):
        worst = grp.loc[grp["dice"].idxmin()]
        rows.append(
            {
                "version": version,
                "n": len(grp),
                "mean": float(grp["dice"].mean()),
                "median": float(grp["dice"].median()),
                "min": float(grp["dice"].min()),
                "min_subject": str(worst["subject"]),
                "min_contrast": str(worst["contrast"]),
            }
        )
    return pd.DataFrame(
        rows,
        columns=["version", "n", "mean", "median", "min", "min_subject", "min_contrast"],
    )


# --------------------------------------------------------------------------------------------
# The whole comparison
# --------------------------------------------------------------------------------------------


#: Columns of :attr:`Comparison.levels`, in order.
LEVEL_COLUMNS: tuple[str, ...] = (
    "metric",
    "level",
    "level_name",
    "n_subjects",
    "n_pairs",
    "n_baseline",
    "n_baseline_subjects",
    "coverage",
    *_PAIRED_STAT_COLUMNS[1:],
    "slicewise_mean_ratio",
    "slicewise_cov",
    "n_slices",
)


def _per_contrast_stats(
    pairs: pd.DataFrame,
    levels: pd.DataFrame,
    *,
    margins: Mapping[str, float],
    alpha: float,
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    """:func:`paired_stats` per (metric, contrast, level); within one contrast a subject has
    one pair, which is its own subject row."""
    contrasts = pairs["contrast"].unique()
    if len(contrasts) == 1:
        # A single contrast: the breakdown is the level table itself (same pairs, same numbers).
        cols = ["metric", "level", *_PAIRED_STAT_COLUMNS]
        out = levels.loc[levels["n_subjects"] > 0, cols].copy()
        out.insert(1, "contrast", str(contrasts[0]))
    else:
        by = ("metric", "contrast", "level")
        rows = grouped_paired_stats(
            pairs, by, margins=margins, alpha=alpha, n_boot=n_boot, seed=seed, sort=True
        )
        out = pd.DataFrame(rows, columns=["metric", "contrast", "level", *_PAIRED_STAT_COLUMNS])
    out = out.reset_index(drop=True)
    out.insert(3, "level_name", out["level"].map(level_name))
    return out


@dataclass
class Comparison:
    """Everything :func:`compare_tables` measured, as tables (levels are SCT numbers).

    ``levels``: one row per (metric, level) with ``n_subjects`` (paired subjects),
    ``n_pairs`` (paired (subject, contrast)), ``n_baseline`` / ``n_baseline_subjects``
    (baseline (subject, contrast) / subjects with a valid value), ``coverage``
    (n_pairs / n_baseline), ``scaling_factor``, ``ci95_low``/``ci95_high``, ``log_mean``,
    ``log_sd``, ``log_se``, ``tost_margin``, ``tost_p``, ``tost_ci_low``/``tost_ci_high``
    (the 1 - 2 alpha t-interval of the factor), ``wilcoxon_p``, ``ba_bias``,
    ``ba_loa_low``/``ba_loa_high``, ``ba_bias_pct``, ``ba_loa_pct_low``/``ba_loa_pct_high``,
    ``icc``, ``baseline_mean``/``candidate_mean`` (mean of subject values),
    ``slicewise_mean_ratio``, ``slicewise_cov`` (%), ``n_slices``.
    ``per_contrast``: the same per (metric, contrast, level) (no slice-wise or coverage).
    ``pairs``: paired level means per (metric, subject, contrast, level) with ``log_ratio``.
    ``subjects``: per (metric, level, subject): contrast-averaged values and ``log_ratio``.
    ``slice_profile``: per (metric, slice), see :func:`slice_profile`.
    ``contrast_spread``, ``outliers``, ``ground_truth``, ``dice``: see the functions.
    ``subject_sets``: sorted subject ids: ``common`` (in both tables), ``paired`` (with at
    least one valid pair), ``baseline_only``, ``candidate_only``.
    ``settings``: the parameters used (metrics, margins, alpha, n_boot, seed, outlier_k).
    """

    levels: pd.DataFrame
    per_contrast: pd.DataFrame
    pairs: pd.DataFrame
    subjects: pd.DataFrame
    slice_profile: pd.DataFrame
    contrast_spread: pd.DataFrame
    outliers: pd.DataFrame
    ground_truth: pd.DataFrame | None
    dice: pd.DataFrame | None
    subject_sets: dict[str, list[str]]
    settings: dict[str, Any] = field(default_factory=dict)
    _row_of: dict[tuple[str, int], int] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def metrics(self) -> list[str]:
        """The metrics compared, in the order asked for."""
        return list(self.settings.get("metrics", []))

    def level_row(self, metric: str, level: int) -> pd.Series | None:
        """The ``levels`` row of one (metric, level), or None."""
        lv = self.levels
        if len(self._row_of) != len(lv):  # built once (the gate asks for every gated level)
            keys = zip(lv["metric"].tolist(), lv["level"].tolist(), strict=True)
            self._row_of = {(str(m), int(lev)): i for i, (m, lev) in enumerate(keys)}
        i = self._row_of.get((metric, int(level)))
        if i is None:
            return None
        row = lv.iloc[i]
        if row["metric"] != metric or row["level"] != level:  # levels was replaced: look again
            self._row_of = {}
            hit = lv[(lv["metric"] == metric) & (lv["level"] == level)]
            return None if hit.empty else hit.iloc[0]
        return row


def compare_tables(
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    margins: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    ground_truth: pd.DataFrame | None = None,
    dice: pd.DataFrame | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    outlier_k: float = 3.5,
) -> Comparison:
    """Compare a candidate version's morphometrics with the baseline's (see the module doc).

    ``metrics``: metric columns to compare (default: those of :data:`DEFAULT_METRICS` present
    in both tables); each must be a ratio-scale metric (:data:`RATIO_METRICS`) present in
    both. ``margins``: TOST margin per metric as a fraction (0.01 = ±1 %; default
    :data:`DEFAULT_MARGINS`; a metric without one gets ``tost_p`` NaN). ``alpha``: for the
    ``1 - 2 alpha`` TOST interval. ``ground_truth``: optional tidy table measured on the
    reference segmentations. ``dice``: optional ``subject, contrast, version, dice`` table.
    ``n_boot``/``seed``: subject bootstrap. ``outlier_k``: MAD multiplier for outliers.

    Raises InputError when a table breaks the contract (see :func:`checked_table`) or a
    requested metric is absent or not on a ratio scale.
    """
    baseline = checked_table(baseline, "baseline")
    candidate = checked_table(candidate, "candidate")
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in baseline and m in candidate]
        if not metrics:
            raise InputError(
                f"baseline/candidate tables: none of the metrics {list(DEFAULT_METRICS)} in both"
            )
    metrics = list(dict.fromkeys(metrics))
    for m in metrics:
        if m not in RATIO_METRICS:
            raise InputError(
                f"metric {m!r} is not on a ratio scale (compare one of {list(RATIO_METRICS)})"
            )
        for name, t in (("baseline", baseline), ("candidate", candidate)):
            if m not in t.columns:
                raise InputError(f"{name} table: no {m!r} column")
    margins = dict(DEFAULT_MARGINS if margins is None else margins)

    bm = level_means(baseline, metrics)
    cm = level_means(candidate, metrics)
    pairs = paired_level_means(bm, cm, metrics)
    subj = subject_pairs(pairs)

    # Baseline coverage: how many of the baseline's valid measurements found a partner.
    base_long = bm.melt(id_vars=list(KEYS), value_vars=metrics, var_name="metric")
    base_long = base_long[_valid(base_long["value"])]
    gb = base_long.groupby(["metric", "level"], observed=True)
    coverage = pd.DataFrame(
        {"n_baseline": gb.size(), "n_baseline_subjects": gb["subject"].nunique()}
    )

    level_rows = grouped_paired_stats(
        subj,
        ("metric", "level"),
        margins=margins,
        alpha=alpha,
        n_boot=n_boot,
        seed=seed,
        sort=False,
    )
    levels = pd.DataFrame(level_rows, columns=["metric", "level", *_PAIRED_STAT_COLUMNS])
    n_pairs = pairs.groupby(["metric", "level"], observed=True).size().rename("n_pairs")
    levels = (
        coverage.join(n_pairs, how="left")
        .reset_index()
        .merge(levels, on=["metric", "level"], how="left")
    )
    levels["n_pairs"] = levels["n_pairs"].fillna(0).astype(int)
    levels["n_subjects"] = levels["n_subjects"].fillna(0).astype(int)
    levels["coverage"] = levels["n_pairs"] / levels["n_baseline"]

    slices = paired_slices(baseline, candidate, metrics)
    sw = slicewise_ratios(slices)
    levels = levels.merge(sw, on=["metric", "level"], how="left")
    rank = levels["metric"].map({m: i for i, m in enumerate(metrics)})
    levels = levels.assign(_rank=rank).sort_values(["_rank", "level"]).drop(columns="_rank")
    levels["level_name"] = levels["level"].map(level_name)
    levels = levels[list(LEVEL_COLUMNS)].reset_index(drop=True)

    per_contrast = _per_contrast_stats(
        pairs, levels, margins=margins, alpha=alpha, n_boot=n_boot, seed=seed
    )

    b_subjects = set(bm["subject"])
    c_subjects = set(cm["subject"])
    subject_sets = {
        "common": sorted(b_subjects & c_subjects),
        "paired": sorted(set(pairs["subject"])),
        "baseline_only": sorted(b_subjects - c_subjects),
        "candidate_only": sorted(c_subjects - b_subjects),
    }

    gt = None
    if ground_truth is not None:
        gm = level_means(checked_table(ground_truth, "ground truth"), metrics)
        gt = ground_truth_errors(bm, cm, gm, [m for m in metrics if m in gm.columns])

    return Comparison(
        levels=levels,
        per_contrast=per_contrast,
        pairs=pairs,
        subjects=subj,
        slice_profile=slice_profile(slices),
        contrast_spread=contrast_spread(pairs),
        outliers=outlier_subjects(subj, k=outlier_k),
        ground_truth=gt,
        dice=None if dice is None else dice_summary(dice),
        subject_sets=subject_sets,
        settings={
            "metrics": metrics,
            "margins": {m: margins[m] for m in metrics if m in margins},
            "alpha": alpha,
            "n_boot": n_boot,
            "seed": seed,
            "outlier_k": outlier_k,
        },
    )
