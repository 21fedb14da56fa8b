"""drift.policy: the gate policy file, the conditions, the verdict and the JSON document."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from drift import policy as pol
from drift.compare import compare_tables
from drift.policy import DEFAULT_POLICY, MetricMargins, Policy, drift_result, evaluate
from registry.errors import InputError

REPO = Path(__file__).resolve().parents[1]
LEVELS = (2, 3, 4, 5, 6, 7, 8)  # C2..T1


def level_table(n_subjects: int = 25, seed: int = 0, levels=LEVELS) -> pd.DataFrame:
    """Per-level tidy table (no slices): CSA ~ 75 mm², diameters ~ 8 and 12 mm, ±10 % subjects."""
    rng = np.random.default_rng(seed)
    s, lev = np.meshgrid(np.arange(n_subjects), np.array(levels), indexing="ij")
    s, lev = s.ravel(), lev.ravel()
    size = np.exp(rng.normal(0, 0.1, n_subjects))[s]
    return pd.DataFrame(
        {
            "subject": [f"sub-{i:02d}" for i in s],
            "contrast": "T2w",
            "level": lev,
            "area": 75.0 * size,
            "diameter_AP": 8.0 * np.sqrt(size),
            "diameter_RL": 12.0 * np.sqrt(size),
        }
    )


def candidate_of(
    base: pd.DataFrame, factors: dict[tuple[str, int], float], *, sd: float = 0.005, seed: int = 1
) -> pd.DataFrame:
    """Each (metric, level) times its factor and seeded log-normal noise (sd of the log)."""
    rng = np.random.default_rng(seed)
    out = base.copy()
    for metric in ("area", "diameter_AP", "diameter_RL"):
        f = np.array([factors.get((metric, int(lev)), 1.0) for lev in out["level"]])
        out[metric] = out[metric] * f * np.exp(rng.normal(0, sd, len(out)))
    return out


def by_key(result) -> dict[tuple[str | None, str | None, str], pol.Condition]:
    return {(c.metric, c.level, c.test): c for c in result.gate.conditions}


# ---------------------------------------------------------------------------------------------
# The policy file
# ---------------------------------------------------------------------------------------------


def test_default_yaml_is_the_builtin_default() -> None:
    loaded = pol.load_policy(REPO / "reference_data" / "policy.yaml")
    assert loaded == DEFAULT_POLICY
    assert loaded.metrics["area"] == MetricMargins(1.0, 0.5)
    assert loaded.metrics["diameter_RL"] == MetricMargins(2.0, 1.0)
    assert loaded.min_subjects == 5 and loaded.alpha == 0.05 and loaded.levels is None
    assert pol.load_policy() == DEFAULT_POLICY


def test_policy_sha256_ignores_formatting_but_not_values(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("# comment\nmetrics:\n  area: {fail_margin_pct: 1, warn_margin_pct: 0.5}\n")
    b = tmp_path / "b.yaml"
    b.write_text("metrics:\n  area:\n    warn_margin_pct: 0.50\n    fail_margin_pct: 1.0\n")
    c = tmp_path / "c.yaml"
    c.write_text("metrics:\n  area: {fail_margin_pct: 1.5, warn_margin_pct: 0.5}\n")
    ha, hb, hc = (pol.policy_sha256(pol.load_policy(p)) for p in (a, b, c))
    assert ha == hb != hc
    assert len(ha) == 64
    # Round trip: to_dict -> parse gives the same policy.
    assert pol.parse_policy(DEFAULT_POLICY.to_dict()) == DEFAULT_POLICY


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("alpah: 0.05\n", "alpah"),
        ("metrics:\n  area: {fail_margin_pct: 1, warn_pct: 0.5}\n", "metrics.area.warn_pct"),
        ("metrics:\n  area: {fail_margin_pct: -1}\n", "metrics.area.fail_margin_pct"),
        ("metrics:\n  area: {fail_margin_pct: '1'}\n", "metrics.area.fail_margin_pct"),
        ("metrics:\n  area: {warn_margin_pct: 0.5}\n", "metrics.area.fail_margin_pct"),
        (
            "metrics:\n  area: {fail_margin_pct: 1, warn_margin_pct: 2}\n",
            "metrics.area.warn_margin_pct",
        ),
        ("metrics:\n  angle_AP: {fail_margin_pct: 1}\n", "metrics.angle_AP"),
        ("metrics: {}\n", "metrics"),
        ("alpha: 0.7\n", "alpha"),
        ("alpha: .nan\n", "alpha"),
        ("min_subjects: 2\n", "min_subjects"),
        ("min_subjects: true\n", "min_subjects"),
        ("min_subjects: 5.0\n", "min_subjects"),
        ("min_coverage_pct: 101\n", "min_coverage_pct"),
        ("min_dice: 1.5\n", "min_dice"),
        ("levels: [C2, X9]\n", "levels"),
        ("levels: [C2, C2]\n", "levels"),
        ("levels: C2\n", "levels"),
        ("schema: 2\n", "schema"),
    ],
)
def test_invalid_policy_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        pol.load_policy(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ")
    assert f"'{key}'" in msg or f"key {key!r}" in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("alpha: 0.05\nalpha: 0.1\n", "duplicated key 'alpha'"),
        ("metrics: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_unreadable_policy_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        pol.load_policy(path)
    assert str(err.value).startswith(str(path))
    with pytest.raises(InputError, match="policy file not found"):
        pol.load_policy(tmp_path / "missing.yaml")


def test_levels_are_normalised_and_sorted() -> None:
    p = pol.parse_policy({"levels": ["t1", "C3", "c2"]})
    assert p.levels == ("C2", "C3", "T1")


# ---------------------------------------------------------------------------------------------
# The decision rule and its boundary
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 30, 200])
def test_equivalence_boundary_is_the_tost_interval_touching_the_margin(n: int) -> None:
    # With mean m and standard error se, p_upper = alpha exactly when
    # m = log(1.01) - t_{1-alpha, n-1} * se, i.e. the 90 % t-interval ends on 1.01.
    se, alpha = 0.002, 0.05
    edge = math.log(1.01) - stats.t.ppf(1 - alpha, n - 1) * se
    kw = {"fail_pct": 1.0, "warn_pct": 0.5, "alpha": alpha}
    inside, p_in, _ = pol.equivalence_status(edge - 1e-9, se, n, **kw)
    outside, p_out, _ = pol.equivalence_status(edge + 1e-9, se, n, **kw)
    assert p_in < alpha <= p_out
    assert p_out == pytest.approx(alpha, abs=1e-6)
    assert inside == "warn"  # within ±1 % shown, not within ±0.5 %
    assert outside == "fail"
    # Same boundary on the lower side.
    low = math.log(0.99) + stats.t.ppf(1 - alpha, n - 1) * se
    assert pol.equivalence_status(low + 1e-9, se, n, **kw)[0] == "warn"
    assert pol.equivalence_status(low - 1e-9, se, n, **kw)[0] == "fail"
    # And the warn boundary.
    wedge = math.log(1.005) - stats.t.ppf(1 - alpha, n - 1) * se
    assert pol.equivalence_status(wedge - 1e-9, se, n, **kw)[0] == "pass"
    assert pol.equivalence_status(wedge + 1e-9, se, n, **kw)[0] == "warn"


def test_no_warn_margin_means_pass_or_fail_only() -> None:
    kw = {"fail_pct": 1.0, "warn_pct": None, "alpha": 0.05}
    assert pol.equivalence_status(math.log(1.008), 0.0005, 50, **kw)[0] == "pass"
    assert pol.equivalence_status(math.log(1.012), 0.0005, 50, **kw)[0] == "fail"


def test_status_matches_the_reported_tost_interval() -> None:
    # The gate's fail rule <=> the reported tost_ci leaves [0.99, 1.01].
    base = level_table(n_subjects=12, seed=3)
    for f, seed in [(1.0, 1), (1.006, 2), (1.009, 3), (0.993, 4), (1.02, 5)]:
        cand = candidate_of(base, {("area", lev): f for lev in LEVELS}, sd=0.01, seed=seed)
        res = drift_result(base, cand)
        for c in res.gate.conditions:
            if c.test == "equivalence" and c.metric == "area":
                lo, hi = c.actual["tost_ci"]
                assert (c.status == "fail") == (not (lo > 0.99 and hi < 1.01)), (f, c.description)


# ---------------------------------------------------------------------------------------------
# Verdicts on synthetic cohorts with known injected scaling
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return level_table()


def test_unchanged_model_passes(base: pd.DataFrame) -> None:
    res = drift_result(base, candidate_of(base, {}))
    assert res.verdict == "pass" and res.exit_code == 0
    keys = by_key(res)
    # Every gated metric x level C2..T1 has a coverage and an equivalence condition.
    assert len(res.gate.conditions) == 3 * 7 * 2
    assert keys[("area", "C2", "equivalence")].status == "pass"
    assert keys[("diameter_RL", "T1", "coverage")].status == "pass"


def test_area_bias_on_one_level_fails_that_level_only(base: pd.DataFrame) -> None:
    res = drift_result(base, candidate_of(base, {("area", 4): 0.98}))
    assert res.verdict == "fail" and res.exit_code == 1
    failing = [(c.metric, c.level, c.test) for c in res.gate.failing]
    assert failing == [("area", "C4", "equivalence")]
    c4 = by_key(res)[("area", "C4", "equivalence")]
    sf = c4.actual["scaling_factor"]
    assert sf == pytest.approx(0.98, abs=0.004)
    assert c4.description.startswith(f"area C4: scaling {sf:.4f} outside ±1.0 % (TOST p=")
    assert c4.description.endswith(">= 0.05)")
    assert c4.threshold == {"fail_margin_pct": 1.0, "warn_margin_pct": 0.5, "alpha": 0.05}


def test_small_bias_warns_and_diameter_margins_are_wider(base: pd.DataFrame) -> None:
    res = drift_result(base, candidate_of(base, {("area", 3): 1.007, ("diameter_AP", 6): 1.015}))
    assert res.verdict == "warn" and res.exit_code == 0
    keys = by_key(res)
    assert keys[("area", "C3", "equivalence")].status == "warn"
    assert "within ±1.0 %" in keys[("area", "C3", "equivalence")].description
    assert "but outside ±0.5 %" in keys[("area", "C3", "equivalence")].description
    # 1.5 % on a diameter is a warning (±2 % fails, ±1 % warns); on area it would fail.
    assert keys[("diameter_AP", "C6", "equivalence")].status == "warn"
    res2 = drift_result(base, candidate_of(base, {("area", 6): 1.015}))
    assert by_key(res2)[("area", "C6", "equivalence")].status == "fail"


def test_verdict_flips_with_the_injected_factor(base: pd.DataFrame) -> None:
    verdicts = {
        f: drift_result(base, candidate_of(base, {("area", 5): f})).verdict
        for f in (0.97, 0.98, 0.993, 0.998, 1.0, 1.002, 1.007, 1.02, 1.03)
    }
    assert verdicts == {
        0.97: "fail",
        0.98: "fail",
        0.993: "warn",
        0.998: "pass",
        1.0: "pass",
        1.002: "pass",
        1.007: "warn",
        1.02: "fail",
        1.03: "fail",
    }


def test_noisy_unbiased_candidate_with_few_subjects_fails(base: pd.DataFrame) -> None:
    # Burden of proof on the candidate: 6 subjects with 3 % noise cannot show ±1 %.
    small = base[base["subject"].isin([f"sub-{i:02d}" for i in range(6)])]
    res = drift_result(small, candidate_of(small, {}, sd=0.03, seed=5))
    c = by_key(res)[("area", "C2", "equivalence")]
    assert c.status == "fail"
    assert "not shown within ±1.0 %" in c.description or "outside" in c.description


def test_lost_measurements_fail_coverage(base: pd.DataFrame) -> None:
    cand = candidate_of(base, {})
    gone = (cand["level"] == 8) & cand["subject"].isin(["sub-00", "sub-01"])
    cand.loc[gone, "area"] = np.nan
    res = drift_result(base, cand)
    keys = by_key(res)
    cov = keys[("area", "T1", "coverage")]
    assert cov.status == "fail" and res.verdict == "fail"
    assert cov.description == "area T1: 23/25 baseline measurements paired (92.0 % < 95 %)"
    assert keys[("area", "C7", "coverage")].status == "pass"


def test_too_few_subjects_is_an_input_error_not_a_pass(base: pd.DataFrame) -> None:
    four = base[base["subject"].isin(["sub-00", "sub-01", "sub-02", "sub-03"])]
    with pytest.raises(InputError, match=r"4 subject.* present in both .* at least 5"):
        drift_result(four, four)
    other = base.assign(subject=base["subject"].str.replace("sub-", "sub-x"))
    with pytest.raises(InputError, match="0 subject"):
        drift_result(base, other)


def test_explicit_levels_must_exist_in_the_baseline(base: pd.DataFrame) -> None:
    p = pol.parse_policy({"levels": ["C3", "T2"]}, "my.yaml")
    with pytest.raises(InputError, match=r"^my.yaml: policy gates area T2"):
        drift_result(base, base, p)
    p = pol.parse_policy({"levels": ["C3"]})
    res = drift_result(base, base, p)
    assert {c.level for c in res.gate.conditions} == {"C3"}


def test_default_levels_are_c2_to_t1_present(base: pd.DataFrame) -> None:
    wide = level_table(levels=(1, 2, 3, 9, 10))
    res = drift_result(wide, wide)
    assert sorted({c.level for c in res.gate.conditions}) == ["C2", "C3"]
    assert set(res.to_dict()["metrics"]["area"]["levels"]) == {"C1", "C2", "C3", "T2", "T3"}


def test_policy_metric_missing_from_tables_is_an_input_error(base: pd.DataFrame) -> None:
    p = Policy(metrics={"solidity": MetricMargins(2.0)}, source="s.yaml")
    with pytest.raises(InputError, match="no 'solidity' column"):
        drift_result(base, base, p)


def test_dice_condition(base: pd.DataFrame) -> None:
    p = pol.parse_policy({"min_dice": 0.9})
    res = drift_result(base, base, p)
    dice_c = by_key(res)[(None, None, "dice")]
    assert dice_c.status == "skip" and res.verdict == "pass"
    dice = pd.DataFrame(
        {
            "subject": ["sub-00", "sub-01"] * 2,
            "contrast": "T2w",
            "version": ["baseline"] * 2 + ["candidate"] * 2,
            "dice": [0.93, 0.95, 0.91, 0.85],
        }
    )
    res = drift_result(base, base, p, dice=dice)
    dice_c = by_key(res)[(None, None, "dice")]
    assert dice_c.status == "fail" and res.verdict == "fail"
    assert dice_c.description == "Dice: candidate mean 0.880 < 0.9 (n=2, min 0.850 in sub-01)"


# ---------------------------------------------------------------------------------------------
# The JSON document
# ---------------------------------------------------------------------------------------------


def test_json_document_schema(base: pd.DataFrame) -> None:
    res = drift_result(
        base, candidate_of(base, {("area", 4): 0.98}), provenance={"candidate": "m@2"}
    )
    doc = res.to_dict()
    text = json.dumps(doc, allow_nan=False)  # NaN must have become null
    assert json.loads(text) == doc
    assert list(doc)[:3] == ["verdict", "conditions", "metrics"]
    assert doc["verdict"] == "fail"
    assert set(doc["metrics"]) == {"area", "diameter_AP", "diameter_RL"}
    c4 = doc["metrics"]["area"]["levels"]["C4"]
    required = {
        "scaling_factor": float,
        "ci95": list,
        "slicewise_mean_ratio": type(None),  # no slices in this table
        "slicewise_cov": type(None),
        "n_subjects": int,
        "tost_p": float,
        "wilcoxon_p": float,
        "ba_bias": float,
        "ba_loa": list,
        "icc": float,
    }
    for key, typ in required.items():
        assert isinstance(c4[key], typ), key
    assert len(c4["ci95"]) == 2 and c4["ci95"][0] < c4["scaling_factor"] < c4["ci95"][1]
    assert c4["status"] == "fail" and c4["gated"] is True and c4["n_subjects"] == 25
    cond = doc["conditions"][0]
    assert set(cond) == {"test", "metric", "level", "status", "threshold", "actual", "description"}
    assert doc["policy"]["sha256"] == pol.policy_sha256(DEFAULT_POLICY)
    assert doc["provenance"]["candidate"] == "m@2"
    assert doc["provenance"]["policy_sha256"] == doc["policy"]["sha256"]
    assert doc["subjects"]["n_paired"] == 25
    assert doc["metrics"]["area"]["per_contrast"]["T2w"]["C4"]["scaling_factor"] == pytest.approx(
        c4["scaling_factor"]
    )


def test_single_subject_levels_serialise_nan_as_null() -> None:
    base = level_table(n_subjects=6)
    extra = level_table(n_subjects=1, levels=(12,)).assign(subject="sub-00")
    both = pd.concat([base, extra], ignore_index=True)
    doc = drift_result(both, both).to_dict()
    t5 = doc["metrics"]["area"]["levels"]["T5"]
    assert t5["n_subjects"] == 1 and t5["tost_p"] is None and t5["icc"] is None
    assert t5["gated"] is False and t5["status"] is None


def test_evaluate_is_pure_on_a_comparison(base: pd.DataFrame) -> None:
    comp = compare_tables(base, candidate_of(base, {("area", 2): 1.02}))
    strict = Policy(metrics={"area": MetricMargins(3.0, 2.5)})
    assert evaluate(comp, DEFAULT_POLICY).verdict == "fail"
    assert evaluate(comp, strict).verdict == "pass"
    assert evaluate(comp, DEFAULT_POLICY) == evaluate(comp, DEFAULT_POLICY)
