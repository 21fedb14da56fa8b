"""The drift report's figures (matplotlib object API on an Agg canvas: no pyplot state, no
display needed; fixed margins instead of the constrained-layout solver; one artist per
series, no per-point loops; legends outside the data). Their axes, texts and legends are
light (:mod:`drift.gate.figures_light`: drawn by Pillow when encoded, not as matplotlib
``Tick``/``Text``/``Legend`` artists, which were two thirds of the report's time).

Scaling factor per level with CIs and margin bands; scaling factor along the slice (PAM50)
axis with level boundaries; Bland-Altman per gated level; the metric per level per contrast
for both versions; the per-level mean across every evaluated version on a numeric version
axis. Each function returns a ``Figure``; :func:`figure_png` encodes one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from drift.gate.compare import METRIC_UNITS, level_means
from drift.gate.figures_light import legend, light_axes, light_png, set_ticks
from drift.gate.policy import DriftResult
from drift.measure.levels import level_name, level_number
from registry.errors import InputError

STATUS_COLOUR = {"pass": "#2e7d32", "warn": "#ef6c00", "fail": "#c62828", None: "#9e9e9e"}
VERSION_COLOUR = {"baseline": "#1f77b4", "candidate": "#d62728"}
DPI = 90
#: Relative differences below this are floating-point noise, not drift.
FP_RTOL = 1e-9
#: Tick steps a reader reads at a glance (0.99, 1.00, 1.01; never 0.975, 0.990, 1.005).
NICE_STEPS = [1, 2, 5, 10]


def _label(metric: str) -> str:
    unit = METRIC_UNITS.get(metric, "")
    return f"{metric} ({unit})" if unit else f"{metric} (unitless)"


# --------------------------------------------------------------------------------------------
# History of versions
# --------------------------------------------------------------------------------------------


def _version_number(v: Any) -> int:
    if isinstance(v, bool):
        raise InputError(f"history table: version {v!r} is not a version number")
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return int(v)
    m = re.fullmatch(r"\s*v?(\d+)\s*", str(v), flags=re.IGNORECASE)
    if not m:
        raise InputError(f"history table: version {v!r} is not a version number (e.g. 3 or v3)")
    return int(m.group(1))


def history_order(history: pd.DataFrame, metric: str = "area") -> pd.DataFrame:
    """The history table sorted by version *number* (v2 before v10; never as text).

    Input columns: ``version`` (int, or text such as ``v10`` / ``10``), ``level`` (SCT number
    or name) and ``metric`` (the mean per level). Returns ``version`` (as given, as text),
    ``version_number``, ``level`` (int), ``level_name``, ``value``.

    >>> h = pd.DataFrame({"version": ["v10", "v2", "v9"], "level": [3, 3, "C3"],
    ...                   "area": [70.0, 72.0, 71.0]})
    >>> history_order(h)["version"].tolist()
    ['v2', 'v9', 'v10']
    """
    missing = [c for c in ("version", "level", metric) if c not in history.columns]
    if missing:
        raise InputError(f"history table: missing column(s) {missing}")
    out = pd.DataFrame(
        {
            "version": history["version"].astype(str).to_numpy(),
            "version_number": [_version_number(v) for v in history["version"]],
            "level": [
                int(v) if not isinstance(v, str) else level_number(v) for v in history["level"]
            ],
            "value": pd.to_numeric(history[metric], errors="coerce").to_numpy(dtype=float),
        }
    )
    out["level_name"] = out["level"].map(level_name)
    out = out.sort_values(["version_number", "level"], kind="stable").reset_index(drop=True)
    return out[["version", "version_number", "level", "level_name", "value"]]


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _figure(width: float, height: float, **margins: float) -> Figure:
    """A figure on an Agg canvas with fixed margins in inches (``left``, ``right``, ``top``,
    ``bottom``; ``wspace``/``hspace`` as fractions): no layout solver at draw time."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    m = {"left": 0.75, "right": 0.2, "top": 0.45, "bottom": 0.55} | margins
    fig.subplots_adjust(
        left=m["left"] / width,
        right=1 - m["right"] / width,
        top=1 - m["top"] / height,
        bottom=m["bottom"] / height,
        wspace=m.get("wspace", 0.25),
        hspace=m.get("hspace", 0.35),
    )
    return fig


