"""Small statistics on arrays, each usable alone (no tables, no policy): bootstrap CI, TOST,
Wilcoxon, Bland-Altman, ICC(A,1), robust outliers. :mod:`drift.gate.compare` applies them to
paired morphometrics tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

_MAD_SCALE = 1.4826  # MAD -> SD for normal data
_Z975 = 1.959963984540054
#: Relative differences at or below this are floating-point noise (summation order, a
#: re-saved file), not drift: they count as ties (Wilcoxon) and as zero (Bland-Altman).
FP_RTOL = 1e-9


# --------------------------------------------------------------------------------------------
# Small statistics on arrays (each usable alone)
# --------------------------------------------------------------------------------------------


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = 2000, seed: int | Sequence[int] = 0, cl: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (one row of resample indices per
    resample, all resamples at once: no Python loop).

    >>> lo, hi = bootstrap_mean_ci(np.array([1.0, 2.0, 3.0, 4.0]), seed=1)
    >>> 1.0 <= lo < 2.5 < hi <= 4.0
    True
    """
    return bootstrap_mean_cis([values], [seed], n_boot=n_boot, cl=cl)[0]


def _bootstrap_means(x: np.ndarray, n_boot: int, seed: int | Sequence[int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    return np.take(x, idx).mean(axis=1)


def bootstrap_mean_cis(
    groups: Sequence[np.ndarray],
    seeds: Sequence[int | Sequence[int]],
    *,
    n_boot: int = 2000,
    cl: float = 0.95,
) -> list[tuple[float, float]]:
    """:func:`bootstrap_mean_ci` of many groups, each with its own seed (so a group's
    interval does not depend on the others): the resample means of every group are
    drawn from the group's generator, and the percentiles of all groups come from one
    ``np.quantile`` along an axis (the same numbers, without its per-call overhead).

    >>> g = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0]), np.array([]), np.arange(9.0)]
    >>> bootstrap_mean_cis(g, [1, 2, 3, 4]) == [bootstrap_mean_ci(x, seed=s)
    ...                                       for x, s in zip(g, [1, 2, 3, 4])]
    True
    """
    out: list[tuple[float, float]] = []
    rows: list[np.ndarray] = []
    members: list[int] = []
    for values, seed in zip(groups, seeds, strict=True):
        x = np.asarray(values, dtype=float)
        if x.size == 0:
            out.append((math.nan, math.nan))
        elif x.size == 1:
            out.append((float(x[0]), float(x[0])))
        else:
            out.append((math.nan, math.nan))
            members.append(len(out) - 1)
            rows.append(_bootstrap_means(x, n_boot, seed))
    if rows:
        tail = (1.0 - cl) / 2.0
        q = np.quantile(np.vstack(rows), [tail, 1.0 - tail], axis=1)
        for j, i in enumerate(members):
            out[i] = (float(q[0, j]), float(q[1, j]))
    return out


def t_ppf(q: float, df: float) -> float:
    """``scipy.stats.t.ppf(q, df)`` for 0 < q < 1 and df > 0, without the distribution
    machinery's per-call overhead (the same special function, the same number)."""
    return float(special.stdtrit(df, q))


def tost_pvalue(mean: float, se: float, df: float, margin: float) -> float:
    """TOST p-value for a log-ratio mean against the band ``[log(1-margin), log(1+margin)]``.

    ``mean``, ``se`` and ``df`` are the mean log-ratio, its standard error and the degrees of
    freedom (n - 1). The p-value is ``max(p_lower, p_upper)`` of the two one-sided t-tests
    (H0: mean <= log(1-margin); H0: mean >= log(1+margin)). With ``se == 0`` (all ratios
    equal) it is 0 inside the band and 1 on or outside it.

    >>> tost_pvalue(0.0, 0.001, 30, 0.01) < 1e-9
    True
    >>> round(tost_pvalue(math.log(1.01), 0.001, 30, 0.01), 3)  # estimate on the bound
    0.5
    >>> tost_pvalue(math.log(0.98), 0.0, 30, 0.01)
    1.0
    """
    if not (np.isfinite(mean) and np.isfinite(se) and df >= 1 and 0 < margin < 1):
        return math.nan
    lo, hi = math.log(1.0 - margin), math.log(1.0 + margin)
    if se == 0:
        return 0.0 if lo < mean < hi else 1.0
    # scipy.stats.t.sf / .cdf evaluate exactly these (stdtr), with ~0.5 ms of overhead each.
    p_lower = float(special.stdtr(df, -((mean - lo) / se)))
    p_upper = float(special.stdtr(df, (mean - hi) / se))
    return max(p_lower, p_upper)


def wilcoxon_pvalue(log_ratios: np.ndarray) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value of ``log(c/b)`` against 0.

    All-zero differences (identical versions) give 1.0; fewer than 2 values give NaN;
    differences within :data:`FP_RTOL` of zero are ties (floating-point noise is not data).

    >>> wilcoxon_pvalue(np.zeros(10))
    1.0
    >>> wilcoxon_pvalue(np.linspace(0.01, 0.02, 12)) < 0.001
    True
    """
    d = np.asarray(log_ratios, dtype=float)
    if d.size < 2:
        return math.nan
    d = np.where(np.abs(d) <= FP_RTOL, 0.0, d)  # log-ratio ~ relative difference: ties
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox").pvalue)


def wilcoxon_pvalues(groups: Sequence[np.ndarray]) -> list[float]:
    """:func:`wilcoxon_pvalue` of many groups at once: groups of one size without ties at
    zero go to scipy in one call along an axis (the same numbers, without scipy's per-call
    overhead); the others one by one.

    >>> d = [np.linspace(0.01, 0.02, 12), np.zeros(5), np.linspace(-0.01, 0.03, 12)]
    >>> wilcoxon_pvalues(d) == [wilcoxon_pvalue(x) for x in d]
    True
    """
    out = [math.nan] * len(groups)
    batches: dict[int, list[int]] = {}
    for i, values in enumerate(groups):
        d = np.asarray(values, dtype=float)
        if d.size >= 2 and np.all(np.abs(d) > FP_RTOL):
            batches.setdefault(d.size, []).append(i)
        else:
            out[i] = wilcoxon_pvalue(d)
    for members in batches.values():
        rows = np.vstack([np.asarray(groups[i], dtype=float) for i in members])
        p = np.atleast_1d(stats.wilcoxon(rows, zero_method="wilcox", axis=1).pvalue)
        for i, value in zip(members, p, strict=True):
            out[i] = float(value)
    return out


@dataclass(frozen=True)
class BlandAltman:
    """Bland-Altman agreement of paired measurements (``candidate - baseline``)."""

    bias: float
    loa: tuple[float, float]
    bias_pct: float
    loa_pct: tuple[float, float]


def bland_altman(baseline: np.ndarray, candidate: np.ndarray) -> BlandAltman:
    """Bias and 95 % limits of agreement (bias ± 1.96 SD, SD with ddof=1), in the metric's
    units and in percent of the pair mean.

    >>> ba = bland_altman(np.array([10.0, 20.0, 30.0]), np.array([11.0, 21.0, 31.0]))
    >>> ba.bias, ba.loa
    (1.0, (1.0, 1.0))
    """
    b = np.asarray(baseline, dtype=float)
    c = np.asarray(candidate, dtype=float)
    if b.size < 2:
        nan2 = (math.nan, math.nan)
        return BlandAltman(math.nan, nan2, math.nan, nan2)
    diff = c - b
    diff = np.where(np.abs(diff) <= FP_RTOL * np.abs((c + b) / 2.0), 0.0, diff)
    pct = 100.0 * diff / ((c + b) / 2.0)
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    bias_p, sd_p = float(pct.mean()), float(pct.std(ddof=1))
    return BlandAltman(
        bias,
        (bias - _Z975 * sd, bias + _Z975 * sd),
        bias_p,
        (bias_p - _Z975 * sd_p, bias_p + _Z975 * sd_p),
    )


def icc_a1(ratings: np.ndarray) -> float:
    """ICC(A,1): two-way model, absolute agreement, single measure (McGraw & Wong 1996, case
    A,1; the same number as Shrout & Fleiss 1979 ICC(2,1)).

    ``ratings`` is an (n targets x k raters) array without NaN; here targets are subjects and
    raters the two model versions. ``(MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)``.

    >>> icc_a1(np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    1.0
    """
    y = np.asarray(ratings, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        return math.nan
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * float(((y.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((y.mean(axis=0) - grand) ** 2).sum())
    ss_err = float(((y - grand) ** 2).sum()) - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = max(ss_err, 0.0) / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    if denom <= 0:
        return math.nan
    return float((msr - mse) / denom)


def robust_outliers(
    values: np.ndarray, *, k: float = 3.5, floor: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Flag values far from the median: ``|x - median| > max(k * 1.4826 * MAD, floor)``.

    Returns (mask, robust z = (x - median) / (1.4826 MAD), inf where MAD is 0 and x differs).

    >>> mask, z = robust_outliers(np.array([0.0, 0.001, -0.001, 0.0005, 0.2]))
    >>> mask.tolist()
    [False, False, False, False, True]
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    med = float(np.median(x))
    dev = x - med
    mad = _MAD_SCALE * float(np.median(np.abs(dev)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(dev == 0, 0.0, dev / mad) if mad > 0 else np.where(dev == 0, 0.0, np.inf)
    mask = np.abs(dev) > max(k * mad, floor)
    return mask, np.sign(dev) * np.abs(z)
