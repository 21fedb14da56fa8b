"""Per-slice shape metrics of a spinal-cord segmentation (pure: arrays in, arrays out).

Semantics follow Spinal Cord Toolbox 7.4's ``sct_process_segmentation`` (``compute_shape`` and
``_properties2d`` in ``spinalcordtoolbox/process_seg.py``, commit 3b3c5b2), so that numbers
compare with SCT's and the literature's. ``angle_correction="sct"`` reproduces SCT;
``"exact"`` (the default for new work) departs where SCT is measurably wrong on tilted cords:

* Orientation: the input is an RPI array (nibabel axcodes L, A, S); slice ``z`` is
  ``seg[:, :, z]``. Reorientation happens at the I/O edge (:mod:`drift.measure.nifti`).
* SCT normalises every slice to a maximum of 1 before measuring (``normalize=True``, the
  default): a soft mask multiplied by 0.5 gives the same area. Pass ``normalize=False`` to
  keep the model's absolute partial-volume values.
* A slice with no voxel above 1e-6 inside the cord's extent gets NaN for every metric (SCT:
  "the slice is empty"), so it is left out of means and of ``SUM(length)``.
* A slice whose mask (thresholded at 0.5) has two or more in-plane connected components
  (8-connectivity) gets NaN for every metric, as SCT's code intends (SCT 7.4 passes a binary
  image to ``regionprops``, which then sees one region whatever the connectivity: a
  documented departure).
* Centerline: the mean (x, y) of the non-zero voxels of each slice, smoothed by a cubic
  smoothing spline with SCT's factor ``s = (n / len(zref))**2 * smooth * pz / 3``
  (``smooth=30``, SCT's ``-centerline-smooth`` default); its derivative gives the tangent
  ``t = [dx/dz * px, dy/dz * py, pz]`` (mm). ``angle_AP = atan2(t_x, t_z)``,
  ``angle_RL = atan2(t_y, t_z)`` (degrees); 0 with ``none`` (SCT's ``-angle-corr 0``).
* Area = sum of the (normalised) voxel values x px x py x correction: ``exact`` = t_z/|t|
  (the true perpendicular area of a tilted cylinder), ``sct`` = cos(angle_AP) cos(angle_RL)
  (SCT's factor: -0.3 % at 25/11 degrees, -0.8 % at 20/21 degrees), ``none`` = 1. Length per
  slice = pz / correction.
* Shape metrics, as SCT: the slice is upsampled in-plane to 0.1 mm (bilinear, SCT's ``zoom``
  with ``grid_mode``) and thresholded at 0.5. SCT warps the slice by the cosines first; here
  the second moments are mapped instead (``sct``: scaled by the cosines, ``exact``: projected
  onto the plane perpendicular to the centerline, ``none``: as is). diameter_AP_ellipse and
  diameter_RL = 4 sqrt(eigenvalue) (``regionprops`` axis lengths); the major axis is the RL
  diameter when it lies within 45 degrees of the RL axis; ``orientation`` is
  ``regionprops.orientation`` in degrees (signed, in [-90, 90]); eccentricity =
  sqrt(1 - minor²/major²).
* ``diameter_AP`` (SCT PR #4958): the slice rotated by the orientation about its centroid,
  the AP profile averaged over a 3 mm RL band through the centroid and summed (soft values):
  ``length_posterior`` before the centroid's column, ``length_anterior`` from it on.
* Solidity: pixel count of the thresholded slice / pixel count of its convex hull as
  ``skimage.morphology.convex_hull_image`` draws it (hull of the pixels' edge midpoints,
  pixel centres inside or on it), the hull taken as the polygon of 64 support lines.

Everything is vectorised over slices (bincount moments, one labelling pass, one
``map_coordinates`` call per chunk); the only Python loops run over chunks of slices (the
upsampled shape metrics: 128 slices, each chunk cropped to its own bounding box, so the cost
is linear in the number of slices) and the 64 hull directions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

# scipy.interpolate, scipy.ndimage and pandas are imported where they are used: importing
# this module (for its constants, correction_factors, upsample_inplane) costs numpy only.

AngleCorrection = Literal["exact", "sct", "none"]
ANGLE_CORRECTIONS: tuple[str, ...] = ("exact", "sct", "none")

#: Columns of :func:`slice_metrics`, in SCT 7.4's order (``KEYS_DEFAULT``).
METRIC_COLUMNS: tuple[str, ...] = (
    "area",
    "angle_AP",
    "angle_RL",
    "diameter_AP",
    "diameter_AP_ellipse",
    "diameter_RL",
    "length_anterior",
    "length_posterior",
    "eccentricity",
    "orientation",
    "solidity",
    "length",
)
SHAPE_COLUMNS: tuple[str, ...] = (
    "diameter_AP",
    "diameter_AP_ellipse",
    "diameter_RL",
    "length_anterior",
    "length_posterior",
    "eccentricity",
    "orientation",
    "solidity",
)
NEAR_ZERO = 1e-6
SMOOTH = 30.0  # SCT's -centerline-smooth default (compute_shape)
SMOOTH_LABELS = 20.0  # ParamCenterline()'s default, used by SCT's disc projection
PIXEL_MM = 0.1  # SCT's in-plane resampling before the shape metrics ("pr")
AP_BAND = 30  # SCT: the AP profile is averaged over 30 rows of 0.1 mm (3 mm RL)
UPSAMPLE = 5  # default factor of upsample_inplane (0.5 mm -> 0.1 mm)
_HULL_DIRECTIONS = 64
_CHUNK = 64  # slices per chunk of the measured-AP sampling
_SHAPE_CHUNK = 128  # slices per chunk of the shape metrics (upsampled in-plane)


def correction_factors(tangent: np.ndarray, mode: AngleCorrection = "exact") -> np.ndarray:
    """Area correction factor per slice from tangent vectors ``(n, 3)`` in mm.

    >>> t = np.array([[np.tan(np.radians(30)), 0.0, 1.0]])
    >>> float(correction_factors(t, "exact")[0]) == float(correction_factors(t, "sct")[0])
    True
    >>> t = np.array([[np.tan(np.radians(20)), np.tan(np.radians(21)), 1.0]])
    >>> round(float(correction_factors(t, "sct")[0] / correction_factors(t, "exact")[0]), 4)
    0.9925
    """
    tangent = np.asarray(tangent, dtype=float)
    if mode == "exact":
        return tangent[:, 2] / np.linalg.norm(tangent, axis=1)
    if mode == "sct":
        angle_ap = np.arctan2(tangent[:, 0], tangent[:, 2])
        angle_rl = np.arctan2(tangent[:, 1], tangent[:, 2])
        return np.cos(angle_ap) * np.cos(angle_rl)
    if mode == "none":
        return np.ones(len(tangent))
    raise ValueError(f"angle correction must be one of {ANGLE_CORRECTIONS}, not {mode!r}")


#: More cord slices than this: scipy's compiled FITPACK (the port's dense QR per knot round
#: grows as slices x knots^2; 4x PAM50's cord: 0.7 s, scipy ms after its 0.2 s import).
LONG_CENTERLINE = 2000


def smoothed_centerline(
    z: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    zref: np.ndarray,
    pz: float,
    smooth: float,
    *,
    fitpack: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SCT's ``bspline`` centerline fit: (x, y, dx/dz, dy/dz) at slices ``zref`` (voxels).

    ``z``: slices holding cord, ``cx``/``cy``: their centre of mass in voxels. FITPACK's
    smoothing spline (``splrep``/``splev``, as SCT calls them), computed by
    :mod:`drift.measure.spline` (numpy, same values to ~1e-12 voxel); ``fitpack=True`` runs
    FITPACK's ``curfit``/``splev`` to the last bit (pure Python, slower), for callers that
    truncate the values to voxels, where SCT's output depends on the sign of FITPACK's own
    rounding (a centerline at exactly 70.0 comes out 69.99999999999977 there: 69).
    """
    n = len(z)
    if n < 2:
        x0 = np.full(len(zref), cx[0] if n else 0.0)
        y0 = np.full(len(zref), cy[0] if n else 0.0)
        return x0, y0, np.zeros(len(zref)), np.zeros(len(zref))
    degree = 3 if n > 3 else 1
    s = (n / len(zref)) ** 2 * smooth * pz / 3
    if fitpack:  # FITPACK's own bits (drift.measure.spline's statement-by-statement port)
        from drift.measure.spline import fitpack_spline, fitpack_values, spline_values

        fx, fy = fitpack_spline(z, cx, s, degree), fitpack_spline(z, cy, s, degree)
        x, y = fitpack_values(*fx, zref), fitpack_values(*fy, zref)
        return x, y, spline_values(*fx, zref, der=1), spline_values(*fy, zref, der=1)
    if n > LONG_CENTERLINE:  # compiled FITPACK: the port's dense QR grows as n * knots^2
        from scipy import interpolate

        tx, ty = (interpolate.splrep(z, c, s=s, k=degree) for c in (cx, cy))
        x, y, dx, dy = (interpolate.splev(zref, f, der=d) for d in (0, 1) for f in (tx, ty))
        return x, y, dx, dy
    from drift.measure.spline import smoothing_spline, spline_values

    tck_x = smoothing_spline(z, cx, s, degree)
    tck_y = smoothing_spline(z, cy, s, degree)
    return (
        spline_values(*tck_x, zref),
        spline_values(*tck_y, zref),
        spline_values(*tck_x, zref, der=1),
        spline_values(*tck_y, zref, der=1),
    )


