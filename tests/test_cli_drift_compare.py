"""``cordwatch drift compare``: in-process CLI runs on synthetic SCT CSV folders and on the real
PAM50 normative database (203 subjects) as both sides and against a 2 % shrunk copy."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from drift.cli.main import app
from drift.gate.tables import parse_csv_name, read_csv_dir
from drift.measure.sctcsv import write_sct_csv
from registry.errors import InputError

runner = CliRunner()


def run(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["drift", "compare", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def write_cohort(
    directory: Path,
    n_subjects: int = 8,
    *,
    scale: dict[int, float] | None = None,
    seed: int = 0,
    noise: float = 0.0,
    contrast: str = "T2w",
) -> Path:
    """One SCT per-slice CSV per subject (23-column layout), C2..T1, 5 slices per level."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    size = np.exp(np.random.default_rng(99).normal(0, 0.1, n_subjects))
    for s in range(n_subjects):
        levels = np.repeat(np.arange(2, 9), 5)
        slices = (20 - levels) * 5 + np.tile(np.arange(5), 7)
        f = np.array([(scale or {}).get(int(lev), 1.0) for lev in levels])
        f = f * np.exp(rng.normal(0, noise, len(levels)))
        rows = pd.DataFrame(
            {
                "Slice (I->S)": slices,
                "VertLevel": levels,
                "MEAN(area)": 75.0 * size[s] * f,
                "MEAN(diameter_AP)": 8.0 * math.sqrt(size[s]) * np.ones(len(levels)),
                "MEAN(diameter_RL)": 12.0 * math.sqrt(size[s]) * np.ones(len(levels)),
            }
        )
        name = f"sub-{s:02d}_{contrast}_PAM50.csv"
        write_sct_csv(rows, directory / name, filename=name, version="test")
    return directory


def test_parse_csv_name() -> None:
    assert parse_csv_name("sub-amu01_T2w_PAM50.csv") == ("sub-amu01", "T2w")
    assert parse_csv_name("sub-01_ses-2_T1w.csv") == ("sub-01", "ses-2_T1w")
    assert parse_csv_name("sub-01_flip-2_mt-off_MTS.csv") == ("sub-01", "flip-2_mt-off_MTS")
    assert parse_csv_name("sub-01_dwi_moco_dwi_mean.csv") == ("sub-01", "dwi")
    assert parse_csv_name("participants.csv") is None
    assert parse_csv_name("sub-01_T2w.tsv") is None


def test_pass_with_json_and_report(tmp_path: Path) -> None:
    base = write_cohort(tmp_path / "v1")
    cand = write_cohort(tmp_path / "v2", noise=0.001, seed=1)
    out = tmp_path / "out.json"
    code, stdout, stderr = run(base, cand, "--result", out, "--report", tmp_path / "rep")
    assert code == 0, stderr
    assert "verdict: PASS (8 paired subjects" in stdout
    lines = [ln for ln in stdout.splitlines() if "│ area" in ln]
    assert [ln.split("│")[2].strip() for ln in lines] == ["C2", "C3", "C4", "C5", "C6", "C7", "T1"]
    assert all(ln.split("│")[7].strip() == "pass" for ln in lines)
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "pass"
    lv = doc["metrics"]["area"]["levels"]["C3"]
    assert lv["n_subjects"] == 8 and lv["scaling_factor"] == pytest.approx(1.0, abs=0.002)
    assert lv["slicewise_cov"] is not None
    prov = doc["provenance"]
    assert prov["baseline_files"] == 8 and len(prov["candidate_files_sha256"]) == 64
    assert prov["policy_sha256"] == doc["policy"]["sha256"]
    for name in ("report.html", "summary.md", "result.json", "figures/scaling_levels.png"):
        assert (tmp_path / "rep" / name).is_file(), name


def test_fail_exits_1_and_still_writes_the_verdict(tmp_path: Path) -> None:
    base = write_cohort(tmp_path / "v1")
    cand = write_cohort(tmp_path / "v2", scale={5: 0.97}, noise=0.001, seed=1)
    out = tmp_path / "out.json"
    code, stdout, stderr = run(base, cand, "--result", out)
    assert code == 1
    assert re.search(
        r"^FAIL area C5: scaling 0\.9[67]\d\d outside ±1\.0 % \(TOST p=1 >= 0\.05\)$", stdout, re.M
    )
    assert "verdict: FAIL" in stdout
    assert stderr.strip() == "cordwatch: error: drift gate failed: 1 failing condition(s)"
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "fail"
    assert [c["level"] for c in doc["conditions"] if c["status"] == "fail"] == ["C5"]