def _title(ax: Any, text: str, fontsize: float = 10) -> None:
    # A plain text above the axes: set_title would re-measure every tick label at each draw.
    ax.text(0.5, 1.015, text, transform=ax.transAxes, ha="center", va="bottom", fontsize=fontsize)


def _margins(result: DriftResult, metric: str) -> tuple[float | None, float | None]:
    m = result.policy.metrics.get(metric)
    return (None, None) if m is None else (m.fail_pct, m.warn_pct)


def _margin_text(fail: float | None, warn: float | None) -> str:
    if fail is None:
        return "not gated"
    return f"fail ±{fail:g} %" + (f", warn ±{warn:g} %" if warn else "")


def _slot_titles(ax: Any, centres: Sequence[float], titles: Sequence[str], size: float) -> None:
    """One title per slot of a one-axes figure, above the data (x in data units)."""
    for x, text in zip(centres, titles, strict=True):
        ax.text(
            x,
            1.015,
            text,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=size,
        )


def _slot_separators(ax: Any, edges: Sequence[float]) -> None:
    if len(edges):
        ax.vlines(edges, 0, 1, transform=ax.get_xaxis_transform(), color="#9e9e9e", lw=0.8)


def figure_scaling_levels(result: DriftResult) -> Figure:
    """Scaling factor (unitless: candidate / baseline) per level and metric with its 95 % CI,
    coloured by gate status, over each metric's margin bands (green ±warn, amber ±fail, dashed
    red the fail limits): one axes, one slot per metric (its margins named above it), so that
    the metrics share the unitless scale. The legend sits below, over no data."""
    comp = result.comparison
    metrics = comp.metrics
    levels = comp.levels[comp.levels["n_subjects"] > 0]
    per_metric = [levels[levels["metric"] == m] for m in metrics]
    sizes = [len(lv) for lv in per_metric]
    width = min(max(0.42 * sum(sizes) + 0.9 * len(metrics) + 1.6, 6.0), 14.0)
    fig = _figure(width, 3.6, left=1.0, bottom=1.05, top=0.4)
    ax = fig.subplots()
    x_all, sf_all, lo_all, hi_all, colours, names = [], [], [], [], [], []
    centres, titles, separators = [], [], []
    seen: set[str | None] = set()
    start = 0.0
    band_x: dict[str, list[float]] = {"fail": [], "warn": []}
    band_y: dict[str, list[float]] = {"fail": [], "warn": []}
    fail_lines: tuple[list[float], list[float], list[float]] = ([], [], [])
    for metric, lv, size in zip(metrics, per_metric, sizes, strict=True):
        x = start + np.arange(size, dtype=float)
        lo_edge, hi_edge = start - 0.5, start + max(size, 1) - 0.5
        fail, warn = _margins(result, metric)
        for kind, pct in (("fail", fail), ("warn", warn)):
            if pct is not None:
                band_x[kind] += [lo_edge, hi_edge, np.nan]
                band_y[kind] += [pct / 100] * 3
        if fail is not None:
            for y in (1 - fail / 100, 1 + fail / 100):
                fail_lines[0].append(y)
                fail_lines[1].append(lo_edge)
                fail_lines[2].append(hi_edge)
        status = [result.gate.status_of(metric, n) for n in lv["level_name"]]
        seen.update(status)
        x_all.append(x)
        sf_all.append(lv["scaling_factor"].to_numpy(float))
        lo_all.append(lv["ci95_low"].to_numpy(float))
        hi_all.append(lv["ci95_high"].to_numpy(float))
        colours += [STATUS_COLOUR[st] for st in status]
        names += lv["level_name"].tolist()
        centres.append((lo_edge + hi_edge) / 2)
        titles.append(f"{metric}: {_margin_text(fail, warn)}")
        separators.append(hi_edge)
        start += max(size, 1)
    for kind, colour in (("fail", "#ffe0b2"), ("warn", "#c8e6c9")):
        if band_x[kind]:
            bx, half = np.array(band_x[kind]), np.array(band_y[kind])
            ax.fill_between(bx, 1 - half, 1 + half, color=colour, zorder=0, lw=0)
    if fail_lines[0]:
        ax.hlines(*fail_lines, color="#c62828", lw=0.8, ls="--", zorder=1)
    ax.axhline(1.0, color="black", lw=0.6, zorder=1)
    x = np.concatenate(x_all) if x_all else np.zeros(0)
    sf = np.concatenate(sf_all) if sf_all else np.zeros(0)
    lo = np.concatenate(lo_all) if lo_all else np.zeros(0)
    hi = np.concatenate(hi_all) if hi_all else np.zeros(0)
    if x.size:
        ax.vlines(x, lo, hi, colors=colours, lw=1.2, zorder=2)
        ax.scatter(x, sf, c=colours, s=26, zorder=3, lw=0)
    _slot_separators(ax, separators[:-1])
    _slot_titles(ax, centres, titles, 9)
    light_axes(ax, xsize=8, ygrid=True)
    set_ticks(ax, "x", x, names)
    ax.set_xlim(-0.5, start - 0.5)
    ax.set_xlabel("vertebral level, per metric")
    widest = max((_margins(result, m)[0] or 1) for m in metrics) / 100 * 1.5 if metrics else 0.015
    ymin = float(np.nanmin(np.r_[lo, 1 - widest]))
    ymax = float(np.nanmax(np.r_[hi, 1 + widest]))
    pad = 0.08 * (ymax - ymin)
    ax.set_ylim(ymin - pad, ymax + pad)
    ax.yaxis.set_major_locator(MaxNLocator(6, steps=NICE_STEPS))
    ax.set_ylabel("scaling factor (unitless)\ncandidate / baseline, 95 % CI")
    entries: list[tuple[str, dict[str, Any]]] = [
        (st or "not gated", {"kind": "marker", "color": STATUS_COLOUR[st]})
        for st in ("pass", "warn", "fail", None)
        if st in seen
    ]
    entries += [
        ("within ±warn margin", {"kind": "patch", "color": "#c8e6c9"}),
        ("warn to fail margin", {"kind": "patch", "color": "#ffe0b2"}),
        ("fail margin", {"kind": "line", "color": "#c62828", "ls": "--", "lw": 0.8}),
    ]
    legend(fig, entries, loc="lower center", ncols=7, size=8)
    return fig


