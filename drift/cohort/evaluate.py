"""Measuring one model version on a cohort: segment (cached), measure each image, Dice
against the ground truth, and the morphometry run logged to MLflow (reused when the same
package met the same cohort). Used by the drift gate and by the normative recompute alike.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from drift import __version__
from registry.errors import CordwatchError

if TYPE_CHECKING:
    from drift.cohort.engine import Engine
    from drift.cohort.manifest import Cohort, CohortItem
    from drift.measure.morphometry import AngleCorrection
    from registry.api import Registry, VersionInfo

MORPHOMETRY_EXPERIMENT = "cordwatch-morphometrics"
# bump when the measuring instrument changes what it outputs (2: SCT 7.4 parity, issue 12)
MORPHOMETRY_REVISION = 2
ANGLE_CORRECTION: AngleCorrection = "exact"
TIDY_METRICS = (
    "area",
    "diameter_AP",
    "diameter_RL",
    "eccentricity",
    "solidity",
    "angle_AP",
    "angle_RL",
    "orientation",
    "length",
)


# --------------------------------------------------------------------------- measuring -----


def measure(seg_path: Path, level_path: Path, level_source: str) -> pd.DataFrame:
    """PAM50-normalised per-slice metrics of one segmentation, levels from ``level_path``.

    Returns the tidy table (``level``, ``slice`` = PAM50 slice, metric columns) without the
    subject/contrast columns. Raises InputError naming the file for an unusable segmentation.
    """
    from drift.measure.levels import (
        normalize_pam50,
        slice_levels_from_discs,
        slice_levels_from_labeled,
    )
    from drift.measure.morphometry import slice_metrics
    from drift.measure.nifti import load_labels, load_segmentation

    seg = load_segmentation(seg_path)
    labels = load_labels(level_path, seg)
    if level_source == "disc_labels":  # SCT 7.4's rule: discs projected on the centerline
        levels = slice_levels_from_discs(labels.data, seg.data, seg.affine, pz=seg.spacing[2])
    else:
        levels = slice_levels_from_labeled(labels.data)
    metrics = slice_metrics(seg.data, seg.spacing, ANGLE_CORRECTION)
    normalised, norm_levels = normalize_pam50(metrics, levels)
    out = normalised.reset_index()
    out.insert(0, "level", norm_levels.astype(int))
    # SCT lists every PAM50 slice of the levels present; keep the ones that got a value.
    return out[out["area"].notna()].reset_index(drop=True)


def dice_score(seg_path: Path, gt_path: Path) -> float:
    """Dice of two binary masks (>= 0.5) on the same grid."""
    from drift.measure.nifti import load_labels, load_segmentation

    seg = load_segmentation(seg_path)
    gt = load_labels(gt_path, seg)
    a, b = seg.data >= 0.5, gt.data > 0
    denom = int(a.sum()) + int(b.sum())
    return float(2 * np.logical_and(a, b).sum() / denom) if denom else float("nan")


@dataclass
class Measured:
    """Morphometrics of one version on the cohort, and what could not be measured."""

    table: pd.DataFrame  # tidy: subject, contrast, level, slice, metrics
    failures: list[dict[str, str]] = field(default_factory=list)
    dice: pd.DataFrame | None = None  # subject, contrast, dice (vs ground truth)
    # "subject/contrast" -> segmentation cache key (for QC images; empty when unknown)
    seg_keys: dict[str, str] = field(default_factory=dict)
    # Which pipeline segmented the cohort (SCT's orientation, crop box source, paddings, or an
    # external command; None: nnU-Net as stored), for the drift result's provenance.
    inference: dict[str, Any] | None = None


def measure_cohort(
    items: Sequence[CohortItem],
    root: Path,
    seg_paths: dict[tuple[str, str], Path],
    engine: Engine | None = None,
) -> Measured:
    """Measure every segmentation of ``seg_paths`` ((subject, contrast) -> path); with a
    distributed ``engine``, one task per image on its cluster (same table, same order)."""
    frames, failures = [], []
    done: dict[tuple[str, str], Any] | None = None
    if engine is not None:
        calls = {
            (it.subject, it.contrast): (
                seg_paths[(it.subject, it.contrast)],
                it.levels.locate(root),
                it.level_source,
            )
            for it in items
            if (it.subject, it.contrast) in seg_paths and it.levels is not None
        }
        done = engine.map(measure, calls)
    for item in items:
        key = (item.subject, item.contrast)
        if key not in seg_paths:
            continue
        if item.levels is None:
            failures.append({"subject": key[0], "contrast": key[1], "error": "no level file"})
            continue
        try:
            if done is None:
                table = measure(seg_paths[key], item.levels.locate(root), item.level_source)
            elif isinstance(done[key], CordwatchError):
                raise done[key]
            else:
                table = done[key]
        except CordwatchError as err:
            failures.append({"subject": key[0], "contrast": key[1], "error": str(err)})
            continue
        table.insert(0, "contrast", item.contrast)
        table.insert(0, "subject", item.subject)
        frames.append(table)
    columns = ["subject", "contrast", "level", "slice", *TIDY_METRICS]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return Measured(table, failures)


def dice_against_truth(
    items: Sequence[CohortItem], root: Path, seg_paths: dict[tuple[str, str], Path]
) -> pd.DataFrame:
    """Dice of every segmentation against the cohort's ground truth, where there is one."""
    rows = [
        {
            "subject": it.subject,
            "contrast": it.contrast,
            "dice": dice_score(seg_paths[(it.subject, it.contrast)], it.gt_seg.locate(root)),
        }
        for it in items
        if it.gt_seg is not None and (it.subject, it.contrast) in seg_paths
    ]
    return pd.DataFrame(rows, columns=["subject", "contrast", "dice"])


