"""drift.gate.compare: paired statistics of two morphometrics tables, on analytic and seeded
data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from drift.gate import compare as cmp
from drift.gate.compare import compare_tables
from drift.measure import levels
from registry.errors import InputError

# ---------------------------------------------------------------------------------------------
# Seeded synthetic cohort: tidy tables with a realistic cord profile and known perturbations
# ---------------------------------------------------------------------------------------------

# Typical healthy CSA (mm²) and diameters (mm) per level C1..T1 (order of magnitude of the
# PAM50 normative database).
_CSA = {1: 78.0, 2: 75.0, 3: 78.0, 4: 82.0, 5: 81.0, 6: 75.0, 7: 60.0, 8: 50.0}
_AP = {lev: 0.095 * a + 0.6 for lev, a in _CSA.items()}
_RL = {lev: 0.15 * a + 1.5 for lev, a in _CSA.items()}


def make_table(
    n_subjects: int = 30,
    contrasts: tuple[str, ...] = ("T2w",),
    levels: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8),
    slices_per_level: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Tidy table: subject size varies ±10 %, contrasts ±2 %, slices ±2 % around the profile."""
    rng = np.random.default_rng(seed)
    subj = [f"sub-{i:03d}" for i in range(n_subjects)]
    s, c, lev, j = np.meshgrid(
        np.arange(n_subjects),
        np.arange(len(contrasts)),
        np.array(levels),
        np.arange(slices_per_level),
        indexing="ij",
    )
    s, c, lev, j = s.ravel(), c.ravel(), lev.ravel(), j.ravel()
    size = np.exp(rng.normal(0, 0.10, n_subjects))[s]
    con = np.exp(rng.normal(0, 0.02, (n_subjects, len(contrasts))))[s, c]
    out = pd.DataFrame(
        {
            "subject": np.array(subj)[s],
            "contrast": np.array(contrasts)[c],
            "level": lev,
            # PAM50-like: the slice index grows upwards (I->S), C2 above T1.
            "slice": (20 - lev) * slices_per_level + j,
        }
    )
    for name, prof in (("area", _CSA), ("diameter_AP", _AP), ("diameter_RL", _RL)):
        base = np.vectorize(prof.get)(lev)
        noise = np.exp(rng.normal(0, 0.02, len(out)))
        scale = size if name == "area" else np.sqrt(size)
        out[name] = base * scale * con * noise
    return out


def perturb(
    table: pd.DataFrame,
    factors: dict[tuple[str, int], float] | None = None,
    *,
    subject_sd: float = 0.01,
    slice_sd: float = 0.01,
    seed: int = 1,
) -> pd.DataFrame:
    """A 'candidate' version: each (metric, level) times its factor, times seeded
    multiplicative noise per (subject, contrast, level) and per slice."""
    rng = np.random.default_rng(seed)
    out = table.copy()
    keys = out[["subject", "contrast", "level"]].astype(str).agg("|".join, axis=1)
    codes, uniques = pd.factorize(keys)
    for metric in ("area", "diameter_AP", "diameter_RL"):
        per_unit = np.exp(rng.normal(0, subject_sd, len(uniques)))[codes]
        per_slice = np.exp(rng.normal(0, slice_sd, len(out)))
        factor = np.ones(len(out))
        for (m, lev), f in (factors or {}).items():
            if m == metric:
                factor[out["level"].to_numpy() == lev] = f
        out[metric] = out[metric] * factor * per_unit * per_slice
    return out


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return make_table()


# ---------------------------------------------------------------------------------------------
# Level names
# ---------------------------------------------------------------------------------------------


def test_level_names_follow_sct_numbering() -> None:
    names = [levels.level_name(n) for n in range(1, 25)]
    assert names[:8] == ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "T1"]
    assert names[18] == "T12" and names[19] == "L1" and names[23] == "L5"
    assert [levels.level_number(n) for n in names] == list(range(1, 25))
    with pytest.raises(ValueError):
        levels.level_name(0)
    with pytest.raises(ValueError):
        levels.level_number("C8")


