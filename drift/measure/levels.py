"""Vertebral levels per slice, aggregation per slice / level / level range, PAM50 normalisation.

Level numbers follow SCT: 1=C1 ... 7=C7, 8=T1 ... 19=T12, 20=L1 ... 24=L5. Disc labels follow
SCT too: the disc between level N-1 and level N carries value N (C2/C3 disc = 3).

All functions are pure (arrays and tables in, tables out). The ``*_rows`` / ``*_arrays``
functions work on numpy arrays; :func:`aggregate` and :func:`normalize_pam50` are their
DataFrame faces.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from drift.measure.morphometry import METRIC_COLUMNS, voxel_centerline

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported by the DataFrame wrappers only: the command line's morphometry
# (slice metrics -> rows -> CSV) runs on numpy and the csv module.

MAX_DISC = 25  # the L5/S1 disc
LEVEL_PREFIXES: tuple[tuple[int, int, str], ...] = (
    (1, 7, "C"),
    (8, 19, "T"),
    (20, 24, "L"),
    (25, 29, "S"),
)


def _distinct(values: np.ndarray) -> list[int]:
    """The distinct integers of ``values``, ascending (``np.unique`` without its import of
    numpy.ma, ~15 ms of a command line's start-up in numpy 2.x).

    >>> _distinct(np.array([3, 1, 3, 2]))
    [1, 2, 3]
    """
    return sorted({int(v) for v in np.asarray(values).ravel().tolist()})


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
    values (0 where the slice has none), as SCT's ``get_vertebral_level_from_slice`` (numpy
    rounding: 2.5 -> 2, 3.5 -> 4).

    >>> lab = np.zeros((2, 2, 3)); lab[:, :, 0] = 3; lab[0, :, 1] = 3; lab[1, :, 1] = 4
    >>> slice_levels_from_labeled(lab).tolist()
    [3, 4, 0]
    """
    labels = np.asarray(labels)
    if labels.dtype.kind in "iub":  # integers: zeros add nothing, no NaN possible
        count = np.count_nonzero(labels, axis=(0, 1))
        total = labels.sum(axis=(0, 1), dtype=np.float64)
    else:
        nonzero = (labels != 0) & np.isfinite(labels)
        count = nonzero.sum(axis=(0, 1))
        total = np.where(nonzero, labels, 0).sum(axis=(0, 1), dtype=np.float64)
    mean = np.divide(total, count, out=np.zeros(labels.shape[2]), where=count > 0)
    return np.round(mean).astype(int)


def disc_positions(discs: np.ndarray) -> dict[int, float]:
    """Disc value -> z position (mean z of its voxels) in a disc-label volume."""
    discs = np.asarray(discs)
    coords = np.nonzero(discs)
    values = discs[coords].astype(int)
    z = coords[2]
    # Values above 25 are landmarks, not discs (SCT: 49, 50 = pontomedullary junction, 60).
    return {v: float(z[values == v].mean()) for v in _distinct(values) if 0 < v <= MAX_DISC}


def slice_levels_from_discs(
    discs: np.ndarray,
    seg: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    *,
    flips: tuple[bool, bool, bool] = (False, False, False),
    pz: float = 1.0,
    interpolate_missing: bool = False,
) -> np.ndarray:
    """Level of every slice from single-voxel disc labels (RPI: superior = larger z).

    SCT 7.4's rule (default; ``project_centerline`` + ``label_regions_from_reference``): each
    disc voxel is projected onto the nearest point (in mm) of the segmentation's centerline;
    every centerline slice up to and including disc N's projection (counting from below,
    down to the next disc) is level N; slices below the lowest disc take its value, slices
    above the highest disc N take N - 1; missing discs are not interpolated. As in SCT, every
    label of the file is projected (landmarks above 25 too), and of two labels projected onto
    the same centerline voxel only the one last in the file's voxel order is kept (on the
    PAM50 template label 60 takes the place of disc 21 at the cord's lowest slice). Only slices of
    the centerline (the cord's extent) get a level. Without ``seg`` the discs are projected
    by their z alone and every slice of the volume gets a level. ``flips``: which RPI axes
    run the other way in the file (SCT truncates the centerline to voxels in the file's own
    orientation); ``pz``: slice thickness (the spline's smoothing depends on it).

    ``interpolate_missing=True`` is cordwatch's older rule: level N spans from disc N+1
    (included) up to disc N (excluded), missing discs placed by linear interpolation of z
    over the disc number, slices above the top disc or below the bottom disc 0.

    >>> d = np.zeros((1, 1, 10)); d[0, 0, 8] = 2; d[0, 0, 5] = 3; d[0, 0, 1] = 5
    >>> slice_levels_from_discs(d).tolist()
    [5, 5, 3, 3, 3, 3, 2, 2, 2, 1]
    >>> slice_levels_from_discs(d, interpolate_missing=True).tolist()
    [0, 4, 4, 3, 3, 2, 2, 2, 0, 0]
    """
    discs = np.asarray(discs)
    nz = discs.shape[2]
    if interpolate_missing:
        return _levels_interpolated(discs)
    levels = np.zeros(nz, dtype=int)
    # np.argwhere over the slices holding labels only (fast on F-ordered volumes too; the
    # x, y, z order of the coordinates is the same).
    label_z = np.flatnonzero(discs.any(axis=(0, 1)))
    coords = np.argwhere(discs[:, :, label_z])
    coords[:, 2] = label_z[coords[:, 2]]
    values = discs[tuple(coords.T)].astype(int)
    # With a segmentation every label takes part, as in SCT (a landmark such as PAM50's 60
    # is projected too, and can take a disc's place, see below); without one, discs only.
    keep = (values > 0) if seg is not None else (values > 0) & (values <= MAX_DISC)
    coords, values = coords[keep], values[keep]
    if len(values) == 0 or not np.any(values <= MAX_DISC):
        return levels
    if seg is None:
        zref = np.arange(nz)
        indices = coords[:, 2]  # the projection of a disc is its own slice
    else:
        zref, x, y = voxel_centerline(seg, pz)
        a = np.eye(3) if affine is None else np.asarray(affine)[:3, :3]
        line = np.column_stack([x, y, zref]) @ a.T
        # project_centerline: nearest point of the (float) centerline, in mm.
        nearest = _nearest(coords.astype(float) @ a.T, line)
        projected = np.column_stack([np.round(x), np.round(y), zref])[nearest]
        # SCT writes the projected labels into one image: two labels projected onto the same
        # voxel leave the one written last, in the file's voxel order (np.argwhere there).
        shape = np.asarray(discs.shape)
        in_file = np.where(np.asarray(flips), shape - 1 - coords, coords)
        written = np.lexsort(in_file.T[::-1])  # file C order: x, then y, then z
        _, last = np.unique(projected[written[::-1]], axis=0, return_index=True)
        survivors = np.sort(written[::-1][last])
        coords, values, projected = coords[survivors], values[survivors], projected[survivors]
        # label_regions_from_reference: nearest point of the centerline truncated to voxels
        # (truncation in the file's orientation = ceil along the axes that are flipped).
        trunc = [np.ceil(v) if f else np.trunc(v) for v, f in zip((x, y), flips[:2], strict=True)]
        voxel_line = np.column_stack([*trunc, zref]) @ a.T
        indices = zref[_nearest(projected @ a.T, voxel_line)]
    order = np.argsort(indices, kind="stable")
    region_idx = indices[order]
    region_values = np.append(values[order], values[order][-1] - 1)
    levels[zref] = region_values[np.searchsorted(region_idx, zref)]
    return levels


def _nearest(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Index of the nearest ``line`` point for every point (both (n, 3), mm)."""
    d2 = ((points[:, None, :] - line[None, :, :]) ** 2).sum(axis=2)
    return np.argmin(d2, axis=1)


def _levels_interpolated(discs: np.ndarray) -> np.ndarray:
    nz = discs.shape[2]
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
def _pam50_text() -> str:
    return resources.files("drift.measure").joinpath("data/pam50_levels.csv").read_text()


@cache
def pam50_ranges() -> dict[int, tuple[int, int]]:
    """PAM50 level -> (slice_min, slice_max) of the template (the table of
    :func:`pam50_levels`, read without pandas).

    >>> pam50_ranges()[3]
    (871, 907)
    """
    import csv

    lines = [line for line in _pam50_text().splitlines() if line and not line.startswith("#")]
    return {
        int(row["level"]): (int(row["slice_min"]), int(row["slice_max"]))
        for row in csv.DictReader(lines)
    }


@cache
def pam50_levels() -> pd.DataFrame:
    """The PAM50 level -> template slice table (``level, name, slice_min, slice_max,
    n_slices``), derived once from PAM50_levels.nii.gz; see drift/measure/data/pam50_levels.csv.

    >>> pam50_levels().set_index("name").loc["C3", ["slice_min", "slice_max"]].tolist()
    [871, 907]
    """
    from io import StringIO

    import pandas as pd

    return pd.read_csv(StringIO(_pam50_text()), comment="#")


def pam50_table_from_image(levels: np.ndarray) -> pd.DataFrame:
    """Rebuild the PAM50 table from the PAM50_levels volume (used to check the committed one)."""
    import pandas as pd

    slice_level = slice_levels_from_labeled(levels)
    rows = []
    for level in np.unique(slice_level[slice_level > 0]):
        z = np.flatnonzero(slice_level == level)
        rows.append((int(level), level_name(int(level)), int(z[0]), int(z[-1]), len(z)))
    return pd.DataFrame(rows, columns=["level", "name", "slice_min", "slice_max", "n_slices"])


def slice_list_text(slices: Iterable[int] | np.ndarray) -> str:
    """SCT's ``parse_num_list_inv``: sorted ints -> ``"1:3;5"``.

    >>> slice_list_text([5, 1, 2, 3]), slice_list_text([]), slice_list_text([7])
    ('1:3;5', '', '7')
    """
    values = sorted(int(v) for v in slices)
    if not values:
        return ""
    runs: list[list[int]] = [[values[0], values[0]]]
    for v in values[1:]:
        if v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ";".join(str(a) if a == b else f"{a}:{b}" for a, b in runs)


def _stats(values: np.ndarray, metrics: list[str]) -> dict[str, float]:
    """SCT's func_wa / func_std / func_sum over the finite values (NaN where none is);
    ``values``: (slices, metrics)."""
    out: dict[str, float] = {}
    if len(values) == 1:  # one slice (per-slice rows): the value, STD 0.0; no reductions
        for m, v in zip(metrics, values[0].tolist(), strict=True):
            ok = math.isfinite(v)
            if m == "length":
                out["SUM(length)"] = v if ok else np.nan
            else:
                out[f"MEAN({m})"] = v if ok else np.nan
                out[f"STD({m})"] = 0.0 if ok else np.nan
        return out
    finite = np.isfinite(values)
    for k, m in enumerate(metrics):
        col = values[finite[:, k], k]
        if m == "length":
            out["SUM(length)"] = float(col.sum()) if col.size else np.nan
            continue
        out[f"MEAN({m})"] = float(col.mean()) if col.size else np.nan
        out[f"STD({m})"] = float(col.std()) if col.size else np.nan
    return out


@dataclass(frozen=True)
class SctRows:
    """Aggregated rows in SCT's layout without pandas: ``columns`` in order, one dict per
    row (``None`` / NaN for an empty cell)."""

    columns: list[str]
    records: list[dict[str, object]]
    int_levels: bool = False  # VertLevel holds level numbers (per slice / per level)

    def to_frame(self) -> pd.DataFrame:
        """The rows as :func:`aggregate` returns them (VertLevel as Int64 per slice/level)."""
        import pandas as pd

        out = pd.DataFrame(self.records, columns=self.columns)
        if self.int_levels:
            out["VertLevel"] = out["VertLevel"].astype("Int64")
        return out


def aggregate(
    metrics: pd.DataFrame,
    levels: np.ndarray | None,
    *,
    perslice: bool = False,
    perlevel: bool = False,
    vert: tuple[int, int] | None = None,
    slices: np.ndarray | None = None,
    distance_pmj: np.ndarray | None = None,
    pmj_distance: float | None = None,
) -> pd.DataFrame:
    """Aggregate per-slice metrics as SCT 7.4's ``aggregate_per_slice_or_level`` does.

    ``metrics`` is indexed by slice (see :func:`drift.measure.morphometry.slice_metrics` or
    :func:`normalize_pam50`); ``levels`` gives each slice's level (0 = none). Returns rows
    with SCT's columns ``Slice (I->S)``, ``VertLevel``, ``DistancePMJ``, ``MEAN(m)``,
    ``STD(m)`` (population STD over finite slices) and ``SUM(length)``, ascending by slice:

    * ``perslice``: one row per slice, every slice of ``metrics`` (or of ``slices``, or of
      the levels in ``vert``), STD 0.0 where the slice has a value;
    * ``perlevel``: one row per level of ``vert`` (or, a cordwatch extension, per level
      present when ``vert`` is None); levels without slices are left out;
    * ``vert`` alone: one row over its levels' slices (``VertLevel`` = ``"2:5"``);
    * neither: one row over every slice.

    ``slices`` restricts to those slices (SCT's ``-z``); ``distance_pmj`` (per slice, mm)
    fills ``DistancePMJ`` per slice, ``pmj_distance`` fills it for an aggregated row.
    :func:`aggregate_rows` does the same on arrays.

    >>> import pandas as pd
    >>> m = pd.DataFrame({"area": [1.0, 3.0, 5.0], "length": [1.0, 1.0, 1.0]})
    >>> out = aggregate(m, np.array([2, 2, 3]), perlevel=True)
    >>> out["VertLevel"].tolist(), out["MEAN(area)"].tolist()
    ([2, 3], [2.0, 5.0])
    """
    metric_cols = [c for c in METRIC_COLUMNS if c in metrics.columns]
    values = {c: metrics[c].to_numpy(dtype=float) for c in metric_cols}
    rows = aggregate_rows(
        values,
        metrics.index.to_numpy(),
        levels,
        perslice=perslice,
        perlevel=perlevel,
        vert=vert,
        slices=slices,
        distance_pmj=distance_pmj,
        pmj_distance=pmj_distance,
    )
    return rows.to_frame()


def aggregate_rows(
    metrics: Mapping[str, np.ndarray],
    index: np.ndarray,
    levels: np.ndarray | None,
    *,
    perslice: bool = False,
    perlevel: bool = False,
    vert: tuple[int, int] | None = None,
    slices: np.ndarray | None = None,
    distance_pmj: np.ndarray | None = None,
    pmj_distance: float | None = None,
) -> SctRows:
    """:func:`aggregate` on arrays: ``metrics`` maps metric names to per-row arrays, ``index``
    holds each row's slice number.

    >>> out = aggregate_rows({"area": np.array([1.0, 3.0, 5.0])}, np.arange(3),
    ...                      np.array([2, 2, 3]), perlevel=True)
    >>> [(r["VertLevel"], r["MEAN(area)"]) for r in out.records]
    [(2, 2.0), (3, 5.0)]
    """
    metric_cols = [c for c in METRIC_COLUMNS if c in metrics]
    index = np.asarray(index)
    lv = np.zeros(len(index), dtype=int) if levels is None else np.asarray(levels).astype(int)
    selected = np.ones(len(index), dtype=bool)
    if slices is not None:
        selected &= np.isin(index, np.asarray(slices))
    pmj = None if distance_pmj is None else np.asarray(distance_pmj, dtype=float)
    groups: list[tuple[object, np.ndarray]] = []
    if vert is not None or (perlevel and levels is not None):
        wanted = list(range(vert[0], vert[1] + 1)) if vert is not None else _distinct(lv[lv > 0])
        in_levels = selected & np.isin(lv, wanted)
        if perlevel:
            groups = [(level, np.flatnonzero(selected & (lv == level))) for level in wanted]
            groups = [(k, g) for k, g in groups if len(g)]
        elif perslice:
            groups = [(None, np.array([i])) for i in np.flatnonzero(in_levels)]
        else:
            picked = np.flatnonzero(in_levels)
            groups = [(slice_list_text(wanted), picked)] if len(picked) else []
    elif perslice:
        groups = [(None, np.array([i])) for i in np.flatnonzero(selected)]
    else:
        picked = np.flatnonzero(selected)
        groups = [(None, picked)] if len(picked) else []
    groups.sort(key=lambda item: tuple(index[item[1]]))
    values = (
        np.column_stack([np.asarray(metrics[c], dtype=float) for c in metric_cols])
        if metric_cols
        else np.zeros((len(index), 0))
    )
    rows = []
    for key, where in groups:
        row: dict[str, object] = {"Slice (I->S)": slice_list_text(index[where])}
        if perslice and key is None:
            level = int(lv[where[0]])
            row["VertLevel"] = level if level > 0 else None
        else:
            row["VertLevel"] = int(key) if isinstance(key, (int, np.integer)) else key
        if pmj is not None and perslice:
            d = pmj[where[0]]
            row["DistancePMJ"] = round(float(d), 2) if np.isfinite(d) else None
        else:
            row["DistancePMJ"] = pmj_distance
        row.update(_stats(values[where], metric_cols))
        rows.append(row)
    columns = ["Slice (I->S)", "VertLevel", "DistancePMJ"]
    for m in metric_cols:
        columns += ["SUM(length)"] if m == "length" else [f"MEAN({m})", f"STD({m})"]
    return SctRows(columns, rows, int_levels=perslice or perlevel)


def normalize_pam50(metrics: pd.DataFrame, levels: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Interpolate per-slice metrics onto the PAM50 template's slices, as SCT 7.4's
    ``interpolate_metrics`` (``spinalcordtoolbox/metrics_to_PAM50.py``).

    Inner levels: the level's n subject slices are stretched linearly onto its m PAM50
    slices (endpoints matched). The superior-most and inferior-most levels are often cut by
    the field of view: they are resampled with the mean scale m/n of the inner levels,
    anchored at their inner boundary, and cropped to the level's PAM50 range (with fewer
    than three levels, every level is treated as inner; SCT stops with an error there).
    ``length`` is not interpolated (NaN, as SCT). Returns (metrics indexed by PAM50 slice,
    the PAM50 level per row) for every PAM50 slice of the levels present, ascending I->S;
    unfilled PAM50 slices hold NaN.
    """
    import pandas as pd

    metric_cols = [c for c in METRIC_COLUMNS if c in metrics.columns]
    values, index, pam_level = normalize_pam50_arrays(
        {c: metrics[c].to_numpy(dtype=float) for c in metric_cols}, levels
    )
    if not len(index):
        return pd.DataFrame(columns=metric_cols), pam_level
    out = pd.DataFrame(values, index=pd.Index(index, name="slice"), columns=metric_cols)
    return out, pam_level


def normalize_pam50_arrays(
    metrics: Mapping[str, np.ndarray], levels: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """:func:`normalize_pam50` on arrays (``metrics[m][z]`` = metric m of subject slice z):
    (metrics per PAM50 row, the PAM50 slice of each row, the PAM50 level of each row)."""
    ranges = pam50_ranges()
    levels = np.asarray(levels)
    metric_cols = [c for c in METRIC_COLUMNS if c in metrics]
    present = [v for v in _distinct(levels[levels > 0]) if v in ranges and v < 49]
    if not present:
        empty = np.array([], dtype=int)
        return {c: np.array([]) for c in metric_cols}, empty, empty
    subject = {lv: np.flatnonzero(levels == lv) for lv in present}
    pam = {lv: np.arange(ranges[lv][0], ranges[lv][1] + 1) for lv in present}
    inner = present[1:-1]
    scale = float(np.mean([len(pam[lv]) / len(subject[lv]) for lv in inner])) if inner else None
    index = np.sort(np.concatenate([pam[lv] for lv in present]))
    out = np.full((len(index), len(metric_cols)), np.nan)
    source = (
        np.column_stack([np.asarray(metrics[c], dtype=float) for c in metric_cols])
        if metric_cols
        else np.zeros((len(levels), 0))
    )
    for lv in present:
        z, slices_pam = subject[lv], pam[lv]
        n = len(z)
        outer = scale is not None and lv in (present[0], present[-1])
        if outer:
            assert scale is not None
            x_pam = np.linspace(0, scale * n, int(scale * n))
            x = np.linspace(0, scale * n, n)
        else:
            x_pam = np.arange(0, len(slices_pam), 1, dtype=float)
            x = np.linspace(0, len(slices_pam) - 1, n)
        inter = np.stack(
            [np.interp(x_pam, x, source[z, k]) for k in range(len(metric_cols))], 1
        ).reshape(len(x_pam), len(metric_cols))
        if outer:
            diff = len(inter) - len(slices_pam)
            if lv == present[0]:  # superior-most: anchored at its inferior (inner) end
                inter = inter[: len(inter) - max(diff, 0)]
                slices_pam = slices_pam[: len(slices_pam) - max(-diff, 0)]
            else:  # inferior-most: anchored at its superior end
                inter = inter[max(diff, 0) :]
                slices_pam = slices_pam[max(-diff, 0) :]
        out[np.searchsorted(index, slices_pam)] = inter
    values = {c: out[:, k] for k, c in enumerate(metric_cols)}
    if "length" in values:
        values["length"] = np.full(len(index), np.nan)
    pam_level = np.zeros(int(index.max()) + 1, dtype=int)
    for lv in present:
        pam_level[pam[lv]] = lv
    return values, index, pam_level[index]