def to_long(table: pd.DataFrame) -> pd.DataFrame:
    """Wide tidy table -> long (subject, contrast, level, slice, metric, value) for storage."""
    metrics = [m for m in TIDY_METRICS if m in table.columns]
    return table.melt(
        id_vars=["subject", "contrast", "level", "slice"],
        value_vars=metrics,
        var_name="metric",
        value_name="value",
    )


def to_wide(long: pd.DataFrame) -> pd.DataFrame:
    """Inverse of :func:`to_long` (only the rows that were there; NaN values kept)."""
    keys = ["subject", "contrast", "level", "slice"]
    wide = long.set_index([*keys, "metric"])["value"].unstack("metric").reset_index()
    wide.columns.name = None
    return wide


def level_summary(table: pd.DataFrame) -> dict[str, float]:
    """Per-level mean of the subjects' level means of every metric of :data:`TIDY_METRICS`
    present, as MLflow metric names (``area_C3``, ``diameter_AP_C3``, ``solidity_T1``, ...),
    so that the MLflow UI can chart each one across versions."""
    from drift.measure.levels import level_name

    metrics = [m for m in TIDY_METRICS if m in table.columns]
    if table.empty or not metrics:
        return {}
    per_subject = table.groupby(["subject", "contrast", "level"])[metrics].mean()
    per_level = per_subject.groupby("level").mean()
    return {
        f"{metric}_{level_name(int(lv))}": float(v)
        for lv, row in per_level.iterrows()
        for metric, v in row.items()
        if v == v
    }


# ----------------------------------------------------------------------------- the check ---


def _morphometry_tags(info: VersionInfo, cohort: Cohort) -> dict[str, str]:
    return {
        "cordwatch.model.name": info.name,
        "cordwatch.model.version": str(info.version),
        "cordwatch.package_sha256": info.sha256,
        "cordwatch.cohort.name": cohort.name,
        "cordwatch.cohort.sha256": cohort.manifest_sha256,
        "cordwatch.morphometry.revision": str(MORPHOMETRY_REVISION),
        "cordwatch.morphometry.angle_correction": ANGLE_CORRECTION,
        "cordwatch.version": __version__,
    }