# ---------------------------------------------------------------------------------------------
# Small statistics against textbook values and scipy
# ---------------------------------------------------------------------------------------------

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
    dtype=float,
)


def test_icc_a1_matches_shrout_fleiss_icc_2_1() -> None:
    # Published ICC(2,1) = 0.29 (Shrout & Fleiss 1979, Table 4; McGraw & Wong ICC(A,1)).
    # From their ANOVA table (BMS 11.24, JMS 32.49, EMS 1.02, k=4, n=6) the exact value is
    # (11.24 - 1.02) / (11.24 + 3 * 1.02 + 4 * (32.49 - 1.02) / 6) = 0.2898.
    assert cmp.icc_a1(SHROUT_FLEISS) == pytest.approx(0.2898, abs=5e-4)


def test_icc_a1_counts_a_systematic_offset_as_disagreement() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(75, 8, 40)
    assert cmp.icc_a1(np.column_stack([truth, truth])) == pytest.approx(1.0)
    # A constant offset d keeps consistency perfect but absolute agreement drops: MSE = 0,
    # MSR = 2 var, MSC = n d² / 2, so ICC(A,1) = var / (var + d² / 2) exactly.
    d = 8.0
    icc = cmp.icc_a1(np.column_stack([truth, truth + d]))
    var_s = truth.var(ddof=1)
    assert icc == pytest.approx(var_s / (var_s + d**2 / 2), rel=1e-9)
    assert icc < 0.8


def test_tost_pvalue_equals_two_one_sided_scipy_t_tests() -> None:
    rng = np.random.default_rng(7)
    d = rng.normal(0.003, 0.01, 25)
    m = 0.01
    lo, hi = math.log(1 - m), math.log(1 + m)
    p_lo = stats.ttest_1samp(d, lo, alternative="greater").pvalue
    p_hi = stats.ttest_1samp(d, hi, alternative="less").pvalue
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert cmp.tost_pvalue(d.mean(), se, d.size - 1, m) == pytest.approx(max(p_lo, p_hi))


def test_tost_pvalue_degenerate_cases() -> None:
    assert cmp.tost_pvalue(0.0, 0.0, 10, 0.01) == 0.0
    assert cmp.tost_pvalue(math.log(0.98), 0.0, 10, 0.01) == 1.0
    assert math.isnan(cmp.tost_pvalue(0.0, 0.01, 0, 0.01))
    assert math.isnan(cmp.tost_pvalue(math.nan, 0.01, 10, 0.01))


def test_wilcoxon_matches_scipy_and_handles_ties() -> None:
    rng = np.random.default_rng(2)
    d = rng.normal(0.01, 0.02, 30)
    assert cmp.wilcoxon_pvalue(d) == pytest.approx(stats.wilcoxon(d).pvalue)
    assert cmp.wilcoxon_pvalue(np.zeros(8)) == 1.0
    assert math.isnan(cmp.wilcoxon_pvalue(np.array([0.1])))


def test_bland_altman_known_values() -> None:
    b = np.array([70.0, 80.0, 90.0, 100.0])
    c = b + np.array([1.0, 3.0, 1.0, 3.0])  # bias 2, SD 1.1547
    ba = cmp.bland_altman(b, c)
    sd = np.std([1.0, 3.0, 1.0, 3.0], ddof=1)
    assert ba.bias == pytest.approx(2.0)
    assert ba.loa == pytest.approx((2 - 1.959964 * sd, 2 + 1.959964 * sd))
    pct = 100 * (c - b) / ((c + b) / 2)
    assert ba.bias_pct == pytest.approx(pct.mean())


def test_bootstrap_ci_is_seeded_and_about_the_normal_width() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, 200)
    lo, hi = cmp.bootstrap_mean_ci(x, n_boot=4000, seed=11)
    assert (lo, hi) == cmp.bootstrap_mean_ci(x, n_boot=4000, seed=11)
    assert (lo, hi) != cmp.bootstrap_mean_ci(x, n_boot=4000, seed=12)
    assert lo < x.mean() < hi
    normal_width = 2 * 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert hi - lo == pytest.approx(normal_width, rel=0.1)


