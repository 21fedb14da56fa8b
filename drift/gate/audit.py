"""What MLflow shows of the drift gate, and the audit of it.

* :func:`gate_metrics`, :func:`gate_params`: the drift run's metrics (per gated metric and
  level: ``area_C3_scaling_factor``, ``area_C3_ci_low``, ``area_C3_ci_high``,
  ``area_C3_tost_p``, ...) and params (candidate, baseline, cohort, policy), so that the MLflow
  UI can chart the gate across versions instead of showing "Metrics (0)".
* :func:`verdict_description`: the model version's description with one paragraph naming
  the verdict and linking to the drift run (the verdict is otherwise one of many tags).
* :func:`audit_model` (``cordwatch models audit NAME``): compares MLflow's aliases and
  verdict tags with cordwatch's own records (the alias history, the drift runs) and lists
  what does not agree: a champion that is not promotable (by the rule ``promote`` applies,
  :mod:`registry.promotion`), a verdict tag without its drift run (or disagreeing with it),
  an alias moved or removed outside cordwatch (e.g. in the MLflow UI, or with a plain
  ``MlflowClient``). MLflow itself keeps no trace of such edits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.errors import CordwatchError
from registry.promotion import PROMOTABLE_TAG, VERDICT_TAG, is_promotable

if TYPE_CHECKING:
    from drift.gate.policy import DriftResult
    from registry.api import Registry

RUN_TAG = "cordwatch.drift.run_id"
GATED_ALIAS = "champion"
#: The paragraph of a version description that cordwatch owns (replaced at every check).
_DESCRIPTION_MARK = "cordwatch drift:"
_VERDICT_CODE = {"pass": 0.0, "warn": 1.0, "fail": 2.0}
#: Level statistics logged per gated (metric, level): MLflow key suffix -> levels column.
LEVEL_METRICS: Mapping[str, str] = {
    "scaling_factor": "scaling_factor",
    "ci_low": "ci95_low",
    "ci_high": "ci95_high",
    "tost_p": "tost_p",
    "wilcoxon_p": "wilcoxon_p",
    "ba_bias": "ba_bias",
    "ba_bias_pct": "ba_bias_pct",
    "icc": "icc",
    "n_subjects": "n_subjects",
    "coverage": "coverage",
}


class AuditFailed(CordwatchError):
    """The registry and cordwatch's records disagree (``models audit``: exit 1)."""

    exit_code = 1


# ------------------------------------------------------------------ what the run shows ---


def gate_metrics(result: DriftResult) -> dict[str, float]:
    """MLflow metrics of a drift result: ``<metric>_<level>_<stat>`` for every gated
    (metric, level) and every stat of :data:`LEVEL_METRICS` (finite values only), plus
    ``verdict_code`` (0 pass, 1 warn, 2 fail), ``n_fail``, ``n_warn`` and ``n_paired``."""
    comp = result.comparison
    out: dict[str, float] = {}
    gated = {(c.metric, c.level) for c in result.gate.conditions if c.metric and c.level}
    for row in comp.levels.to_dict("records"):
        if (row["metric"], row["level_name"]) not in gated:
            continue
        for suffix, column in LEVEL_METRICS.items():
            value = row.get(column)
            if value is not None and math.isfinite(float(value)):
                out[f"{row['metric']}_{row['level_name']}_{suffix}"] = float(value)
    out["verdict_code"] = _VERDICT_CODE[result.verdict]
    out["n_fail"] = float(sum(c.status == "fail" for c in result.gate.conditions))
    out["n_warn"] = float(sum(c.status == "warn" for c in result.gate.conditions))
    out["n_paired"] = float(len(comp.subject_sets["paired"]))
    return out


def gate_params(result: DriftResult, candidate: str, baseline: str) -> dict[str, str]:
    """MLflow params of a drift run: candidate, baseline, cohort, policy (one line + sha)."""
    from drift.gate.report import policy_line

    prov = result.provenance
    cohort = prov.get("cohort") if isinstance(prov.get("cohort"), Mapping) else {}
    return {
        "candidate": candidate,
        "baseline": baseline,
        "cohort": str((cohort or {}).get("cohort", "")),
        "cohort_sha256": str((cohort or {}).get("cohort_manifest_sha256", "")),
        "policy": policy_line(result)[:5000],
        "policy_sha256": str(prov.get("policy_sha256", "")),
        "identical_weights": str(bool(prov.get("identical_weights"))).lower(),
    }


def verdict_description(
    description: str, verdict: str, baseline: str, run_id: str, experiment_id: str
) -> str:
    """``description`` with its cordwatch paragraph replaced by one naming the verdict and
    linking to the drift run (a link inside the MLflow UI)."""
    kept = [
        p for p in re.split(r"\n\s*\n", description or "") if not p.startswith(_DESCRIPTION_MARK)
    ]
    link = f"#/experiments/{experiment_id}/runs/{run_id}"
    para = (
        f"{_DESCRIPTION_MARK} **{verdict.upper()}** against {baseline} "
        f"([drift run {run_id[:12]}]({link}))"
    )
    return "\n\n".join([*(p.strip() for p in kept if p.strip()), para])