def figure_slice_profile(result: DriftResult) -> Figure:
    """Scaling factor (unitless) along the slice axis (PAM50 when normalised; rostral on the
    left): geometric mean over subjects per slice, the 2.5-97.5 % spread across subjects, the
    fail margins, and the level boundaries. The legend sits above the panels, over no data."""
    comp = result.comparison
    metrics = comp.metrics
    height = 1.9 * len(metrics) + 1.2
    fig = _figure(9.0, height, top=0.75, bottom=0.6, left=1.05, hspace=0.25)
    axes = fig.subplots(len(metrics), 1, squeeze=False, sharex=True)[:, 0]
    for row, (ax, metric) in enumerate(zip(axes, metrics, strict=True)):
        light_axes(ax, xlabels=row == len(metrics) - 1, ygrid=True)
        prof = comp.slice_profile[comp.slice_profile["metric"] == metric].sort_values("slice")
        # Slices seen in too few subjects are noise, not a profile.
        prof = prof[prof["n"] >= result.policy.min_subjects]
        fail, _ = _margins(result, metric)
        if fail is not None:
            ax.axhline(1 - fail / 100, color="#c62828", lw=0.8, ls="--")
            ax.axhline(1 + fail / 100, color="#c62828", lw=0.8, ls="--")
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set_ylabel(f"{metric}\nscaling factor (unitless)", fontsize=8)
        if prof.empty:
            ax.text(0.5, 0.5, "no slice-wise data", ha="center", transform=ax.transAxes)
            continue
        s = prof["slice"].to_numpy()
        ax.fill_between(s, prof["q025"], prof["q975"], color="#90caf9", alpha=0.6, lw=0)
        ax.plot(s, prof["scaling_factor"], color="#0d47a1", lw=1.2)
        lev = prof["level"].to_numpy()
        change = np.flatnonzero(np.diff(lev) != 0)
        ax.vlines(
            (s[change] + s[change + 1]) / 2,
            0,
            1,
            transform=ax.get_xaxis_transform(),
            color="grey",
            lw=0.6,
            ls=":",
        )
        ax.yaxis.set_major_locator(MaxNLocator(4, steps=NICE_STEPS))
        if row:  # the level names once, above the top panel (the boundaries are on every panel)
            continue
        starts, ends = np.r_[0, change + 1], np.r_[change, len(s) - 1]
        for a, b in zip(starts, ends, strict=True):
            ax.text(
                (s[a] + s[b]) / 2,
                1.0,
                level_name(int(lev[a])),
                ha="center",
                va="bottom",
                fontsize=8,
                transform=ax.get_xaxis_transform(),
            )
    axes[-1].set_xlabel(
        f"slice (PAM50 index when normalised; rostral on the left; slices with "
        f"\u2265 {result.policy.min_subjects} subjects)"
    )
    axes[-1].invert_xaxis()
    entries = [
        ("geometric mean over subjects", {"kind": "line", "color": "#0d47a1", "lw": 1.2}),
        ("2.5-97.5 % of subjects", {"kind": "patch", "color": "#90caf9", "alpha": 0.6}),
        ("fail margin", {"kind": "line", "color": "#c62828", "ls": "--", "lw": 0.8}),
        ("level boundary", {"kind": "line", "color": "grey", "ls": ":", "lw": 0.6}),
    ]
    legend(fig, entries, loc="upper center", ncols=4, size=8)
    return fig