def test_robust_outliers_flags_the_far_subject_only() -> None:
    d = np.array([0.001, -0.002, 0.0, 0.003, -0.001, 0.002, -0.1])
    mask, z = cmp.robust_outliers(d)
    assert mask.tolist() == [False] * 6 + [True]
    assert z[-1] < -3.5
    # Identical ratios up to rounding: nobody is an outlier (the floor).
    same = np.log(np.full(50, 0.98) * (1 + np.linspace(-1e-15, 1e-15, 50)))
    assert not cmp.robust_outliers(same)[0].any()


# ---------------------------------------------------------------------------------------------
# The whole comparison
# ---------------------------------------------------------------------------------------------


def test_identical_tables_give_exactly_one(cohort: pd.DataFrame) -> None:
    res = compare_tables(cohort, cohort.copy())
    lv = res.levels
    assert set(lv["metric"]) == {"area", "diameter_AP", "diameter_RL"}
    assert list(lv.loc[lv["metric"] == "area", "level_name"]) == [
        "C2", "C3", "C4", "C5", "C6", "C7", "T1",
    ]  # fmt: skip
    assert (lv["scaling_factor"] == 1.0).all()
    assert (lv["ci95_low"] == 1.0).all() and (lv["ci95_high"] == 1.0).all()
    assert (lv["slicewise_mean_ratio"] == 1.0).all() and (lv["slicewise_cov"] == 0.0).all()
    assert (lv["tost_p"] == 0.0).all() and (lv["wilcoxon_p"] == 1.0).all()
    assert (lv["ba_bias"] == 0.0).all() and lv["icc"].to_numpy() == pytest.approx(1.0)
    assert (lv["n_subjects"] == 30).all() and (lv["coverage"] == 1.0).all()
    assert res.outliers.empty
    assert res.subject_sets["baseline_only"] == [] and len(res.subject_sets["paired"]) == 30


def test_injected_scaling_is_recovered_within_its_ci(cohort: pd.DataFrame) -> None:
    injected = {("area", 3): 1.02, ("area", 5): 0.98, ("diameter_RL", 4): 1.015}
    cand = perturb(cohort, injected)
    res = compare_tables(cohort, cand)
    for row in res.levels.itertuples():
        truth = injected.get((row.metric, row.level), 1.0)
        # Within 4 standard errors (21 estimates: a miss would be a bug, not bad luck).
        assert abs(math.log(row.scaling_factor / truth)) < 4 * row.log_se, (row.metric, row.level)
        if truth != 1.0:  # detected: 1 lies outside the CI
            assert not row.ci95_low <= 1.0 <= row.ci95_high, (row.metric, row.level)
        # The prior art's slice-wise mean ratio tells the same story.
        assert abs(math.log(row.slicewise_mean_ratio / truth)) < 4 * row.log_se + 1e-3
    c3 = res.level_row("area", 3)
    c2 = res.level_row("area", 2)
    assert c3 is not None and c2 is not None
    assert c3["ci95_low"] > 1.01 and c3["wilcoxon_p"] < 1e-6 and c3["tost_p"] > 0.5
    assert c2["tost_p"] < 0.05 and c2["ci95_low"] < 1 < c2["ci95_high"]
    # Bland-Altman bias in mm² ≈ 2 % of the C3 mean; ICC still high (same cords).
    assert c3["ba_bias"] == pytest.approx(0.02 * c3["baseline_mean"], rel=0.2)
    sf = c3["scaling_factor"]
    assert c3["ba_bias_pct"] == pytest.approx(100 * (sf - 1) / ((sf + 1) / 2), abs=0.1)
    assert 0.8 < c3["icc"] < c2["icc"] <= 1.0