def test_warn_exits_0(tmp_path: Path) -> None:
    base = write_cohort(tmp_path / "v1")
    cand = write_cohort(tmp_path / "v2", scale={3: 1.007}, noise=0.0005, seed=1)
    code, stdout, _ = run(base, cand)
    assert code == 0
    assert "WARN area C3: scaling 1.007" in stdout and "verdict: WARN" in stdout


def _assert_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cordwatch: error: "), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    good = write_cohort(tmp_path / "good")
    out, rep = tmp_path / "o.json", tmp_path / "rep"
    outputs = ("--result", out, "--report", rep)

    code, _, err = run(tmp_path / "missing", good, *outputs)
    _assert_error(code, err, str(tmp_path / "missing"), "baseline directory not found")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    code, _, err = run(good, empty, *outputs)
    _assert_error(code, err, str(empty), "no sub-*.csv")

    broken = write_cohort(tmp_path / "broken")
    (broken / "sub-03_T2w_PAM50.csv").write_text("this,is\nnot SCT\n")
    code, _, err = run(good, broken, *outputs)
    _assert_error(code, err, str(broken / "sub-03_T2w_PAM50.csv"), "missing column")

    binary = write_cohort(tmp_path / "binary")
    (binary / "sub-04_T2w_PAM50.csv").write_bytes(b"\xff\xfe\x00\x81" * 100)
    code, _, err = run(good, binary, *outputs)
    _assert_error(code, err, str(binary / "sub-04_T2w_PAM50.csv"))

    others = tmp_path / "others"
    write_cohort(others, n_subjects=3)
    for f in others.iterdir():
        f.rename(f.with_name(f.name.replace("sub-0", "sub-x")))
    code, _, err = run(good, others, *outputs)
    _assert_error(code, err, str(others), "no subject in common")

    few = write_cohort(tmp_path / "few", n_subjects=3)
    code, _, err = run(few, few, *outputs)
    _assert_error(code, err, "3 subject(s) present in both", "at least 5")

    dup = write_cohort(tmp_path / "dup")
    (dup / "sub-01_T2w_other.csv").write_bytes((dup / "sub-01_T2w_PAM50.csv").read_bytes())
    code, _, err = run(good, dup, *outputs)
    _assert_error(code, err, "second file for sub-01 T2w")

    policy = tmp_path / "policy.yaml"
    policy.write_text("metrics:\n  area: {fail_margin_pct: -1}\n")
    code, _, err = run(good, good, "--policy", policy, *outputs)
    _assert_error(code, err, str(policy), "'metrics.area.fail_margin_pct'")

    code, _, err = run(good, good, "--policy", tmp_path / "nope.yaml", *outputs)
    _assert_error(code, err, "nope.yaml", "policy file not found")

    assert not out.exists() and not rep.exists()
    assert not list(tmp_path.glob(".o.json*"))


def test_custom_policy_changes_the_verdict(tmp_path: Path) -> None:
    base = write_cohort(tmp_path / "v1")
    cand = write_cohort(tmp_path / "v2", scale={5: 0.985}, noise=0.001, seed=1)
    assert run(base, cand)[0] == 1
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text("metrics:\n  area: {fail_margin_pct: 3.0, warn_margin_pct: 2.0}\n")
    code, stdout, _ = run(base, cand, "--policy", lenient)
    assert code == 0 and "verdict: PASS" in stdout
    # Only area is gated now.
    assert "diameter_AP" not in stdout


def test_read_csv_dir_contrasts(tmp_path: Path) -> None:
    d = tmp_path / "d"
    write_cohort(d, n_subjects=2, contrast="T1w")
    write_cohort(d, n_subjects=2, contrast="flip-1_mt-on_MTS")
    table, files = read_csv_dir(d, "baseline")
    assert len(files) == 4
    assert sorted(table["contrast"].unique()) == ["T1w", "flip-1_mt-on_MTS"]
    assert set(table["level"]) == set(range(2, 9))
    with pytest.raises(InputError, match="baseline directory not found"):
        read_csv_dir(tmp_path / "x", "baseline")