def figure_bland_altman(result: DriftResult, metric: str = "area") -> Figure:
    """Bland-Altman per gated level, the levels side by side on one axes (one slot each):
    difference (candidate - baseline) against the mean of the subject level values (scaled to
    the slot; the slot's range is printed under it), with the bias (solid), the 95 % limits of
    agreement (dashed) and, shaded, the fail margin in the metric's units. The y scale is never
    narrower than half the fail margin, so floating-point noise (|difference| < 1e-9 of the
    value) reads as zero."""
    comp = result.comparison
    lv = comp.levels[(comp.levels["metric"] == metric) & (comp.levels["n_subjects"] >= 2)]
    gated = [result.gate.status_of(metric, name) is not None for name in lv["level_name"]]
    if any(gated):  # the gated levels; every level with pairs when none is gated
        lv = lv[gated]
    n = max(len(lv), 1)
    fig = _figure(max(1.25 * n + 1.2, 5.0), 3.6, left=0.9, bottom=0.95, top=0.55)
    ax = fig.subplots()
    subj = comp.subjects[comp.subjects["metric"] == metric]
    fail, _ = _margins(result, metric)
    unit = METRIC_UNITS.get(metric, "")
    xs, ys, bias_y, loa_y, band = [], [], [], [], []
    labels = []
    for i, row in enumerate(lv.itertuples()):
        s = subj[subj["level"] == row.level]
        b, c = s["baseline"].to_numpy(float), s["candidate"].to_numpy(float)
        mean = (b + c) / 2
        diff = c - b
        diff = np.where(np.abs(diff) <= FP_RTOL * np.abs(mean), 0.0, diff)
        lo, hi = (float(mean.min()), float(mean.max())) if mean.size else (0.0, 1.0)
        x = i + (0.8 * (mean - lo) / (hi - lo) - 0.4 if hi > lo else np.zeros_like(mean))
        xs.append(x)
        ys.append(diff)
        identical = not np.any(diff)
        bias = 0.0 if identical else float(np.mean(diff))
        loas = [0.0, 0.0] if identical else [float(row.ba_loa_low), float(row.ba_loa_high)]
        bias_y.append(bias)
        loa_y += loas
        band.append(fail / 100 * float(np.mean(mean)) if fail is not None and mean.size else 0.0)
        pct = 0.0 if identical else float(row.ba_bias_pct)
        labels.append(
            f"{row.level_name}\nbias {bias:+.3g}\n({pct:+.2f} %)\n{lo:.3g}-{hi:.3g} {unit}"
        )
    if band and fail is not None:
        edges = np.repeat(np.arange(len(band)), 2) + np.tile([-0.45, 0.45], len(band))
        half = np.repeat(band, 2)
        ax.fill_between(edges, -half, half, color="#ffe0b2", lw=0, zorder=0)
    if xs:
        ax.scatter(np.concatenate(xs), np.concatenate(ys), s=10, alpha=0.7, color="#1f77b4", lw=0)
        centers = np.arange(len(bias_y), dtype=float)
        ax.hlines(bias_y, centers - 0.45, centers + 0.45, color="#c62828", lw=1.2)
        pairs = np.repeat(centers, 2)
        ax.hlines(loa_y, pairs - 0.45, pairs + 0.45, color="#c62828", lw=0.8, ls="--")
    ax.axhline(0, color="black", lw=0.5)
    ax.vlines(
        np.arange(len(labels) - 1) + 0.5,
        0,
        1,
        transform=ax.get_xaxis_transform(),
        color="#bdbdbd",
        lw=0.6,
    )
    values = np.abs(np.r_[np.concatenate(ys) if ys else [], loa_y, [b * 0.5 for b in band]])
    extent = float(np.nanmax(values)) if values.size else 0.0
    if extent > 0:
        ax.set_ylim(-1.15 * extent, 1.15 * extent)
    ax.set_xlim(-0.5, n - 0.5)
    light_axes(ax, xsize=7)
    set_ticks(ax, "x", np.arange(len(labels)), labels)
    ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.set_ylabel(f"candidate - baseline ({unit or 'unitless'})", fontsize=9)
    ax.set_xlabel(
        f"vertebral level; within each slot: mean of baseline and candidate {metric}, low to high",
        fontsize=8,
    )
    _title(
        ax,
        "red: bias (solid) and 95 % limits of agreement (dashed); amber: ±fail margin "
        f"in {unit or 'metric units'}",
        fontsize=9,
    )
    return fig