def test_ci_covers_the_injected_factor_at_about_the_nominal_rate(cohort: pd.DataFrame) -> None:
    # 10 seeded candidates x 21 (metric, level) CIs. A percentile bootstrap with 30 subjects
    # covers slightly under 95 %; below 88 % (binomial p < 0.001 at 95 %) would be a bug.
    injected = {("area", 3): 1.02, ("area", 5): 0.98, ("diameter_RL", 4): 1.015}
    covered = []
    for seed in range(1, 11):
        res = compare_tables(cohort, perturb(cohort, injected, seed=seed), n_boot=1000)
        truth = [
            injected.get((m, lev), 1.0)
            for m, lev in zip(res.levels["metric"], res.levels["level"], strict=True)
        ]
        covered += list((res.levels["ci95_low"] <= truth) & (truth <= res.levels["ci95_high"]))
    assert len(covered) == 210
    assert 0.88 <= np.mean(covered) <= 1.0


def test_scaling_factor_is_geometric_mean_of_level_mean_ratios() -> None:
    base = make_table(n_subjects=6, slices_per_level=4, seed=4)
    cand = perturb(base, subject_sd=0.03, seed=9)
    res = compare_tables(base, cand, metrics=["area"])
    lb = base.groupby(["subject", "level"])["area"].mean()
    lc = cand.groupby(["subject", "level"])["area"].mean()
    expected = np.exp(np.log(lc / lb).groupby("level").mean())
    got = res.levels.set_index("level")["scaling_factor"]
    assert got.to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-12)


def test_contrasts_pair_per_subject_and_contrast_and_subjects_weigh_the_same() -> None:
    base = make_table(n_subjects=12, contrasts=("T1w", "T2w", "T2star"), seed=2)
    # Balanced: the factor is the geometric mean over all (subject, contrast) pairs.
    cand = perturb(base, {("area", 3): 1.02}, subject_sd=0.02, seed=3)
    res = compare_tables(base, cand, metrics=["area"])
    lb = base.groupby(["subject", "contrast", "level"])["area"].mean()
    lc = cand.groupby(["subject", "contrast", "level"])["area"].mean()
    expected = np.exp(np.log(lc / lb).groupby("level").mean())
    assert res.levels["scaling_factor"].to_numpy() == pytest.approx(expected.to_numpy())
    assert (res.levels["n_subjects"] == 12).all() and (res.levels["n_pairs"] == 36).all()
    # Unbalanced: sub-000 keeps only T2w, scaled by 1.10 there. Its one pair weighs as much
    # as another subject's three.
    cand2 = cand.copy()
    sub0 = cand2["subject"] == "sub-000"
    cand2.loc[sub0, "area"] = base.loc[sub0, "area"] * 1.10
    cand2 = cand2[~sub0 | (cand2["contrast"] == "T2w")]
    base2 = base[~sub0 | (base["contrast"] == "T2w")]
    res2 = compare_tables(base2, cand2, metrics=["area"])
    subj = res2.subjects[res2.subjects["level"] == 2].set_index("subject")["log_ratio"]
    assert subj["sub-000"] == pytest.approx(math.log(1.10))
    assert res2.level_row("area", 2)["scaling_factor"] == pytest.approx(math.exp(subj.mean()))


def test_per_contrast_breakdown_isolates_a_contrast_specific_bias() -> None:
    base = make_table(n_subjects=20, contrasts=("T1w", "T2w"), seed=6)
    cand = perturb(base, seed=7)
    t1 = cand["contrast"] == "T1w"
    cand.loc[t1, "area"] *= 1.03
    res = compare_tables(base, cand, metrics=["area"])
    pc = res.per_contrast.set_index(["contrast", "level"])
    for lev in range(2, 9):
        assert pc.loc[("T1w", lev), "scaling_factor"] == pytest.approx(1.03, abs=0.006)
        assert pc.loc[("T2w", lev), "scaling_factor"] == pytest.approx(1.0, abs=0.006)
        # Both contrasts in every subject: the level factor is their geometric mean.
        assert res.level_row("area", lev)["scaling_factor"] == pytest.approx(
            math.sqrt(
                pc.loc[("T1w", lev), "scaling_factor"] * pc.loc[("T2w", lev), "scaling_factor"]
            )
        )


