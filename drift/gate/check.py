"""The drift check, end to end: frozen cohort -> inference -> morphometrics -> statistics ->
verdict + report, recorded in the registry.

Data flows one way (DESIGN.md): registry version -> segmentations of the cohort (cached by
package sha256 x image sha256 x settings) -> morphometrics table per version (Parquet, logged
to MLflow as a run linked to the model version and reused when the same package met the same
cohort) -> comparison with the baseline -> verdict + report -> version tags.

Levels for both versions come from the cohort's ground-truth level files, so only the model
changes between the two tables. Nothing is written to the registry before the verdict is
known; a failure or Ctrl-C on the way leaves cached segmentations (complete entries only) and
no verdict.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from drift.cohort.evaluate import Measured, csa_history, evaluate_version, measure_cohort
from registry.errors import InputError
from registry.promotion import PROMOTABLE_TAG, VERDICT_TAG

if TYPE_CHECKING:
    from drift.cohort.engine import Engine
    from drift.cohort.manifest import Cohort
    from drift.gate.policy import DriftResult, Policy
    from registry.api import Registry, VersionInfo

DRIFT_EXPERIMENT = "cordwatch-drift"


@dataclass
class CheckResult:
    """What ``cordwatch drift check`` produced."""

    result: DriftResult
    baseline: VersionInfo
    candidate: VersionInfo
    baseline_table: pd.DataFrame
    candidate_table: pd.DataFrame
    history: pd.DataFrame
    failures: dict[str, list[dict[str, str]]]
    run_id: str | None = None
    qc: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # name -> (caption, png)


def ground_truth(cohort: Cohort, root: Path, engine: Engine | None = None) -> pd.DataFrame | None:
    """Morphometrics of the cohort's ground-truth segmentations (None when it has none)."""
    paths = {
        (it.subject, it.contrast): it.gt_seg.locate(root)
        for it in cohort.items
        if it.gt_seg is not None
    }
    if not paths:
        return None
    return measure_cohort(cohort.items, root, paths, engine).table


def dice_table(measured: dict[str, Measured]) -> pd.DataFrame | None:
    """``subject, contrast, version, dice`` for compare, from each role's Dice."""
    frames = [
        m.dice.assign(version=role)
        for role, m in measured.items()
        if m.dice is not None and not m.dice.empty
    ]
    return pd.concat(frames, ignore_index=True) if len(frames) == 2 else None


def version_provenance(info: VersionInfo) -> dict[str, Any]:
    """What a drift result records about one compared version (the report's references)."""
    return {
        "ref": info.ref,
        "sha256": info.sha256,
        "version": info.version,
        "aliases": list(info.aliases),
        "registered_by": info.tags.get("cordwatch.registered_by", ""),
        "created": info.created.isoformat(),
        "description": info.description,
    }


