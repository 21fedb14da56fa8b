"""Morphometry on analytic phantoms (true area known) and on the real SCT test subject."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from drift.measure.levels import (
    aggregate,
    normalize_pam50,
    pam50_levels,
    pam50_table_from_image,
    slice_levels_from_discs,
    slice_levels_from_labeled,
)
from drift.measure.morphometry import correction_factors, slice_metrics, upsample_inplane
from drift.measure.nifti import load_labels, load_segmentation, load_volume
from drift.measure.phantoms import cylinder_axis, elliptic_cylinder

SPACING = (0.8, 0.8, 0.8)
A_MM, B_MM = 4.5, 3.5
TRUE_AREA = np.pi * A_MM * B_MM
TILTS = [(0, 0), (15, 0), (30, 0), (0, 20), (0, 30), (25, 11), (20, 21), (30, 30), (-18, 24)]


@pytest.fixture(scope="module")
def cylinders() -> dict[tuple[int, int], np.ndarray]:
    return {
        tilt: elliptic_cylinder((40, 40, 30), SPACING, A_MM, B_MM, *tilt, supersample=8)
        for tilt in TILTS
    }


def interior(metrics, margin: int = 5):
    return metrics.iloc[margin:-margin]


@pytest.mark.parametrize("tilt", TILTS)
def test_exact_area_within_0p3_percent_of_pi_a_b(cylinders, tilt) -> None:
    m = interior(slice_metrics(cylinders[tilt], SPACING, "exact"))
    assert m["area"].mean() == pytest.approx(TRUE_AREA, rel=3e-3)
    # per slice too, not only on average
    assert np.abs(m["area"] / TRUE_AREA - 1).max() < 0.01


@pytest.mark.parametrize("tilt", TILTS)
def test_angles_recover_the_cylinder_tilt(cylinders, tilt) -> None:
    m = interior(slice_metrics(cylinders[tilt], SPACING, "exact"))
    assert m["angle_AP"].mean() == pytest.approx(tilt[0], abs=0.5)
    assert m["angle_RL"].mean() == pytest.approx(tilt[1], abs=0.5)


@pytest.mark.parametrize("tilt", [(25, 11), (20, 21), (30, 30), (0, 30)])
def test_sct_mode_applies_cos_cos(cylinders, tilt) -> None:
    exact = interior(slice_metrics(cylinders[tilt], SPACING, "exact"))
    sct = interior(slice_metrics(cylinders[tilt], SPACING, "sct"))
    none = interior(slice_metrics(cylinders[tilt], SPACING, "none"))
    ap, rl = np.radians(sct["angle_AP"]), np.radians(sct["angle_RL"])
    np.testing.assert_allclose(sct["area"], none["area"] * np.cos(ap) * np.cos(rl), rtol=1e-9)
    # SCT's documented under-estimate on compound tilts, against the exact factor.
    u = cylinder_axis(*tilt)
    expected_ratio = np.cos(np.radians(tilt[0])) * np.cos(np.radians(tilt[1])) / u[2]
    assert (sct["area"] / exact["area"]).mean() == pytest.approx(expected_ratio, abs=1e-3)
    np.testing.assert_allclose(none["length"], SPACING[2])
    np.testing.assert_allclose(sct["length"], SPACING[2] / (np.cos(ap) * np.cos(rl)))


def test_sct_underestimate_figures_from_the_design() -> None:
    def ratio(ap: float, rl: float) -> float:
        t = np.array([[np.tan(np.radians(ap)), np.tan(np.radians(rl)), 1.0]])
        return float(correction_factors(t, "sct")[0] / correction_factors(t, "exact")[0])

    assert (ratio(25, 11) - 1) * 100 == pytest.approx(-0.33, abs=0.02)
    assert (ratio(20, 21) - 1) * 100 == pytest.approx(-0.75, abs=0.06)
    assert ratio(30, 0) == pytest.approx(1.0, abs=1e-12)


def test_soft_mask_is_normalised_per_slice_like_sct(cylinders) -> None:
    mask = cylinders[(0, 0)]
    full = interior(slice_metrics(mask, SPACING))
    half = interior(slice_metrics(mask * 0.5, SPACING))
    raw = interior(slice_metrics(mask * 0.5, SPACING, normalize=False))
    np.testing.assert_allclose(half["area"], full["area"], rtol=1e-6)
    np.testing.assert_allclose(raw["area"], full["area"] * 0.5, rtol=1e-6)


def test_diameters_eccentricity_orientation_of_a_straight_elliptic_cylinder(cylinders) -> None:
    m = interior(slice_metrics(cylinders[(0, 0)], SPACING))
    assert m["diameter_RL"].mean() == pytest.approx(2 * A_MM, rel=0.02)
    assert m["diameter_AP_ellipse"].mean() == pytest.approx(2 * B_MM, rel=0.02)
    # SCT 7.4's measured diameter_AP: the AP extent averaged over a 3 mm RL band through the
    # centre, (2b/3) * integral of sqrt(1 - x²/a²) over |x| <= 1.5 mm.
    x = np.linspace(-1.5, 1.5, 30001)
    band_mean = 2 * B_MM * np.sqrt(1 - (x / A_MM) ** 2).mean()
    assert m["diameter_AP"].mean() == pytest.approx(band_mean, rel=0.01)
    np.testing.assert_allclose(m["length_anterior"] + m["length_posterior"], m["diameter_AP"])
    assert m["length_anterior"].mean() == pytest.approx(band_mean / 2, rel=0.05)
    assert m["eccentricity"].mean() == pytest.approx(np.sqrt(1 - (B_MM / A_MM) ** 2), abs=0.03)
    assert m["orientation"].abs().max() < 1.0
    assert m["solidity"].min() > 0.95
    # Swap the axes: the major axis now lies along AP (orientation is signed since SCT 7.4).
    swapped = elliptic_cylinder((40, 40, 30), SPACING, B_MM, A_MM)
    s = interior(slice_metrics(swapped, SPACING))
    assert s["diameter_AP_ellipse"].mean() == pytest.approx(2 * A_MM, rel=0.02)
    assert s["orientation"].abs().min() > 89.0


@pytest.mark.parametrize("tilt", [(30, 0), (0, 30), (25, 11)])
def test_exact_diameters_are_perpendicular_to_the_cord(cylinders, tilt) -> None:
    m = interior(slice_metrics(cylinders[tilt], SPACING, "exact"))
    none = interior(slice_metrics(cylinders[tilt], SPACING, "none"))
    assert m["diameter_RL"].mean() == pytest.approx(2 * A_MM, rel=0.03)
    assert m["diameter_AP_ellipse"].mean() == pytest.approx(2 * B_MM, rel=0.03)
    # Without correction the slice cuts the cord obliquely: a longer section.
    assert none["diameter_RL"].mean() + none["diameter_AP_ellipse"].mean() > (
        m["diameter_RL"].mean() + m["diameter_AP_ellipse"].mean() + 0.2
    )


def test_solidity_of_an_l_shape() -> None:
    seg = np.zeros((40, 40, 5), np.float32)
    seg[5:25, 5:15, :] = 1
    seg[5:15, 15:25, :] = 1
    # Convex hull of the L (three 10x10 squares out of a 20x20 box): area 350 for 300.
    assert slice_metrics(seg, (1, 1, 1))["solidity"].iloc[2] == pytest.approx(300 / 350, rel=0.015)


def test_two_components_give_nan_on_that_slice_only() -> None:
    seg = np.zeros((30, 30, 6), np.float32)
    seg[5:12, 5:12, :] = 1
    seg[20:25, 20:25, 3] = 1
    m = slice_metrics(seg, (1, 1, 1))
    assert m.loc[3].drop("n_components").isna().all()
    assert m.loc[3, "n_components"] == 2
    assert m.loc[2, "area"] == pytest.approx(49.0)


def test_empty_slices_and_outside_cord_are_nan() -> None:
    seg = np.zeros((10, 10, 8), np.float32)
    seg[3:6, 3:6, 2:5] = 1
    m = slice_metrics(seg, (1, 1, 1))
    assert m["area"].notna().tolist() == [False, False, True, True, True, False, False, False]


def test_upsampling_matches_scipy_zoom() -> None:
    vol = np.random.default_rng(3).random((7, 9, 3)).astype(np.float32)
    expected = ndimage.zoom(vol, (5, 5, 1), order=1, grid_mode=True, mode="grid-constant")
    np.testing.assert_allclose(upsample_inplane(vol), expected, atol=1e-6)


def test_aggregate_per_level_and_range_use_population_std() -> None:
    import pandas as pd

    m = pd.DataFrame({"area": [10.0, 20.0, np.nan, 40.0], "length": [1.0, 1.0, 1.0, 2.0]})
    levels = np.array([3, 3, 4, 4])
    per_level = aggregate(m, levels, perlevel=True).set_index("VertLevel")
    assert per_level.loc[3, "MEAN(area)"] == 15.0
    assert per_level.loc[3, "STD(area)"] == 5.0
    assert per_level.loc[4, "MEAN(area)"] == 40.0  # NaN slice ignored
    assert per_level.loc[4, "SUM(length)"] == 3.0
    assert per_level.loc[3, "Slice (I->S)"] == "0:1"
    ranged = aggregate(m, levels, vert=(3, 4))
    assert ranged["VertLevel"].tolist() == ["3:4"]
    assert ranged["MEAN(area)"].iloc[0] == pytest.approx(70 / 3)


# ------------------------------------------------------------------------------------------
# Real data: the PAM50 template and the SCT test subject (../shared/data)
# ------------------------------------------------------------------------------------------


def test_committed_pam50_table_matches_the_template(shared_data) -> None:
    levels = load_volume(shared_data / "PAM50" / "PAM50_levels.nii.gz").data
    rebuilt = pam50_table_from_image(levels)
    committed = pam50_levels()
    assert rebuilt.to_dict("list") == committed.to_dict("list")
    c2 = committed.set_index("name").loc["C2"]
    assert (c2["slice_min"], c2["slice_max"]) == (908, 938)


def test_disc_rule_reproduces_pam50_levels(shared_data) -> None:
    levels = load_volume(shared_data / "PAM50" / "PAM50_levels.nii.gz").data
    discs = load_volume(shared_data / "PAM50" / "PAM50_label_disc.nii.gz").data
    from_labels = slice_levels_from_labeled(levels)
    # cordwatch's older rule (--interpolate-discs): level N from disc N+1 up to disc N.
    old = slice_levels_from_discs(discs, interpolate_missing=True)
    both = (from_labels > 0) & (old > 0)
    assert both.sum() > 900
    np.testing.assert_array_equal(old[both], from_labels[both])
    # SCT 7.4's rule: the slice of disc N belongs to level N (below it), so it differs from
    # PAM50_levels on the 20 disc slices only, by one level.
    sct = slice_levels_from_discs(discs)
    both = (from_labels > 0) & (sct > 0)
    differ = np.flatnonzero(both & (sct != from_labels))
    disc_slices = {int(z) for z in np.argwhere((discs > 0) & (discs <= 25))[:, 2]}
    assert set(differ.tolist()) <= disc_slices and len(differ) == 19
    np.testing.assert_array_equal(sct[differ], from_labels[differ] + 1)


def test_pam50_normalisation_of_the_template_is_the_identity(shared_data) -> None:
    cord = load_segmentation(shared_data / "PAM50" / "PAM50_cord.nii.gz")
    levels = slice_levels_from_labeled(
        load_labels(shared_data / "PAM50" / "PAM50_levels.nii.gz", cord).data
    )
    metrics = slice_metrics(cord.data, cord.spacing)
    normalised, norm_levels = normalize_pam50(metrics, levels)
    table = pam50_levels().set_index("level")
    for level in (3, 4, 5, 6, 7):  # inner levels: slice ranges map onto themselves
        rows = norm_levels == level
        slices = normalised.index[rows]
        assert (slices.min(), slices.max()) == tuple(table.loc[level, ["slice_min", "slice_max"]])
        np.testing.assert_allclose(
            normalised.loc[slices, "area"], metrics.loc[slices, "area"], rtol=1e-9
        )


@pytest.fixture(scope="module")
def t2(shared_data):
    base = shared_data / "sct_testing_data" / "t2"
    seg = load_segmentation(base / "t2_seg-manual.nii.gz")
    return {
        "seg": seg,
        "levels": slice_levels_from_labeled(
            load_labels(base / "t2_seg-manual_labeled.nii.gz", seg).data
        ),
        "discs": load_labels(base / "labels.nii.gz", seg).data,
        "base": base,
    }


def test_real_subject_per_slice_area_is_the_voxel_count_without_correction(t2) -> None:
    seg = t2["seg"]
    m = slice_metrics(seg.data, seg.spacing, "none")
    counts = (seg.data > 0).sum(axis=(0, 1)) * np.prod(seg.spacing[:2])
    cord = counts > 0
    np.testing.assert_allclose(m["area"].to_numpy()[cord], counts[cord])
    exact = slice_metrics(seg.data, seg.spacing, "exact")
    assert (exact["area"] <= m["area"] + 1e-9)[cord].all()


def test_real_subject_per_level_values(t2) -> None:
    seg, levels = t2["seg"], t2["levels"]
    m = slice_metrics(seg.data, seg.spacing, "exact")
    per_level = aggregate(m, levels, perlevel=True).set_index("VertLevel")
    assert sorted(per_level.index) == [2, 3, 4, 5]
    for level in (2, 3, 4):
        expected = m["area"].to_numpy()[levels == level]
        expected = expected[np.isfinite(expected)]
        assert per_level.loc[level, "MEAN(area)"] == pytest.approx(expected.mean())
        assert per_level.loc[level, "STD(area)"] == pytest.approx(expected.std())
        # A healthy adult cervical cord at 1 mm: 60-95 mm², ~8 x 12 mm.
        assert 60 < per_level.loc[level, "MEAN(area)"] < 95
        assert 6 < per_level.loc[level, "MEAN(diameter_AP)"] < 10
        assert 10 < per_level.loc[level, "MEAN(diameter_RL)"] < 15
    # Length of a level = its slice count at 1 mm, lengthened by the cord's tilt.
    assert per_level.loc[3, "SUM(length)"] == pytest.approx((levels == 3).sum(), rel=0.02)


def test_real_subject_automatic_segmentations_agree_with_the_manual_one(t2) -> None:
    seg, levels = t2["seg"], t2["levels"]
    manual = aggregate(slice_metrics(seg.data, seg.spacing), levels, vert=(2, 4))
    for name in ("t2_seg-deepseg_sc-2d.nii.gz", "t2_seg-deepseg_sc-3d.nii.gz"):
        auto = load_segmentation(t2["base"] / name)
        result = aggregate(slice_metrics(auto.data, auto.spacing), levels, vert=(2, 4))
        ratio = result["MEAN(area)"].iloc[0] / manual["MEAN(area)"].iloc[0]
        assert 0.85 < ratio < 1.15, name


def test_real_subject_pam50_output_matches_the_template_table(t2) -> None:
    seg, levels = t2["seg"], t2["levels"]
    normalised, norm_levels = normalize_pam50(slice_metrics(seg.data, seg.spacing), levels)
    table = pam50_levels().set_index("level")
    assert set(np.unique(norm_levels)) == {2, 3, 4, 5}
    for slice_, level in zip(normalised.index, norm_levels, strict=True):
        assert table.loc[level, "slice_min"] <= slice_ <= table.loc[level, "slice_max"]
    # Inner levels are complete: every PAM50 slice of C3 and C4 is filled.
    for level in (3, 4):
        assert (norm_levels == level).sum() == table.loc[level, "n_slices"]
    # Interpolation keeps the level's values within their range.
    raw = slice_metrics(seg.data, seg.spacing)["area"].to_numpy()
    c3 = raw[levels == 3]
    assert normalised["area"][norm_levels == 3].between(c3.min() - 1e-9, c3.max() + 1e-9).all()
    assert normalised["area"][norm_levels == 3].mean() == pytest.approx(c3.mean(), rel=0.01)


def test_real_subject_levels_from_discs(t2) -> None:
    seg = t2["seg"]
    # labels.nii.gz holds discs 3 (z=44) and 5 (z=9) only. SCT 7.4: up to and including disc
    # 5's projection is level 5, then level 3 up to disc 3 (disc 4 is not interpolated),
    # above it level 2; every slice of the cord gets a level.
    levels = slice_levels_from_discs(
        t2["discs"], seg.data, seg.affine, flips=(True, True, False), pz=seg.spacing[2]
    )
    cord = np.flatnonzero(seg.data.any(axis=(0, 1)))
    assert np.flatnonzero(levels == 5).tolist() == list(range(cord[0], 10))
    assert np.flatnonzero(levels == 3).tolist() == list(range(10, 45))
    assert np.flatnonzero(levels == 2).tolist() == list(range(45, cord[-1] + 1))
    # The older rule (--interpolate-discs): disc 4 interpolated at z=26.5, nothing outside.
    old = slice_levels_from_discs(t2["discs"], interpolate_missing=True)
    assert set(np.unique(old)) == {0, 3, 4}
    assert np.flatnonzero(old == 3).tolist() == list(range(27, 44))
    assert np.flatnonzero(old == 4).tolist() == list(range(9, 27))


def test_real_subject_pam50_outer_levels_scaled_n_over_m_as_sct(t2) -> None:
    """SCT's interpolate_metrics: the outer levels use the mean PAM50/subject slice ratio
    m/n of the inner levels (cordwatch used (m-1)/(n-1) before), anchored at the inner
    boundary; every PAM50 slice of a present level is listed, unfilled ones NaN."""
    seg, levels = t2["seg"], t2["levels"]
    metrics = slice_metrics(seg.data, seg.spacing, "sct")
    normalised, norm_levels = normalize_pam50(metrics, levels)
    table = pam50_levels().set_index("level")
    assert len(normalised) == int(table.loc[[2, 3, 4, 5], "n_slices"].sum())
    scale = np.mean([table.loc[lv, "n_slices"] / (levels == lv).sum() for lv in (3, 4)])
    for level, anchor in ((2, "slice_min"), (5, "slice_max")):
        rows = normalised[norm_levels == level]
        filled = rows.index[rows["area"].notna()]
        n = int(min(int(scale * (levels == level).sum()), table.loc[level, "n_slices"]))
        assert len(filled) == n
        assert table.loc[level, anchor] in filled  # anchored at the inner boundary
    assert normalised["length"].isna().all()  # SCT does not interpolate length
