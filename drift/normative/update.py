"""Updating a database after a model change: the next version, rescaled or recomputed.

* **rescale** (default when the cohort images are not available): from a drift result
  (``cordwatch drift check --json``), whose factors are candidate / baseline, the new database
  (for the candidate model) = old values x factor, per PAM50 slice (the slice profile where it
  has enough pairs, else the level factor): ``area`` by the area factor, ``diameter_AP`` and
  ``diameter_RL`` by their own; shape metrics (eccentricity, solidity, orientation, angles)
  and lengths are left as they are. Refused when the scaling is not uniform enough (the
  policy in ``reference_data/normative_policy.yaml``, :mod:`drift.normative.policy`) or when
  the drift result's baseline is not the model the database was made with. A rescale is
  recorded as such, never passed off as a recompute.
* **recompute**: segment a cohort with the new model
  (:func:`drift.cohort.evaluate.evaluate_version`, cached) and write fresh SCT-layout CSVs.

The rescaling plan and the CSV rewriting are pure and come first.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from drift import __version__
from drift.gate.schema import MAX_JSON_BYTES, read_capped
from drift.measure.levels import level_name
from drift.measure.sctcsv import (
    write_sct_csv,
)
from drift.normative.datasets import DATASETS, DESCRIPTION, load_data, stored_kind
from drift.normative.layout import (
    DATA_DIR,
    PARTICIPANTS,
    pam50_measurements,
    pam50_rows,
    read_participants,
)
from drift.normative.policy import (
    RESCALE_NOTE,
    RESCALED_METRICS,
    NormativePolicy,
    Scaling,
    load_normative_policy,
    parse_scaling,
)
from drift.normative.store import (
    MANIFEST,
    RECORDS_DIR,
    TAG,
    NormativeStore,
    NormativeVersion,
    check_db_name,
    copy_file,
    layout_tags,
    model_version_ref,
    store_for,
)
from registry.errors import InputError

if TYPE_CHECKING:
    from drift.cohort.engine import Engine
    from registry.api import Registry


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
    cohort: str | Path | Sequence[str | Path] | None = None,
    root: str | Path | Sequence[str | Path] | None = None,
    contrast: str | None = None,
    participants: str | Path | Sequence[str | Path] | None = None,
    device: str = "auto",
    progress: bool = False,
    assume_baseline: bool = False,
    policy_path: str | Path | None = None,
    registry: Registry | None = None,
    engine: Engine | None = None,
) -> UpdateResult:
    """Make the next version of ``name`` for the model ``model_ref``: a rescale from the drift
    result ``scaling_json``, or (``recompute=True``) a recompute on ``cohort`` (on a
    distributed ``engine``'s cluster when given: ``--scheduler``). Several cohorts (with
    their ``root`` and ``participants`` in the same order, or none) make a multi-dataset
    version: one dataset per cohort, named after it."""
    check_db_name(name)
    if (scaling_json is None) == (not recompute):
        raise InputError("give exactly one of --scaling RESULT.json and --recompute", name)
    store = store_for(registry)
    model = model_version_ref(store.reg, model_ref)
    if recompute:
        cohorts, roots, parts = _paired(cohort, root, participants, name)
        if len(cohorts) > 1:
            return _recompute_datasets(
                store, name, model, cohorts, roots, contrast, parts, device, progress, engine
            )
        return _recompute(
            store, name, model, cohorts[0], roots[0], contrast, parts[0], device, progress, engine
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
    raw = read_capped(scaling_path, MAX_JSON_BYTES, "drift result")
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
    # The refs of a result can be edited: the package sha256s it records must be those the
    # registry holds for the models it names (a mismatch is never overridden).
    checked = [("candidate", scaling.candidate, scaling.candidate_sha256)]
    if parent.model is not None and scaling.baseline == parent.model:
        checked.append(("baseline", scaling.baseline, scaling.baseline_sha256))
    for role, ref, recorded in checked:
        if ref is None:
            continue  # not named: a problem above
        if recorded is None:
            problems.append(f"the drift result does not record the {role}'s package sha256")
            continue
        registered = store.reg.resolve(ref).sha256
        if recorded != registered:
            raise InputError(
                f"the drift result's {role} {ref} was measured on package sha256 "
                f"{recorded[:12]}..., but {ref} in the registry is {registered[:12]}...: "
                "the result is not about the model it names",
                scaling_path,
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
        # Either layout: spinal_cord/*.csv, or spinal_cord/<DATASET>/ with its participants.tsv
        # and descriptions (copied as they are).
        for path in sorted(p for p in (folder / DATA_DIR).rglob("*") if p.is_file()):
            out = staged / path.relative_to(folder)
            if not path.name.endswith("_PAM50.csv"):
                copy_file(path, out)
                continue
            text = path.read_bytes().decode("utf-8")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(rescale_sct_text(text, factor, plan.metrics).encode("utf-8"))
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name != MANIFEST:
                copy_file(path, staged / path.name)
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
            **layout_tags(data),
        }
        version = store.store(name, staged, tags)
    return UpdateResult(version, notes)


def _measure_cohort(
    store: NormativeStore,
    info: Any,
    model: str,
    cohort: Any,
    cohort_root: Path,
    wanted: str,
    device: str,
    progress: bool,
    engine: Engine | None,
) -> tuple[pd.DataFrame, list[Any], dict[str, Any]]:
    """The cohort's ``wanted`` images measured in PAM50 space by the model (the tidy table),
    the images of the cohort that failed, and the provenance recorded with the run. The whole
    cohort is evaluated (and cached, shared with drift checks): a run logged for a subset under
    the cohort's hash would be reused for the whole cohort later."""
    from drift.cohort.evaluate import evaluate_version
    from drift.provenance import base_provenance

    provenance = base_provenance() | {"cohort": cohort.provenance(), "model": model}
    measured = evaluate_version(
        store.reg,
        info,
        cohort,
        cohort_root,
        cache_dir=store.reg.settings.home / "cache" / "segmentations",
        device=device,
        progress=progress,
        provenance=provenance,
        engine=engine,
    )
    table = pam50_measurements(measured.table[measured.table["contrast"] == wanted])
    if table.empty:
        raise InputError(f"no {wanted} image of the cohort could be measured", cohort.manifest)
    return table, list(measured.failures), provenance


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
    engine: Engine | None = None,
) -> UpdateResult:
    from drift.cohort.manifest import load_cohort
    from drift.cohort.roots import ensure_root
    from drift.cohort.verify import verify_cohort

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
    table, failures, provenance = _measure_cohort(
        store, info, model, cohort, cohort_root, wanted, device, progress, engine
    )
    notes = [f"{len(failures)} image(s) of the cohort failed"] if failures else []
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
            "failures": failures,
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
            "layout": "29",  # what write_sct_csv writes (SCT >= 7.4)
            "db_layout": "single",
            "cohort": cohort.name,
            "cohort_sha256": cohort.manifest_sha256,
        }
        version = store.store(name, staged, tags)
    return UpdateResult(version, notes)


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