def find_morphometry_run(reg: Registry, info: VersionInfo, cohort: Cohort) -> str | None:
    """The run holding this package's complete morphometrics on this cohort, if any."""
    exp = reg.client.get_experiment_by_name(MORPHOMETRY_EXPERIMENT)
    if exp is None:
        return None
    tags = _morphometry_tags(info, cohort)
    keys = ("cordwatch.package_sha256", "cordwatch.cohort.sha256", "cordwatch.morphometry.revision")
    query = " and ".join(f"tags.`{k}` = '{tags[k]}'" for k in keys)
    runs = reg.client.search_runs(
        [exp.experiment_id],
        filter_string=f"{query} and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0].info.run_id if runs else None


def load_morphometry_run(reg: Registry, run_id: str) -> Measured:
    """A version's morphometrics, failures and Dice as logged by :func:`log_morphometry_run`."""
    with tempfile.TemporaryDirectory(prefix="cordwatch-morph-") as tmp:
        long = pd.read_parquet(reg.client.download_artifacts(run_id, "morphometrics.parquet", tmp))
        dice = pd.read_parquet(reg.client.download_artifacts(run_id, "dice.parquet", tmp))
        fail_path = Path(reg.client.download_artifacts(run_id, "failures.json", tmp))
        failures = json.loads(fail_path.read_text())
        try:  # runs logged before QC images existed have no segmentations.json
            keys_path = reg.client.download_artifacts(run_id, "segmentations.json", tmp)
            seg_keys = json.loads(Path(keys_path).read_text())
        except Exception:  # any failure: no QC images, nothing else changes
            seg_keys = {}
        prov_path = reg.client.download_artifacts(run_id, "provenance.json", tmp)
        prov = json.loads(Path(prov_path).read_text())
    return Measured(to_wide(long), failures, dice, seg_keys, prov.get("inference"))


def log_morphometry_run(
    reg: Registry,
    info: VersionInfo,
    cohort: Cohort,
    measured: Measured,
    provenance: dict[str, Any],
) -> str:
    """Log one version's morphometrics (Parquet, long form) as a FINISHED MLflow run."""
    from mlflow.entities import Metric, Param

    exp_id = reg.ensure_experiment(MORPHOMETRY_EXPERIMENT)
    tags = _morphometry_tags(info, cohort) | {"mlflow.runName": f"{info.name}-v{info.version}"}
    run = reg.client.create_run(exp_id, tags=tags)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        with tempfile.TemporaryDirectory(prefix="cordwatch-morph-") as tmp:
            parquet = Path(tmp) / "morphometrics.parquet"
            to_long(measured.table).to_parquet(parquet, index=False)
            dice = (
                measured.dice
                if measured.dice is not None
                else pd.DataFrame(columns=["subject", "contrast", "dice"])
            )
            dice.to_parquet(Path(tmp) / "dice.parquet", index=False)
            (Path(tmp) / "failures.json").write_text(json.dumps(measured.failures, indent=2))
            (Path(tmp) / "provenance.json").write_text(json.dumps(provenance, indent=2))
            (Path(tmp) / "segmentations.json").write_text(json.dumps(measured.seg_keys))
            names = (
                "morphometrics.parquet",
                "dice.parquet",
                "failures.json",
                "provenance.json",
                "segmentations.json",
            )
            for name in names:
                reg.client.log_artifact(run_id, str(Path(tmp) / name))
        summary = level_summary(measured.table)
        summary["n_images"] = float(measured.table.groupby(["subject", "contrast"]).ngroups)
        summary["n_failures"] = float(len(measured.failures))
        reg.client.log_batch(
            run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in summary.items()],
            params=[Param("cohort", cohort.name), Param("model", info.ref)],
        )
        status = "FINISHED"
    finally:
        reg.client.set_terminated(run_id, status)
    return run_id


def csa_history(reg: Registry, name: str) -> pd.DataFrame:
    """Per-level mean CSA of every evaluated version of ``name`` (version, level, area)."""
    exp = reg.client.get_experiment_by_name(MORPHOMETRY_EXPERIMENT)
    if exp is None:
        return pd.DataFrame(columns=["version", "level", "area"])
    runs = reg.client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`cordwatch.model.name` = '{name}' and attributes.status = 'FINISHED'",
        max_results=500,
    )
    rows = []
    for run in runs:
        version = int(run.data.tags["cordwatch.model.version"])
        for key, value in run.data.metrics.items():
            if key.startswith("area_"):
                rows.append({"version": version, "level": key[5:], "area": value})
    history = pd.DataFrame(rows, columns=["version", "level", "area"])
    return history.drop_duplicates(["version", "level"]).sort_values(["version", "level"])