def figure_by_contrast(
    baseline_table: pd.DataFrame,
    candidate_table: pd.DataFrame,
    metric: str = "area",
    *,
    min_subjects: int = 3,
) -> Figure:
    """The metric per level per contrast for both versions, one slot per contrast on one axes
    (levels where the baseline has at least ``min_subjects`` subjects): the median of the
    subjects' level means (dot), their interquartile range (thick bar) and range (thin bar),
    baseline and candidate side by side."""
    means = {
        "baseline": level_means(baseline_table, [metric]),
        "candidate": level_means(candidate_table, [metric]),
    }
    b = means["baseline"][np.isfinite(means["baseline"][metric])]
    counts = b.groupby(["contrast", "level"])["subject"].nunique()
    kept = counts[counts >= min_subjects].index  # (contrast, level) pairs, sorted
    contrasts = sorted({c for c, _ in kept})
    position: dict[tuple[str, int], float] = {}
    centres, separators = [], []
    start = 0.0
    for contrast in contrasts:
        lv = [int(level) for c, level in kept if c == contrast]
        position.update({(contrast, lev): start + i for i, lev in enumerate(lv)})
        centres.append(start + (len(lv) - 1) / 2)
        separators.append(start + len(lv) - 0.5)
        start += len(lv)
    width = min(max(0.45 * len(position) + 1.8, 6.0), 14.0)
    fig = _figure(width, 3.3, left=0.9, bottom=0.75, top=0.4)
    ax = fig.subplots()
    for k, version in enumerate(("baseline", "candidate")):
        m = means[version]
        m = m[np.isfinite(m[metric])]
        keys = pd.MultiIndex.from_arrays([m["contrast"], m["level"].astype(int)])
        m = m[keys.isin(kept)]
        if m.empty:
            continue
        q = m.groupby(["contrast", "level"])[metric].quantile([0.0, 0.25, 0.5, 0.75, 1.0])
        q = q.unstack()
        x = np.array([position[(c, int(lev))] for c, lev in q.index]) + (k - 0.5) * 0.3
        colour = VERSION_COLOUR[version]
        ax.vlines(x, q[0.0], q[1.0], color=colour, lw=1)
        ax.vlines(x, q[0.25], q[0.75], color=colour, lw=5, alpha=0.6)
        ax.plot(x, q[0.5], "o", color="black", ms=3, ls="none")
    ticks = sorted(position.items(), key=lambda kv: kv[1])
    light_axes(ax, xsize=8, ygrid=True)
    set_ticks(ax, "x", [x for _, x in ticks], [level_name(lev) for (_, lev), _ in ticks])
    ax.set_xlim(-0.5, max(start, 1) - 0.5)
    _slot_separators(ax, separators[:-1])
    _slot_titles(ax, centres, contrasts, 10)
    ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.set_xlabel("vertebral level, per contrast")
    ax.set_ylabel(_label(metric) + "\nsubject level means")
    entries = [
        (v, {"kind": "line", "color": c, "lw": 5, "alpha": 0.6}) for v, c in VERSION_COLOUR.items()
    ]
    entries.append(
        ("median (dot), IQR (thick), range (thin)", {"kind": "marker", "color": "black", "ms": 3})
    )
    legend(fig, entries, loc="lower center", ncols=3, size=8)
    return fig