def centerline_tangents(
    z: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    zref: np.ndarray,
    spacing: tuple[float, ...],
    smooth: float = SMOOTH,
) -> np.ndarray:
    """Tangent vectors (mm) at slices ``zref`` of the SCT-smoothed centerline."""
    px, py, pz = spacing
    _, _, dx, dy = smoothed_centerline(z, cx, cy, zref, pz, smooth)
    return np.column_stack([dx * px, dy * py, np.full(len(zref), pz)])


def voxel_centerline(
    seg: np.ndarray, pz: float, smooth: float = SMOOTH_LABELS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SCT's ``get_centerline`` of a segmentation: (zref, x, y) in voxels, one point per slice
    from the lowest to the highest slice holding any non-zero voxel."""
    mask = np.asarray(seg) != 0  # axis sums: fast in any memory order (F from NIfTI)
    per_x, per_y = mask.sum(axis=1), mask.sum(axis=0)  # (nx, nz), (ny, nz)
    counts = per_x.sum(axis=0)
    if not counts.any():
        raise ValueError("the segmentation is empty: no centerline")
    z = np.flatnonzero(counts)
    cx = (np.arange(mask.shape[0], dtype=float) @ per_x)[z] / counts[z]
    cy = (np.arange(mask.shape[1], dtype=float) @ per_y)[z] / counts[z]
    zref = np.arange(z[0], z[-1] + 1)
    # FITPACK's bits: the disc projection (drift.measure.levels) truncates these values.
    x, y, _, _ = smoothed_centerline(z * 1.0, cx, cy, zref * 1.0, pz, smooth, fitpack=True)
    return zref, np.asarray(x), np.asarray(y)


def _perpendicular_maps(tangent: np.ndarray, mode: AngleCorrection) -> np.ndarray:
    """Per slice, the 2x2 linear map from slice-plane mm to the measuring plane."""
    n = len(tangent)
    if mode == "none":
        return np.broadcast_to(np.eye(2), (n, 2, 2)).copy()
    if mode == "sct":
        angle_ap = np.arctan2(tangent[:, 0], tangent[:, 2])
        angle_rl = np.arctan2(tangent[:, 1], tangent[:, 2])
        maps = np.zeros((n, 2, 2))
        maps[:, 0, 0] = np.cos(angle_ap)
        maps[:, 1, 1] = np.cos(angle_rl)
        return maps
    # exact: orthogonal projection onto the plane perpendicular to u, expressed in the basis
    # e1 = (x - (x.u)u)/|.|, e2 = u x e1 of that plane.
    u = tangent / np.linalg.norm(tangent, axis=1, keepdims=True)
    ex = np.array([1.0, 0.0, 0.0])
    e1 = ex - u[:, :1] * u
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(u, e1)
    # A point (x, y, 0) of the slice projects to coordinates (p.e1, p.e2).
    return np.stack([e1[:, :2], e2[:, :2]], axis=1)


def upsample_inplane(
    volume: np.ndarray, factor: int = UPSAMPLE, factor_y: int | None = None
) -> np.ndarray:
    """Bilinear in-plane upsampling by integer factors, zero outside the grid.

    Same values as ``scipy.ndimage.zoom(v, (fx, fy, 1), order=1, grid_mode=True,
    mode="grid-constant")`` (what SCT's ``_properties2d`` does), several times faster: each
    output sample sits at offset (j + 1/2)/f - 1/2 of an input voxel, so it is a fixed blend
    of two neighbours.

    >>> upsample_inplane(np.array([[[1.0]]]), 3)[:, :, 0].round(3).tolist()
    [[0.444, 0.667, 0.444], [0.667, 1.0, 0.667], [0.444, 0.667, 0.444]]
    """

    fy = factor if factor_y is None else factor_y
    return _along(_along(volume, 0, factor), 1, fy)


def _along(v: np.ndarray, axis: int, f: int) -> np.ndarray:
    """Bilinear upsampling of ``v`` by ``f`` along ``axis`` (grid mode, zero outside): output
    sample ``k f + j`` blends input ``k`` with its lower or upper neighbour, written in place
    into every ``f``-th element of one output array."""
    pad = [(0, 0)] * v.ndim
    pad[axis] = (1, 1)
    padded = np.pad(v, pad)
    n = v.shape[axis]

    def part(lo: int) -> np.ndarray:
        index: list[slice] = [slice(None)] * v.ndim
        index[axis] = slice(lo, lo + n)
        return padded[tuple(index)]

    lower, centre, upper = part(0), part(1), part(2)
    shape = list(v.shape)
    shape[axis] *= f
    out = np.empty(shape, np.result_type(v, 0.5))
    for j in range(f):
        w = (j + 0.5) / f - 0.5
        index: list[slice] = [slice(None)] * v.ndim
        index[axis] = slice(j, None, f)
        target = out[tuple(index)]
        np.multiply(centre, 1 - abs(w), out=target)
        target += (upper if w > 0 else lower) * abs(w)
    return out


def _upsample_to_pixel(slices: np.ndarray, px: float, py: float) -> tuple[np.ndarray, float, float]:
    """Upsample y-major slices (n, ny, nx) in-plane to SCT's 0.1 mm; returns (upsampled
    slices (n, ny', nx'), effective fx, effective fy). Along x first, as upsample_inplane
    (the same values): on the native rows, where the interleaving along the last axis is cheap."""
    fx, fy = px / PIXEL_MM, py / PIXEL_MM
    if abs(fx - round(fx)) < 1e-6 and abs(fy - round(fy)) < 1e-6 and fx >= 1 and fy >= 1:
        up = _along(_along(slices, 2, round(fx)), 1, round(fy))
        return up, float(round(fx)), float(round(fy))
    from scipy import ndimage

    volume = slices.transpose(2, 1, 0)
    up = ndimage.zoom(volume, (fx, fy, 1), order=1, mode="grid-constant", grid_mode=True)
    fx_up, fy_up = up.shape[0] / volume.shape[0], up.shape[1] / volume.shape[1]
    return np.ascontiguousarray(up.transpose(2, 1, 0)), fx_up, fy_up


def _component_counts(binary: np.ndarray) -> np.ndarray:
    """Number of in-plane (8-connected) components of every slice (``scipy.ndimage.label``
    with a 3x3 in-plane structure, counted per slice), without scipy.

    A slice is one component when each of its rows (fixed x) holds one run of pixels along
    y, the rows holding pixels are consecutive and each row's run touches the next one's
    (8-connectivity: the runs overlap or meet diagonally): a vectorised test that almost
    every cord slice passes. The other slices (several runs in a row: a hole, a fork, a
    second blob) are labelled exactly, run by run (:func:`_slice_component_count`)."""
    nx, ny, nz = binary.shape
    counts = np.zeros(nz, dtype=int)
    if nx == 0 or ny == 0:
        return counts
    starts = binary.copy()
    starts[:, 1:, :] &= ~binary[:, :-1, :]
    runs = starts.sum(axis=1)  # (nx, nz): runs per row
    occupied = runs > 0
    n_rows = occupied.sum(axis=0)
    first_row = np.argmax(occupied, axis=0)
    last_row = nx - 1 - np.argmax(occupied[::-1, :], axis=0)
    first = np.argmax(binary, axis=1)  # (nx, nz): first pixel of each row's run
    last = ny - 1 - np.argmax(binary[:, ::-1, :], axis=1)
    both = occupied[:-1] & occupied[1:]
    touch = (first[1:] <= last[:-1] + 1) & (first[:-1] <= last[1:] + 1)
    simple = (
        (runs <= 1).all(axis=0) & (last_row - first_row + 1 == n_rows) & (~both | touch).all(axis=0)
    )
    counts[n_rows > 0] = 1
    for z in np.flatnonzero(~simple & (n_rows > 0)):
        counts[z] = _slice_component_count(binary[:, :, z])
    return counts


def _slice_component_count(mask: np.ndarray) -> int:
    """8-connected components of one 2D mask: runs along axis 1, joined row to row when
    they overlap or touch diagonally (union-find over the runs)."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    parent: list[int] = []

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[tuple[int, int, int]] = []
    for row in range(mask.shape[0]):
        begins = np.flatnonzero(step[row] == 1).tolist()
        ends = (np.flatnonzero(step[row] == -1) - 1).tolist()
        current = []
        for lo, hi in zip(begins, ends, strict=True):
            index = len(parent)
            parent.append(index)
            for plo, phi, pindex in previous:
                if lo <= phi + 1 and plo <= hi + 1:
                    a, b = root(index), root(pindex)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
            current.append((lo, hi, index))
        previous = current
    return sum(1 for i in range(len(parent)) if root(i) == i)


def _row_extremes(binary: np.ndarray, per_x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per row (fixed x) and slice of y-major ``binary`` (n, ny, nx), from its pixel counts
    ``per_x`` (nx, n): whether the row holds a pixel, its first and last pixel (y index)."""
    ny = binary.shape[1]
    any_row = per_x > 0
    first = np.argmax(binary, axis=1).T.astype(float)
    last = (ny - 1 - np.argmax(binary[:, ::-1, :], axis=1)).T.astype(float)
    return any_row, first, last


def _bilinear(
    padded: np.ndarray, i: np.ndarray, j: np.ndarray, slices: np.ndarray, edge_zero: bool = False
) -> np.ndarray:
    """Bilinear samples of slice ``slices[k]`` at (i, j) (shape (len(slices), ...)), zero
    outside the grid's sample range (``map_coordinates(order=1, mode="constant")``'s values).

    ``padded``: the slices, y-major (n, ny + 2, nx + 2: ``padded[k, j + 1, i + 1]``), with
    one zero row and column on each side, so that the four neighbours of a clipped point are
    always in the array: one index computation and four gathers, no per-corner bounds test,
    no float64 copy.
    ``edge_zero``: the outermost rows and columns of every slice are zero, so a clipped
    point outside the grid reads 0 anyway and the inside test is skipped."""
    _, nyp, nxp = padded.shape
    nx, ny = nxp - 2, nyp - 2
    flat = padded.reshape(-1)
    inside = None if edge_zero else (i >= 0) & (i <= nx - 1) & (j >= 0) & (j <= ny - 1)
    # Indices into ``padded`` (shifted by its border): non-negative, so truncation floors.
    ti = i + 1.0
    tj = j + 1.0
    np.clip(ti, 0.0, float(nx), out=ti)
    np.clip(tj, 0.0, float(ny), out=tj)
    i0 = ti.astype(np.int64)
    index = tj.astype(np.int64)
    fi = np.subtract(ti, i0, out=ti).astype(np.float32)
    fj = np.subtract(tj, index, out=tj).astype(np.float32)
    index *= nxp
    index += i0
    index += (slices.astype(np.int64) * (nxp * nyp)).reshape((-1,) + (1,) * (i.ndim - 1))
    # The four neighbours (i0 or i0 + 1, j0 or j0 + 1): the same index into views of ``flat``
    # shifted by nxp (j + 1), 1 (i + 1) and nxp + 1.
    low = np.take(flat, index)
    v01 = np.take(flat[nxp:], index)
    high = np.take(flat[1:], index)
    v11 = np.take(flat[nxp + 1 :], index)
    v01 -= low  # low + (v01 - low) * fj, in place
    v01 *= fj
    low += v01
    v11 -= high
    v11 *= fj
    high += v11
    high -= low  # low + (high - low) * fi
    high *= fi
    high += low
    if inside is None:
        return high
    # Points outside the grid's sample range get 0, as map_coordinates' "constant" mode.
    return np.where(inside, high, np.float32(0.0))


def _hull_pixel_counts(any_row: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Per slice, the pixel count of skimage's ``convex_hull_image`` of the mask.

    skimage takes the hull of the pixels' edge midpoints (a diamond per pixel) and keeps the
    pixels whose centre lies inside or on it. Here the hull is the polygon of 64 support
    lines (only the first and last pixel of every row can be extreme), and each row's pixel
    centres between its lower and upper boundary are counted, vectorised over slices.
    """
    nx, nz = any_row.shape
    x = np.arange(nx, dtype=float)[:, None]
    theta = np.linspace(0.0, 2 * np.pi, _HULL_DIRECTIONS, endpoint=False)
    ylo = np.full((nx, nz), -np.inf)
    yhi = np.full((nx, nz), np.inf)
    xlo = np.full(nz, -np.inf)
    xhi = np.full(nz, np.inf)
    # A row's extreme pixel along (c, s) is its last one for s > 0, its first for s < 0; rows
    # without pixels are set to -inf / +inf there, so that they never support a line.
    last_or_none = np.where(any_row, last, -np.inf)
    first_or_none = np.where(any_row, first, np.inf)
    buf = np.empty((nx, nz))
    for t in theta:
        c, s = np.cos(t), np.sin(t)
        if abs(c) < 1e-12:
            c = 0.0
        if abs(s) < 1e-12:
            s = 0.0
        xc = x * c
        pad = 0.5 * max(abs(c), abs(s))
        if s == 0.0:
            support = np.where(any_row, 0.0 + xc, -np.inf).max(axis=0) + pad
            if c > 0:
                xhi = np.minimum(xhi, support / c)
            else:
                xlo = np.maximum(xlo, support / c)
            continue
        np.multiply(last_or_none if s > 0 else first_or_none, s, out=buf)
        buf += xc
        support = buf.max(axis=0) + pad
        np.subtract(support[None, :], xc, out=buf)
        buf /= s
        if s > 0:
            np.minimum(yhi, buf, out=yhi)
        else:
            np.maximum(ylo, buf, out=ylo)
    inside_x = (x >= xlo[None, :] - 1e-9) & (x <= xhi[None, :] + 1e-9)
    with np.errstate(invalid="ignore"):
        counts = np.floor(yhi + 1e-9) - np.ceil(ylo - 1e-9) + 1
    counts = np.where(inside_x & np.isfinite(counts), np.clip(counts, 0, None), 0)
    return counts.sum(axis=0)


def _measured_ap(
    up: np.ndarray,
    centre: np.ndarray,
    angle: np.ndarray,
    maps: np.ndarray,
    grid: tuple[float, float, float, float],
    extent: np.ndarray,
    refine: bool = True,
    offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """SCT 7.4's measured AP extent, vectorised: (length_posterior, length_anterior) in mm.

    ``up``: upsampled soft slices, y-major (n, ny, nx); ``centre``: centroid of the
    thresholded slice (n, 2) in native mm; ``angle``: SCT's rotation (-regionprops orientation,
    radians) in the measuring plane; ``maps``: slice plane -> measuring plane; ``grid``: (x
    origin, y origin) of ``up`` in native mm and its pixel sizes; ``extent``: each slice's
    half-extents (mm) about the centroid in the slice plane. SCT rotates the warped slice about
    the centroid, averages the rows of a 3 mm RL band through it and sums the profile on each
    side of the centroid's column; here the same rotated grid points are mapped back to the
    unwarped slice and read bilinearly. ``offsets`` (n, 2): where SCT's own crop of each slice
    starts in ``up``'s pixels; SCT rounds the centroid (half to even) in that frame, so a
    centroid on a half pixel (symmetric cords) rounds the same way as in SCT.
    """
    ox, oy, ux, uy = grid
    n = len(angle)
    warped = np.einsum("nij,nj->ni", maps, centre)  # centroid in the measuring plane (mm)
    # Centroid in pixel units of SCT's 0.1 mm grid (pixel centres at (k + 1/2) p, origin at
    # the slice's first voxel corner): fixes where the rounded band and split column fall.
    y0 = (warped[:, 0] - ox) / ux - 0.5
    x0 = (warped[:, 1] - oy) / uy - 0.5
    inv = np.linalg.inv(maps)
    sin, cos = np.sin(angle), np.cos(angle)
    # Half-widths (pixels) of the rotated frame that can hold cord: along the AP profile (d)
    # and across it (e), bounded through the map from each slice's box half-extents (mm).
    d = np.column_stack([sin, cos])
    e = np.column_stack([cos, -sin])
    step = min(ux, uy)
    reach_d = (np.abs(np.einsum("nij,ni->nj", maps, d)) * extent).sum(axis=1)
    reach_e = (np.abs(np.einsum("nij,ni->nj", maps, e)) * extent).sum(axis=1)
    radius = int(np.ceil(reach_d.max() / step)) + 3
    radius_rl = int(np.ceil(reach_e.max() / step)) + 3
    by_slice = np.zeros((n, up.shape[1] + 2, up.shape[2] + 2), np.float32)
    by_slice[:, 1:-1, 1:-1] = up
    edge = (by_slice[:, 1], by_slice[:, -2], by_slice[:, :, 1], by_slice[:, :, -2])
    edge_zero = not any(side.any() for side in edge)
    # Rotated frame (xc = AP offset, yc = RL offset, pixels) -> measuring plane (mm), as
    # SCT's _rotate_segmentation_by_angle, then back to the slice plane through ``inv`` and
    # to pixel indices of ``up``: an affine map per slice, i = a0 + xc ai + yc bi (j alike).
    m00, m01, m10, m11 = inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 0], inv[:, 1, 1]
    ai = (m00 * sin * ux + m01 * cos * uy) / ux
    bi = (m00 * cos * ux - m01 * sin * uy) / ux
    aj = (m10 * sin * ux + m11 * cos * uy) / uy
    bj = (m10 * cos * ux - m11 * sin * uy) / uy
    i0 = (centre[:, 0] - ox) / ux - 0.5 - x0 * ai - y0 * bi
    j0 = (centre[:, 1] - oy) / uy - 0.5 - x0 * aj - y0 * bj

    def rotated(which: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """SCT's rotated slice at integer (rows, cols) of its grid: (len(which), r, c),
        computed in chunks of slices (memory and time linear in the number of slices)."""
        out = np.empty((len(which), rows.shape[1], cols.shape[1]), np.float32)
        for start in range(0, len(which), _CHUNK):
            w = which[start : start + _CHUNK]
            r = rows[start : start + _CHUNK, :, None]
            c = cols[start : start + _CHUNK, None, :]
            ii = (i0[w, None, None] + c * ai[w, None, None]) + r * bi[w, None, None]
            jj = (j0[w, None, None] + c * aj[w, None, None]) + r * bj[w, None, None]
            out[start : start + _CHUNK] = _bilinear(by_slice, ii, jj, w, edge_zero)
        return out

    # SCT rounds the centroid of the rotated, thresholded slice; it differs from the
    # centroid (y0, x0) by discretisation only (< 0.3 pixel on the SCT t2 subject), so with
    # ``refine`` (the ``sct`` mode) it is recomputed where rounding is ambiguous.
    rl0, ap0 = y0.copy(), x0.copy()
    off_rl, off_ap = (np.zeros(n), np.zeros(n)) if offsets is None else offsets.T.astype(float)

    def sct_round(value: np.ndarray, offset: np.ndarray) -> np.ndarray:
        return np.round(value - offset) + offset

    near = (np.abs(y0 % 1 - 0.5) < 0.3) | (np.abs(x0 % 1 - 0.5) < 0.3)
    if refine and near.any():
        which = np.flatnonzero(near)
        rows = sct_round(y0, off_rl)[which, None] + np.arange(-radius_rl, radius_rl)[None, :]
        cols = sct_round(x0, off_ap)[which, None] + np.arange(-radius, radius)[None, :]
        binary = rotated(which, rows, cols) > 0.5
        count = binary.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            r_mean = (binary.sum(axis=2) * rows).sum(axis=1) / count
            c_mean = (binary.sum(axis=1) * cols).sum(axis=1) / count
        rl0[which] = np.where(count > 0, r_mean, y0[which])
        ap0[which] = np.where(count > 0, c_mean, x0[which])
    everything = np.arange(n)
    band = sct_round(rl0, off_rl)[:, None] - AP_BAND // 2 + np.arange(AP_BAND)[None, :]
    cols = sct_round(ap0, off_ap)[:, None] + np.arange(-radius, radius)[None, :]  # (n, 2r)
    profile = rotated(everything, band, cols).mean(axis=1)
    posterior = profile[:, :radius].sum(axis=1) * uy
    anterior = profile[:, radius:].sum(axis=1) * uy
    return posterior, anterior


def slice_metrics(
    seg: np.ndarray,
    spacing: tuple[float, float, float],
    angle_correction: AngleCorrection = "exact",
    normalize: bool = True,
    smooth: float = SMOOTH,
) -> pd.DataFrame:
    """Shape metrics of every axial slice of an RPI segmentation (binary or soft, in [0, 1]).

    Returns a DataFrame indexed by slice number (0..nz-1) with :data:`METRIC_COLUMNS` plus
    ``n_components``; slices without cord, or with two or more components, hold NaN.
    :func:`slice_metric_arrays` gives the same columns as numpy arrays (no pandas).

    >>> seg = np.zeros((12, 9, 5)); seg[2:10, 3:6, :] = 1.0
    >>> m = slice_metrics(seg, (0.5, 0.5, 2.0))
    >>> m.loc[2, ["area", "angle_AP", "length", "diameter_AP"]].round(6).tolist()
    [6.0, 0.0, 2.0, 1.5]
    """
    import pandas as pd

    columns = slice_metric_arrays(seg, spacing, angle_correction, normalize, smooth)
    n_comp = columns.pop("n_components")
    frame = pd.DataFrame(columns, index=pd.RangeIndex(len(n_comp), name="slice"))
    frame["n_components"] = n_comp
    return frame


def slice_metric_arrays(
    seg: np.ndarray,
    spacing: tuple[float, float, float],
    angle_correction: AngleCorrection = "exact",
    normalize: bool = True,
    smooth: float = SMOOTH,
) -> dict[str, np.ndarray]:
    """:func:`slice_metrics` as ``{column: array over slices 0..nz-1}`` (the metrics of
    :data:`METRIC_COLUMNS` and ``n_components``)."""
    if angle_correction not in ANGLE_CORRECTIONS:
        raise ValueError(f"angle correction must be one of {ANGLE_CORRECTIONS}")
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {seg.shape}")
    px, py, pz = (float(v) for v in spacing)
    nz = seg.shape[2]
    columns: dict[str, np.ndarray] = {c: np.full(nz, np.nan) for c in METRIC_COLUMNS}
    n_comp = np.zeros(nz, dtype=int)

    # An integer value is above NEAR_ZERO when it is above 0 (a cheaper comparison).
    present = np.asarray(seg > 0 if seg.dtype.kind in "biu" else seg > NEAR_ZERO)
    # Crop to the cord's bounding box in x, y plus one empty voxel (the bilinear ramp of the
    # edge voxels): everything below scales with the cropped size. One pass over the volume
    # (along z, its outermost axis in a NIfTI's memory order), then over one plane.
    in_plane = np.asarray(present.any(axis=2))
    if not in_plane.any():
        return {**columns, "n_components": n_comp}
    xs = np.flatnonzero(in_plane.any(axis=1))
    ys = np.flatnonzero(in_plane.any(axis=0))
    x0, y0 = xs[0] - 1, ys[0] - 1
    sub = np.zeros((xs[-1] - xs[0] + 3, ys[-1] - ys[0] + 3, nz), np.float32)
    sub[1:-1, 1:-1, :] = seg[xs[0] : xs[-1] + 1, ys[0] : ys[-1] + 1, :]
    present = sub > NEAR_ZERO

    slice_max = sub.max(axis=(0, 1))
    if normalize:
        scale = np.divide(1.0, slice_max, out=np.zeros(nz, np.float32), where=slice_max > 0)
        sub = sub * scale[None, None, :]

    # Components on the native grid.
    n_comp = _component_counts(sub > 0.5)

    # Centerline from the unweighted centre of the non-zero voxels, per slice. Slices with
    # several components are left out of the fit: a stray blob would tilt the tangent (and so
    # the area) of the clean slices around it.
    ix, iy, iz = np.nonzero(present)
    counts = np.bincount(iz, minlength=nz)
    z_all = np.flatnonzero(counts)
    z_cord = z_all[n_comp[z_all] < 2] if np.any(n_comp[z_all] < 2) else z_all
    cx = np.bincount(iz, weights=ix, minlength=nz)[z_cord] / counts[z_cord] + x0
    cy = np.bincount(iz, weights=iy, minlength=nz)[z_cord] / counts[z_cord] + y0
    # Only slices holding cord are measured; empty slices inside its extent stay NaN (SCT).
    rows = z_all
    zref = np.arange(z_all[0], z_all[-1] + 1)
    tangent = centerline_tangents(
        z_cord.astype(float), cx, cy, zref.astype(float), (px, py, pz), smooth
    )[rows - z_all[0]]
    if angle_correction == "none":
        tangent[:, :2] = 0.0  # SCT's -angle-corr 0: angles 0, no correction
    correction = correction_factors(tangent, angle_correction)
    columns["angle_AP"][rows] = np.degrees(np.arctan2(tangent[:, 0], tangent[:, 2]))
    columns["angle_RL"][rows] = np.degrees(np.arctan2(tangent[:, 1], tangent[:, 2]))
    columns["area"][rows] = (
        sub[:, :, rows].sum(axis=(0, 1), dtype=np.float64) * px * py * correction
    )
    columns["length"][rows] = pz / correction

    # The shape metrics work on the 0.1 mm upsampled slices: done in chunks of slices, each
    # cropped to its own bounding box (a curved cord's whole-volume box is much wider than
    # any stretch of it), so time and memory grow linearly with the number of slices.
    for start in range(0, len(rows), _SHAPE_CHUNK):
        part = slice(start, start + _SHAPE_CHUNK)
        chunk = sub[:, :, rows[part]]
        bx = np.flatnonzero(present[:, :, rows[part]].any(axis=(1, 2)))
        by = np.flatnonzero(present[:, :, rows[part]].any(axis=(0, 2)))
        # One empty voxel kept on each side (sub has one around the cord).
        cx0, cy0 = bx[0] - 1, by[0] - 1
        chunk = chunk[cx0 : bx[-1] + 2, cy0 : by[-1] + 2]
        _shape_metrics(
            columns,
            chunk,
            rows[part],
            tangent[part],
            (px, py),
            (x0 + cx0, y0 + cy0),
            angle_correction,
        )

    # Several pieces on a slice: no metric at all.
    for c in METRIC_COLUMNS:
        columns[c][n_comp >= 2] = np.nan
    return {**columns, "n_components": n_comp}


def _warp_like_sct(
    cord: np.ndarray, tangent: np.ndarray, origin: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """SCT's angle correction of the slices: ``out(r, c) = in(r / cos(angle_AP), c /
    cos(angle_RL))`` in full-slice voxel indices, bilinear, zero outside (skimage ``warp``
    with ``AffineTransform(scale=(cos RL, cos AP)).inverse``), then each slice normalised to
    [0, 1] again. Returns the warped slices in a box with the same origin for every slice."""
    nxb, nyb, n = cord.shape
    cos_ap = np.cos(np.arctan2(tangent[:, 0], tangent[:, 2]))
    cos_rl = np.cos(np.arctan2(tangent[:, 1], tangent[:, 2]))
    x0, y0 = origin
    # The warped cord lies in [cos * x0, x0 + nxb) (cos <= 1): one box holds every slice.
    wx0 = int(np.floor(cos_ap.min() * x0)) - 1
    wy0 = int(np.floor(cos_rl.min() * y0)) - 1
    wx = np.arange(wx0, x0 + nxb + 1, dtype=float)
    wy = np.arange(wy0, y0 + nyb + 1, dtype=float)
    src_x = wx[:, None] / cos_ap[None, :] - x0  # (nwx, n) in box indices
    src_y = wy[:, None] / cos_rl[None, :] - y0
    shape = (len(wx), len(wy), n)
    coords = np.stack(
        [
            np.broadcast_to(src_x[:, None, :], shape).ravel(),
            np.broadcast_to(src_y[None, :, :], shape).ravel(),
            np.broadcast_to(np.arange(n, dtype=float)[None, None, :], shape).ravel(),
        ]
    )
    from scipy import ndimage

    warped = ndimage.map_coordinates(cord, coords, order=1, mode="grid-constant", cval=0.0)
    warped = warped.reshape(shape).astype(np.float32)
    lo, hi = warped.min(axis=(0, 1)), warped.max(axis=(0, 1))
    scale = np.divide(1.0, hi - lo, out=np.zeros(n, np.float32), where=hi > lo)
    return (warped - lo[None, None, :]) * scale[None, None, :], (wx0, wy0)


def _shape_metrics(
    columns: dict[str, np.ndarray],
    cord: np.ndarray,
    rows: np.ndarray,
    tangent: np.ndarray,
    pixel: tuple[float, float],
    origin: tuple[int, int],
    mode: AngleCorrection,
) -> None:
    """Fill the shape columns of ``rows`` from the cropped slices ``cord`` (nx, ny, n)."""
    px, py = pixel
    mode_in = mode
    if mode == "sct":
        # SCT warps each slice by the cosines (skimage ``warp``, bilinear, about voxel (0, 0))
        # and measures the warped slice; after that the measuring plane is the slice plane.
        cord, origin = _warp_like_sct(cord, tangent, origin)
        mode = "none"
        tangent = np.column_stack([np.zeros((len(tangent), 2)), tangent[:, 2]])
    # Slices y-major (n, ny, nx) from here on, transposed at the native resolution (cheap):
    # each upsampled slice is contiguous for the moments and the bilinear reads of the AP
    # profile, and the sums over y run in the same order as on the (nx, ny, n) array.
    up, fx, fy = _upsample_to_pixel(np.ascontiguousarray(cord.transpose(2, 1, 0)), px, py)
    # Where SCT's crop of each slice starts (its bounding box above 1e-6, less 3 voxels,
    # clipped at the image edge), in pixels of ``up`` (integer factors only).
    present = cord > NEAR_ZERO
    first_x = np.argmax(present.any(axis=1), axis=0)
    first_y = np.argmax(present.any(axis=0), axis=0)
    sct_origin = np.column_stack(
        [np.maximum(origin[0] + first_x - 3, 0), np.maximum(origin[1] + first_y - 3, 0)]
    )
    integer = fx == round(fx) and fy == round(fy)
    offsets = (sct_origin - np.asarray(origin)) * np.array([fx, fy]) if integer else None
    ux, uy = px / fx, py / fy
    binary = up > 0.5
    # Upsampled pixel centres in native mm, origin at the centre of the slice's voxel (0, 0).
    ox, oy = (origin[0] - 0.5) * px, (origin[1] - 0.5) * py
    x_mm = ox + (np.arange(binary.shape[2]) + 0.5) * ux
    y_mm = oy + (np.arange(binary.shape[1]) + 0.5) * uy
    # Moments from axis sums (no coordinate lists: the upsampled volume has ~10^7 voxels).
    weights = binary.astype(np.float32)
    # (nx_up, n) and (ny_up, n), C order: the products below then sum as on (nx, ny, n).
    per_x = np.ascontiguousarray(weights.sum(axis=1).T)
    per_y = np.ascontiguousarray(weights.sum(axis=2).T)
    n_bin = per_x.sum(axis=0).astype(float)
    ok = n_bin > 0
    xr, yr = x_mm - x_mm.mean(), y_mm - y_mm.mean()  # centred for precision
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = xr @ per_x / n_bin
        my = yr @ per_y / n_bin
        cxx = (xr**2) @ per_x / n_bin - mx**2
        cyy = (yr**2) @ per_y / n_bin - my**2
        cxy = xr @ np.ascontiguousarray(np.einsum("zyx,y->xz", weights, yr)) / n_bin - mx * my
    cov = np.stack([np.stack([cxx, cxy], -1), np.stack([cxy, cyy], -1)], -2)
    maps = _perpendicular_maps(tangent, mode)
    cov = np.einsum("nij,njk,nlk->nil", maps, cov, maps)
    a, b, c = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    half_diff = np.sqrt(((a - c) / 2) ** 2 + b**2)
    lam1 = np.clip((a + c) / 2 + half_diff, 0, None)
    lam2 = np.clip((a + c) / 2 - half_diff, 0, None)
    major, minor = 4 * np.sqrt(lam1), 4 * np.sqrt(lam2)
    # skimage's regionprops orientation: angle of the major axis from axis 0 (RL). A round
    # section (equal eigenvalues) has none: skimage then answers -45 degrees (its a == c
    # branch, as SCT 7.4 writes for the PAM50 template's round slices), not the 0 or 90
    # that rounding noise in b and a - c would give.
    orient = 0.5 * np.arctan2(2 * b, a - c)
    tiny = 1e-9 * np.abs(a + c)
    orient = np.where((np.abs(a - c) <= tiny) & (np.abs(b) <= tiny), -np.pi / 4, orient)
    # Major axis exactly along AP (b == 0, a < c): +90 degrees as skimage, whatever the sign
    # of the rounding noise in b.
    orient = np.where((np.abs(b) <= tiny) & (a - c < -tiny), np.pi / 2, orient)
    along_rl = np.abs(np.degrees(orient)) < 45.0
    any_row, first, last = _row_extremes(binary, per_x)
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.sqrt(1 - lam2 / lam1)
        solidity = n_bin / _hull_pixel_counts(any_row, first, last)
    centre = np.column_stack([mx + x_mm.mean(), my + y_mm.mean()])
    if ok.any():
        good = np.flatnonzero(ok)
        # Half-extents of each slice's bounding box about its centroid (mm), plus the voxel
        # of soft ramp around the thresholded mask.
        any_col = per_y > 0  # (ny_up, n)
        ix = np.arange(binary.shape[2])[:, None]
        iy = np.arange(binary.shape[1])[:, None]
        big = 10**9
        xlo = np.where(any_row, ix, big).min(axis=0)[good]
        xhi = np.where(any_row, ix, -big).max(axis=0)[good]
        ylo = np.where(any_col, iy, big).min(axis=0)[good]
        yhi = np.where(any_col, iy, -big).max(axis=0)[good]
        cxp = (centre[good, 0] - ox) / ux - 0.5
        cyp = (centre[good, 1] - oy) / uy - 0.5
        extent = np.column_stack(
            [
                np.maximum(np.abs(xlo - cxp), np.abs(xhi - cxp)) * ux + px,
                np.maximum(np.abs(ylo - cyp), np.abs(yhi - cyp)) * uy + py,
            ]
        )
        post, ant = _measured_ap(
            up if len(good) == len(up) else up[good],
            centre[good],
            -orient[good],
            maps[good],
            (ox, oy, ux, uy),
            extent,
            refine=mode_in == "sct",
            offsets=None if offsets is None else offsets[good],
        )
        posterior = np.full(len(rows), np.nan)
        anterior = np.full(len(rows), np.nan)
        posterior[good], anterior[good] = post, ant
    else:
        posterior = anterior = np.full(len(rows), np.nan)

    def put(name: str, values: np.ndarray) -> None:
        columns[name][rows] = np.where(ok, values, np.nan)

    put("diameter_RL", np.where(along_rl, major, minor))
    put("diameter_AP_ellipse", np.where(along_rl, minor, major))
    put("diameter_AP", posterior + anterior)
    put("length_anterior", anterior)
    put("length_posterior", posterior)
    put("eccentricity", eccentricity)
    # SCT stores -orientation, then negates it again when converting to degrees.
    put("orientation", np.degrees(orient))
    put("solidity", solidity)


def pmj_distances(
    seg: np.ndarray, pmj: np.ndarray, affine: np.ndarray | None, pz: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) of every slice from the pontomedullary junction along the centerline,
    as SCT 7.4's ``get_slices_for_pmj_distance``: the PMJ label is added to the segmentation,
    the centerline of the sum is fitted with SCT's ``linear`` algorithm (interpolation, then
    a Hanning window of 50 mm) and its length is accumulated from the top-most point down.
    Returns (slices, distances) for the slices from the lowest one holding cord (or the
    PMJ) to the highest.

    >>> seg = np.zeros((5, 5, 10)); seg[2, 2, :6] = 1
    >>> pmj = np.zeros_like(seg); pmj[2, 2, 9] = 1
    >>> z, d = pmj_distances(seg, pmj, np.diag([1.0, 1.0, 2.0, 1.0]), 2.0)
    >>> z.tolist()[-3:], d.round(3).tolist()[-3:]
    ([7, 8, 9], [4.0, 2.0, 0.0])
    """
    both = np.asarray(seg, dtype=float) + np.asarray(pmj, dtype=float)
    ix, iy, iz = np.nonzero(both)
    nz = both.shape[2]
    counts = np.bincount(iz, minlength=nz)
    z = np.flatnonzero(counts)
    cx = np.bincount(iz, weights=ix, minlength=nz)[z] / counts[z]
    cy = np.bincount(iz, weights=iy, minlength=nz)[z] / counts[z]
    zref = np.arange(z[0], z[-1] + 1)
    window = int(np.ceil(50.0 / pz) // 2 * 2 + 1)
    x = _smooth_hanning(np.interp(zref, z, cx), window)
    y = _smooth_hanning(np.interp(zref, z, cy), window)
    a = np.eye(3) if affine is None else np.asarray(affine)[:3, :3]
    points = np.column_stack([x, y, zref]) @ a.T
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    from_top = np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])
    return zref, from_top


def _smooth_hanning(values: np.ndarray, window: int) -> np.ndarray:
    """SCT's ``smooth1d`` (Hanning window, signal mirrored about its end points)."""
    if values.size < window:
        window = values.size
    if window < 3:
        return values
    padded = np.r_[
        2 * values[0] - values[window - 1 : 0 : -1],
        values,
        2 * values[-1] - values[-2 : -window - 1 : -1],
    ]
    w = np.hanning(window)
    smoothed = np.convolve(w / w.sum(), padded, mode="valid")
    return smoothed[int(np.ceil(window / 2 - 1)) : -int(np.floor(window / 2))]
