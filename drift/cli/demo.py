"""``cordwatch demo``: the main job on embedded defaults, on the bundled phantom cohort.

1. The measuring instrument: phantom subjects measured against their analytic true CSA.
2. The gate: the demo models registered in a fresh embedded registry (sqlite + local
   artifacts), drift checks that should pass (the champion re-released as a zip; a re-train
   with another seed, pass or warn) and one that should fail (a model with a systematic CSA
   bias), reports written, verdicts recorded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from drift.measure.levels import level_name
from drift.measure.morphometry import slice_metrics
from drift.measure.phantoms import make_subject


def phantom_level_accuracy(n_subjects: int = 10, seed: int = 0) -> pd.DataFrame:
    """Per (subject, level): true CSA and the CSA measured on the soft and binary ground truth
    (``exact`` and ``sct`` angle correction). Pure: phantoms are generated in memory."""
    rows = []
    for index in range(n_subjects):
        subject = make_subject(index, seed, contrasts=("T2w",))
        true = pd.Series(subject.true_area)
        levels = subject.slice_levels
        measured = {
            "soft_exact": slice_metrics(subject.soft_seg, subject.spacing, "exact")["area"],
            "soft_sct": slice_metrics(subject.soft_seg, subject.spacing, "sct")["area"],
            "binary_exact": slice_metrics(subject.binary_seg, subject.spacing, "exact")["area"],
        }
        for level in np.unique(levels[levels > 0]):
            in_level = levels == level
            row = {
                "subject": subject.subject_id,
                "level": int(level),
                "true": float(np.nanmean(true[in_level])),
            }
            for key, area in measured.items():
                row[key] = float(np.nanmean(area.to_numpy()[in_level]))
            rows.append(row)
    return pd.DataFrame(rows)


def summarise(per_subject: pd.DataFrame) -> pd.DataFrame:
    """Per level: mean true CSA, mean measured CSA, and mean signed error (%) of each method."""
    table = per_subject.copy()
    methods = ["soft_exact", "soft_sct", "binary_exact"]
    for m in methods:
        table[f"{m}_err_pct"] = (table[m] / table["true"] - 1) * 100
    out = table.groupby("level").agg(
        n=("subject", "size"),
        true=("true", "mean"),
        **{m: (m, "mean") for m in methods},
        **{f"{m}_err_pct": (f"{m}_err_pct", "mean") for m in methods},
    )
    out.insert(0, "name", [level_name(int(lv)) for lv in out.index])
    return out.reset_index()


# ----------------------------------------------------------------- stage 2: the drift gate --

MODELS_DIR = Path(__file__).resolve().parents[2] / "models" / "demo"
DEMO_MODEL = "cordseg-demo"


@dataclass
class DemoCheck:
    label: str
    candidate: str
    verdict: str
    expected: tuple[str, ...]
    report: Path
    area_factors: dict[str, float]
    promoted: bool = False

    @property
    def as_expected(self) -> bool:
        return self.verdict in self.expected


def release_zip(package: Path, dest: Path) -> Path:
    """An SCT-style release zip of a results folder (nested one level, as SCT publishes)."""
    import zipfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in package.rglob("*") if p.is_file()):
            zf.write(path, f"{package.name}/{path.relative_to(package).as_posix()}")
    return dest


def run_drift_demo(home: Path, out: Path, say: Callable[[str], None]) -> list[DemoCheck]:
    """Register the demo models in a fresh embedded registry at ``home`` and run three checks
    against the champion: its weights re-released as an SCT-style zip (pass), a re-train with
    another seed (pass or warn: seed-to-seed shifts stay inside the ±1 % margin) and the biased
    model (fail), writing the reports under ``out``."""
    from drift.cli.drift import emit_result
    from drift.gate.check import record_verdict, run_check
    from registry.api import connect

    os.environ["CORDWATCH_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the demo always runs on embedded defaults
    reg = connect(None, home)
    say(f"registry: {reg.tracking_uri}")
    v1 = reg.register(
        DEMO_MODEL,
        MODELS_DIR / "demo-good",
        tags={"task": "spinal-cord", "contrasts": "T1w,T2w,T2star"},
        description="demo-good: tiny nnU-Net v2 trained on phantom binary ground truth",
    )
    reg.promote(
        v1.ref,
        "champion",
        force=True,
        reason="first champion of the demo registry: no earlier version to gate against",
    )
    say(f"{v1.ref} registered and made champion (forced, recorded in the alias history)")
    checks = []
    rerelease = release_zip(MODELS_DIR / "demo-good", home / "downloads" / "demo-good-r2.zip")
    plan = [
        ("the champion re-released as a zip (should pass)", rerelease, ("pass",), "pass"),
        (
            "re-train of the champion with another seed (should not fail: pass, or warn = "
            "not failed but not promotable under the default policy)",
            MODELS_DIR / "demo-good-seed2",
            ("pass", "warn"),
            "retrain",
        ),
        (
            "biased model, trained on wider labels (should fail)",
            MODELS_DIR / "demo-biased",
            ("fail",),
            "fail",
        ),
    ]
    for label, path, expected, folder in plan:
        info = reg.register(
            DEMO_MODEL,
            path,
            alias="candidate",
            tags={"parent": str(v1.version)},
            description=f"{path.name}: {label}",
        )
        say(f"{info.ref} registered as candidate: {label}")
        chk = run_check(
            f"{DEMO_MODEL}@candidate",
            f"{DEMO_MODEL}@champion",
            "phantom",
            device="cpu",
            progress=True,
            on_stage=say,
        )
        report_dir = out / folder
        outputs = emit_result(
            chk.result,
            json_out=out / f"{folder}.json",
            report_dir=report_dir,
            baseline_table=chk.baseline_table,
            candidate_table=chk.candidate_table,
            history=chk.history,
            qc=chk.qc,
        )
        record_verdict(chk, outputs)
        area = chk.result.to_dict()["metrics"]["area"]["levels"]
        checks.append(
            DemoCheck(
                label,
                info.ref,
                chk.result.verdict,
                expected,
                report_dir,
                {lv: v["scaling_factor"] for lv, v in area.items() if v.get("gated")},
            )
        )
        if chk.result.verdict == "pass":
            reg.promote(info.ref, "champion")
            checks[-1].promoted = True
            say(f"{info.ref} promoted to champion (drift verdict pass)")
        else:
            say(
                f"{info.ref} stays candidate: verdict {chk.result.verdict} is not promotable "
                "(policy promotable: pass; `cordwatch models promote` refuses it)"
            )
    return checks