# ---------------------------------------------------------------------------------------------
# The real normative database (203 subjects, PAM50 per-slice CSVs, 23-column SCT layout)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def normative(shared_data: Path) -> Path:
    path = shared_data / "normative_r20250321" / "spinal_cord"
    assert len(list(path.glob("sub-*_T2w_PAM50.csv"))) == 203
    return path


@pytest.mark.slow
def test_normative_database_against_itself(normative: Path, tmp_path: Path) -> None:
    out = tmp_path / "same.json"
    code, stdout, stderr = run(normative, normative, "--result", out)
    assert code == 0, stderr
    assert "verdict: PASS (203 paired subjects" in stdout
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "pass" and doc["subjects"]["n_paired"] == 203
    gated = [c for c in doc["conditions"] if c["test"] == "equivalence"]
    assert len(gated) == 3 * 7  # area, diameter_AP, diameter_RL x C2..T1
    for metric in ("area", "diameter_AP", "diameter_RL"):
        for name, lv in doc["metrics"][metric]["levels"].items():
            assert lv["scaling_factor"] == 1.0, (metric, name)
            if lv["n_subjects"] >= 2:
                assert lv["ci95"] == [1.0, 1.0] and lv["ba_bias"] == 0.0
                assert lv["slicewise_mean_ratio"] == 1.0 and lv["slicewise_cov"] == 0.0
    c3 = doc["metrics"]["area"]["levels"]["C3"]
    assert c3["n_subjects"] == 203 and c3["icc"] == pytest.approx(1.0)
    assert c3["n_slices"] == 37  # PAM50 C3 = slices 871..907
    assert doc["metrics"]["area"]["levels"]["T5"]["status"] is None  # reported, not gated


@pytest.mark.slow
def test_normative_database_against_a_2_percent_shrink(normative: Path, tmp_path: Path) -> None:
    # Isotropic 2 % CSA shrink of every subject: area x 0.98, diameters x sqrt(0.98) (~ -1.0 %).
    shrunk = tmp_path / "shrunk"
    shrunk.mkdir()
    for f in sorted(normative.glob("sub-*.csv")):
        df = pd.read_csv(f)
        df["MEAN(area)"] *= 0.98
        df["STD(area)"] *= 0.98
        for col in ("MEAN(diameter_AP)", "MEAN(diameter_RL)"):
            df[col] *= math.sqrt(0.98)
        df.to_csv(shrunk / f.name, index=False)
    out = tmp_path / "shrunk.json"
    code, _, stderr = run(normative, shrunk, "--result", out, "--report", tmp_path / "rep")
    assert code == 1
    assert stderr.strip().startswith("cordwatch: error: drift gate failed: 7 failing")
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "fail"
    for name in ("C2", "C3", "C4", "C5", "C6", "C7", "T1"):
        area = doc["metrics"]["area"]["levels"][name]
        lo, hi = area["ci95"]
        assert area["scaling_factor"] == pytest.approx(0.98, rel=1e-12)
        assert lo - 1e-12 <= 0.98 <= hi + 1e-12
        assert area["slicewise_mean_ratio"] == pytest.approx(0.98, rel=1e-12)
        assert area["status"] == "fail" and area["tost_p"] == 1.0
        assert area["ba_bias_pct"] == pytest.approx(-200 * 0.02 / 1.98, rel=1e-9)
        # A 1.005 % diameter shrink: within ±2 % (pass) but outside ±1 % (warn).
        dia = doc["metrics"]["diameter_RL"]["levels"][name]
        assert dia["scaling_factor"] == pytest.approx(math.sqrt(0.98), rel=1e-12)
        assert dia["status"] == "warn"
    failing = [c["description"] for c in doc["conditions"] if c["status"] == "fail"]
    assert failing[0] == "area C2: scaling 0.9800 outside ±1.0 % (TOST p=1 >= 0.05)"
    assert len(failing) == 7
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert md.startswith("## cordwatch drift: ❌ FAIL")