def _as_list(value: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    if value is None:
        return []
    if isinstance(value, str | Path):
        return [value]
    return list(value)


def _paired(
    cohort: str | Path | Sequence[str | Path] | None,
    root: str | Path | Sequence[str | Path] | None,
    participants: str | Path | Sequence[str | Path] | None,
    name: str,
) -> tuple[list[str | Path], list[str | Path | None], list[str | Path | None]]:
    """--cohort, --root, --participants as lists of one length (a root or participants
    table is given for every cohort, in the same order, or for none)."""
    cohorts = _as_list(cohort)
    if not cohorts:
        raise InputError("--recompute needs --cohort MANIFEST (the images to segment)", name)
    out: list[list[str | Path | None]] = []
    for flag, value in (("--root", root), ("--participants", participants)):
        given = _as_list(value)
        if given and len(given) != len(cohorts):
            raise InputError(
                f"{len(cohorts)} --cohort but {len(given)} {flag}: give one {flag} per "
                "--cohort, in the same order, or none",
                str(given[0]),
            )
        out.append(list(given) if given else [None] * len(cohorts))
    return cohorts, out[0], out[1]


def _recompute_datasets(
    store: NormativeStore,
    name: str,
    model: str,
    cohort_refs: Sequence[str | Path],
    roots: Sequence[str | Path | None],
    contrast: str | None,
    participants_paths: Sequence[str | Path | None],
    device: str,
    progress: bool,
    engine: Engine | None = None,
) -> UpdateResult:
    """A recompute over several cohorts (BIDS-like trees): the multi-dataset layout, one
    dataset per cohort (``spinal_cord/<cohort name>/``), each segmented in turn (on the
    ``engine``'s cluster when given). A dataset's participants.tsv: its ``--participants``,
    else the parent version's table of that dataset, else the cohort root's participants.tsv
    (a BIDS tree has one), else bare ``participant_id`` rows."""
    from drift.cohort.manifest import load_cohort
    from drift.cohort.roots import ensure_root
    from drift.cohort.verify import verify_cohort

    parents = store.versions(name)
    parent = parents[-1] if parents else None
    cohorts = [load_cohort(ref) for ref in cohort_refs]
    seen: dict[str, Path] = {}
    for c in cohorts:
        key = c.name.casefold()
        if key in seen:
            raise InputError(
                f"dataset {c.name} given twice (two cohorts named {c.name}; first: {seen[key]})",
                c.manifest,
            )
        seen[key] = c.manifest
    cohort_roots = [ensure_root(c, r) for c, r in zip(cohorts, roots, strict=True)]
    for c, r in zip(cohorts, cohort_roots, strict=True):
        verify_cohort(c, r).raise_for_problems()
    info = store.reg.resolve(model)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cordwatch-normative-recompute-") as tmp:
        work = Path(tmp)
        parent_folder = None
        if parent is not None:
            parent_folder = store.fetch(parent, work / "parent")
            if stored_kind(parent_folder) != DATASETS:
                parent_folder = None
        staged = work / "new"
        datasets: list[dict[str, Any]] = []
        for c, c_root, explicit in zip(cohorts, cohort_roots, participants_paths, strict=True):
            wanted = contrast or (c.contrasts[0] if len(c.contrasts) == 1 else "T2w")
            if wanted not in c.contrasts:
                raise InputError(
                    f"the cohort has no {wanted} images (contrasts: {', '.join(c.contrasts)}); "
                    "choose one with --contrast",
                    c.manifest,
                )
            table, failures, provenance = _measure_cohort(
                store, info, model, c, c_root, wanted, device, progress, engine
            )
            if failures:
                notes.append(f"{c.name}: {len(failures)} image(s) of the cohort failed")
            folder = staged / DATA_DIR / c.name
            subjects = sorted(table["subject"].unique())
            images = {it.subject: it.image.path for it in c.items if it.contrast == wanted}
            for subject in subjects:
                write_sct_csv(
                    pam50_rows(table[table["subject"] == subject]),
                    folder / f"{subject}_{wanted}_PAM50.csv",
                    filename=images.get(subject, subject),
                    version=f"cordwatch {__version__} ({model})",
                )
            if explicit is not None:
                source = read_participants(Path(explicit))
            elif parent_folder is not None and (parent_folder / DATA_DIR / c.name).is_dir():
                source = read_participants(parent_folder / DATA_DIR / c.name / PARTICIPANTS)
            elif (c_root / PARTICIPANTS).is_file():
                source = read_participants(c_root / PARTICIPANTS)
            else:
                source = pd.DataFrame({"participant_id": []})
            rows = source.set_index("participant_id").reindex(subjects).astype(object)
            rows.fillna("n/a").reset_index().to_csv(folder / PARTICIPANTS, sep="\t", index=False)
            description = {
                "name": c.name,
                "contrast": wanted,
                "GeneratedBy": [{"Name": "cordwatch", "Version": __version__, "Model": model}],
                "cohort_manifest_sha256": c.manifest_sha256,
            }
            (folder / DESCRIPTION).write_text(json.dumps(description, indent=2) + "\n")
            datasets.append(
                {
                    "dataset": c.name,
                    "cohort": c.name,
                    "cohort_manifest_sha256": c.manifest_sha256,
                    "contrast": wanted,
                    "subjects": subjects,
                    "failures": failures,
                    "provenance": provenance,
                }
            )
        (staged / RECORDS_DIR).mkdir()
        record = {
            "kind": "recompute",
            "model": model,
            "package_sha256": info.sha256,
            "cohort": ",".join(c.name for c in cohorts),
            "cohort_manifest_sha256": ",".join(c.manifest_sha256 for c in cohorts),
            "datasets": datasets,
            "parent": None if parent is None else parent.ref,
        }
        (staged / RECORDS_DIR / "recompute.json").write_text(
            json.dumps(record, indent=2, default=str) + "\n"
        )
        n_subjects = sum(len(d["subjects"]) for d in datasets)
        tags = {
            "kind": "recompute",
            "source": "recompute on cohorts "
            + ", ".join(f"{c.name} ({c.manifest_sha256[:12]})" for c in cohorts),
            "model": model,
            "parent": "" if parent is None else str(parent.version),
            "n_subjects": str(n_subjects),
            "contrast": ",".join(sorted({str(d["contrast"]) for d in datasets})),
            "layout": "29",  # what write_sct_csv writes (SCT >= 7.4)
            "db_layout": DATASETS,
            "datasets": ",".join(c.name for c in cohorts),
            "n_datasets": str(len(cohorts)),
            "n_records": str(n_subjects),
            "cohort": ",".join(c.name for c in cohorts),
            "cohort_sha256": ",".join(c.manifest_sha256 for c in cohorts),
        }
        version = store.store(name, staged, tags)
    return UpdateResult(version, notes)
