"""Synthetic baseline/candidate morphometry tables for gate tests that need a verdict without
running nnU-Net (tests/test_audit.py, tests/test_promotable.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def tables(scale_c4: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """6 subjects x T2w x C2..T1 x 3 slices; candidate = baseline x 0.3 % noise, its area at
    C4 scaled by ``scale_c4``."""
    rng = np.random.default_rng(1)
    rows = [
        (f"sub-{s:02d}", "T2w", lev, 100 - 5 * lev + k)
        for s in range(6)
        for lev in range(2, 9)
        for k in range(3)
    ]
    base = pd.DataFrame(rows, columns=["subject", "contrast", "level", "slice"])
    base["area"] = 75.0 * np.exp(rng.normal(0, 0.05, len(base)))
    base["diameter_AP"] = 8.0 * np.exp(rng.normal(0, 0.02, len(base)))
    base["diameter_RL"] = 12.0 * np.exp(rng.normal(0, 0.02, len(base)))
    cand = base.copy()
    cand["area"] *= np.exp(rng.normal(0, 0.003, len(base))) * np.where(
        base["level"] == 4, scale_c4, 1.0
    )
    return base, cand
