"""Deterministic digital phantoms of the cervical spinal cord, with analytic ground truth.

Used by the tests (a number to assert, not "it ran"), by the demo cohort and to train the tiny
nnU-Net demo models. Everything is seeded: the same arguments give the same arrays and the
same file bytes.

Frame and orientation
---------------------
Arrays are RPI (nibabel axcodes ``('L', 'A', 'S')``): axis 0 ``x`` grows to the Left, axis 1
``y`` to Anterior, axis 2 ``z`` to Superior; an axial slice is ``data[:, :, z]``. SCT calls this
orientation RPI (axes named by where they come *from*); in nibabel's world (RAS+) the x axis
points left, so the affine is ``diag(-px, py, pz, 1)`` plus an origin offset. Geometry is
described in millimetres in the *voxel frame*: the centre of voxel ``(i, j, k)`` is at
``(i * px, j * py, k * pz)``, so a voxel covers ``[(i - 1/2) px, (i + 1/2) px]`` along x, and
likewise along y and z.

Angles follow DESIGN.md: with the centerline tangent ``t = (dx/dz, dy/dz, 1)`` in mm,
``angle_AP = atan2(t_x, t_z)`` and ``angle_RL = atan2(t_y, t_z)``; a cylinder whose axis is
proportional to ``(tan angle_AP, tan angle_RL, 1)`` has those two angles.

Elliptic cylinders
------------------
An elliptic cylinder has semi-axes ``a`` (the RL-ish one: along the projection of the x axis
onto the plane perpendicular to the axis ``d``) and ``b`` (along ``d x e1``, AP-ish). Its
perpendicular area is ``pi a b``; a horizontal (axial) plane cuts it in an ellipse of area
``pi a b |t| / t_z``, i.e. ``pi a b / cos(theta)`` with ``theta`` the angle between ``d`` and z
(SCT's ``cos(angle_AP) cos(angle_RL)`` is only an approximation of ``cos(theta)``).

Partial volume, exactly along x
-------------------------------
The partial-volume fraction of a voxel is the volume of (voxel intersect solid) / voxel volume.
Every line parallel to x meets a horizontal ellipse in one interval whose end points are the
roots of a quadratic, so the x-integral is done analytically (clip the interval to each voxel);
only the z and y integrals use a midpoint rule (``supersample`` points per voxel along z, four
times as many along y). The integrand in y (a chord length) is continuous, so the error is far
smaller than counting sub-voxels: at 0.8 mm voxels and ``supersample=8`` every slice sum of a
cylinder tilted up to 30 degrees (single-axis or compound) times ``t_z/|t|`` matches ``pi a b``
to better than 1e-4 relative (2e-4 with ``supersample=4``); the tests demand 1e-3.

Curved subjects (``make_subject``)
----------------------------------
A subject is a smooth centerline ``c(z) = (cx(z), cy(z))`` (a lordosis-like anterior bow in the
sagittal plane, a global tilt and a small lateral wave) and, at every height ``z``, the *local
elliptic cylinder* through ``c(z)`` along the tangent ``t(z)`` with semi-axes ``a(z), b(z)``. A
point ``p`` belongs to the cord when it lies inside the local cylinder of its own height
``p_z``. Hence the axial section at height ``z`` is exactly an ellipse of area
``pi a(z) b(z) |t(z)| / t_z(z)`` (analytic), and the section perpendicular to ``t(z)`` through
``c(z)`` is the ellipse ``pi a(z) b(z)`` up to second-order terms in curvature and in the
variation of the area along the cord (measured by cutting the solid numerically: within
3e-4 relative for these phantoms; a test demands 1e-3). ``true_area[k] = pi a(z_k) b(z_k)`` at
the slice centre ``z_k`` is the analytic perpendicular CSA. The slice sum of the soft mask times
``t_z/|t|`` of the analytic tangent differs from it only by the slab average of the area along z
and the quadrature: within 5e-4 per slice and 5e-5 on average at 1 mm with the default
``supersample=4`` (tests demand 2e-3 and 5e-4). Angles stay within about 10 degrees.

Areas follow healthy per-level means (C2..T1 from the brief; C1 and T2 from the PAM50 normative
database r20250321, 203 adults): a natural cubic spline through one node per level whose node
values are solved so that the *continuous* mean of each level equals its target exactly. The
AP/RL ratio per level is also the normative database's (flatter in the cervical enlargement).
Level lengths are PAM50's (0.5 mm template: C2 = 15.5 mm, ..., T1 = 21.5 mm) times a per-subject
factor. Slices get levels as SCT and PAM50_levels discretise them: level N runs from the slice
of disc N+1 (included) up to the slice of disc N (excluded), so the labelled segmentation and
the disc labels give the same level per slice. A per-subject area factor ~ N(1, 0.08)
(clipped to [0.8, 1.2]) and ``area_scale`` multiply all areas.

Images are partial-volume mixtures of cord, CSF (a concentric ellipse about 1.5 x 1.8 times the
cord) and tissue (smooth texture, vertebral bodies and discs anterior to the canal), times a
smooth multiplicative bias field, with Rician noise, scaled to integers (stored as int16).
"""

