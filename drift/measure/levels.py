"""Vertebral levels per slice, aggregation per slice / level / level range, PAM50 normalisation.

Level numbers follow SCT: 1=C1 ... 7=C7, 8=T1 ... 19=T12, 20=L1 ... 24=L5. Disc labels follow
SCT too: the disc between level N-1 and level N carries value N (C2/C3 disc = 3).

All functions are pure (arrays and tables in, tables out).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
import pandas as pd

from drift.measure.morphometry import METRIC_COLUMNS

MAX_DISC = 25  # the L5/S1 disc
LEVEL_PREFIXES: tuple[tuple[int, int, str], ...] = (
    (1, 7, "C"),
    (8, 19, "T"),
    (20, 24, "L"),
    (25, 29, "S"),
)


def level_name(level: int) -> str:
    """SCT's vertebral level number -> its name.

    >>> [level_name(n) for n in (1, 7, 8, 19, 20, 24)]
    ['C1', 'C7', 'T1', 'T12', 'L1', 'L5']
    """
    n = int(level)
    for first, last, prefix in LEVEL_PREFIXES:
        if first <= n <= last:
            return f"{prefix}{n - first + 1}"
    raise ValueError(f"no vertebral level numbered {level!r} (SCT numbering is 1=C1 .. 24=L5)")


def level_number(name: str) -> int:
    """A level name (``C3``, ``t1``) -> SCT's level number.

    >>> level_number("C2"), level_number("T1"), level_number("L5")
    (2, 8, 24)
    """
    text = str(name).strip().upper()
    for first, last, prefix in LEVEL_PREFIXES:
        if text.startswith(prefix) and text[1:].isdigit():
            n = first + int(text[1:]) - 1
            if first <= n <= last:
                return n
    raise ValueError(f"not a vertebral level name: {name!r} (expected C1..C7, T1..T12, L1..L5)")


def slice_levels_from_labeled(labels: np.ndarray) -> np.ndarray:
    """Level of every slice of a labelled segmentation: the rounded mean of its non-zero
    values (0 where the slice has none).

    >>> lab = np.zeros((2, 2, 3)); lab[:, :, 0] = 3; lab[0, :, 1] = 3; lab[1, :, 1] = 4
    >>> slice_levels_from_labeled(lab).tolist()
    [3, 4, 0]
    """
    labels = np.asarray(labels)
    nonzero = labels != 0
    count = nonzero.sum(axis=(0, 1))
    total = np.where(nonzero, labels, 0).sum(axis=(0, 1), dtype=np.float64)
    mean = np.divide(total, count, out=np.zeros(labels.shape[2]), where=count > 0)
    # Round half up (3.5 -> 4), not numpy's half-to-even.
    return np.floor(mean + 0.5).astype(int)


def disc_positions(discs: np.ndarray) -> dict[int, float]:
    """Disc value -> z position (mean z of its voxels) in a disc-label volume."""
    discs = np.asarray(discs)
    coords = np.nonzero(discs)
    values = discs[coords].astype(int)
    z = coords[2]
    # Values above 25 are landmarks, not discs (SCT: 49, 50 = pontomedullary junction, 60).
    return {int(v): float(z[values == v].mean()) for v in np.unique(values) if 0 < v <= MAX_DISC}


def slice_levels_from_discs(discs: np.ndarray) -> np.ndarray:
    """Level of every slice from single-voxel disc labels (RPI: superior = larger z).

    Level N spans from disc N+1 (below, included) up to disc N (above, excluded), as in
    PAM50_levels. Missing discs between two present ones are placed by linear interpolation
    of z over the disc number; slices above the top disc or below the bottom disc get 0.

    >>> d = np.zeros((1, 1, 10)); d[0, 0, 8] = 2; d[0, 0, 5] = 3; d[0, 0, 1] = 5
    >>> slice_levels_from_discs(d).tolist()
    [0, 4, 4, 3, 3, 2, 2, 2, 0, 0]
    """
    nz = np.asarray(discs).shape[2]
    positions = disc_positions(discs)
    levels = np.zeros(nz, dtype=int)
    if len(positions) < 2:
        return levels
    numbers = np.array(sorted(positions))
    z = np.array([positions[n] for n in numbers])
    if np.any(np.diff(z) >= 0):
        raise ValueError("disc labels are not ordered superior (low number) to inferior")
    full = np.arange(numbers[0], numbers[-1] + 1)
    z_full = np.interp(full, numbers, z)
    slices = np.arange(nz)
    for number, top, bottom in zip(full[:-1], z_full[:-1], z_full[1:], strict=True):
        levels[(slices >= np.ceil(bottom - 1e-9)) & (slices < np.ceil(top - 1e-9))] = number
    return levels


@cache
def pam50_levels() -> pd.DataFrame:
    """The PAM50 level -> template slice table (``level, name, slice_min, slice_max,
    n_slices``), derived once from PAM50_levels.nii.gz; see drift/measure/data/pam50_levels.csv.

    >>> pam50_levels().set_index("name").loc["C3", ["slice_min", "slice_max"]].tolist()
    [871, 907]
    """
    text = resources.files("drift.measure").joinpath("data/pam50_levels.csv").read_text()
    from io import StringIO

    return pd.read_csv(StringIO(text), comment="#")


def pam50_table_from_image(levels: np.ndarray) -> pd.DataFrame:
    """Rebuild the PAM50 table from the PAM50_levels volume (used to check the committed one)."""
    slice_level = slice_levels_from_labeled(levels)
    rows = []
    for level in np.unique(slice_level[slice_level > 0]):
        z = np.flatnonzero(slice_level == level)
        rows.append((int(level), level_name(int(level)), int(z[0]), int(z[-1]), len(z)))
    return pd.DataFrame(rows, columns=["level", "name", "slice_min", "slice_max", "n_slices"])


def _stats(values: pd.DataFrame, metrics: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in metrics:
        col = values[m].to_numpy(dtype=float)
        finite = col[np.isfinite(col)]
        if m == "length":
            out["SUM(length)"] = float(finite.sum()) if finite.size else np.nan
            continue
        out[f"MEAN({m})"] = float(finite.mean()) if finite.size else np.nan
        out[f"STD({m})"] = float(finite.std()) if finite.size else np.nan
    return out


def aggregate(
    metrics: pd.DataFrame,
    levels: np.ndarray | None,
    *,
    perslice: bool = False,
    perlevel: bool = False,
    vert: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Aggregate per-slice metrics as ``sct_process_segmentation`` does.

    ``metrics`` is indexed by slice (see :func:`drift.measure.morphometry.slice_metrics` or
    :func:`normalize_pam50`); ``levels`` gives each slice's level (0 = none). Returns rows
    with SCT's columns ``Slice (I->S)``, ``VertLevel``, ``MEAN(m)``, ``STD(m)`` (population
    STD over finite slices) and ``SUM(length)``. ``vert`` restricts to a level range.

    >>> m = pd.DataFrame({"area": [1.0, 3.0, 5.0], "length": [1.0, 1.0, 1.0]})
    >>> out = aggregate(m, np.array([2, 2, 3]), perlevel=True)
    >>> out["VertLevel"].tolist(), out["MEAN(area)"].tolist()
    ([2, 3], [2.0, 5.0])
    """
    metric_cols = [c for c in METRIC_COLUMNS if c in metrics.columns]
    table = metrics[metric_cols].copy()
    table["_slice"] = metrics.index.to_numpy()
    table["_level"] = 0 if levels is None else np.asarray(levels)
    has_cord = table[metric_cols].notna().any(axis=1) | (table["_level"] > 0)
    table = table[has_cord]
    if vert is not None:
        table = table[(table["_level"] >= vert[0]) & (table["_level"] <= vert[1])]
    if perslice:
        out = table.rename(columns={m: f"MEAN({m})" for m in metric_cols if m != "length"})
        out = out.rename(columns={"length": "SUM(length)"})
        out["Slice (I->S)"] = table["_slice"].astype(int).astype(str)
        out["VertLevel"] = table["_level"].where(table["_level"] > 0)
        for m in metric_cols:
            if m != "length":
                out[f"STD({m})"] = np.nan
        return out.drop(columns=["_slice", "_level"]).reset_index(drop=True)
    groups: list[tuple[object, pd.DataFrame]]
    if perlevel:
        table = table[table["_level"] > 0]
        groups = [(int(k), g) for k, g in table.groupby("_level", sort=True)]
    else:
        label: object = f"{vert[0]}:{vert[1]}" if vert is not None else np.nan
        groups = [(label, table)] if len(table) else []
    rows = []
    for key, group in groups:
        row: dict[str, object] = {
            "Slice (I->S)": f"{int(group['_slice'].min())}:{int(group['_slice'].max())}",
            "VertLevel": key,
        }
        row.update(_stats(group, metric_cols))
        rows.append(row)
    return pd.DataFrame(rows)


