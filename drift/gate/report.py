"""Reports of a drift check: a self-contained HTML page, a Markdown summary and the figures.

* HTML (``templates/report.html.j2``) and Markdown (``templates/summary.md.j2``) are Jinja2
  templates rendered with autoescaping (HTML escaping in the page; ``<`` and ``&`` escaped
  in the Markdown, so a user string can never open a tag in a PR comment). Both start with
  the decision: the verdict, which versions were compared (``NAME/VERSION``, alias, short
  sha256, registered by/when, description), the cohort, the policy in one line, what happens
  next (promotable or not, and why) and Dice against the ground truth; then only the failing
  and warning conditions grouped by metric (passing ones collapsed); then the figures; the
  detail tables and provenance collapsed; a glossary that says which statistics gate.
* Figures (matplotlib, object API on an Agg canvas: no pyplot state, no display needed; fixed
  margins instead of the constrained-layout solver, one artist per series, no per-point
  loops; ticks, texts and legends drawn by Pillow, see ``drift.gate.figures_light``):
  scaling factor per level with CIs and margin bands; scaling factor along the slice (PAM50)
  axis with level boundaries; Bland-Altman per gated level; the metric per level per contrast
  for both versions; the per-level mean across every evaluated version, on a numeric version
  axis.

:func:`write_report` renders everything in memory first, then writes each file atomically,
so an error leaves no partial report. The figure functions return a matplotlib ``Figure`` and
can be used alone.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drift.gate.policy import DriftResult
from drift.measure.levels import level_name
from registry.fsutil import atomic_path

_FIGURE_NAMES = (
    "figure_bland_altman",
    "figure_by_contrast",
    "figure_history",
    "figure_png",
    "figure_scaling_levels",
    "figure_slice_profile",
    "history_order",
)


def __getattr__(name: str) -> Any:
    # The figures live in drift.gate.figures; imported on first use so that the CLI's text
    # output (verdict, next step) does not pay for matplotlib.
    if name in _FIGURE_NAMES:
        from drift.gate import figures

        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_FIGURE_NAMES,
    "html_report",
    "markdown_summary",
    "render_report",
    "write_report",
]

_STATUS_MARK = {"pass": "✅ PASS", "warn": "⚠️ WARN", "fail": "❌ FAIL"}


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float | np.floating) and not np.isfinite(x)):
        return "n/a"
    return format(x, spec)


def _fmt_p(p: Any) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.2g}"


# --------------------------------------------------------------------------------------------
# What the page says: one context for both templates
# --------------------------------------------------------------------------------------------

_CAPTIONS = {
    "scaling_levels": "Scaling factor per level (95 % subject-bootstrap CI) and margin bands",
    "slice_profile": "Scaling factor along the slice axis, with level boundaries",
    "bland_altman": "Bland-Altman per gated level (subject level means)",
    "by_contrast": "Level means per contrast, baseline vs candidate",
    "history": "Per-level cohort mean across every evaluated model version",
}

#: (statistic, what it means, whether it gates) for the glossary at the end of the page.
GLOSSARY: tuple[tuple[str, str, str], ...] = (
    (
        "scaling factor",
        "Geometric mean over subjects of candidate / baseline of the subject's level mean "
        "(unitless; 1 = no change, 0.99 = 1 % smaller).",
        "gates, through TOST",
    ),
    (
        "95 % CI",
        "Percentile bootstrap interval of the scaling factor, resampling subjects.",
        "informative",
    ),
    (
        "TOST p",
        "Two one-sided t-tests on the subject log-ratios: p < alpha shows the scaling factor "
        "within the margin (equivalence); p >= alpha at the fail margin fails the level, at the "
        "warn margin warns.",
        "gates",
    ),
    (
        "coverage",
        "Share of the baseline's valid measurements that have a candidate partner, and the "
        "number of paired subjects; below the policy's minimum the level fails.",
        "gates",
    ),
    (
        "Dice",
        "Overlap of each version's segmentation with the cohort's ground truth (1 = identical).",
        "gates only when the policy sets min_dice",
    ),
    (
        "Wilcoxon p",
        "Paired signed-rank test of the log-ratios against 0 (differences below "
        "floating-point tolerance count as ties); small p = a detectable shift, however small.",
        "informative",
    ),
    (
        "Bland-Altman",
        "Mean difference (bias) of candidate - baseline and its 95 % limits of agreement "
        "(bias ± 1.96 SD), in the metric's units and in %.",
        "informative",
    ),
    (
        "ICC(A,1)",
        "Intraclass correlation, two-way, absolute agreement, single measure, of the subject "
        "values of the two versions (1 = perfect agreement).",
        "informative",
    ),
    (
        "slice-wise ratio, slice CoV",
        "The prior art's mean over (subject, slice) pairs of the slice ratio, and its spread "
        "across the level's slices.",
        "informative",
    ),
    (
        "outlier subject",
        "A subject whose log-ratio is more than 3.5 robust z (MAD) from the median.",
        "informative",
    ),
)

_ORDER = {"fail": 0, "warn": 1, "skip": 2, "pass": 3}


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """``df.to_dict("records")`` column by column: pandas 3's row iteration (``itertuples``
    over Arrow-backed strings) took ~15 ms per table of the report, this takes ~1 ms."""
    names = list(df.columns)
    columns = [df[c].tolist() for c in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _level_rows(result: DriftResult) -> list[dict[str, Any]]:
    comp = result.comparison
    rows = []
    for r in _records(comp.levels):
        status = result.gate.status_of(r["metric"], r["level_name"])
        rows.append({**r, "status": status})
    return rows


def _short_time(value: Any) -> str:
    text = str(value or "")
    m = re.match(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d)", text)
    return f"{m.group(1)} {m.group(2)} UTC" if m else text


def version_refs(prov: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Candidate then baseline as the page shows them: ``ref`` (``NAME/VERSION``, or the CSV
    folder for ``drift compare``), ``aliases``, ``sha`` (12 hex digits), ``registered_by``,
    ``registered`` (UTC minute) and ``description``; missing fields are empty."""
    out = []
    for role in ("candidate", "baseline"):
        value = prov.get(role)
        if isinstance(value, Mapping):
            d = dict(value)
        elif value:
            d = {"ref": str(value)}
        elif prov.get(f"{role}_dir"):
            folder = Path(str(prov[f"{role}_dir"]))
            d = {
                "ref": f"{folder.name}/",
                "sha256": prov.get(f"{role}_files_sha256", ""),
                "description": f"{prov.get(f'{role}_files', '?')} CSV files in {folder}",
            }
        else:
            d = {"ref": role}
        out.append(
            {
                "role": role,
                "ref": str(d.get("ref", role)),
                "aliases": [str(a) for a in d.get("aliases") or []],
                "sha": str(d.get("sha256") or "")[:12],
                "sha256": str(d.get("sha256") or ""),
                "registered_by": str(d.get("registered_by") or ""),
                "registered": _short_time(d.get("created")),
                "description": plain_description(d.get("description")),
            }
        )
    return out