# ------------------------------------------------------------------------------- audit ---


@dataclass(frozen=True)
class Finding:
    """One disagreement between MLflow and cordwatch's records."""

    kind: str  # champion-not-promotable | verdict-without-run | verdict-mismatch | alias-moved
    ref: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "ref": self.ref, "message": self.message}


def audit_model(reg: Registry, name: str) -> list[Finding]:
    """What in MLflow disagrees with cordwatch's history for model ``name`` (empty: all
    consistent). Reads only; changes nothing."""
    versions = {v.version: v for v in reg.list_versions(name)}
    aliases = {a: int(v) for a, v in (reg.client.get_registered_model(name).aliases or {}).items()}
    findings: list[Finding] = []

    # Aliases: the last recorded move of each alias must point where MLflow points now.
    last: dict[str, Any] = {}
    for event in reg.history(name):
        last[event.alias] = event
    for alias, version in sorted(aliases.items()):
        ev = last.get(alias)
        ref = f"{name}@{alias}"
        if ev is None:
            findings.append(
                Finding(
                    "alias-moved",
                    ref,
                    f"{ref} points at v{version} but cordwatch's history has no move of it: "
                    "set outside cordwatch",
                )
            )
        elif ev.to_version != version:
            findings.append(
                Finding(
                    "alias-moved",
                    ref,
                    f"{ref} points at v{version} but cordwatch's history last moved it to "
                    f"v{ev.to_version} ({ev.who}, {ev.when:%Y-%m-%d %H:%M}): moved outside "
                    "cordwatch",
                )
            )
    for alias, ev in sorted(last.items()):
        if alias not in aliases:
            findings.append(
                Finding(
                    "alias-removed",
                    f"{name}@{alias}",
                    f"{name}@{alias} was last moved to v{ev.to_version} by cordwatch but no "
                    "longer exists: removed outside cordwatch",
                )
            )

    # The champion must be promotable, by the rule `promote` applies (registry.promotion).
    if GATED_ALIAS in aliases:
        champ = versions.get(aliases[GATED_ALIAS])
        tags = {} if champ is None else champ.tags
        verdict = tags.get(VERDICT_TAG, "")
        if not is_promotable(tags):
            ev = last.get(GATED_ALIAS)
            forced = (
                f" (forced by {ev.who}: {ev.reason})"
                if ev is not None and ev.forced and ev.to_version == aliases[GATED_ALIAS]
                else ""
            )
            state = f"verdict {verdict!r}" if verdict else "no drift verdict"
            if verdict and PROMOTABLE_TAG in tags:
                state += f", {PROMOTABLE_TAG}={tags[PROMOTABLE_TAG]}"
            findings.append(
                Finding(
                    "champion-not-promotable",
                    f"{name}/{aliases[GATED_ALIAS]}",
                    f"{name}@{GATED_ALIAS} is v{aliases[GATED_ALIAS]} with {state}{forced}",
                )
            )

    # Every verdict tag must come from a finished drift run that says the same.
    for _number, info in sorted(versions.items()):
        tagged = info.tags.get(VERDICT_TAG)
        if tagged is None:
            continue
        run_id = info.tags.get(RUN_TAG, "")
        run = _get_run(reg, run_id) if run_id else None
        if run is None:
            why = f"run {run_id} not found" if run_id else f"no {RUN_TAG} tag"
            findings.append(
                Finding(
                    "verdict-without-run",
                    info.ref,
                    f"{info.ref} is tagged {VERDICT_TAG}={tagged} but has no drift run ({why})",
                )
            )
            continue
        recorded = run.data.tags.get(VERDICT_TAG, "")
        # A run from before the promotable tag says nothing; else version and run must agree
        # (the tag is editable in the MLflow UI like any other).
        flag, run_flag = info.tags.get(PROMOTABLE_TAG), run.data.tags.get(PROMOTABLE_TAG)
        if run_flag is not None and flag != run_flag:
            findings.append(
                Finding(
                    "verdict-mismatch",
                    info.ref,
                    f"{info.ref} is tagged {PROMOTABLE_TAG}={flag or 'nothing'} but its drift "
                    f"run {run_id} says {run_flag}",
                )
            )
        if run.info.status != "FINISHED" or recorded != tagged:
            findings.append(
                Finding(
                    "verdict-mismatch",
                    info.ref,
                    f"{info.ref} is tagged {VERDICT_TAG}={tagged} but its drift run {run_id} "
                    f"says {recorded or 'nothing'} (status {run.info.status})",
                )
            )
        if run.data.tags.get("cordwatch.candidate", info.ref) != info.ref:
            findings.append(
                Finding(
                    "verdict-mismatch",
                    info.ref,
                    f"{info.ref}'s drift run {run_id} checked "
                    f"{run.data.tags.get('cordwatch.candidate')}, not this version",
                )
            )
    return findings


def _get_run(reg: Registry, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return reg.client.get_run(run_id)
    except MlflowException:
        return None