def evaluate_version(
    reg: Registry,
    info: VersionInfo,
    cohort: Cohort,
    root: Path,
    *,
    cache_dir: Path,
    device: str,
    progress: bool,
    provenance: dict[str, Any],
    engine: Engine | None = None,
    crop_boxes: Mapping[str, Path] | None = None,
) -> Measured:
    """Segment the cohort with one version (cached) and measure it; reuse a logged run when
    the same package was already measured on the same cohort. A distributed ``engine`` runs
    one segmentation and one measuring task per image on its cluster. ``crop_boxes``
    ("subject/contrast" -> box file, ``drift check --crop-boxes``) replace the ground-truth
    crop boxes of those images; such a check neither reuses nor logs a morphometry run (its
    boxes are not the cohort's)."""
    from drift.cohort.inference import package_pipeline, segment_cohort

    run_id = None if crop_boxes else find_morphometry_run(reg, info, cohort)
    if run_id is not None:
        return load_morphometry_run(reg, run_id)
    package = reg.pull(info.ref)
    manifest = reg.resolve(info.ref, manifest=True).manifest
    images = [
        (f"{it.subject}/{it.contrast}", it.image.locate(root), it.image.sha256)
        for it in cohort.items
    ]
    # A cropped SCT model's box comes from the ground-truth cord mask: the same for both
    # versions, so detector drift cannot pass for model drift (drift/cohort/sct_pipeline.py).
    crop_sources: dict[str, str | Path] = {
        f"{it.subject}/{it.contrast}": it.gt_seg.locate(root)
        for it in cohort.items
        if it.gt_seg is not None
    }
    crop_sources.update(crop_boxes or {})
    manifest_files = None if manifest is None else manifest_map(manifest)
    if engine is None:
        results = segment_cohort(
            package,
            info.sha256,
            images,
            cache_dir,
            device=device,
            progress=progress,
            package_manifest=manifest_files,
            crop_sources=crop_sources,
        )
    else:
        results = engine.segment_cohort(
            package,
            info.sha256,
            images,
            cache_dir,
            device=device,
            progress=progress,
            package_manifest=manifest_files,
            crop_sources=crop_sources,
        )
    seg_paths: dict[tuple[str, str], Path] = {}
    failures = []
    for item, res in zip(cohort.items, results, strict=True):
        if res.status == "ok" and res.seg_path is not None:
            seg_paths[(item.subject, item.contrast)] = res.seg_path
        else:
            failures.append(
                {"subject": item.subject, "contrast": item.contrast, "error": res.error or "?"}
            )
    measured = measure_cohort(cohort.items, root, seg_paths, engine)
    measured.failures = failures + measured.failures
    measured.dice = dice_against_truth(cohort.items, root, seg_paths)
    measured.seg_keys = {r.key: r.cache_key for r in results if r.status == "ok" and r.cache_key}
    # Which pipeline ran (SCT's orientation, crop box source and paddings, or an external
    # command) goes with the morphometrics.
    pipeline = package_pipeline(package)
    inference = {
        "pipeline": None if pipeline is None else asdict(pipeline),
        "crop_sources": _crop_source_counts(results),
    }
    measured.inference = inference
    if len(measured.failures) < len(cohort.items) and not crop_boxes:
        log_morphometry_run(reg, info, cohort, measured, provenance | {"inference": inference})
    return measured


def _crop_source_counts(results: Sequence[Any]) -> dict[str, int]:
    """How many images each crop box source gave (``gt_seg``, ``box_file``), from the cache
    sidecars; empty for a model that does not crop."""
    counts: dict[str, int] = {}
    for res in results:
        if res.status != "ok" or res.seg_path is None:
            continue
        try:
            meta = json.loads(res.seg_path.with_suffix("").with_suffix(".json").read_text())
        except (OSError, ValueError):
            continue
        if "crop_source" in meta:
            counts[meta["crop_source"]] = counts.get(meta["crop_source"], 0) + 1
    return counts


def manifest_map(manifest: Any) -> dict[str, str]:
    """relative path -> sha256 from a registry :class:`registry.manifest.Manifest`."""
    return {f.path: f.sha256 for f in manifest.files}