def history_with(history: pd.DataFrame, tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """``history`` (version, level, area) plus the per-level cohort mean CSA of each version
    compared now, which wins: a version whose package was measured under another version
    number (identical weights reuse that run) still gets its point."""
    from drift.cohort.evaluate import level_summary

    rows = [
        {"version": version, "level": key[len("area_") :], "area": value}
        for version, table in tables.items()
        for key, value in level_summary(table).items()
        if key.startswith("area_")
    ]
    both = pd.concat([history, pd.DataFrame(rows, columns=["version", "level", "area"])])
    both = both.drop_duplicates(["version", "level"], keep="last")
    return both.sort_values(["version", "level"]).reset_index(drop=True)


def check_qc_images(
    result: DriftResult,
    cohort: Cohort,
    root: Path,
    measured: dict[str, Measured],
    cache_dir: Path,
    say: Callable[[str], None],
) -> dict[str, tuple[str, bytes]]:
    """QC images (drift.gate.qc) from the cached segmentations of both versions; none when a
    version's segmentations are not in the cache. Never raises: QC only illustrates."""
    from drift.cohort.inference import cached_segmentation
    from drift.gate.qc import qc_images

    seg_paths: dict[str, dict[str, Path]] = {}
    for role, m in measured.items():
        found = {k: cached_segmentation(cache_dir, v) for k, v in m.seg_keys.items()}
        seg_paths[role] = {k: p for k, p in found.items() if p is not None}
    refs = {role: str(result.provenance.get(role, {}).get("ref", role)) for role in measured}
    try:
        return qc_images(result, cohort, root, seg_paths, labels=refs)
    except Exception as err:  # QC never changes a verdict
        say(f"QC images skipped: {err}")
        return {}


def run_check(
    candidate_ref: str,
    baseline_ref: str,
    cohort_ref: str | Path,
    *,
    root: Path | None = None,
    policy_path: Path | None = None,
    device: str = "auto",
    registry_uri: str | None = None,
    progress: bool = True,
    on_stage: Callable[[str], None] | None = None,
    engine: Engine | None = None,
    crop_boxes: Path | None = None,
) -> CheckResult:
    """Everything but the writing of outputs and of the verdict (see :func:`record_verdict`).

    ``engine``: a distributed :class:`drift.cohort.engine.Engine` (``--scheduler``) runs the
    segmentation and measuring tasks on its cluster; None runs them in this process.
    ``crop_boxes``: a JSON list of box files per image (``--crop-boxes``,
    :func:`drift.cohort.sct_pipeline.read_crop_box_map`) replacing the ground-truth crop boxes
    of cropped SCT models, for both versions.
    """
    from drift.cohort.manifest import load_cohort
    from drift.cohort.roots import ensure_root
    from drift.cohort.verify import verify_cohort
    from drift.gate.policy import drift_result, load_policy, policy_sha256
    from drift.provenance import base_provenance
    from registry.api import connect

    say = on_stage or (lambda _msg: None)
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, not {device!r}")
    policy: Policy = load_policy(policy_path)
    cohort = load_cohort(cohort_ref)
    boxes = None
    if crop_boxes is not None:
        from drift.cohort.sct_pipeline import read_crop_box_map

        boxes = read_crop_box_map(crop_boxes, {f"{i.subject}/{i.contrast}" for i in cohort.items})
    reg = connect(registry_uri)
    candidate = reg.resolve(candidate_ref)
    baseline = reg.resolve(baseline_ref)
    if candidate.name != baseline.name:
        say(f"note: comparing two models ({candidate.name} vs {baseline.name})")
    cohort_root = ensure_root(cohort, root)
    say(f"verifying cohort {cohort.name} ({len(cohort.items)} images) under {cohort_root}")
    verify_cohort(cohort, cohort_root).raise_for_problems()

    provenance = {
        **base_provenance(),
        "cohort": cohort.provenance(),
        "policy_sha256": policy_sha256(policy),
    }
    cache_dir = reg.settings.home / "cache" / "segmentations"
    # Same package sha256 = same weights: the comparison is exact identity, not a measurement.
    identical = len(candidate.sha256) == 64 and candidate.sha256 == baseline.sha256
    measured: dict[str, Measured] = {}
    for role, info in (("baseline", baseline), ("candidate", candidate)):
        say(f"{role}: {info.ref} (package {info.sha256[:12]})")
        if role == "candidate" and identical:
            say(f"identical weights: {candidate.ref} is the package of {baseline.ref}")
            measured[role] = measured["baseline"]
            continue
        measured[role] = evaluate_version(
            reg,
            info,
            cohort,
            cohort_root,
            cache_dir=cache_dir,
            device=device,
            progress=progress,
            provenance=provenance | {"model": info.ref, "role": role},
            engine=engine,
            crop_boxes=boxes,
        )
    base_t, cand_t = measured["baseline"].table, measured["candidate"].table
    if base_t.empty or cand_t.empty:
        raise InputError(
            "no segmentation could be measured for one of the versions", cohort.manifest
        )
    gt = ground_truth(cohort, cohort_root, engine)
    dice = dice_table(measured)
    result = drift_result(
        base_t,
        cand_t,
        policy,
        ground_truth=gt,
        dice=dice,
        provenance=provenance
        | {
            "command": "cordwatch drift check",
            # each version with the pipeline that segmented it (orientation, crop box source,
            # paddings; None: nnU-Net on the image as stored)
            "baseline": version_provenance(baseline)
            | {"inference": measured["baseline"].inference},
            "candidate": version_provenance(candidate)
            | {"inference": measured["candidate"].inference},
            "identical_weights": identical,
            "crop_boxes": None if boxes is None else {k: str(v) for k, v in boxes.items()},
            "failures": {role: m.failures for role, m in measured.items()},
        },
    )
    qc = check_qc_images(result, cohort, cohort_root, measured, cache_dir, say)
    return CheckResult(
        qc=qc,
        result=result,
        baseline=baseline,
        candidate=candidate,
        baseline_table=base_t,
        candidate_table=cand_t,
        history=history_with(
            csa_history(reg, candidate.name),
            {baseline.version: base_t, candidate.version: cand_t},
        ),
        failures={role: m.failures for role, m in measured.items()},
    )


def record_verdict(
    check: CheckResult, outputs: dict[str, Path], registry_uri: str | None = None
) -> str:
    """Log the drift run (result + report) and tag the candidate version with the verdict.

    Called last, after every output is written: an interruption before it leaves no verdict.
    """
    from mlflow.entities import Metric, Param

    from drift.gate.audit import gate_metrics, gate_params
    from drift.gate.report import promotable_verdicts, write_json, write_report
    from registry.api import connect

    reg = connect(registry_uri)
    result, cand, base = check.result, check.candidate, check.baseline
    # What the report's next step says, recorded for `promote`, `models audit` and release.yml.
    promotable = result.verdict in promotable_verdicts(result)
    exp_id = reg.ensure_experiment(DRIFT_EXPERIMENT)
    run = reg.client.create_run(
        exp_id,
        tags={
            "mlflow.runName": f"{cand.name} v{base.version}->v{cand.version}",
            "cordwatch.model.name": cand.name,
            "cordwatch.candidate": cand.ref,
            "cordwatch.baseline": base.ref,
            VERDICT_TAG: result.verdict,
            PROMOTABLE_TAG: _flag(promotable),
        },
    )
    run_id = run.info.run_id
    status = "FAILED"
    try:
        with tempfile.TemporaryDirectory(prefix="cordwatch-drift-") as tmp:
            reg.client.log_artifact(run_id, str(write_json(result, Path(tmp) / "result.json")))
            if "html" not in outputs:  # the MLflow UI shows the report even without --report
                outputs = write_report(
                    result,
                    Path(tmp) / "report",
                    baseline_table=check.baseline_table,
                    candidate_table=check.candidate_table,
                    history=check.history,
                    qc=check.qc,
                )
            for key, path in outputs.items():
                if key in ("html", "markdown"):
                    reg.client.log_artifact(run_id, str(path), artifact_path="report")
                elif key.startswith(("figure:", "qc:")):
                    sub = "report/qc" if key.startswith("qc:") else "report/figures"
                    reg.client.log_artifact(run_id, str(path), artifact_path=sub)
        reg.client.log_batch(
            run_id,
            metrics=[Metric(k, v, 0, 0) for k, v in gate_metrics(result).items()],
            params=[Param(k, v) for k, v in gate_params(result, cand.ref, base.ref).items()],
        )
        status = "FINISHED"
    finally:
        reg.client.set_terminated(run_id, status)
    tag_candidate(
        reg,
        cand.ref,
        verdict=result.verdict,
        promotable=promotable,
        run_id=run_id,
        baseline_ref=base.ref,
        policy_sha256=str(result.provenance.get("policy_sha256", "")),
        cohort_sha256=str(result.provenance.get("cohort", {}).get("cohort_manifest_sha256", "")),
    )
    return run_id


def tag_candidate(
    reg: Registry,
    ref: str,
    *,
    verdict: str,
    promotable: bool | None,
    run_id: str,
    baseline_ref: str,
    policy_sha256: str,
    cohort_sha256: str,
) -> None:
    """Put a drift run's verdict on the candidate version: the verdict tags (with
    ``cordwatch.drift.promotable``: whether the run's policy promotes the verdict; None, for a
    run recorded before that tag existed, writes the old rule: pass only), then the version's
    description naming the verdict and linking the run (tags are easily missed). Idempotent, so
    a verdict whose run finished before a crash can be re-applied from the run alone."""
    from drift.gate.audit import verdict_description

    flag = {} if promotable is None else {PROMOTABLE_TAG: _flag(promotable)}
    reg.set_version_tags(
        ref,
        {
            VERDICT_TAG: verdict,
            **flag,
            "cordwatch.drift.run_id": run_id,
            "cordwatch.drift.baseline": baseline_ref,
            "cordwatch.drift.policy_sha256": policy_sha256,
            "cordwatch.drift.cohort_sha256": cohort_sha256,
        },
    )
    info = reg.resolve(ref)
    exp_id = reg.client.get_run(run_id).info.experiment_id
    text = verdict_description(info.description, verdict, baseline_ref, run_id, exp_id)
    reg.client.update_model_version(info.name, str(info.version), description=text)


def _flag(value: bool) -> str:
    return "true" if value else "false"
