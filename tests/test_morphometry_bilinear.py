"""The bilinear reads of the measured AP profile (drift.measure.morphometry._bilinear)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from drift.measure.morphometry import _bilinear


def _padded(slices: np.ndarray) -> np.ndarray:
    """Slices (n, nx, ny) as _bilinear reads them: y-major (n, ny + 2, nx + 2), zero border."""
    out = np.zeros((slices.shape[0], slices.shape[2] + 2, slices.shape[1] + 2), np.float32)
    out[:, 1:-1, 1:-1] = slices.transpose(0, 2, 1)
    return out


def test_bilinear_matches_map_coordinates_constant_mode() -> None:
    rng = np.random.default_rng(0)
    slices = rng.random((3, 7, 5)).astype(np.float32)  # non-zero edges: the inside test runs
    i = rng.uniform(-2.0, 8.0, (3, 4, 6))
    j = rng.uniform(-2.0, 6.0, (3, 4, 6))
    i[0, 0, :3] = [0.0, 6.0, -1e-9]  # on and just past the grid's sample range
    got = _bilinear(_padded(slices), i, j, np.arange(3))
    for k in range(3):
        want = ndimage.map_coordinates(
            slices[k].astype(float), [i[k].ravel(), j[k].ravel()], order=1, mode="constant"
        )
        np.testing.assert_allclose(got[k].ravel(), want, atol=1e-6)


def test_bilinear_edge_zero_skips_only_a_redundant_test() -> None:
    rng = np.random.default_rng(1)
    slices = np.zeros((4, 9, 8), np.float32)
    slices[:, 1:-1, 1:-1] = rng.random((4, 7, 6))
    i = rng.uniform(-3.0, 11.0, (2, 5, 7))
    j = rng.uniform(-3.0, 10.0, (2, 5, 7))
    which = np.array([3, 1])
    fast = _bilinear(_padded(slices), i, j, which, edge_zero=True)
    checked = _bilinear(_padded(slices), i, j, which, edge_zero=False)
    np.testing.assert_array_equal(fast, checked)