def figure_history(
    history: pd.DataFrame,
    metric: str = "area",
    *,
    highlight: Mapping[str, int] | None = None,
) -> Figure:
    """Per-level cohort mean of ``metric`` across every evaluated version, on a numeric
    version axis (v2 before v10, gaps where versions were not evaluated); ``highlight``
    (e.g. ``{"baseline": 2, "candidate": 4}``) marks versions with labelled vertical lines."""
    h = history_order(history, metric)
    numbers = sorted(set(h["version_number"]))
    fig = _figure(
        max(5.5, 0.45 * (numbers[-1] - numbers[0]) + 4.5) if numbers else 5.5,
        3.4,
        right=1.3,
        top=0.35,
        bottom=0.6,
        left=0.9,
    )
    ax = fig.subplots()
    light_axes(ax, xgrid=True, ygrid=True)
    entries: list[tuple[str, dict[str, Any]]] = []
    for lev, grp in h.groupby("level", sort=True):
        (line,) = ax.plot(
            grp["version_number"], grp["value"], "o-", ms=4, lw=1.2, label=level_name(int(lev))
        )
        spec = {"kind": "line", "color": line.get_color(), "lw": 1.2, "marker": "o", "ms": 4}
        entries.append((level_name(int(lev)), spec))
    for role, version in (highlight or {}).items():
        colour = VERSION_COLOUR.get(role, "grey")
        ax.axvline(version, color=colour, lw=1, ls="--", label=f"{role} v{version}")
        entries.append(
            (f"{role} v{version}", {"kind": "line", "color": colour, "lw": 1, "ls": "--"})
        )
    set_ticks(ax, "x", numbers, [f"v{v}" for v in numbers])
    if numbers:
        ax.set_xlim(numbers[0] - 0.5, numbers[-1] + 0.5)
    ax.set_xlabel("model version (registry number)")
    ax.set_ylabel(_label(metric) + ", cohort mean")
    legend(fig, entries, loc="center right", size=8, title="level")
    return fig


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure (Agg; the light axes and texts drawn by Pillow; zlib level 1: a
    third of the encoding time of the default 6, files a few % larger)."""
    return light_png(fig, compress_level=1)