def test_slicewise_ratio_and_its_cov_across_slices() -> None:
    # Ratio 1 + 0.01 * (k - 4.5) on the 10 slices k of every level: mean 1, CoV known.
    base = make_table(n_subjects=8, seed=8)
    cand = base.copy()
    k = base["slice"] % 10
    ratio = 1 + 0.01 * (k - 4.5)
    cand["area"] = base["area"] * ratio
    res = compare_tables(base, cand, metrics=["area"])
    r = np.array([1 + 0.01 * (kk - 4.5) for kk in range(10)])
    for row in res.levels.itertuples():
        assert row.slicewise_mean_ratio == pytest.approx(1.0)
        assert row.slicewise_cov == pytest.approx(100 * r.std(ddof=1) / r.mean())
        assert row.n_slices == 10
    prof = res.slice_profile.set_index("slice")
    assert len(prof) == 70
    assert prof.loc[(20 - 3) * 10 + 9, "level"] == 3
    assert prof.loc[(20 - 3) * 10 + 9, "scaling_factor"] == pytest.approx(1.045)


def test_tables_without_slices_compare_level_values() -> None:
    base = make_table(n_subjects=10, slices_per_level=1, seed=1).drop(columns="slice")
    cand = base.assign(area=base["area"] * 1.01)
    res = compare_tables(base, cand)
    area = res.levels[res.levels["metric"] == "area"]
    assert area["scaling_factor"].to_numpy() == pytest.approx(1.01)
    assert area["slicewise_mean_ratio"].isna().all()
    assert res.slice_profile.empty


def test_within_subject_spread_across_contrasts() -> None:
    base = pd.DataFrame(
        {
            "subject": ["sub-1"] * 3 + ["sub-2"] * 3,
            "contrast": ["T1w", "T2w", "T2star"] * 2,
            "level": 3,
            "area": [70.0, 75.0, 80.0, 60.0, 60.0, 60.0],
        }
    )
    cand = base.assign(area=[75.0, 75.0, 75.0, 60.0, 66.0, 54.0])
    res = compare_tables(base, cand, metrics=["area"])
    spread = res.contrast_spread.set_index("version")
    cov1 = 100 * np.std([70, 75, 80], ddof=1) / 75
    assert spread.loc["baseline", "mean_cov_pct"] == pytest.approx(cov1 / 2)
    assert spread.loc["candidate", "mean_cov_pct"] == pytest.approx(
        100 * np.std([60, 66, 54], ddof=1) / 60 / 2
    )
    assert spread.loc["baseline", "n_subjects"] == 2


def test_outlier_subject_is_named(cohort: pd.DataFrame) -> None:
    cand = perturb(cohort, seed=4)
    bad = (cand["subject"] == "sub-007") & (cand["level"] == 4)
    cand.loc[bad, "area"] *= 0.85
    res = compare_tables(cohort, cand)
    out = res.outliers
    assert list(out[["metric", "level", "subject"]].itertuples(index=False, name=None)) == [
        ("area", 4, "sub-007")
    ]
    assert out["ratio"].iloc[0] == pytest.approx(0.85, abs=0.02)


def test_coverage_counts_measurements_the_candidate_lost(cohort: pd.DataFrame) -> None:
    cand = cohort.copy()
    lost = cand["subject"].isin(["sub-001", "sub-002", "sub-003"]) & (cand["level"] == 8)
    cand.loc[lost, "area"] = np.nan  # the candidate missed T1 in three subjects
    cand = cand[cand["subject"] != "sub-029"]  # and one whole subject
    res = compare_tables(cohort, cand, metrics=["area"])
    t1 = res.level_row("area", 8)
    c2 = res.level_row("area", 2)
    assert (t1["n_baseline"], t1["n_pairs"], t1["n_subjects"]) == (30, 26, 26)
    assert t1["coverage"] == pytest.approx(26 / 30)
    assert c2["coverage"] == pytest.approx(29 / 30)
    assert res.subject_sets["baseline_only"] == ["sub-029"]
    assert len(res.subject_sets["common"]) == 29


