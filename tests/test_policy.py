"""drift.gate.policy: the gate policy file, the conditions, the verdict and the JSON document."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from drift.gate import policy as pol
from drift.gate.compare import compare_tables
from drift.gate.policy import DEFAULT_POLICY, MetricMargins, Policy, drift_result, evaluate
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


# ---------------------------------------------------------------------------------------------
# The file formats on pydantic models (issue 8 item 4)
# ---------------------------------------------------------------------------------------------

#: policy_sha256 of the default policy before the pydantic models: recorded with every verdict.
DEFAULT_POLICY_SHA256 = "c4872fc098f62e15f26a5efa3b907fc0965bbbe845782133753291edbd849fb6"
#: NormativePolicy.sha256 of reference_data/normative_policy.yaml, recorded in every rescale.
DEFAULT_NORMATIVE_POLICY_SHA256 = "e788fc66795053e926f0f92fd31c88f755c48a2c01a6c33793fcb22dca136fb0"


def test_policy_sha256_of_the_default_policy_is_unchanged() -> None:
    from drift.normative.policy import load_normative_policy

    assert pol.policy_sha256(pol.load_policy()) == DEFAULT_POLICY_SHA256
    assert pol.policy_sha256(DEFAULT_POLICY) == DEFAULT_POLICY_SHA256
    assert pol.policy_sha256(pol.load_policy(REPO / "reference_data" / "policy.yaml")) == (
        DEFAULT_POLICY_SHA256
    )
    assert "promotable" not in DEFAULT_POLICY.to_dict()
    assert load_normative_policy().sha256 == DEFAULT_NORMATIVE_POLICY_SHA256


def test_promotable_defaults_to_pass_and_is_hashed_only_when_set(tmp_path: Path) -> None:
    assert pol.load_policy().promotable == ("pass",)
    path = tmp_path / "policy.yaml"
    path.write_text("promotable: [pass]\n")
    assert pol.policy_sha256(pol.load_policy(path)) == DEFAULT_POLICY_SHA256
    path.write_text("promotable: [pass, warn]\n")
    lenient = pol.load_policy(path)
    assert lenient.promotable == ("pass", "warn")
    assert lenient.to_dict()["promotable"] == ["pass", "warn"]
    assert pol.parse_policy(lenient.to_dict()) == lenient
    assert pol.policy_sha256(lenient) != DEFAULT_POLICY_SHA256
    for text in ("promotable: [fail]\n", "promotable: []\n", "promotable: [pass, pass]\n"):
        path.write_text(text)
        with pytest.raises(InputError, match=r"key 'promotable': ") as err:
            pol.load_policy(path)
        assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "metrics:\n  area: {fail_margin_pct: -1}\n",
            "key 'metrics.area.fail_margin_pct': must be in (0, 100), got -1.0",
        ),
        (
            "metrics:\n  area: {fail_margin_pct: 1, warn_margin_pct: 2}\n",
            "key 'metrics.area.warn_margin_pct': must be in (0, fail_margin_pct=1.0], got 2.0",
        ),
        ("alpha: x\n", "key 'alpha': expected a number, got 'x'"),
        ("min_subjects: true\n", "key 'min_subjects': expected an integer >= 3, got True"),
        ("levels: [C2, X9]\n", "key 'levels': not a vertebral level name: 'X9'"),
        ("metrics:\n  area: 3\n", "key 'metrics.area': expected a mapping, got 3"),
        ("alpha: 0.05\nalpha: 0.1\n", "not valid YAML (duplicated key 'alpha'"),
    ],
)
def test_policy_errors_name_the_file_and_the_key_path(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        pol.load_policy(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_policy_files_over_the_size_cap_are_refused(tmp_path: Path) -> None:
    from drift.gate.schema import MAX_YAML_BYTES

    path = tmp_path / "policy.yaml"
    path.write_text("# " + "x" * MAX_YAML_BYTES + "\nalpha: 0.05\n")
    with pytest.raises(InputError, match="too large") as err:
        pol.load_policy(path)
    assert err.value.path == str(path)


def test_the_json_schema_accepts_the_default_files_and_refuses_what_the_model_refuses() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    from drift.gate.schema import json_schema
    from drift.normative.policy import NormativePolicyFile, ScalingResult

    gate = json.loads(json_schema(pol.PolicyFile, "gate"))
    jsonschema.validate(yaml.safe_load((REPO / "reference_data" / "policy.yaml").read_text()), gate)
    for bad in ({"alpah": 1}, {"alpha": 0.7}, {"metrics": {"area": {"warn_margin_pct": 1}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, gate)
    normative = json.loads(json_schema(NormativePolicyFile, "normative"))
    text = (REPO / "reference_data" / "normative_policy.yaml").read_text()
    jsonschema.validate(yaml.safe_load(text), normative)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"slice_factors": "median"}, normative)
    scaling = json.loads(json_schema(ScalingResult, "scaling"))
    base = level_table(n_subjects=8)
    doc = drift_result(base, candidate_of(base, {})).to_dict()
    jsonschema.validate(doc, scaling)


def test_a_drift_result_document_is_a_valid_scaling_result(base: pd.DataFrame) -> None:
    """The scaling-result model forbids unknown keys: every key DriftResult.to_dict writes must
    be in it (a key added there without the model refuses every later rescale)."""
    from drift.normative.policy import parse_scaling

    doc = drift_result(base, candidate_of(base, {("area", 4): 0.98})).to_dict()
    doc["provenance"] = {"baseline": {"ref": "m/1"}, "candidate": {"ref": "m/2"}}
    scaling = parse_scaling(json.loads(json.dumps(doc)), "result.json")
    c4 = scaling.levels[(scaling.levels["metric"] == "area") & (scaling.levels["level"] == 4)]
    assert float(c4["scaling_factor"].iloc[0]) == pytest.approx(0.98, abs=0.005)
    assert (scaling.baseline, scaling.candidate, scaling.verdict) == ("m/1", "m/2", doc["verdict"])


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            lambda d: d["metrics"]["area"]["levels"]["C3"].update(scaling_factr=1.0),
            "drift result: unknown key 'metrics.area.levels.C3.scaling_factr'",
        ),
        (
            lambda d: d["metrics"]["area"]["levels"]["C3"].update(scaling_factor="0.99"),
            "drift result: key 'metrics.area.levels.C3.scaling_factor': expected a number",
        ),
        (
            lambda d: d["metrics"]["area"]["levels"].update(X9={"scaling_factor": 1.0}),
            "drift result: key 'metrics.area.levels.X9': not a vertebral level name",
        ),
        (
            lambda d: d["metrics"]["area"].update(
                slice_profile={
                    "slice": [880, 881],
                    "level": [3],
                    "n": [9, 9],
                    "scaling_factor": [1, 1],
                }
            ),
            "drift result: key 'metrics.area.slice_profile': level has",
        ),
    ],
)
def test_bad_scaling_results_name_the_key(base: pd.DataFrame, patch, message: str) -> None:
    from drift.normative.policy import parse_scaling

    doc = json.loads(json.dumps(drift_result(base, candidate_of(base, {})).to_dict()))
    patch(doc)
    with pytest.raises(InputError) as err:
        parse_scaling(doc, "result.json")
    assert str(err.value).startswith(f"result.json: {message}"), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["gate", "normative", "scaling"])
def test_cli_policy_schema_prints_the_json_schema(kind: str) -> None:
    from typer.testing import CliRunner

    from drift.cli.main import app

    result = CliRunner().invoke(app, ["policy", "schema", "--kind", kind])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert kind in schema["title"] or (kind == "gate" and "gate" in schema["title"])
    if kind == "gate":
        assert "promotable" in schema["properties"]
        assert CliRunner().invoke(app, ["policy", "schema"]).stdout == result.stdout


def test_cli_policy_schema_refuses_an_unknown_kind() -> None:
    from typer.testing import CliRunner

    from drift.cli.main import app

    result = CliRunner().invoke(app, ["policy", "schema", "--kind", "html"])
    assert result.exit_code == 2