_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def plain_description(text: Any) -> str:
    """A version description as plain text: the Markdown that cordwatch writes into MLflow
    descriptions for its UI (``**PASS**``, ``[drift run ...](#/...)``) without its markup.

    >>> plain_description("demo cordwatch drift: **PASS** against m/1 ([drift run ab12](#/x))")
    'demo cordwatch drift: PASS against m/1 (drift run ab12)'
    """
    flat = " ".join(str(text or "").split())
    return _MD_LINK.sub(r"\1", flat).replace("**", "")


def _levels_summary(conds: Sequence[Any]) -> str:
    """``area at C2, C3 (scaling 1.029-1.036); diameter_AP at C2``: conditions by metric."""
    by_metric: dict[str, list[Any]] = {}
    for c in conds:
        key = str(c.metric) if c.test == "equivalence" else f"{c.metric or ''} {c.test}".strip()
        by_metric.setdefault(key, []).append(c)
    parts = []
    for metric, group in by_metric.items():
        if not any(c.level for c in group):
            parts.append(group[0].description)
            continue
        levels = ", ".join(str(c.level) for c in group if c.level)
        factors = [
            float(c.actual["scaling_factor"])
            for c in group
            if isinstance(c.actual.get("scaling_factor"), int | float)
            and np.isfinite(c.actual["scaling_factor"])
        ]
        span = ""
        if factors:
            lo, hi = min(factors), max(factors)
            span = f" (scaling {lo:.4f})" if lo == hi else f" (scaling {lo:.4f}-{hi:.4f})"
        parts.append(f"{metric} at {levels}{span}")
    return "; ".join(parts)


def identical_weights(prov: Mapping[str, Any]) -> bool:
    """True when both versions are the same package (same sha256): the statistics are then
    exact identity, not measurements."""
    if prov.get("identical_weights"):
        return True
    refs = version_refs(prov)
    return len(refs[0]["sha256"]) == 64 and refs[0]["sha256"] == refs[1]["sha256"]


