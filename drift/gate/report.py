"""Reports of a drift check: a self-contained HTML page, a Markdown summary and the figures.

* HTML: one file, every figure embedded as a base64 PNG, inline CSS, no external asset.
* Markdown: for ``$GITHUB_STEP_SUMMARY`` or a PR comment: the verdict first, a per-level table,
  the failing (then warning) conditions, provenance.
* Figures (matplotlib, object API on an Agg canvas: no pyplot state, no display needed):
  scaling factor per level with CIs and margin bands; scaling factor along the slice (PAM50)
  axis with level boundaries; Bland-Altman per level; the metric per level per contrast for
  both versions; the history of the per-level metric across versions (numeric version order).

:func:`write_report` renders everything in memory first, then writes each file atomically,
so an error leaves no partial report. The figure functions return a matplotlib ``Figure`` and
can be used alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from drift.gate.compare import METRIC_UNITS, level_means
from drift.gate.policy import DriftResult
from drift.measure.levels import level_name, level_number
from registry.errors import InputError
from registry.fsutil import atomic_path

_STATUS_COLOUR = {"pass": "#2e7d32", "warn": "#ef6c00", "fail": "#c62828", None: "#757575"}
_STATUS_MARK = {"pass": "✅ PASS", "warn": "⚠️ WARN", "fail": "❌ FAIL"}
_VERSION_COLOUR = {"baseline": "#1f77b4", "candidate": "#d62728"}
_DPI = 110


def _label(metric: str) -> str:
    unit = METRIC_UNITS.get(metric, "")
    return f"{metric} ({unit})" if unit else metric


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return format(x, spec)


def _fmt_p(p: Any) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.2g}"


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


def _margins(result: DriftResult, metric: str) -> tuple[float | None, float | None]:
    m = result.policy.metrics.get(metric)
    return (None, None) if m is None else (m.fail_pct, m.warn_pct)


def _bands(ax: Any, fail: float | None, warn: float | None) -> None:
    """Shade the margin bands around 1: green within ±warn, amber to ±fail."""
    if fail is not None:
        ax.axhspan(1 - fail / 100, 1 + fail / 100, color="#ffe0b2", zorder=0, lw=0)
        ax.axhline(1 - fail / 100, color="#c62828", lw=0.8, ls="--", zorder=1)
        ax.axhline(1 + fail / 100, color="#c62828", lw=0.8, ls="--", zorder=1)
    if warn is not None:
        ax.axhspan(1 - warn / 100, 1 + warn / 100, color="#c8e6c9", zorder=0, lw=0)
    ax.axhline(1.0, color="black", lw=0.6, zorder=1)


def figure_scaling_levels(result: DriftResult) -> Figure:
    """Scaling factor per level and metric with its 95 % CI, coloured by gate status, over
    the policy's margin bands (green ±warn, amber ±fail, dashed red the fail limits)."""
    comp = result.comparison
    metrics = comp.metrics
    fig = Figure(figsize=(4.2 * len(metrics), 3.6), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        lv = comp.levels[(comp.levels["metric"] == metric) & (comp.levels["n_subjects"] > 0)]
        x = np.arange(len(lv))
        fail, warn = _margins(result, metric)
        _bands(ax, fail, warn)
        for xi, row in zip(x, lv.itertuples(), strict=True):
            status = result.gate.status_of(metric, row.level_name)
            colour = _STATUS_COLOUR[status]
            err = [[row.scaling_factor - row.ci95_low], [row.ci95_high - row.scaling_factor]]
            ax.errorbar(
                xi, row.scaling_factor, yerr=err, fmt="o", color=colour, ms=5, capsize=3, zorder=3
            )
        ax.set_xticks(x, lv["level_name"].tolist())
        ax.set_title(_label(metric))
        ax.set_xlabel("vertebral level")
        lo = min(lv["ci95_low"].min(), 1 - (fail or 1) / 100 * 1.5)
        hi = max(lv["ci95_high"].max(), 1 + (fail or 1) / 100 * 1.5)
        pad = 0.1 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("scaling factor (candidate / baseline)\n95 % CI; grey = not gated")
    return fig


def figure_slice_profile(result: DriftResult) -> Figure:
    """Scaling factor along the slice axis (PAM50 when normalised; rostral on the left):
    geometric mean over subjects per slice, the 2.5-97.5 % spread across subjects, the fail
    margins, and the level boundaries."""
    comp = result.comparison
    metrics = comp.metrics
    fig = Figure(figsize=(9.5, 2.6 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), 1, squeeze=False, sharex=True)[:, 0]
    for ax, metric in zip(axes, metrics, strict=True):
        prof = comp.slice_profile[comp.slice_profile["metric"] == metric].sort_values("slice")
        # Slices seen in too few subjects are noise, not a profile.
        prof = prof[prof["n"] >= result.policy.min_subjects]
        fail, _ = _margins(result, metric)
        if fail is not None:
            for sign in (-1, 1):
                ax.axhline(1 + sign * fail / 100, color="#c62828", lw=0.8, ls="--")
        ax.axhline(1.0, color="black", lw=0.6)
        if prof.empty:
            ax.text(
                0.5, 0.5, "no slice-wise data", ha="center", va="center", transform=ax.transAxes
            )
            ax.set_ylabel(metric)
            continue
        s = prof["slice"].to_numpy()
        ax.fill_between(
            s, prof["q025"], prof["q975"], color="#90caf9", alpha=0.5, lw=0, label="2.5-97.5 %"
        )
        ax.plot(s, prof["scaling_factor"], color="#0d47a1", lw=1.2, label="geometric mean")
        lev = prof["level"].to_numpy()
        change = np.flatnonzero(np.diff(lev) != 0)
        for i in change:
            ax.axvline((s[i] + s[i + 1]) / 2, color="grey", lw=0.6, ls=":")
        starts = np.r_[0, change + 1]
        ends = np.r_[change, len(s) - 1]
        for a, b in zip(starts, ends, strict=True):
            ax.text(
                (s[a] + s[b]) / 2,
                1.0,
                level_name(int(lev[a])),
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylabel(f"{metric}\nscaling factor")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=8, ncols=2)
    axes[-1].set_xlabel(
        f"slice (PAM50 index when normalised; rostral on the left; slices with at least "
        f"{result.policy.min_subjects} subjects)"
    )
    axes[-1].invert_xaxis()
    return fig


def figure_bland_altman(result: DriftResult, metric: str = "area") -> Figure:
    """Bland-Altman per level: difference (candidate - baseline) against the mean of the
    subject level values, with the bias and the 95 % limits of agreement."""
    comp = result.comparison
    lv = comp.levels[(comp.levels["metric"] == metric) & (comp.levels["n_subjects"] >= 2)]
    gated = [result.gate.status_of(metric, name) is not None for name in lv["level_name"]]
    if any(gated):  # the gated levels; every level with pairs when none is gated
        lv = lv[gated]
    n = max(len(lv), 1)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(3.2 * cols, 2.7 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    subj = comp.subjects[comp.subjects["metric"] == metric]
    for ax, row in zip(axes, lv.itertuples(), strict=False):
        s = subj[subj["level"] == row.level]
        mean = (s["baseline"] + s["candidate"]) / 2
        diff = s["candidate"] - s["baseline"]
        ax.scatter(mean, diff, s=9, alpha=0.6, color="#1f77b4", lw=0)
        ax.axhline(row.ba_bias, color="#c62828", lw=1)
        for loa in (row.ba_loa_low, row.ba_loa_high):
            ax.axhline(loa, color="#c62828", lw=0.8, ls="--")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_title(
            f"{row.level_name}: bias {row.ba_bias:+.2f} ({row.ba_bias_pct:+.2f} %)", fontsize=9
        )
        ax.tick_params(labelsize=8)
    for ax in axes[len(lv) :]:
        ax.set_axis_off()
    unit = METRIC_UNITS.get(metric, "")
    fig.supxlabel(f"mean of baseline and candidate {metric} ({unit})", fontsize=9)
    fig.supylabel(f"candidate - baseline ({unit})", fontsize=9)
    return fig


def figure_by_contrast(
    baseline_table: pd.DataFrame,
    candidate_table: pd.DataFrame,
    metric: str = "area",
    *,
    min_subjects: int = 3,
) -> Figure:
    """The metric per level per contrast for both versions: box plots of the subjects' level
    means, baseline and candidate side by side, one panel per contrast (levels where the
    baseline has at least ``min_subjects`` subjects)."""
    means = {
        "baseline": level_means(baseline_table, [metric]),
        "candidate": level_means(candidate_table, [metric]),
    }
    contrasts = sorted(set(means["baseline"]["contrast"]) | set(means["candidate"]["contrast"]))
    n = max(len(contrasts), 1)
    fig = Figure(figsize=(min(4.8 * n, 14), 3.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    for ax, contrast in zip(axes, contrasts, strict=False):
        b = means["baseline"]
        b = b[(b["contrast"] == contrast) & np.isfinite(b[metric])]
        counts = b.groupby("level")["subject"].nunique()
        levels = sorted(counts.index[counts >= min_subjects])
        for k, version in enumerate(("baseline", "candidate")):
            m = means[version]
            m = m[(m["contrast"] == contrast) & np.isfinite(m[metric])]
            data = [m.loc[m["level"] == lev, metric].to_numpy() for lev in levels]
            pos = np.arange(len(levels)) + (k - 0.5) * 0.36
            keep = [i for i, d in enumerate(data) if d.size]
            if not keep:
                continue
            bp = ax.boxplot(
                [data[i] for i in keep],
                positions=pos[keep],
                widths=0.32,
                patch_artist=True,
                showfliers=False,
                medianprops={"color": "black", "lw": 1},
            )
            for patch in bp["boxes"]:
                patch.set_facecolor(_VERSION_COLOUR[version])
                patch.set_alpha(0.55)
            ax.plot([], [], "s", color=_VERSION_COLOUR[version], alpha=0.55, label=version)
        ax.set_xticks(np.arange(len(levels)), [level_name(lev) for lev in levels], fontsize=8)
        ax.set_title(contrast)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(_label(metric) + "\nsubject level means")
    axes[0].legend(fontsize=8)
    return fig


def figure_history(history: pd.DataFrame, metric: str = "area") -> Figure:
    """Per-level mean of ``metric`` across evaluated versions, in numeric version order."""
    h = history_order(history, metric)
    versions = h.drop_duplicates("version_number")[["version_number", "version"]]
    pos = {v: i for i, v in enumerate(versions["version_number"])}
    fig = Figure(figsize=(max(5.0, 0.7 * len(versions) + 3), 3.6), layout="constrained")
    ax = fig.subplots()
    for lev, grp in h.groupby("level", sort=True):
        ax.plot(
            [pos[v] for v in grp["version_number"]],
            grp["value"],
            "o-",
            ms=4,
            lw=1.2,
            label=level_name(int(lev)),
        )
    ax.set_xticks(range(len(versions)), versions["version"].tolist())
    ax.set_xlabel("model version (registry order)")
    ax.set_ylabel(_label(metric) + ", cohort mean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2, title="level", title_fontsize=8)
    return fig


def figure_png(fig: Figure) -> bytes:
    """PNG bytes of a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def _level_rows(result: DriftResult) -> list[dict[str, Any]]:
    comp = result.comparison
    rows = []
    for r in comp.levels.to_dict("records"):
        status = result.gate.status_of(r["metric"], r["level_name"])
        rows.append({**r, "status": status})
    return rows


def markdown_summary(result: DriftResult, provenance: Mapping[str, Any] | None = None) -> str:
    """The Markdown summary: verdict first, per-level table, failing conditions, provenance."""
    prov = {**result.provenance, **(provenance or {})}
    gate = result.gate
    counts = {s: sum(c.status == s for c in gate.conditions) for s in ("pass", "warn", "fail")}
    lines = [
        f"## cordwatch drift: {_STATUS_MARK[result.verdict]}",
        "",
        f"**Verdict: {result.verdict}** — {counts['fail']} failing, {counts['warn']} warning, "
        f"{counts['pass']} passing of {len(gate.conditions)} conditions; "
        f"{len(result.comparison.subject_sets['paired'])} paired subjects.",
        "",
    ]
    failing = [c for c in gate.conditions if c.status == "fail"]
    warning = [c for c in gate.conditions if c.status == "warn"]
    if failing:
        lines += ["### Failing conditions", ""] + [f"- {c.description}" for c in failing] + [""]
    if warning:
        lines += ["### Warnings", ""] + [f"- {c.description}" for c in warning] + [""]
    lines += [
        "### Scaling factor per level (candidate / baseline)",
        "",
        "| metric | level | scaling | 95 % CI | TOST p | Wilcoxon p | BA bias | ICC | n | status |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    rows = _level_rows(result)
    shown = [r for r in rows if r["status"] is not None] or [r for r in rows if r["n_subjects"]]
    for r in shown:
        lines.append(
            f"| {r['metric']} | {r['level_name']} | {_fmt(r['scaling_factor'])} | "
            f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}] | {_fmt_p(r['tost_p'])} | "
            f"{_fmt_p(r['wilcoxon_p'])} | {_fmt(r['ba_bias'], '+.3f')} | {_fmt(r['icc'], '.3f')} | "
            f"{r['n_subjects']} | {r['status'] or 'not gated'} |"
        )
    if len(shown) < len(rows):
        lines += ["", "Gated levels only; the HTML report and the JSON hold every level."]
    lines += ["", _policy_line(result), ""]
    if prov:
        lines += ["<details><summary>Provenance</summary>", ""]
        lines += [f"- `{k}`: {_prov_value(v)}" for k, v in prov.items()]
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def _policy_line(result: DriftResult) -> str:
    p = result.policy
    margins = ", ".join(
        f"{m} ±{mm.fail_pct:g} % fail" + (f" / ±{mm.warn_pct:g} % warn" if mm.warn_pct else "")
        for m, mm in p.metrics.items()
    )
    return (
        f"Policy: {margins}; TOST alpha {p.alpha:g} (fail unless equivalence within the fail "
        f"margin is shown); at least {p.min_subjects} paired subjects and "
        f"{p.min_coverage_pct:g} % coverage per level; every gated level must pass."
    )


def _prov_value(v: Any) -> str:
    if isinstance(v, dict | list):
        return f"`{json.dumps(v, default=str)}`"
    return f"`{v}`"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#212121;line-height:1.4}
h1{margin-bottom:.2em} .verdict{display:inline-block;padding:.2em .8em;border-radius:.4em;
color:white;font-weight:bold;text-transform:uppercase}
.pass{background:#2e7d32} .warn{background:#ef6c00} .fail{background:#c62828}
.skip{background:#757575} .none{background:#9e9e9e}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:right}
th{background:#f5f5f5} td.l,th.l{text-align:left}
span.st{color:white;border-radius:.3em;padding:0 .4em;font-size:.85em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
code{background:#f5f5f5;padding:0 .2em} details{margin:1em 0}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _badge(status: str | None) -> str:
    cls = status or "none"
    return f'<span class="st {cls}">{_e(status or "not gated")}</span>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    th = "".join(
        f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def html_report(
    result: DriftResult,
    figures: Mapping[str, bytes],
    provenance: Mapping[str, Any] | None = None,
) -> str:
    """The self-contained HTML page (figures given as PNG bytes, embedded as base64)."""
    comp = result.comparison
    prov = {**result.provenance, **(provenance or {})}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>cordwatch drift: {_e(result.verdict)}</title><style>{_CSS}</style></head><body>",
        f"<h1>cordwatch drift report</h1><p><span class='verdict {_e(result.verdict)}'>"
        f"{_e(result.verdict)}</span> &nbsp; {len(comp.subject_sets['paired'])} paired subjects"
        f" · metrics {', '.join(map(_e, comp.metrics))}</p>",
        f"<p>{_e(_policy_line(result))}</p>",
    ]
    order = {"fail": 0, "warn": 1, "skip": 2, "pass": 3}
    conds = sorted(result.gate.conditions, key=lambda c: order[c.status])
    parts.append("<h2>Conditions</h2>")
    parts.append(
        _table(
            ["status", "test", "description"],
            [[_badge(c.status), _e(c.test), _e(c.description)] for c in conds],
            left=3,
        )
    )
    captions = {
        "scaling_levels": "Scaling factor per level (95 % subject-bootstrap CI) and margin bands",
        "slice_profile": "Scaling factor along the slice axis, with level boundaries",
        "bland_altman": "Bland-Altman per level (subject level means)",
        "by_contrast": "Level means per contrast, baseline vs candidate",
        "history": "Per-level cohort mean across model versions",
    }
    for key, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        cap = captions.get(key.split(":")[0], key)
        parts.append(f"<h3>{_e(cap)}</h3><img alt='{_e(key)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Per level</h2>")
    header = [
        "metric",
        "level",
        "status",
        "n",
        "scaling",
        "95 % CI",
        "slice-wise ratio",
        "slice CoV %",
        "TOST p",
        "Wilcoxon p",
        "BA bias",
        "BA LoA",
        "BA bias %",
        "ICC",
        "coverage",
    ]
    rows = []
    for r in _level_rows(result):
        rows.append(
            [
                _e(r["metric"]),
                _e(r["level_name"]),
                _badge(r["status"]),
                str(r["n_subjects"]),
                _fmt(r["scaling_factor"]),
                f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]",
                _fmt(r["slicewise_mean_ratio"]),
                _fmt(r["slicewise_cov"], ".2f"),
                _fmt_p(r["tost_p"]),
                _fmt_p(r["wilcoxon_p"]),
                _fmt(r["ba_bias"], "+.3f"),
                f"{_fmt(r['ba_loa_low'], '+.2f')} / {_fmt(r['ba_loa_high'], '+.2f')}",
                _fmt(r["ba_bias_pct"], "+.2f"),
                _fmt(r["icc"], ".3f"),
                _fmt(r["coverage"], ".3f"),
            ]
        )
    parts.append(_table(header, rows, left=3))
    pc = comp.per_contrast
    if not pc.empty:
        parts.append("<h2>Per contrast</h2>")
        parts.append(
            _table(
                ["metric", "contrast", "level", "n", "scaling", "95 % CI", "TOST p", "BA bias"],
                [
                    [
                        _e(r["metric"]),
                        _e(r["contrast"]),
                        _e(r["level_name"]),
                        str(r["n_subjects"]),
                        _fmt(r["scaling_factor"]),
                        f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]",
                        _fmt_p(r["tost_p"]),
                        _fmt(r["ba_bias"], "+.3f"),
                    ]
                    for r in pc.to_dict("records")
                ],
                left=3,
            )
        )
    cs = comp.contrast_spread
    if not cs.empty:
        parts.append("<h2>Within-subject spread across contrasts (CoV %)</h2>")
        wide = cs.pivot_table(
            index=["metric", "level"], columns="version", values="mean_cov_pct"
        ).reset_index()
        parts.append(
            _table(
                ["metric", "level", "baseline", "candidate"],
                [
                    [
                        _e(r["metric"]),
                        _e(level_name(r["level"])),
                        _fmt(r.get("baseline"), ".2f"),
                        _fmt(r.get("candidate"), ".2f"),
                    ]
                    for r in wide.to_dict("records")
                ],
                left=2,
            )
        )
    parts.append("<h2>Outlier subjects</h2>")
    if comp.outliers.empty:
        parts.append("<p>None (|log-ratio - median| ≤ k·MAD everywhere).</p>")
    else:
        parts.append(
            _table(
                ["metric", "level", "subject", "ratio", "robust z"],
                [
                    [
                        _e(r["metric"]),
                        _e(level_name(r["level"])),
                        _e(r["subject"]),
                        _fmt(r["ratio"]),
                        _fmt(r["robust_z"], "+.1f"),
                    ]
                    for r in comp.outliers.to_dict("records")
                ],
                left=3,
            )
        )
    if comp.ground_truth is not None and not comp.ground_truth.empty:
        parts.append("<h2>Error against ground truth (%)</h2>")
        parts.append(
            _table(
                ["metric", "level", "version", "n", "mean error %", "mean |error| %"],
                [
                    [
                        _e(r["metric"]),
                        _e(level_name(r["level"])),
                        _e(r["version"]),
                        str(r["n"]),
                        _fmt(r["mean_error_pct"], "+.2f"),
                        _fmt(r["mean_abs_error_pct"], ".2f"),
                    ]
                    for r in comp.ground_truth.to_dict("records")
                ],
                left=3,
            )
        )
    if comp.dice is not None and not comp.dice.empty:
        parts.append("<h2>Dice against ground truth</h2>")
        parts.append(
            _table(
                ["version", "n", "mean", "median", "min", "worst"],
                [
                    [
                        _e(r["version"]),
                        str(r["n"]),
                        _fmt(r["mean"], ".3f"),
                        _fmt(r["median"], ".3f"),
                        _fmt(r["min"], ".3f"),
                        _e(f"{r['min_subject']} {r['min_contrast']}"),
                    ]
                    for r in comp.dice.to_dict("records")
                ],
            )
        )
    sets = comp.subject_sets
    if sets["baseline_only"] or sets["candidate_only"]:
        parts.append(
            f"<p>Unpaired subjects: baseline only {_e(', '.join(sets['baseline_only']) or 'none')};"
            f" candidate only {_e(', '.join(sets['candidate_only']) or 'none')}.</p>"
        )
    parts.append("<h2>Provenance</h2>")
    parts.append(
        _table(
            ["key", "value"],
            [[_e(k), f"<code>{_e(_prov_text(v))}</code>"] for k, v in prov.items()],
            left=2,
        )
    )
    parts.append(f"<p>Settings: <code>{_e(json.dumps(comp.settings, default=str))}</code></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _prov_text(v: Any) -> str:
    return json.dumps(v, default=str) if isinstance(v, dict | list) else str(v)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def render_figures(
    result: DriftResult,
    *,
    baseline_table: pd.DataFrame,
    candidate_table: pd.DataFrame,
    history: pd.DataFrame | None = None,
) -> dict[str, bytes]:
    """All report figures as PNG bytes, keyed ``scaling_levels``, ``slice_profile``,
    ``bland_altman:<metric>`` (first gated metric, area when gated), ``by_contrast:<metric>``
    and, with a history table, ``history:<metric>``."""
    metric = "area" if "area" in result.comparison.metrics else result.comparison.metrics[0]
    figs = {
        "scaling_levels": figure_scaling_levels(result),
        "slice_profile": figure_slice_profile(result),
        f"bland_altman:{metric}": figure_bland_altman(result, metric),
        f"by_contrast:{metric}": figure_by_contrast(
            baseline_table, candidate_table, metric, min_subjects=result.policy.min_subjects
        ),
    }
    if history is not None:
        figs[f"history:{metric}"] = figure_history(history, metric)
    return {k: figure_png(f) for k, f in figs.items()}


def result_json(result: DriftResult, provenance: Mapping[str, Any] | None = None) -> str:
    """The JSON document of a result (``provenance`` merged into its provenance)."""
    doc = result.to_dict()
    if provenance:
        doc["provenance"] = {**doc["provenance"], **json.loads(json.dumps(provenance, default=str))}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def write_json(
    result: DriftResult, path: str | Path, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write the result's JSON document atomically."""
    path = Path(path)
    _write_bytes(path, result_json(result, provenance).encode("utf-8"))
    return path


def render_report(
    result: DriftResult,
    *,
    baseline_table: pd.DataFrame,
    candidate_table: pd.DataFrame,
    history: pd.DataFrame | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, tuple[str, bytes]]:
    """Everything :func:`write_report` writes, in memory: ``{key: (relative path, bytes)}``
    with keys ``html`` (``report.html``), ``markdown`` (``summary.md``), ``json``
    (``result.json``) and ``figure:<name>`` (``figures/<name>.png``)."""
    figures = render_figures(
        result, baseline_table=baseline_table, candidate_table=candidate_table, history=history
    )
    files = {
        "html": ("report.html", html_report(result, figures, provenance).encode("utf-8")),
        "markdown": ("summary.md", markdown_summary(result, provenance).encode("utf-8")),
        "json": ("result.json", result_json(result, provenance).encode("utf-8")),
    }
    for key, png in figures.items():
        files[f"figure:{key}"] = (f"figures/{key.replace(':', '_')}.png", png)
    return files


def write_rendered(
    rendered: Mapping[str, tuple[str, bytes]], out_dir: str | Path
) -> dict[str, Path]:
    """Write a :func:`render_report` result into ``out_dir``, each file atomically."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for key, (rel, data) in rendered.items():
        _write_bytes(out / rel, data)
        written[key] = out / rel
    return written


def write_report(
    result: DriftResult,
    out_dir: str | Path,
    *,
    baseline_table: pd.DataFrame,
    candidate_table: pd.DataFrame,
    history: pd.DataFrame | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``report.html`` (self-contained), ``summary.md``, ``result.json`` and the figures
    (``figures/<name>.png``) into ``out_dir``; return their paths keyed ``html``,
    ``markdown``, ``json`` and ``figure:<name>`` (e.g. ``figure:scaling_levels``).

    Everything is rendered before anything is written, and every file is written atomically:
    an error leaves no partial file behind.
    """
    rendered = render_report(
        result,
        baseline_table=baseline_table,
        candidate_table=candidate_table,
        history=history,
        provenance=provenance,
    )
    return write_rendered(rendered, out_dir)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o644)  # a report is for reading by others (the temp file is 0600)