from __future__ import annotations

import functools
import gzip
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.interpolate import CubicSpline, PchipInterpolator
from scipy.ndimage import gaussian_filter

from registry.fsutil import atomic_path, sha256_file

__all__ = [
    "CONTRASTS",
    "LEVEL_AP_RL_RATIO",
    "LEVEL_AREA_MM2",
    "LEVEL_LENGTH_MM",
    "LEVEL_NAMES",
    "CordGeometry",
    "PhantomSubject",
    "cylinder_axis",
    "elliptic_cylinder",
    "make_subject",
    "phantom_affine",
    "save_subject",
    "true_level_areas",
    "write_cohort",
]

#: Level numbers (SCT convention) and their names.
LEVEL_NAMES: dict[int, str] = {
    1: "C1", 2: "C2", 3: "C3", 4: "C4", 5: "C5", 6: "C6", 7: "C7", 8: "T1", 9: "T2",
}  # fmt: skip
#: Healthy adult mean CSA per level (mm²). C2..T1: the design brief's values (the PAM50
#: normative database r20250321 gives 71.7, 72.5, 77.3, 76.4, 69.1, 56.8, 46.8); C1 and T2 from
#: that database (73.8 and 41.8), only partly inside the default field of view.
LEVEL_AREA_MM2: dict[int, float] = {
    1: 74.0, 2: 72.0, 3: 72.5, 4: 77.0, 5: 76.0, 6: 69.0, 7: 57.0, 8: 47.0, 9: 42.0,
}  # fmt: skip
#: Level lengths along z (mm) from PAM50_levels.nii.gz (slice counts x 0.5 mm).
LEVEL_LENGTH_MM: dict[int, float] = {
    1: 23.0, 2: 15.5, 3: 18.5, 4: 18.5, 5: 16.5, 6: 15.5, 7: 17.0, 8: 21.5, 9: 23.0,
}  # fmt: skip
#: Mean diameter_AP / diameter_RL per level in the normative database r20250321.
LEVEL_AP_RL_RATIO: dict[int, float] = {
    1: 0.73, 2: 0.66, 3: 0.63, 4: 0.59, 5: 0.58, 6: 0.57, 7: 0.60, 8: 0.67, 9: 0.70,
}  # fmt: skip

#: Tissue intensities (cord, CSF, tissue, vertebral bone, disc) per contrast, and noise sigma
#: relative to 1.0. T2w: cord dark on bright CSF; T1w: cord bright on dark CSF; T2star: cord
#: darker than CSF with about half the T2w contrast.
CONTRASTS: dict[str, dict[str, float]] = {
    "T1w": {"cord": 0.70, "csf": 0.25, "tissue": 0.50, "bone": 0.62, "disc": 0.42, "noise": 0.03},
    "T2w": {"cord": 0.40, "csf": 1.00, "tissue": 0.28, "bone": 0.33, "disc": 0.65, "noise": 0.03},
    "T2star": {
        "cord": 0.55, "csf": 0.85, "tissue": 0.30, "bone": 0.20, "disc": 0.45, "noise": 0.035,
    },
}  # fmt: skip

_FOV_MM = 48.0  # default in-plane field of view
_MARGIN_TOP_MM = 10.0  # of C1 above the C1/C2 disc, in the default field of view
_MARGIN_BOTTOM_MM = 8.0  # of T2 below the T1/T2 disc
_IMAGE_SCALE = 1000.0  # intensities are stored as integers (int16)
_CHUNK_ELEMENTS = 1_500_000  # working-array size of the partial-volume integrator
_Y_OVERSAMPLING = 4  # y sample points per voxel = this x supersample (z: supersample)


# --------------------------------------------------------------------------------------------
# Partial volume of solids made of horizontal elliptic sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sections:
    """Horizontal sections at heights z: ellipses ``A X² + 2B XY + C Y² <= 1`` about (cx, cy)."""

    cx: np.ndarray
    cy: np.ndarray
    qa: np.ndarray
    qb: np.ndarray
    qc: np.ndarray
    present: np.ndarray  # False where the solid has no section at that height