def test_ground_truth_and_dice_summaries(cohort: pd.DataFrame) -> None:
    truth = cohort
    base = truth.assign(area=truth["area"] * 1.05)
    cand = truth.assign(area=truth["area"] * 0.97)
    dice = pd.DataFrame(
        {
            "subject": ["sub-000", "sub-001", "sub-000", "sub-001"],
            "contrast": "T2w",
            "version": ["baseline", "baseline", "candidate", "candidate"],
            "dice": [0.90, 0.92, 0.85, 0.95],
        }
    )
    res = compare_tables(base, cand, metrics=["area"], ground_truth=truth, dice=dice)
    gt = res.ground_truth.set_index(["level", "version"])
    assert gt.loc[(3, "baseline"), "mean_error_pct"] == pytest.approx(5.0)
    assert gt.loc[(3, "candidate"), "mean_abs_error_pct"] == pytest.approx(3.0)
    assert gt.loc[(3, "candidate"), "n"] == 30
    d = res.dice.set_index("version")
    assert d.loc["candidate", "mean"] == pytest.approx(0.90)
    assert d.loc["candidate", "min_subject"] == "sub-000"
    with pytest.raises(InputError, match="version must be"):
        compare_tables(base, cand, dice=dice.assign(version="v2"))


def test_paired_stats_columns_are_documented() -> None:
    grp = pd.DataFrame({"baseline": [1.0, 2.0, 3.0], "candidate": [1.1, 2.0, 2.9]})
    grp["log_ratio"] = np.log(grp["candidate"] / grp["baseline"])
    assert tuple(cmp.paired_stats(grp, margin=0.01)) == cmp._PAIRED_STAT_COLUMNS


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t: t.drop(columns="level"), "missing column"),
        (lambda t: pd.concat([t, t.iloc[:1]]), "duplicated"),
        (lambda t: t.assign(level=t["level"].astype(float).where(t.index > 3)), "'level' must"),
        (lambda t: t.assign(level=t["level"] + 25), "'level' must hold integers 0..29"),
        (lambda t: t.assign(slice=t["slice"] + 0.5), "'slice' must hold integers"),
    ],
)
def test_contract_violations_are_input_errors(cohort: pd.DataFrame, mutate, match: str) -> None:
    with pytest.raises(InputError, match=match):
        compare_tables(cohort, mutate(cohort))


def test_level_zero_rows_are_outside_the_levels_and_dropped(cohort: pd.DataFrame) -> None:
    extra = cohort[cohort["level"] == 2].assign(level=0, slice=lambda t: t["slice"] + 1000)
    res = compare_tables(pd.concat([cohort, extra]), cohort)
    assert 0 not in set(res.levels["level"])
    assert (res.levels["scaling_factor"] == 1.0).all()


def test_metrics_must_be_ratio_scale_and_present(cohort: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="ratio scale"):
        compare_tables(cohort, cohort, metrics=["angle_AP"])
    with pytest.raises(InputError, match="candidate table: no 'diameter_AP'"):
        compare_tables(cohort, cohort.drop(columns="diameter_AP"), metrics=["diameter_AP"])


def test_real_normative_database_against_a_shrunk_copy(shared_data) -> None:
    from drift.measure.sctcsv import read_sct_csv, sct_to_tidy

    files = sorted((shared_data / "normative_r20250321" / "spinal_cord").glob("sub-*_T2w_*.csv"))
    assert len(files) == 203
    base = pd.concat(
        [sct_to_tidy(read_sct_csv(f), f.name.split("_")[0], "T2w") for f in files[:40]],
        ignore_index=True,
    )
    cand = base.assign(area=base["area"] * 0.98)
    res = compare_tables(base, cand)
    area = res.levels[(res.levels["metric"] == "area") & res.levels["level"].between(2, 8)]
    assert area["scaling_factor"].to_numpy() == pytest.approx(0.98, rel=1e-12)
    assert (area["n_subjects"] == 40).all()
    diam = res.levels[res.levels["metric"] == "diameter_AP"]
    assert (diam["scaling_factor"] == 1.0).all()