def promotable_verdicts(result: DriftResult) -> tuple[str, ...]:
    """The verdicts the policy lets become champion (``promotable``; default pass only)."""
    return tuple(getattr(result.policy, "promotable", None) or ("pass",))


def next_step(result: DriftResult, candidate_ref: str) -> dict[str, Any]:
    """``{"promotable": bool, "text": ..., "command": ...}``: what happens next."""
    verdict = result.verdict
    allowed = promotable_verdicts(result)
    registry_ref = bool(re.fullmatch(r"[^/\s]+/\d+", candidate_ref))
    if verdict in allowed:
        cmd = f"cordwatch models promote {candidate_ref}" if registry_ref else ""
        text = (
            "promotable: the verdict is "
            + verdict
            + ("; run" if cmd else " (register the candidate to promote it)")
        )
        return {"promotable": True, "text": text, "command": cmd}
    failing = [c for c in result.gate.conditions if c.status == "fail"]
    warning = [c for c in result.gate.conditions if c.status == "warn"]
    if verdict == "fail":
        why = f"{len(failing)} gate condition(s) fail"
        shown = failing
    else:
        why = (
            f"the verdict is {verdict} ({len(warning)} warning(s)) and the policy promotes only "
            f"{' or '.join(allowed)} (policy key promotable)"
        )
        shown = warning
    # One condition in full; several summarised by metric (every level named, the factors'
    # range), so that the decision fits the first screen whatever the number of conditions.
    first = shown[0].description if len(shown) == 1 else _levels_summary(shown)
    cmd = f'cordwatch models promote {candidate_ref} --force --reason "..."' if registry_ref else ""
    # The override is named as one (recorded in the alias history), never as the next step.
    override = ". Override only with a recorded reason" if cmd else ""
    return {
        "promotable": False,
        "text": f"not promotable because {why}: {first}{override}",
        "command": cmd,
        "exit": "exit code 1 (gate failed)" if verdict == "fail" else "exit code 0 (not failed)",
    }


def policy_line(result: DriftResult) -> str:
    """The policy in one line."""
    p = result.policy
    margins = ", ".join(
        f"{m} ±{mm.fail_pct:g} % fail" + (f" / ±{mm.warn_pct:g} % warn" if mm.warn_pct else "")
        for m, mm in p.metrics.items()
    )
    dice = f"; Dice >= {p.min_dice:g}" if p.min_dice is not None else ""
    return (
        f"{margins}; TOST alpha {p.alpha:g} (fail unless equivalence within the fail "
        f"margin is shown); at least {p.min_subjects} paired subjects and "
        f"{p.min_coverage_pct:g} % coverage per level{dice}; every gated level must pass; "
        f"promotable: {', '.join(promotable_verdicts(result))}."
    )


def _groups(conds: Sequence[Any], metrics: Sequence[str]) -> list[dict[str, Any]]:
    by: dict[str, list[Any]] = {}
    for c in sorted(conds, key=lambda c: _ORDER[c.status]):
        by.setdefault(c.metric or c.test, []).append(c)
    rank = {m: i for i, m in enumerate(metrics)}
    keys = sorted(by, key=lambda k: (rank.get(k, len(rank)), k))
    return [{"metric": k, "conditions": by[k]} for k in keys]