def normalize_pam50(metrics: pd.DataFrame, levels: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Interpolate per-slice metrics onto the PAM50 template's slices, level by level.

    For each level present in the subject, its slices are stretched linearly onto that
    level's PAM50 slice range (endpoints matched). The superior-most and inferior-most levels
    are often cut by the field of view, so they are mapped with the mean scale (PAM50 slices
    per subject slice) of the inner levels, anchored at their inner boundary; with no inner
    level, every level is treated as complete. Returns (metrics indexed by PAM50 slice,
    level per row), ascending I->S.
    """
    table = pam50_levels().set_index("level")
    levels = np.asarray(levels)
    present = [int(v) for v in np.unique(levels[levels > 0]) if int(v) in table.index]
    metric_cols = [c for c in METRIC_COLUMNS if c in metrics.columns]
    if not present:
        return pd.DataFrame(columns=metric_cols), np.array([], dtype=int)
    top, bottom = min(present), max(present)  # superior-most has the smallest number
    inner = [lv for lv in present if lv not in (top, bottom)]
    scales = []
    for lv in inner:
        n_subject = int((levels == lv).sum())
        if n_subject > 1:
            scales.append((table.loc[lv, "n_slices"] - 1) / (n_subject - 1))
    mean_scale = float(np.mean(scales)) if scales else None

    out_frames, out_levels = [], []
    for lv in present:
        z = np.flatnonzero(levels == lv)
        lo, hi = int(table.loc[lv, "slice_min"]), int(table.loc[lv, "slice_max"])
        target = np.arange(lo, hi + 1)
        outer = lv in (top, bottom) and mean_scale is not None and len(present) > 1
        if outer and lv == top:
            x = lo + (z - z[0]) * mean_scale
        elif outer:
            x = hi - (z[-1] - z) * mean_scale
        elif len(z) > 1:
            x = np.linspace(lo, hi, len(z))
        else:
            x = np.array([(lo + hi) / 2.0])
        keep = (
            (target >= x.min() - 1e-9) & (target <= x.max() + 1e-9)
            if len(z) > 1
            else target == target
        )
        target = target[keep]
        frame = pd.DataFrame(index=pd.Index(target, name="slice"))
        for m in metric_cols:
            frame[m] = np.interp(target, x, metrics[m].to_numpy(dtype=float)[z])
        out_frames.append(frame)
        out_levels.append(np.full(len(target), lv))
    result = pd.concat(out_frames).sort_index()
    lv_arr = np.concatenate(out_levels)[
        np.argsort(np.concatenate([f.index for f in out_frames]), kind="stable")
    ]
    return result, lv_arr
