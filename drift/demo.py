"""``cordwatch demo``: the main job on embedded defaults, on the bundled phantom cohort.

Stage 1 (this module): generate the phantom cohort (deterministic), measure every ground-truth
segmentation with the morphometry engine, and compare with the analytic true CSA per level.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from drift.levels import level_name
from drift.morphometry import slice_metrics
from drift.phantoms import make_subject


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