def report_context(
    result: DriftResult,
    provenance: Mapping[str, Any] | None = None,
    figures: Mapping[str, bytes] | None = None,
    qc: Mapping[str, tuple[str, bytes]] | None = None,
) -> dict[str, Any]:
    """Everything the two templates show, as plain data (no markup)."""
    comp = result.comparison
    prov = {**result.provenance, **(provenance or {})}
    gate = result.gate
    refs = version_refs(prov)
    cohort_prov = prov.get("cohort")
    cohort: Mapping[str, Any] = cohort_prov if isinstance(cohort_prov, Mapping) else {}
    contrasts = sorted(map(str, comp.pairs["contrast"].unique())) if len(comp.pairs) else []
    counts = {s: sum(c.status == s for c in gate.conditions) for s in ("pass", "warn", "fail")}
    dice = [] if comp.dice is None else _records(comp.dice)
    dice_by = {str(r["version"]): r for r in dice}
    metrics = comp.metrics
    rows = _level_rows(result)
    return {
        "verdict": result.verdict,
        "mark": _STATUS_MARK[result.verdict],
        "counts": counts,
        "n_conditions": len(gate.conditions),
        "n_paired": len(comp.subject_sets["paired"]),
        "metrics": metrics,
        "candidate": refs[0],
        "baseline": refs[1],
        "identical": identical_weights(prov),
        "cohort": {
            "name": str(cohort.get("cohort") or prov.get("cohort_name") or "CSV folders"),
            "sha": str(cohort.get("cohort_manifest_sha256") or "")[:12],
            "n_subjects": len(comp.subject_sets["paired"]),
            "contrasts": contrasts,
        },
        "policy_line": policy_line(result),
        "next": next_step(result, refs[0]["ref"]),
        "dice": [
            {
                "role": role,
                "ref": next(r["ref"] for r in refs if r["role"] == role),
                "mean": _fmt(dice_by[role]["mean"], ".3f"),
                "median": _fmt(dice_by[role]["median"], ".3f"),
                "min": _fmt(dice_by[role]["min"], ".3f"),
                "worst": f"{dice_by[role]['min_subject']} {dice_by[role]['min_contrast']}",
                "n": int(dice_by[role]["n"]),
            }
            for role in ("candidate", "baseline")
            if role in dice_by
        ],
        "attention": _groups([c for c in gate.conditions if c.status in ("fail", "warn")], metrics),
        "passing": _groups([c for c in gate.conditions if c.status in ("pass", "skip")], metrics),
        "n_passing": sum(c.status in ("pass", "skip") for c in gate.conditions),
        "figures": [
            {
                "key": key,
                "file": f"figures/{key.replace(':', '_')}.png",
                "caption": _CAPTIONS.get(key.split(":")[0], key)
                + (f" ({key.split(':')[1]})" if ":" in key else ""),
                "uri": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
            }
            for key, png in (figures or {}).items()
        ],
        "qc": [
            {
                "key": key,
                "file": f"qc/{key}.png",
                "caption": caption,
                "uri": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
            }
            for key, (caption, png) in (qc or {}).items()
        ],
        "levels": rows,
        "shown_levels": [r for r in rows if r["status"] is not None]
        or [r for r in rows if r["n_subjects"]],
        "per_contrast": _records(comp.per_contrast),
        "spread": _spread_rows(result),
        "outliers": _records(comp.outliers),
        "ground_truth": [] if comp.ground_truth is None else _records(comp.ground_truth),
        "unpaired": {k: comp.subject_sets[k] for k in ("baseline_only", "candidate_only")},
        "provenance": [(k, _prov_text(v)) for k, v in prov.items()],
        "settings": json.dumps(comp.settings, default=str),
        "glossary": GLOSSARY,
    }


def _spread_rows(result: DriftResult) -> list[dict[str, Any]]:
    cs = result.comparison.contrast_spread
    if cs.empty:
        return []
    wide = cs.pivot_table(
        index=["metric", "level"], columns="version", values="mean_cov_pct"
    ).reset_index()
    return _records(wide)


def _prov_text(v: Any) -> str:
    return json.dumps(v, default=str) if isinstance(v, dict | list) else str(v)


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------

_TEMPLATES = Path(__file__).resolve().parent / "templates"


def _md_escape(value: Any) -> Any:
    """Autoescape for Markdown: every value printed by the template, unless marked safe, has
    ``&`` and ``<`` escaped (GitHub renders HTML in comments) and no line break."""
    from markupsafe import Markup

    if isinstance(value, Markup):
        return value
    text = "" if value is None else str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("\n", " ")


def _md_code(value: Any) -> Any:
    """A Markdown code span (nothing inside one is HTML, so it needs no escaping)."""
    from markupsafe import Markup

    text = str(value).replace("`", "'").replace("\n", " ")
    return Markup(f"`{text}`")


@cache
def _environment(kind: str) -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=kind == "html",
        finalize=None if kind == "html" else _md_escape,
    )
    env.filters["num"] = _fmt
    env.filters["p"] = _fmt_p
    env.filters["level"] = lambda v: level_name(int(v))
    env.filters["cell"] = lambda v: str(v).replace("|", "\\|")
    env.filters["code"] = _md_code
    return env


def html_report(
    result: DriftResult,
    figures: Mapping[str, bytes],
    provenance: Mapping[str, Any] | None = None,
    qc: Mapping[str, tuple[str, bytes]] | None = None,
) -> str:
    """The self-contained HTML page (figures and QC images given as PNG bytes, embedded as
    base64), rendered from ``templates/report.html.j2`` with autoescaping."""
    return _render("html", report_context(result, provenance, figures, qc))