def _horizontal_form(
    direction: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadratic form of the axial cut of elliptic cylinders (axis ``direction``, (n, 3))."""
    d = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    # e1: the x axis projected onto the plane perpendicular to d (the RL-ish semi-axis a);
    # e2 = d x e1 (AP-ish, semi-axis b).
    e1 = np.stack([1.0 - d[:, 0] ** 2, -d[:, 0] * d[:, 1], -d[:, 0] * d[:, 2]], axis=-1)
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    e2 = np.cross(d, e1)
    ia2, ib2 = 1.0 / a**2, 1.0 / b**2
    qa = e1[:, 0] ** 2 * ia2 + e2[:, 0] ** 2 * ib2
    qb = e1[:, 0] * e1[:, 1] * ia2 + e2[:, 0] * e2[:, 1] * ib2
    qc = e1[:, 1] ** 2 * ia2 + e2[:, 1] ** 2 * ib2
    return qa, qb, qc


def _partial_volume(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    sections_at: Callable[[np.ndarray], _Sections],
    supersample: int,
) -> np.ndarray:
    """Fraction of each voxel inside the solid whose axial section at height z is given.

    Exact along x (each x-line meets an ellipse in one interval, clipped to every voxel),
    midpoint rule with ``supersample`` points per voxel along y and z.
    """
    nx, ny, nz = shape
    px, py, pz = spacing
    kz = int(supersample)
    if kz < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    # The y-integrand (a chord length) has square-root end points; its midpoint error falls as
    # h**1.5, so y gets more points than z, where slabs average the sampling phase out.
    ky = _Y_OVERSAMPLING * kz
    y_offsets = (np.arange(ky) + 0.5) / ky - 0.5
    z_offsets = (np.arange(kz) + 0.5) / kz - 0.5
    ys = ((np.arange(ny)[:, None] + y_offsets[None, :]) * py).ravel()  # (ny*ky,)
    x_edges = (np.arange(nx + 1) - 0.5) * px
    out = np.zeros((nz, ny, nx), dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // (kz * ky * ny * (nx + 1)))
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        m = z1 - z0
        zs = ((np.arange(z0, z1)[:, None] + z_offsets[None, :]) * pz).ravel()  # (m*kz,)
        s = sections_at(zs)
        yrel = ys[None, :] - s.cy[:, None]  # (m*kz, ny*ky)
        det = s.qa * s.qc - s.qb**2
        disc = s.qa[:, None] - yrel**2 * det[:, None]
        hit = (disc > 0) & s.present[:, None]
        if not hit.any():
            continue
        half = np.sqrt(np.where(hit, disc, 0.0)) / s.qa[:, None]
        mid = s.cx[:, None] - s.qb[:, None] * yrel / s.qa[:, None]
        lo = np.where(hit, mid - half, 0.0)
        hi = np.where(hit, mid + half, 0.0)
        # Only the columns and voxel rows that some interval reaches need the clipped sums.
        i0 = max(0, int(np.floor(lo[hit].min() / px + 0.5)))
        i1 = min(nx, int(np.floor(hi[hit].max() / px + 0.5)) + 1)
        rows = np.flatnonzero(hit.reshape(m * kz, ny, ky).any(axis=(0, 2)))
        j0, j1 = int(rows[0]), int(rows[-1]) + 1
        lo = lo.reshape(m * kz, ny, ky)[:, j0:j1].reshape(m * kz, -1)
        hi = hi.reshape(m * kz, ny, ky)[:, j0:j1].reshape(m * kz, -1)
        covered = np.clip(x_edges[None, None, i0 : i1 + 1], lo[..., None], hi[..., None])
        lengths = np.diff(covered, axis=-1)  # (m*kz, rows*ky, columns)
        frac = lengths.reshape(m, kz, j1 - j0, ky, i1 - i0).sum(axis=(1, 3)) / (kz * ky * px)
        out[z0:z1, j0:j1, i0:i1] = frac
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0).transpose(2, 1, 0), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Straight elliptic cylinder
# --------------------------------------------------------------------------------------------


def cylinder_axis(angle_ap_deg: float, angle_rl_deg: float) -> np.ndarray:
    """Unit axis (mm, RPI) of a cylinder with the given angle_AP and angle_RL (degrees).

    >>> np.round(cylinder_axis(45.0, 0.0), 4).tolist()
    [0.7071, 0.0, 0.7071]
    """
    d = np.array([np.tan(np.radians(angle_ap_deg)), np.tan(np.radians(angle_rl_deg)), 1.0])
    return d / np.linalg.norm(d)


def elliptic_cylinder(
    shape: tuple[int, int, int] = (48, 48, 40),
    spacing: tuple[float, float, float] = (0.8, 0.8, 0.8),
    a_mm: float = 4.5,
    b_mm: float = 3.5,
    angle_ap_deg: float = 0.0,
    angle_rl_deg: float = 0.0,
    center_mm: tuple[float, float, float] | None = None,
    supersample: int = 8,
) -> np.ndarray:
    """Partial-volume mask (float32 in [0, 1], shape ``shape``) of an infinite elliptic cylinder.

    Perpendicular semi-axes ``a_mm`` (RL-ish) and ``b_mm`` (AP-ish), so the perpendicular area
    is ``pi a b``; axis ``cylinder_axis(angle_ap_deg, angle_rl_deg)`` through ``center_mm``
    (voxel-frame mm: voxel ``i`` is centred at ``i * spacing``; default: the volume centre).
    Every slice sum times ``px * py * t_z / |t|`` equals ``pi a b`` to ~1e-4 relative.

    >>> m = elliptic_cylinder((16, 16, 4), (1.0, 1.0, 1.0), a_mm=4.0, b_mm=3.0)
    >>> round(float(m[:, :, 1].sum()) / (np.pi * 4.0 * 3.0), 3)
    1.0
    """
    if a_mm <= 0 or b_mm <= 0:
        raise ValueError(f"semi-axes must be positive, got a={a_mm}, b={b_mm}")
    if max(abs(angle_ap_deg), abs(angle_rl_deg)) >= 90.0:
        raise ValueError("angles must be within (-90, 90) degrees")
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    px, py, pz = (float(v) for v in spacing)
    if center_mm is None:
        center = np.array([(n - 1) / 2.0 for n in shape3]) * np.array([px, py, pz])
    else:
        center = np.asarray(center_mm, dtype=float)
    d = cylinder_axis(angle_ap_deg, angle_rl_deg)
    qa, qb, qc = _horizontal_form(d[None, :], np.array([float(a_mm)]), np.array([float(b_mm)]))

    def sections_at(zs: np.ndarray) -> _Sections:
        shift = (zs - center[2]) / d[2]
        ones = np.ones_like(zs)
        return _Sections(
            cx=center[0] + d[0] * shift,
            cy=center[1] + d[1] * shift,
            qa=qa * ones,
            qb=qb * ones,
            qc=qc * ones,
            present=np.ones(zs.shape, dtype=bool),
        )

    return _partial_volume(shape3, (px, py, pz), sections_at, supersample)


# --------------------------------------------------------------------------------------------
# Curved cord with per-level areas
# --------------------------------------------------------------------------------------------


def _level_top_depths() -> dict[int, float]:
    """Template depth (mm below the C1/C2 disc) of the top of each level."""
    tops = {1: -LEVEL_LENGTH_MM[1], 2: 0.0}
    for level in range(3, 10):
        tops[level] = tops[level - 1] + LEVEL_LENGTH_MM[level - 1]
    return tops


@functools.cache
def _area_profile() -> CubicSpline:
    """Area (mm², subject factor 1) against template depth (mm below the C1/C2 disc).

    A natural cubic spline through one node per level (its middle); the node values are
    solved so that the continuous mean of every level over its length equals LEVEL_AREA_MM2.
    """
    tops = _level_top_depths()
    levels = sorted(LEVEL_AREA_MM2)
    mids = np.array([tops[lv] + LEVEL_LENGTH_MM[lv] / 2 for lv in levels])
    # Level means are linear in the node values: build the matrix column by column.
    gauss_x, gauss_w = np.polynomial.legendre.leggauss(64)
    basis = np.zeros((len(levels), len(levels)))
    for j in range(len(levels)):
        unit = np.zeros(len(levels))
        unit[j] = 1.0
        spline = CubicSpline(mids, unit, bc_type="natural")
        for i, lv in enumerate(levels):
            lo, hi = tops[lv], tops[lv] + LEVEL_LENGTH_MM[lv]
            depth = np.clip((hi - lo) / 2 * gauss_x + (hi + lo) / 2, mids[0], mids[-1])
            basis[i, j] = float(np.sum(gauss_w * spline(depth)) / 2)
    targets = np.array([LEVEL_AREA_MM2[lv] for lv in levels])
    return CubicSpline(mids, np.linalg.solve(basis, targets), bc_type="natural")


@functools.cache
def _ratio_profile() -> PchipInterpolator:
    """AP/RL axis ratio against template depth (monotone cubic through level middles)."""
    tops = _level_top_depths()
    levels = sorted(LEVEL_AP_RL_RATIO)
    mids = np.array([tops[lv] + LEVEL_LENGTH_MM[lv] / 2 for lv in levels])
    return PchipInterpolator(mids, [LEVEL_AP_RL_RATIO[lv] for lv in levels])


@dataclass(frozen=True)
class CordGeometry:
    """Continuous geometry of a phantom cord and canal; all lengths in voxel-frame mm.

    Disc ``N`` (between levels ``N-1`` and ``N``; C1/C2 = 2, ..., T1/T2 = 9) lies at height
    ``disc_z_mm[N]``; heights grow upwards (superior). The cord spans all of C1 and T2.
    """

    disc_c12_mm: float  # height of the C1/C2 disc
    length_factor: float  # level lengths = LEVEL_LENGTH_MM x this
    area_factor: float  # subject factor x area_scale
    ratio_factor: float  # AP/RL ratio = LEVEL_AP_RL_RATIO profile x this
    x0_mm: float
    y0_mm: float
    sag_amplitude_mm: float  # anterior bow of the centerline (lordosis-like)
    sag_slope: float  # global dy/dz
    lat_amplitude_mm: float  # lateral wave
    lat_phase: float
    lat_slope: float  # global dx/dz
    csf_scale_rl: float  # CSF semi-axes = cord semi-axes x these
    csf_scale_ap: float
    disc_z_mm: dict[int, float] = field(init=False)

    def __post_init__(self) -> None:
        tops = _level_top_depths()
        discs = {lv: self.disc_c12_mm - self.length_factor * tops[lv] for lv in range(2, 10)}
        object.__setattr__(self, "disc_z_mm", discs)

    # -- extents -------------------------------------------------------------------------
    @property
    def cord_top_mm(self) -> float:
        return self.disc_c12_mm + self.length_factor * LEVEL_LENGTH_MM[1]

    @property
    def cord_bottom_mm(self) -> float:
        return self.disc_z_mm[9] - self.length_factor * LEVEL_LENGTH_MM[9]

    @property
    def view_top_mm(self) -> float:
        """Top of the default field of view (part of C1)."""
        return self.disc_c12_mm + self.length_factor * _MARGIN_TOP_MM

    @property
    def view_bottom_mm(self) -> float:
        """Bottom of the default field of view (part of T2)."""
        return self.disc_z_mm[9] - self.length_factor * _MARGIN_BOTTOM_MM

    # -- centerline ----------------------------------------------------------------------
    def _u(self, z: np.ndarray) -> tuple[np.ndarray, float]:
        span = self.view_top_mm - self.view_bottom_mm
        return (self.view_top_mm - z) / span, -1.0 / span

    def center(self, z: np.ndarray | float) -> np.ndarray:
        """(..., 2) centre (x, y) of the cord's axial section at heights ``z``."""
        z = np.asarray(z, dtype=float)
        u, _ = self._u(z)
        zmid = (self.view_top_mm + self.view_bottom_mm) / 2
        cy = (
            self.y0_mm
            + self.sag_amplitude_mm * (np.sin(np.pi * u) - 2 / np.pi)
            + self.sag_slope * (z - zmid)
        )
        cx = (
            self.x0_mm
            + self.lat_amplitude_mm * np.sin(2 * np.pi * u + self.lat_phase)
            + self.lat_slope * (z - zmid)
        )
        return np.stack([cx, cy], axis=-1)

    def tangent(self, z: np.ndarray | float) -> np.ndarray:
        """(..., 3) tangent ``(dx/dz, dy/dz, 1)`` in mm (not normalised) at heights ``z``."""
        z = np.asarray(z, dtype=float)
        u, du = self._u(z)
        dy = self.sag_amplitude_mm * np.pi * np.cos(np.pi * u) * du + self.sag_slope
        dx = (
            self.lat_amplitude_mm * 2 * np.pi * np.cos(2 * np.pi * u + self.lat_phase) * du
            + self.lat_slope
        )
        return np.stack([dx, dy, np.ones_like(z)], axis=-1)

    # -- cross-sections ------------------------------------------------------------------
    def depth(self, z: np.ndarray | float) -> np.ndarray:
        """Template depth (mm below the C1/C2 disc, PAM50 proportions) of heights ``z``."""
        return (self.disc_c12_mm - np.asarray(z, dtype=float)) / self.length_factor

    def area(self, z: np.ndarray | float) -> np.ndarray:
        """Perpendicular cross-sectional area (mm²) of the cord at heights ``z``."""
        spline = _area_profile()
        d = np.clip(self.depth(z), spline.x[0], spline.x[-1])
        return self.area_factor * spline(d)

    def semi_axes(self, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Perpendicular semi-axes (a: RL-ish, b: AP-ish) of the cord at heights ``z``."""
        pchip = _ratio_profile()
        d = np.clip(self.depth(z), pchip.x[0], pchip.x[-1])
        ratio = self.ratio_factor * pchip(d)
        a = np.sqrt(self.area(z) / (np.pi * ratio))
        return a, ratio * a

    def contains_cord(self, z: np.ndarray | float) -> np.ndarray:
        """Whether the cord (all of C1 down to all of T2) exists at heights ``z``."""
        z = np.asarray(z, dtype=float)
        return (z >= self.cord_bottom_mm) & (z <= self.cord_top_mm)

    def level(self, z: np.ndarray | float) -> np.ndarray:
        """Level (1=C1 ... 8=T1, 9=T2) at heights ``z`` from the exact disc heights; 0: no cord.

        Continuous; ``PhantomSubject.slice_levels`` discretises by disc slices instead.
        """
        z = np.asarray(z, dtype=float)
        below_discs = sum((z < self.disc_z_mm[n]).astype(int) for n in range(2, 10))
        return np.where(self.contains_cord(z), 1 + below_discs, 0)

    def _sections(self, z: np.ndarray, scale_rl: float = 1.0, scale_ap: float = 1.0) -> _Sections:
        """Axial sections at heights ``z`` (1-D) of the cord, or of the canal when scaled."""
        c = self.center(z)
        a, b = self.semi_axes(z)
        qa, qb, qc = _horizontal_form(self.tangent(z), a * scale_rl, b * scale_ap)
        return _Sections(c[:, 0], c[:, 1], qa, qb, qc, self.contains_cord(z))

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Whether points (..., 3) in voxel-frame mm lie inside the cord."""
        p = np.asarray(points, dtype=float)
        flat = p.reshape(-1, 3)
        s = self._sections(flat[:, 2])
        x = flat[:, 0] - s.cx
        y = flat[:, 1] - s.cy
        q = s.qa * x**2 + 2 * s.qb * x * y + s.qc * y**2
        return ((q <= 1.0) & s.present).reshape(p.shape[:-1])


@dataclass
class PhantomSubject:
    """A phantom subject: images, ground truths and the analytic truth, all on one grid."""

    subject_id: str
    spacing: tuple[float, float, float]
    affine: np.ndarray
    soft_seg: np.ndarray  # float32 partial volume of the cord
    binary_seg: np.ndarray  # uint8, soft_seg >= 0.5
    labeled_seg: np.ndarray  # uint8, binary_seg x slice level
    disc_labels: np.ndarray  # uint8, one voxel per disc on the cord centre (C2/C3 = 3)
    images: dict[str, np.ndarray]  # contrast -> float32 image (integer-valued)
    true_area: np.ndarray  # float64 (nz,) analytic perpendicular CSA, NaN without cord
    slice_levels: np.ndarray  # int (nz,) level per slice (disc N+1's slice is in N), 0: none
    centerline_mm: np.ndarray  # (nz, 2) x, y of the centre per slice, voxel-frame mm
    tangent: np.ndarray  # (nz, 3) unit centerline tangent per slice (mm, RPI)
    csf_fraction: np.ndarray  # float32 partial volume of CSF (canal minus cord)
    area_factor: float  # subject factor x area_scale
    geometry: CordGeometry


def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RPI (nibabel ``L, A, S``) affine ``diag(-px, py, pz, 1)``, volume centre at world 0.

    x grows to the Left, which in nibabel's RAS+ world is the negative x direction.

    >>> aff = phantom_affine((4, 4, 4), (1.0, 1.0, 2.0))
    >>> nib.aff2axcodes(aff), np.diag(aff).tolist()
    (('L', 'A', 'S'), [-1.0, 1.0, 2.0, 1.0])
    """
    signs = np.array([-1.0, 1.0, 1.0])
    steps = signs * np.array([float(v) for v in spacing])
    aff = np.diag([*steps, 1.0])
    aff[:3, 3] = -steps * (np.array(shape, dtype=float) - 1) / 2.0
    return aff


def _subject_rng(seed: int, index: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), zlib.crc32(stream.encode())])


def _draw_geometry(
    rng: np.random.Generator,
    spacing: tuple[float, float, float],
    shape: tuple[int, int, int] | None,
    area_scale: float,
) -> tuple[CordGeometry, tuple[int, int, int]]:
    px, py, pz = spacing
    length_factor = float(rng.uniform(0.94, 1.06))
    area_factor = float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.2))
    params = {
        "ratio_factor": float(rng.uniform(0.95, 1.05)),
        "sag_amplitude_mm": float(rng.uniform(2.0, 5.0)),
        "sag_slope": float(np.tan(np.radians(rng.uniform(-5.0, 5.0)))),
        "lat_amplitude_mm": float(rng.uniform(0.3, 1.5)),
        "lat_phase": float(rng.uniform(0.0, 2 * np.pi)),
        "lat_slope": float(np.tan(np.radians(rng.uniform(-3.0, 3.0)))),
        "csf_scale_rl": float(rng.uniform(1.45, 1.6)),
        "csf_scale_ap": float(rng.uniform(1.7, 1.85)),
    }
    view = length_factor * (_MARGIN_TOP_MM + sum(LEVEL_LENGTH_MM[lv] for lv in range(2, 9)))
    view += length_factor * _MARGIN_BOTTOM_MM
    if shape is None:
        shape = (
            round(_FOV_MM / px),
            round(_FOV_MM / py),
            int(np.ceil(view / pz - 1e-9)),
        )
    nx, ny, nz = (int(v) for v in shape)
    # Centre the default view in the volume; the canal sits 3 mm posterior of the centre,
    # leaving room for the vertebral bodies in front of it.
    zc = (nz - 1) / 2.0 * pz
    top_depth = -_MARGIN_TOP_MM * length_factor
    disc_c12 = zc + view / 2 + top_depth
    geom = CordGeometry(
        disc_c12_mm=disc_c12,
        length_factor=length_factor,
        area_factor=area_factor * float(area_scale),
        x0_mm=(nx - 1) / 2.0 * px,
        y0_mm=(ny - 1) / 2.0 * py - 3.0,
        **params,
    )
    return geom, (nx, ny, nz)


def _tissue_maps(
    geom: CordGeometry,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth tissue texture, and masks of vertebral bone and disc anterior to the canal."""
    nx, ny, nz = shape
    px, py, pz = spacing
    texture = gaussian_filter(rng.standard_normal(shape), sigma=(3 / px, 3 / py, 3 / pz))
    texture /= max(float(texture.std()), 1e-12)
    z = np.arange(nz) * pz
    c = geom.center(z)
    _, b = geom.semi_axes(z)
    front = c[:, 1] + b * geom.csf_scale_ap + 1.5  # anterior edge of the canal + a gap
    x = np.arange(nx)[:, None, None] * px
    y = np.arange(ny)[None, :, None] * py
    body = (np.abs(x - c[None, None, :, 0]) < 8.0) & (y > front) & (y < front + 15.0)
    discs = np.array(list(geom.disc_z_mm.values()))
    near_disc = np.min(np.abs(z[:, None] - discs[None, :]), axis=1) < 2.5 * geom.length_factor
    disc = body & near_disc[None, None, :]
    return texture, body & ~disc, disc


def _bias_field(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial), roughly 0.8-1.25."""
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    y = np.linspace(-1, 1, shape[1])[None, :, None]
    z = np.linspace(-1, 1, shape[2])[None, None, :]
    terms = [x, y, z, x * y, x * z, y * z, x**2 - 1 / 3, y**2 - 1 / 3, z**2 - 1 / 3]
    coef = rng.normal(0.0, 0.06, size=len(terms))
    return np.exp(sum(cf * t for cf, t in zip(coef, terms, strict=True)))


def _render(
    contrast: str,
    fractions: tuple[np.ndarray, np.ndarray, np.ndarray],
    texture: np.ndarray,
    bone: np.ndarray,
    disc: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    p = CONTRASTS[contrast]
    cord, csf, tissue = fractions
    tissue_signal = np.where(bone, p["bone"], np.where(disc, p["disc"], p["tissue"]))
    tissue_signal = tissue_signal * (1.0 + 0.12 * texture)
    signal = cord * p["cord"] + csf * p["csf"] + tissue * tissue_signal
    signal = signal * _bias_field(cord.shape, rng)
    sigma = p["noise"]
    real = signal + rng.normal(0.0, sigma, size=signal.shape)
    imag = rng.normal(0.0, sigma, size=signal.shape)
    return np.round(np.hypot(real, imag) * _IMAGE_SCALE).astype(np.float32)


def _disc_slice(z_mm: float, pz: float) -> int:
    """Slice holding a disc at height ``z_mm`` (nearest slice centre, halves round up)."""
    return int(np.floor(z_mm / pz + 0.5))


def _slice_levels(geom: CordGeometry, nz: int, pz: float, has_cord: np.ndarray) -> np.ndarray:
    """Level of every slice, as SCT and PAM50_levels discretise it from disc slices.

    Level N spans the slices from disc N+1's slice (included) up to disc N's (excluded); above
    the C1/C2 disc it is C1, below the T1/T2 disc T2, and 0 on slices without cord. So levels
    from the labelled segmentation and from the disc labels agree slice by slice.
    """
    k = np.arange(nz)
    levels = np.ones(nz, dtype=np.int64)  # C1 above the C1/C2 disc
    for n in range(2, 10):
        levels += k < _disc_slice(geom.disc_z_mm[n], pz)
    return np.where(has_cord, levels, 0)


def make_subject(
    index: int,
    seed: int = 0,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    shape: tuple[int, int, int] | None = None,
    contrasts: Sequence[str] = ("T1w", "T2w", "T2star"),
    area_scale: float = 1.0,
    supersample: int = 4,
) -> PhantomSubject:
    """Generate phantom subject ``index`` (0-based) of cohort ``seed``; fully deterministic.

    The geometry depends only on ``(index, seed, area_scale)`` and the field of view (not on
    the contrasts asked for); each contrast's noise and bias field have their own seeded
    stream. ``shape=None`` gives a 48 mm x 48 mm field of view from part of C1 to part of T2
    (about 48 x 48 x 140 voxels at 1 mm); a given shape is centred on the same span.

    >>> s = make_subject(0, contrasts=("T2w",))
    >>> s.subject_id, s.soft_seg.shape[:2], sorted(set(s.slice_levels.tolist()))
    ('sub-phantom01', (48, 48), [1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if area_scale <= 0:
        raise ValueError(f"area_scale must be positive, got {area_scale}")
    unknown = [c for c in contrasts if c not in CONTRASTS]
    if unknown:
        raise ValueError(f"unknown contrast(s) {unknown}; known: {sorted(CONTRASTS)}")
    sp = (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    geom, shape3 = _draw_geometry(_subject_rng(seed, index, "geometry"), sp, shape, area_scale)
    nx, ny, nz = shape3
    px, py, pz = sp

    soft = _partial_volume(shape3, sp, geom._sections, supersample)
    canal = _partial_volume(
        shape3, sp, lambda z: geom._sections(z, geom.csf_scale_rl, geom.csf_scale_ap), supersample
    )
    csf = np.clip(canal - soft, 0.0, 1.0).astype(np.float32)
    tissue = np.clip(1.0 - canal, 0.0, 1.0).astype(np.float32)

    z = np.arange(nz) * pz
    levels = _slice_levels(geom, nz, pz, np.asarray(soft.any(axis=(0, 1))))
    # A slice has a true perpendicular area only when its whole slab lies inside the cord.
    whole = geom.contains_cord(z - pz / 2) & geom.contains_cord(z + pz / 2)
    true_area = np.where(whole, geom.area(z), np.nan).astype(np.float64)
    centre = geom.center(z)
    tangent = geom.tangent(z)
    tangent /= np.linalg.norm(tangent, axis=-1, keepdims=True)

    binary = (soft >= 0.5).astype(np.uint8)
    labeled = (binary * levels[None, None, :].astype(np.uint8)).astype(np.uint8)
    discs = np.zeros(shape3, dtype=np.uint8)
    for n, zd in geom.disc_z_mm.items():
        k = _disc_slice(zd, pz)
        if 0 <= k < nz:
            cx, cy = geom.center(zd)
            i, j = round(float(cx) / px), round(float(cy) / py)
            if 0 <= i < nx and 0 <= j < ny:
                discs[i, j, k] = n

    texture, bone, disc = _tissue_maps(geom, shape3, sp, _subject_rng(seed, index, "anatomy"))
    images = {
        c: _render(c, (soft, csf, tissue), texture, bone, disc, _subject_rng(seed, index, c))
        for c in contrasts
    }
    return PhantomSubject(
        subject_id=f"sub-phantom{index + 1:02d}",
        spacing=sp,
        affine=phantom_affine(shape3, sp),
        soft_seg=soft,
        binary_seg=binary,
        labeled_seg=labeled,
        disc_labels=discs,
        images=images,
        true_area=true_area,
        slice_levels=levels,
        centerline_mm=centre,
        tangent=tangent,
        csf_fraction=csf,
        area_factor=geom.area_factor,
        geometry=geom,
    )


def true_level_areas(subject: PhantomSubject) -> dict[int, float]:
    """Mean analytic perpendicular area (mm²) per level over that level's slices."""
    out: dict[int, float] = {}
    for level in sorted(set(subject.slice_levels.tolist()) - {0}):
        values = subject.true_area[subject.slice_levels == level]
        values = values[np.isfinite(values)]
        if values.size:
            out[int(level)] = float(values.mean())
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz as bytes, gzip header fixed (mtime 0, no file name): byte-deterministic."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)  # nibabel's level


def _write_bytes(payload: bytes, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(payload)


def save_subject(subject: PhantomSubject, root: Path) -> dict[str, Path]:
    """Write a subject as BIDS-like files under ``root``; return ``{"<contrast>/<kind>": path}``.

    Kinds: ``image`` (int16), ``gt_softseg`` (float32), ``gt_seg`` (uint8), ``labeled_seg``,
    ``disc_labels``. Ground truths live in ``derivatives/labels`` and are repeated per contrast
    (all contrasts share one grid). Files are byte-deterministic.
    """
    root = Path(root)
    sid = subject.subject_id
    anat = root / sid / "anat"
    labels = root / "derivatives" / "labels" / sid / "anat"
    # All contrasts share one grid: encode each ground truth once, write it per contrast.
    arrays: list[tuple[str, str, np.ndarray]] = [
        ("gt_softseg", "desc-softseg_label-SC_seg", subject.soft_seg.astype(np.float32)),
        ("gt_seg", "label-SC_seg", subject.binary_seg.astype(np.uint8)),
        ("labeled_seg", "label-SC_seg_labeled", subject.labeled_seg.astype(np.uint8)),
        ("disc_labels", "label-discs_dlabel", subject.disc_labels.astype(np.uint8)),
    ]
    truths = {kind: (suffix, _nifti_gz_bytes(a, subject.affine)) for kind, suffix, a in arrays}
    paths: dict[str, Path] = {}
    for contrast, image in subject.images.items():
        target = anat / f"{sid}_{contrast}.nii.gz"
        stored = np.clip(np.round(image), 0, np.iinfo(np.int16).max).astype(np.int16)
        _write_bytes(_nifti_gz_bytes(stored, subject.affine), target)
        paths[f"{contrast}/image"] = target
        for kind, (suffix, payload) in truths.items():
            target = labels / f"{sid}_{contrast}_{suffix}.nii.gz"
            _write_bytes(payload, target)
            paths[f"{contrast}/{kind}"] = target
    return paths


_PATH_COLUMNS = ("image", "gt_seg", "gt_softseg", "labeled_seg", "disc_labels")


def write_cohort(
    root: Path,
    n_subjects: int = 10,
    contrasts: Sequence[str] = ("T1w", "T2w", "T2star"),
    seed: int = 0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> pd.DataFrame:
    """Write ``n_subjects`` phantom subjects under ``root``; return the cohort table.

    One row per (subject, contrast): ``participant_id``, ``contrast``, the paths (relative to
    ``root``) ``image``, ``gt_seg``, ``gt_softseg``, ``labeled_seg``, ``disc_labels``, and the
    sha256 of every file (``image_sha256``, ``gt_seg_sha256``, ``gt_softseg_sha256``,
    ``labeled_seg_sha256``, ``disc_labels_sha256``). Also writes ``participants.tsv`` with each
    subject's area factor.
    """
    root = Path(root)
    rows: list[dict[str, str]] = []
    participants: list[dict[str, object]] = []
    for index in range(int(n_subjects)):
        subject = make_subject(index, seed, spacing=spacing, contrasts=contrasts)
        paths = save_subject(subject, root)
        participants.append(
            {
                "participant_id": subject.subject_id,
                "area_factor": round(subject.area_factor, 6),
                "length_factor": round(subject.geometry.length_factor, 6),
            }
        )
        for contrast in contrasts:
            row = {"participant_id": subject.subject_id, "contrast": contrast}
            for col in _PATH_COLUMNS:
                path = paths[f"{contrast}/{col}"]
                row[col] = path.relative_to(root).as_posix()
                row[f"{col}_sha256"] = sha256_file(path)
            rows.append(row)
    with atomic_path(root / "participants.tsv") as tmp:
        pd.DataFrame(participants).to_csv(tmp, sep="\t", index=False, lineterminator="\n")
    columns = ["participant_id", "contrast", *_PATH_COLUMNS]
    columns += [f"{c}_sha256" for c in ("image", "gt_seg", "disc_labels", "gt_softseg")]
    columns += ["labeled_seg_sha256"]
    return pd.DataFrame(rows, columns=columns)