def markdown_summary(
    result: DriftResult,
    provenance: Mapping[str, Any] | None = None,
    figures: Mapping[str, bytes] | None = None,
    qc: Mapping[str, tuple[str, bytes]] | None = None,
) -> str:
    """The Markdown summary (``templates/summary.md.j2``): the decision first, the failing
    and warning conditions, the per-level table, links to the figures and QC images."""
    return _render("md", report_context(result, provenance, figures, qc))


def _render(kind: str, ctx: Mapping[str, Any]) -> str:
    template = "report.html.j2" if kind == "html" else "summary.md.j2"
    return str(_environment(kind).get_template(template).render(ctx))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _figure_builders(
    result: DriftResult,
    *,
    baseline_table: pd.DataFrame,
    candidate_table: pd.DataFrame,
    history: pd.DataFrame | None = None,
) -> dict[str, Any]:
    from drift.gate.figures import (
        figure_bland_altman,
        figure_by_contrast,
        figure_history,
        figure_scaling_levels,
        figure_slice_profile,
    )

    metric = "area" if "area" in result.comparison.metrics else result.comparison.metrics[0]
    builders: dict[str, Any] = {
        "scaling_levels": lambda: figure_scaling_levels(result),
        "slice_profile": lambda: figure_slice_profile(result),
        f"bland_altman:{metric}": lambda: figure_bland_altman(result, metric),
        f"by_contrast:{metric}": lambda: figure_by_contrast(
            baseline_table, candidate_table, metric, min_subjects=result.policy.min_subjects
        ),
    }
    if history is not None and len(history):
        highlight = {}
        for ref in version_refs(result.provenance):
            m = re.fullmatch(r"[^/\s]+/(\d+)", ref["ref"])
            if m:
                highlight[ref["role"]] = int(m.group(1))
        builders[f"history:{metric}"] = lambda: figure_history(history, metric, highlight=highlight)
    return builders


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
    builders = _figure_builders(
        result, baseline_table=baseline_table, candidate_table=candidate_table, history=history
    )
    from drift.gate.figures import figure_png

    return {key: figure_png(build()) for key, build in builders.items()}


def figure_timings(
    result: DriftResult,
    *,
    baseline_table: pd.DataFrame,
    candidate_table: pd.DataFrame,
    history: pd.DataFrame | None = None,
) -> dict[str, float]:
    """CPU seconds to build and encode each figure of :func:`render_figures` (benchmarks)."""
    out = {}
    builders = _figure_builders(
        result, baseline_table=baseline_table, candidate_table=candidate_table, history=history
    )
    from drift.gate.figures import figure_png

    for key, build in builders.items():
        start = time.process_time()
        figure_png(build())
        out[key] = time.process_time() - start
    return out


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
    qc: Mapping[str, tuple[str, bytes]] | None = None,
) -> dict[str, tuple[str, bytes]]:
    """Everything :func:`write_report` writes, in memory: ``{key: (relative path, bytes)}``
    with keys ``html`` (``report.html``), ``markdown`` (``summary.md``), ``json``
    (``result.json``), ``figure:<name>`` (``figures/<name>.png``) and, given QC images
    (``{name: (caption, png)}``), ``qc:<name>`` (``qc/<name>.png``)."""
    figures = render_figures(
        result, baseline_table=baseline_table, candidate_table=candidate_table, history=history
    )
    ctx = report_context(result, provenance, figures, qc)  # one context for both templates
    files = {
        "html": ("report.html", _render("html", ctx).encode("utf-8")),
        "markdown": ("summary.md", _render("md", ctx).encode("utf-8")),
        "json": ("result.json", result_json(result, provenance).encode("utf-8")),
    }
    for key, png in figures.items():
        files[f"figure:{key}"] = (f"figures/{key.replace(':', '_')}.png", png)
    for key, (_caption, png) in (qc or {}).items():
        files[f"qc:{key}"] = (f"qc/{key}.png", png)
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
    qc: Mapping[str, tuple[str, bytes]] | None = None,
) -> dict[str, Path]:
    """Write ``report.html`` (self-contained), ``summary.md``, ``result.json``, the figures
    (``figures/<name>.png``) and QC images (``qc/<name>.png``) into ``out_dir``; return their
    paths keyed ``html``, ``markdown``, ``json``, ``figure:<name>`` and ``qc:<name>``.

    Everything is rendered before anything is written, and every file is written atomically:
    an error leaves no partial file behind.
    """
    rendered = render_report(
        result,
        baseline_table=baseline_table,
        candidate_table=candidate_table,
        history=history,
        provenance=provenance,
        qc=qc,
    )
    return write_rendered(rendered, out_dir)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o644)  # a report is for reading by others (the temp file is 0600)
