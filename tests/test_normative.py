"""Normative databases: storage, import/export, summaries, rescale, recompute, z-scores.

The real database (../shared/data/normative_r20250321, 203 subjects) is imported once per
module; numbers are checked against straight pandas on the raw CSVs. Logic tests use a small
seeded synthetic database (drift.normative.layout.write_synthetic_db).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drift.gate.policy import drift_result
from drift.gate.report import write_json
from drift.measure.sctcsv import COLUMNS_23, COLUMNS_29, read_sct_csv
from drift.normative.layout import load_data, pam50_measurements, write_synthetic_db
from drift.normative.policy import (
    DEFAULT_POLICY_PATH,
    NormativePolicy,
    load_normative_policy,
    parse_scaling,
)
from drift.normative.store import (
    EXPERIMENT_PREFIX,
    KIND_TAG,
    KIND_VALUE,
    TAG,
    NormativeStore,
    NormativeVersion,
    export_db,
    import_db,
    read_records,
    resolve,
)
from drift.normative.summary import summary, zscore
from drift.normative.update import rescale_plan, rescale_sct_text, update
from registry.api import Registry, connect
from registry.errors import InputError, IntegrityError, RegistryError
from registry.testing import make_package, registry_of_versions

METRICS = ("area", "diameter_AP", "diameter_RL", "eccentricity", "solidity")


@dataclass
class Env:
    reg: Registry
    home: Path
    work: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One registry for the module (its own CORDWATCH_HOME) with cordseg/1..3 registered."""
    work = tmp_path_factory.mktemp("normative")
    home = work / "home"
    with registry_of_versions(work, versions=3) as reg:
        yield Env(reg, home, work)


@pytest.fixture(scope="module")
def real_src(shared_data: Path) -> Path:
    return shared_data / "normative_r20250321"


@pytest.fixture(scope="module")
def real(env: Env, real_src: Path) -> NormativeVersion:
    """The real database imported as hc@1, made (we say) by cordseg/1."""
    return import_db(real_src, "hc", "cordseg/1", registry=env.reg)


@pytest.fixture(scope="module")
def real_tidy(real_src: Path) -> pd.DataFrame:
    return load_data(real_src).tidy


def syn_db(env: Env, name: str, n: int = 8, seed: int = 0, model: str | None = "cordseg/1"):
    src = write_synthetic_db(env.work / f"src-{name}", n, seed)
    return src, import_db(src, name, model, registry=env.reg)


def raw_level_means(files: list[Path], column: str) -> pd.DataFrame:
    """Independent: per (subject, level) mean of SCT's MEAN(<metric>) with plain pandas."""
    frames = []
    for f in files:
        df = pd.read_csv(f)
        means = df.groupby("VertLevel")[column].mean()
        frames.append(means.rename(f.name.split("_")[0]))
    return pd.concat(frames, axis=1)  # rows: level, columns: subject


def fake_result(
    factors: dict[str, float],
    *,
    cov: float = 0.3,
    ci_half: float = 0.002,
    n: int = 20,
    baseline: str | None = "cordseg/1",
    candidate: str | None = "cordseg/2",
    metrics: tuple[str, ...] = ("area", "diameter_AP", "diameter_RL"),
    sha256: str | None = None,
) -> dict:
    """A drift-result document with the fields a rescale reads (no slice profile); ``sha256``:
    the package sha256 recorded for both models (cordseg/1..3 share one package)."""
    levels = {
        name: {
            "scaling_factor": f,
            "ci95": [f - ci_half, f + ci_half],
            "slicewise_cov": cov,
            "n_subjects": n,
        }
        for name, f in factors.items()
    }
    recorded = {"sha256": sha256} if sha256 else {}
    prov = {}
    if baseline:
        prov["baseline"] = {"ref": baseline, **recorded}
    if candidate:
        prov["candidate"] = {"ref": candidate, **recorded}
    return {
        "verdict": "fail",
        "metrics": {m: {"levels": levels, "slice_profile": {}} for m in metrics},
        "provenance": prov,
    }


def recorded(env: Env, baseline: str, candidate: str) -> dict:
    """The provenance a drift check records about its two models (ref and package sha256)."""
    return {
        role: {"ref": ref, "sha256": env.reg.resolve(ref).sha256}
        for role, ref in (("baseline", baseline), ("candidate", candidate))
    }


def write_doc(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


ALL_SYN_LEVELS = ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2")


# ----------------------------------------------------------------- import / export, real ---


def test_import_real_export_is_byte_identical(
    env: Env, real: NormativeVersion, real_src: Path, tmp_path: Path
) -> None:
    out = export_db("hc@1", tmp_path / "export", registry=env.reg)
    src_csv = sorted((real_src / "spinal_cord").glob("*.csv"))
    out_csv = sorted((out / "spinal_cord").glob("*.csv"))
    assert len(src_csv) == 203
    assert [p.name for p in out_csv] == [p.name for p in src_csv]
    for a, b in zip(src_csv, out_csv, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    for name in ("participants.tsv", "README.md"):
        assert (out / name).read_bytes() == (real_src / name).read_bytes()
    # value-identical too, NaNs included (positions and count)
    nan_total = 0
    for a, b in zip(src_csv[::20], out_csv[::20], strict=True):
        x, y = pd.read_csv(a), pd.read_csv(b)
        pd.testing.assert_frame_equal(x, y, check_exact=True)
        nan_total += int(y["MEAN(area)"].isna().sum())
    assert nan_total > 0
    assert "**import**" in (out / "PROVENANCE.md").read_text()
    meta = json.loads((out / "cordwatch" / "version.json").read_text())
    assert meta["version"]["ref"] == "hc/1"
    assert meta["version"]["model"] == "cordseg/1"


def test_import_real_metadata(env: Env, real: NormativeVersion, real_src: Path) -> None:
    assert (real.name, real.version, real.kind) == ("hc", 1, "import")
    assert real.model == "cordseg/1"
    assert real.n_subjects == 203 and real.n_files == 203
    assert real.contrast == "T2w"
    assert real.source == str(real_src.resolve())
    # files_sha256: one sha256 over the sorted "<path> <sha256>" lines of the stored files
    lines = []
    for p in sorted(real_src.rglob("*")):
        if p.is_file():
            rel = p.relative_to(real_src).as_posix()
            lines.append(f"{rel} {hashlib.sha256(p.read_bytes()).hexdigest()}\n")
    assert real.files_sha256 == hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    again = resolve("hc@1", registry=env.reg)
    assert again == real
    assert resolve("hc", registry=env.reg).version >= 1


# ------------------------------------------------------------------- summaries, real -------


def test_summary_real_matches_pandas(env: Env, real: NormativeVersion, real_src: Path) -> None:
    metrics = ["area", "diameter_AP", "eccentricity"]
    levels = summary("hc@1", metrics=metrics, registry=env.reg)
    files = sorted((real_src / "spinal_cord").glob("*.csv"))
    checked = 0
    for metric in metrics:
        got = levels[levels["metric"] == metric].set_index("level")
        table = raw_level_means(files, f"MEAN({metric})")
        for level, row in table.iterrows():
            values = row.dropna().to_numpy()
            if values.size == 0:
                assert level not in got.index
                continue
            g = got.loc[level]
            assert g["n"] == values.size
            assert g["mean"] == pytest.approx(values.mean(), rel=1e-12)
            if values.size > 1:
                assert g["sd"] == pytest.approx(values.std(ddof=1), rel=1e-10)
            for q in (2.5, 5, 25, 50, 75, 95, 97.5):
                assert g[f"p{q:g}"] == pytest.approx(np.percentile(values, q), rel=1e-12)
            checked += 1
        assert got.loc[3, "n"] == 203
    assert checked == 3 * 14  # C1 .. T7


def test_summary_real_filters(env: Env, real: NormativeVersion, real_src: Path) -> None:
    got = summary(
        "hc@1", sex="F", age=(20, 40), vendor="siemens", metrics=["area"], registry=env.reg
    )
    p = pd.read_csv(real_src / "participants.tsv", sep="\t")
    chosen = p[(p.sex == "F") & p.age.between(20, 40) & (p.manufacturer == "Siemens")]
    files = [real_src / "spinal_cord" / f"{s}_T2w_PAM50.csv" for s in chosen.participant_id]
    table = raw_level_means(files, "MEAN(area)")
    c3 = table.loc[3].dropna().to_numpy()
    row = got.set_index("level_name").loc["C3"]
    assert 10 < row["n"] == c3.size < 203
    assert row["mean"] == pytest.approx(c3.mean(), rel=1e-12)
    assert row["sd"] == pytest.approx(c3.std(ddof=1), rel=1e-10)


# ------------------------------------------------------------------------ rescale, real ---


def shrunk(tidy: pd.DataFrame, seed: int = 1, factor: float = 0.975) -> pd.DataFrame:
    """A candidate model that measures every subject 2.5 % smaller (area; diameters by the
    same factor), with 0.3 % per-subject and 0.3 % per-slice measurement noise."""
    rng = np.random.default_rng(seed)
    subjects = tidy["subject"].unique()
    per_subject = dict(zip(subjects, rng.normal(0, 0.003, len(subjects)), strict=True))
    out = tidy.copy()
    noise = np.exp(tidy["subject"].map(per_subject).to_numpy() + rng.normal(0, 0.003, len(out)))
    for m in ("area", "diameter_AP", "diameter_RL"):
        out[m] = tidy[m] * factor * noise
    return out


def test_rescale_real_uniform_shrink_detected_and_corrected(
    env: Env, real: NormativeVersion, real_tidy: pd.DataFrame, tmp_path: Path
) -> None:
    cand = shrunk(real_tidy)
    res = drift_result(
        real_tidy,
        cand,
        provenance=recorded(env, "cordseg/1", "cordseg/2"),
        n_boot=200,
    )
    doc = json.loads(write_json(res, tmp_path / "result.json").read_text())
    # detected: the gate fails, the factors say 0.975
    assert doc["verdict"] == "fail"
    for lv in ("C2", "C3", "C5", "T1"):
        assert doc["metrics"]["area"]["levels"][lv]["scaling_factor"] == pytest.approx(
            0.975, abs=0.001
        )
    new = update("hc", "cordseg/2", tmp_path / "result.json", registry=env.reg).version
    assert (new.kind, new.model, new.parent) == ("rescale", "cordseg/2", real.version)
    assert new.source == "rescale of hc/1"
    assert new.tags["cordwatch.normative.baseline_model"] == "cordseg/1"
    # corrected: the rescaled database's level means match the shrunk data within 0.1 %
    with NormativeStore(env.reg).opened(new) as (_, folder):
        data = load_data(folder)
        record = json.loads((folder / "cordwatch" / "rescale.json").read_text())
        levels = pd.read_csv(folder / "cordwatch" / "factors_level.csv")
        slices = pd.read_csv(folder / "cordwatch" / "factors_slice.csv")
        some_csv = (folder / "spinal_cord" / "sub-amu01_T2w_PAM50.csv").read_text()
    assert "RESCALE, not a recompute" in record["note"]
    assert record["candidate_model"] == "cordseg/2" and record["baseline_model"] == "cordseg/1"
    assert (
        record["drift_result_sha256"]
        == hashlib.sha256((tmp_path / "result.json").read_bytes()).hexdigest()
    )
    assert set(levels.columns) >= {"scaling_factor", "ci95_low", "ci95_high", "slicewise_cov_pct"}
    assert (slices["source"] == "profile").sum() > 0
    checked = 0
    for m in ("area", "diameter_AP", "diameter_RL"):
        rescaled = data.tidy.groupby(["level", "subject"])[m].mean().groupby("level").mean()
        truth = cand.groupby(["level", "subject"])[m].mean().groupby("level").mean()
        for level in range(1, 13):  # C1 .. T5: levels with factors from >= 5 subjects
            assert rescaled[level] == pytest.approx(truth[level], rel=1e-3), (m, level)
            checked += 1
        # T6, T7 (< 5 subjects): emptied, not left in the old model's scale
        assert data.tidy.loc[data.tidy["level"] >= 13, m].isna().all()
    assert checked == 36
    assert record["blanked_levels"]["area"] == ["T6", "T7"]
    # shape metrics untouched, CSV layout kept
    parent = real_tidy.set_index(["subject", "slice"]).sort_index()
    child = data.tidy.set_index(["subject", "slice"]).sort_index()
    for m in ("eccentricity", "solidity", "orientation", "angle_AP"):
        np.testing.assert_array_equal(child[m].to_numpy(), parent[m].to_numpy())
    assert some_csv.splitlines()[0].split(",") == COLUMNS_23


def test_rescale_exact_factor_per_slice(env: Env, tmp_path: Path) -> None:
    """Without noise, every rescaled slice value is the original x 0.975 (to 1e-9), NaN stays
    empty, every other column is untouched."""
    src, v = syn_db(env, "exact", 8)
    base = load_data(src).tidy
    cand = base.copy()
    for m in ("area", "diameter_AP", "diameter_RL"):
        cand[m] = base[m] * 0.975
    res = drift_result(
        base,
        cand,
        provenance=recorded(env, "cordseg/1", "cordseg/3"),
        n_boot=100,
    )
    write_json(res, tmp_path / "exact.json")
    new = update("exact", "cordseg/3", tmp_path / "exact.json", registry=env.reg).version
    assert new.parent == v.version
    store = NormativeStore(env.reg)
    with store.opened(new) as (_, folder):
        stored = {p.name: read_sct_csv(p) for p in (folder / "spinal_cord").glob("*.csv")}
        sources = pd.read_csv(folder / "cordwatch" / "factors_slice.csv")["source"]
    assert set(sources) == {"profile"}  # every slice had >= 5 pairs
    assert len(stored) == 8
    for name, after in stored.items():
        before = read_sct_csv(src / "spinal_cord" / name)
        for col in ("MEAN(area)", "STD(area)", "MEAN(diameter_AP)", "MEAN(diameter_RL)"):
            b, a = before[col].to_numpy(float), after[col].to_numpy(float)
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            ok = np.isfinite(b)
            assert ok.sum() > 300
            np.testing.assert_allclose(a[ok], b[ok] * 0.975, rtol=1e-9)
        for col in ("Timestamp", "Filename", "MEAN(solidity)", "MEAN(angle_RL)", "SUM(length)"):
            pd.testing.assert_series_equal(after[col], before[col])


def result_for(env: Env, name: str, base: pd.DataFrame, cand: pd.DataFrame, path: Path) -> Path:
    """A drift result of ``cand`` vs ``base`` naming the database's current model as its
    baseline and cordseg/3 as its candidate."""
    baseline = resolve(name, registry=env.reg).model
    res = drift_result(
        base,
        cand,
        provenance=recorded(env, baseline, "cordseg/3"),
        n_boot=100,
    )
    return write_json(res, path)


def test_rescale_real_nonuniform_level_refused(
    env: Env, real: NormativeVersion, real_tidy: pd.DataFrame, tmp_path: Path
) -> None:
    cand = real_tidy.copy()
    c4 = cand["level"] == 4
    for m in ("area", "diameter_AP", "diameter_RL"):
        cand.loc[c4, m] = cand.loc[c4, m] * 0.95
    doc = result_for(env, "hc", real_tidy, cand, tmp_path / "c4.json")
    before = [v.version for v in NormativeStore(env.reg).versions("hc")]
    with pytest.raises(InputError, match=r"area: level factors spread 5\.\d+ % \(C4 0\.9500"):
        update("hc", "cordseg/3", doc, registry=env.reg)
    assert [v.version for v in NormativeStore(env.reg).versions("hc")] == before


def test_rescale_real_slicewise_noise_refused(
    env: Env, real: NormativeVersion, real_tidy: pd.DataFrame, tmp_path: Path
) -> None:
    """Level means barely move but the factor swings +-5 % along the slices: refused."""
    cand = real_tidy.copy()
    wave = 1 + 0.05 * np.sin(real_tidy["slice"].to_numpy() * 1.3)
    for m in ("area", "diameter_AP", "diameter_RL"):
        cand[m] = real_tidy[m] * wave
    doc = result_for(env, "hc", real_tidy, cand, tmp_path / "wave.json")
    with pytest.raises(InputError, match=r"area C3: slice-wise CoV [3-4]\.\d\d % > 2\.00 %"):
        update("hc", "cordseg/3", doc, registry=env.reg)


# ------------------------------------------------------------------------- z-scores, real ---


def test_zscore_real_matches_pandas(
    env: Env, real: NormativeVersion, real_src: Path, tmp_path: Path
) -> None:
    files = sorted((real_src / "spinal_cord").glob("*.csv"))
    patient = tmp_path / "sub-patient_T2w_PAM50.csv"
    df = pd.read_csv(files[5])
    df["MEAN(area)"] = df["MEAN(area)"] * 0.8  # an atrophied cord
    df.to_csv(patient, index=False)
    res = zscore(patient, "hc@1", model_ref="cordseg/1", registry=env.reg)
    assert res.model_check == "match" and res.warnings == []
    ref = raw_level_means(files, "MEAN(area)").loc[3].dropna().to_numpy()
    value = df.groupby("VertLevel")["MEAN(area)"].mean()[3]
    row = res.table.set_index(["metric", "level_name"]).loc[("area", "C3")]
    assert row["value"] == pytest.approx(value, rel=1e-12)
    assert row["z"] == pytest.approx((value - ref.mean()) / ref.std(ddof=1), rel=1e-10)
    assert row["percentile"] == pytest.approx(100 * (ref < value).mean(), abs=1e-9)
    assert row["z"] < -1.5  # 20 % smaller than its own healthy self
    # diameters untouched: z of the subject's own values, within the healthy range
    d = res.table.set_index(["metric", "level_name"]).loc[("diameter_AP", "C3")]
    assert abs(d["z"]) < 3


# --------------------------------------------------------------------- storage, synthetic ---


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("MEAN(area)", "-70.5", "-70.5"),
        ("MEAN(area)", "inf", "inf"),
        ("MEAN(diameter_RL)", "-1e-3", "-0.001"),
        ("STD(area)", "abc", "'abc'"),
    ],
)
def test_import_refuses_impossible_values_naming_file_and_line(
    env: Env, tmp_path: Path, column: str, value: str, why: str
) -> None:
    """Issue 15 item 6: a negative or non-finite area or diameter is refused on import."""
    src = write_synthetic_db(tmp_path / "db", 3)
    victim = src / "spinal_cord" / "sub-syn02_T2w_PAM50.csv"
    lines = victim.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    i = next(n for n, line in enumerate(lines) if n and line.split(",")[header.index(column)])
    cells = lines[i].rstrip("\n").split(",")
    cells[header.index(column)] = value
    lines[i] = ",".join(cells) + "\n"
    victim.write_text("".join(lines))
    with pytest.raises(InputError) as err:
        import_db(src, "impossible", registry=env.reg)
    assert err.value.path == str(victim)
    assert err.value.message.startswith(f"line {i + 1}: {column} is {why}"), err.value.message
    assert NormativeStore(env.reg).versions("impossible") == []


@pytest.mark.parametrize("age", ["-500", "121", "old", "inf"])
def test_import_refuses_ages_outside_0_to_120(env: Env, tmp_path: Path, age: str) -> None:
    src = write_synthetic_db(tmp_path / "db", 3)
    path = src / "participants.tsv"
    rows = path.read_text().splitlines(keepends=True)
    rows[2] = rows[2].replace("\t24\t", f"\t{age}\t")
    path.write_text("".join(rows))
    with pytest.raises(InputError) as err:
        import_db(src, "ages", registry=env.reg)
    assert err.value.path == str(path)
    assert err.value.message == f"line 3 (sub-syn02): age {age!r} is not a number from 0 to 120"
    rows[2] = rows[2].replace(f"\t{age}\t", "\tn/a\t")  # unknown is fine
    path.write_text("".join(rows))
    assert import_db(src, "ages", registry=env.reg).n_subjects == 3


def test_import_bad_inputs_store_nothing(env: Env, tmp_path: Path) -> None:
    store = NormativeStore(env.reg)

    def fresh(tag: str) -> Path:
        return write_synthetic_db(tmp_path / tag, 3)

    bad = fresh("columns")
    victim = bad / "spinal_cord" / "sub-syn02_T2w_PAM50.csv"
    victim.write_text(victim.read_text().replace("MEAN(solidity)", "MEAN(solid)"))
    with pytest.raises(InputError, match="23- or 29-column") as err:
        import_db(bad, "bad", registry=env.reg)
    assert err.value.path == str(victim)

    garbage = fresh("garbage")
    victim = garbage / "spinal_cord" / "sub-syn01_T2w_PAM50.csv"
    victim.write_text("not,a\ncsv")
    with pytest.raises(InputError) as err:
        import_db(garbage, "bad", registry=env.reg)
    assert err.value.path == str(victim)

    native = fresh("native")
    victim = native / "spinal_cord" / "sub-syn03_T2w_PAM50.csv"
    df = pd.read_csv(victim)
    df["Slice (I->S)"] = df["Slice (I->S)"] - 300  # native-space slice numbers
    df.to_csv(victim, index=False)
    with pytest.raises(InputError, match="not PAM50-normalised") as err:
        import_db(native, "bad", registry=env.reg)
    assert err.value.path == str(victim)

    orphan = fresh("orphan")
    p = orphan / "participants.tsv"
    p.write_text("\n".join(p.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(InputError, match="sub-syn03 has a CSV but no row") as err:
        import_db(orphan, "bad", registry=env.reg)
    assert err.value.path == str(p)

    extra = fresh("extra")
    (extra / "spinal_cord" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a sub-XXX"):
        import_db(extra, "bad", registry=env.reg)

    with pytest.raises(InputError, match="no sub-"):
        import_db(tmp_path, "bad", registry=env.reg)
    with pytest.raises(InputError, match="--model"):
        import_db(fresh("model"), "bad", "cordseg/99", registry=env.reg)
    assert store.versions("bad") == []


def test_flat_layout_and_alias_model(env: Env, tmp_path: Path) -> None:
    src = write_synthetic_db(tmp_path / "db", 3)
    env.reg.promote("cordseg/2", "candidate")
    v = import_db(src / "spinal_cord", "flat", "cordseg@candidate", registry=env.reg)
    assert v.model == "cordseg/2"  # the alias is resolved and recorded as NAME/VERSION
    assert v.n_subjects == 3


def test_tampered_artifact_is_an_integrity_error(env: Env, tmp_path: Path) -> None:
    _, v = syn_db(env, "tamper", 3)
    stored = Path(v.artifact_uri.removeprefix("file://")) / "spinal_cord/sub-syn02_T2w_PAM50.csv"
    original = stored.read_bytes()
    stored.write_bytes(original.replace(b"synthetic", b"synthetiC", 1))
    try:
        with pytest.raises(IntegrityError, match=r"sha256 .* does not match") as err:
            export_db("tamper@1", tmp_path / "out", registry=env.reg)
        assert err.value.path == v.stored("spinal_cord/sub-syn02_T2w_PAM50.csv")
        assert not (tmp_path / "out").exists()
        with pytest.raises(IntegrityError):
            summary("tamper", registry=env.reg)
    finally:
        stored.write_bytes(original)
    manifest = Path(v.artifact_uri.removeprefix("file://")) / "manifest.json"
    text = manifest.read_bytes()
    manifest.write_bytes(text.replace(b'"size": ', b'"size":  ', 1))
    try:
        with pytest.raises(IntegrityError, match="manifest sha256") as err:
            export_db("tamper", tmp_path / "out2", registry=env.reg)
        assert err.value.path == v.stored("manifest.json")
    finally:
        manifest.write_bytes(text)
    extra = Path(v.artifact_uri.removeprefix("file://")) / "spinal_cord/sub-evil_T2w_PAM50.csv"
    extra.write_text("x")
    try:
        with pytest.raises(IntegrityError, match="unexpected file"):
            export_db("tamper", tmp_path / "out3", registry=env.reg)
    finally:
        extra.unlink()
    assert export_db("tamper", tmp_path / "out4", registry=env.reg).is_dir()


def test_versions_are_integers_and_unfinished_runs_invisible(env: Env) -> None:
    _, v1 = syn_db(env, "order", 2)
    store = NormativeStore(env.reg)
    client = env.reg.client
    exp = client.get_experiment_by_name(EXPERIMENT_PREFIX + "order").experiment_id
    tags = {k: v for k, v in client.get_run(v1.run_id).data.tags.items() if k != "mlflow.runName"}

    def run(version: int, status: str | None) -> str:
        r = client.create_run(exp, tags=tags | {TAG + "version": str(version)})
        if status:
            client.set_terminated(r.info.run_id, status)
        return r.info.run_id

    run(10, "FINISHED")
    run(9, "FINISHED")
    run(2, "FINISHED")
    run(11, None)  # in flight: holds its number, invisible
    run(12, "FAILED")  # failed: neither visible nor holding a number
    assert [v.version for v in store.versions("order")] == [1, 2, 9, 10]
    assert store.resolve("order").version == 10  # not "9" (text order)
    assert store.resolve("order@latest").version == 10
    with pytest.raises(RegistryError, match="no version 11"):
        store.resolve("order@11")
    write_synthetic_db(env.work / "order-next", 2)
    new = import_db(env.work / "order-next", "order", registry=env.reg)
    assert new.version == 12


def test_settle_renumbers_a_collision(env: Env) -> None:
    """Two writers on a server may draw the same number: the later run takes the next one."""
    syn_db(env, "race", 2)
    store = NormativeStore(env.reg)
    client = env.reg.client
    exp = client.get_experiment_by_name(EXPERIMENT_PREFIX + "race").experiment_id
    tags = {TAG + "version": "2", KIND_TAG: KIND_VALUE}
    first = client.create_run(exp, start_time=1000, tags=tags).info.run_id
    second = client.create_run(exp, start_time=2000, tags=tags).info.run_id
    assert store._settle(exp, first, 2) == 2
    assert store._settle(exp, second, 2) == 3
    assert client.get_run(second).data.tags[TAG + "version"] == "3"


def test_failed_upload_leaves_no_version(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_synthetic_db(env.work / "src-fail", 2)
    client = env.reg.client

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(client, "log_artifacts", broken)
    with pytest.raises(RegistryError, match="disk full"):
        import_db(src, "fails", registry=env.reg)
    monkeypatch.undo()
    store = NormativeStore(env.reg)
    assert store.versions("fails") == []
    exp = client.get_experiment_by_name(EXPERIMENT_PREFIX + "fails").experiment_id
    assert [r.info.status for r in client.search_runs([exp])] == ["FAILED"]
    assert import_db(src, "fails", registry=env.reg).version == 1  # the number is reused


def test_concurrent_imports_get_distinct_versions(env: Env) -> None:
    src = write_synthetic_db(env.work / "src-conc", 2)
    results: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            reg = connect(uri=env.reg.tracking_uri, home=env.home)
            results.append(import_db(src, "conc", registry=reg).version)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [1, 2, 3]


# -------------------------------------------------------------------- rescale, synthetic ---


@pytest.fixture(scope="module")
def syn(env: Env) -> NormativeVersion:
    return syn_db(env, "syn", 8)[1]


def test_rescale_checks_the_recorded_package_sha256s(env: Env, tmp_path: Path) -> None:
    """Issue 15 item 5: a drift result whose refs were edited names a model it never measured;
    the package sha256s it records must be the registry's (refused otherwise, no override)."""
    other = env.reg.register("othermodel", make_package(tmp_path / "other", size=64, seed=7))
    uniform = dict.fromkeys(ALL_SYN_LEVELS, 0.98)
    sha = env.reg.resolve("cordseg/2").sha256
    assert other.sha256 != sha
    syn_db(env, "shacheck", 8)
    store = NormativeStore(env.reg)
    n_before = len(store.versions("shacheck"))
    # measured on cordseg/2's package, candidate ref edited to othermodel/1
    edited = fake_result(uniform, candidate=other.ref, sha256=sha)
    with pytest.raises(InputError, match=r"candidate othermodel/1 was measured on package sha256"):
        update("shacheck", other.ref, write_doc(tmp_path / "e.json", edited), registry=env.reg)
    with pytest.raises(InputError, match=r"not about the model it names"):
        update(
            "shacheck",
            other.ref,
            write_doc(tmp_path / "e2.json", edited),
            assume_baseline=True,
            registry=env.reg,
        )
    # the baseline's sha256 too
    base_edited = fake_result(uniform, sha256=sha)
    base_edited["provenance"]["baseline"]["sha256"] = other.sha256
    with pytest.raises(InputError, match=r"baseline cordseg/1 was measured on package sha256"):
        update(
            "shacheck", "cordseg/2", write_doc(tmp_path / "b.json", base_edited), registry=env.reg
        )
    # not recorded: refused unless --assume-baseline (recorded as an override)
    bare = write_doc(tmp_path / "bare.json", fake_result(uniform))
    with pytest.raises(InputError, match=r"does not record the candidate's package sha256"):
        update("shacheck", "cordseg/2", bare, registry=env.reg)
    assert len(store.versions("shacheck")) == n_before
    ok = update(
        "shacheck",
        "cordseg/2",
        write_doc(tmp_path / "ok.json", fake_result(uniform, sha256=sha)),
        registry=env.reg,
    )
    assert ok.version.tags[TAG + "assume_baseline"] == "false"


def test_rescale_model_checks(env: Env, syn: NormativeVersion, tmp_path: Path) -> None:
    uniform = dict.fromkeys(ALL_SYN_LEVELS, 0.98)
    store = NormativeStore(env.reg)
    n_before = len(store.versions("syn"))
    wrong_base = write_doc(tmp_path / "a.json", fake_result(uniform, baseline="cordseg/3"))
    with pytest.raises(InputError, match=r"baseline is cordseg/3 but syn/\d+ was made with"):
        update("syn", "cordseg/2", wrong_base, registry=env.reg)
    wrong_cand = write_doc(tmp_path / "b.json", fake_result(uniform, candidate="cordseg/3"))
    with pytest.raises(InputError, match="candidate is cordseg/3, not --model cordseg/2"):
        update("syn", "cordseg/2", wrong_cand, registry=env.reg)
    anonymous = write_doc(tmp_path / "c.json", fake_result(uniform, baseline=None, candidate=None))
    with pytest.raises(InputError, match=r"does not name its candidate.*--assume-baseline"):
        update("syn", "cordseg/2", anonymous, registry=env.reg)
    with pytest.raises(InputError, match="already made with cordseg/1"):
        update("syn", "cordseg/1", wrong_base, registry=env.reg)
    with pytest.raises(InputError, match="exactly one of"):
        update("syn", "cordseg/2", registry=env.reg)
    assert len(store.versions("syn")) == n_before
    # the override is recorded
    res = update("syn", "cordseg/2", wrong_base, assume_baseline=True, registry=env.reg)
    assert res.version.tags[TAG + "assume_baseline"] == "true"
    assert any("cordseg/3" in note for note in res.notes)
    with store.opened(res.version) as (_, folder):
        record = read_records(folder)["rescale"]
    assert record["assume_baseline"] is True
    assert "baseline is cordseg/3" in record["overrides"][0]
    # level factors: every value x 0.98 (no profile in the document)
    s_old = summary(f"syn/{syn.version}", metrics=["area"], registry=env.reg)
    s_new = summary(res.version.ref, metrics=["area"], registry=env.reg)
    np.testing.assert_allclose(s_new["mean"], s_old["mean"] * 0.98, rtol=1e-12)


def test_rescale_needs_every_rescaled_metric(
    env: Env, syn: NormativeVersion, tmp_path: Path
) -> None:
    parent = resolve("syn", registry=env.reg)
    doc = fake_result(
        dict.fromkeys(ALL_SYN_LEVELS, 0.98),
        metrics=("area",),
        baseline=parent.model,
        candidate="cordseg/3",
        sha256=env.reg.resolve("cordseg/3").sha256,
    )
    with pytest.raises(InputError, match="diameter_AP: the drift result has no scaling factors"):
        update("syn", "cordseg/3", write_doc(tmp_path / "r.json", doc), registry=env.reg)
    with pytest.raises(InputError, match="not a cordwatch drift result"):
        update("syn", "cordseg/3", write_doc(tmp_path / "x.json", {"a": 1}), registry=env.reg)


def plan_rows(levels: dict[int, list[int]], metric: str = "area") -> pd.DataFrame:
    rows = [(metric, lv, s) for lv, slices in levels.items() for s in slices]
    return pd.DataFrame(rows, columns=["metric", "level", "slice"])


def test_rescale_plan_profile_then_level() -> None:
    doc = fake_result({"C3": 0.97, "C4": 0.98}, metrics=("area",))
    doc["metrics"]["area"]["slice_profile"] = {
        "slice": [880, 881, 840],
        "level": [3, 3, 4],
        "n": [30, 3, 30],
        "scaling_factor": [0.96, 0.95, 0.99],
    }
    scaling = parse_scaling(doc)
    plan = rescale_plan(
        scaling, plan_rows({3: [880, 881, 882], 4: [840], 5: [820]}), NormativePolicy()
    )
    assert plan.lookup[("area", 3, 880)] == 0.96  # profile, 30 pairs
    assert plan.lookup[("area", 3, 881)] == 0.97  # profile has 3 < 5 pairs: level factor
    assert plan.lookup[("area", 3, 882)] == 0.97  # not in the profile: level factor
    assert plan.lookup[("area", 4, 840)] == 0.99
    assert plan.lookup[("area", 5, 820)] is None  # C5 has no factor: emptied
    assert plan.blanked == {"area": ["C5"]}
    by_level = rescale_plan(scaling, plan_rows({3: [880]}), NormativePolicy(slice_factors="level"))
    assert by_level.lookup[("area", 3, 880)] == 0.97
    with pytest.raises(InputError, match="no factor from >= 5 subjects at C5"):
        rescale_plan(scaling, plan_rows({5: [820]}), NormativePolicy(uncovered_levels="refuse"))


def test_rescale_plan_refusals_name_every_reason() -> None:
    doc = fake_result({"C3": 1.0, "C4": 0.97}, cov=2.5, ci_half=0.02, metrics=("area",))
    with pytest.raises(InputError) as err:
        rescale_plan(parse_scaling(doc), plan_rows({3: [880], 4: [840]}), NormativePolicy())
    text = str(err.value)
    assert "area C3: slice-wise CoV 2.50 % > 2.00 %" in text
    assert "area C4: 95 % CI [0.9500, 0.9900] is 4.12 % wide > 2.00 %" in text
    assert "area: level factors spread 3.05 % (C4 0.9700 .. C3 1.0000) > 2.00 %" in text
    lenient = NormativePolicy(
        max_slicewise_cov_pct=3, max_level_spread_pct=4, max_ci_width_pct=None
    )
    plan = rescale_plan(parse_scaling(doc), plan_rows({3: [880], 4: [840]}), lenient)
    assert plan.lookup[("area", 4, 840)] == 0.97


def test_rescale_sct_text_keeps_everything_else(tmp_path: Path) -> None:
    src = write_synthetic_db(tmp_path / "db", 1)
    path = next((src / "spinal_cord").glob("*.csv"))
    text = path.read_text()
    out = rescale_sct_text(text, lambda m, lv, s: 0.5 if lv == 3 else (None if lv == 4 else 1.0))
    a, b = pd.read_csv(path), pd.read_csv(io_text(out))
    c3, c4 = a["VertLevel"] == 3, a["VertLevel"] == 4
    np.testing.assert_allclose(b.loc[c3, "MEAN(area)"], a.loc[c3, "MEAN(area)"] * 0.5)
    np.testing.assert_allclose(b.loc[c3, "MEAN(diameter_RL)"], a.loc[c3, "MEAN(diameter_RL)"] * 0.5)
    assert b.loc[c4, ["MEAN(area)", "STD(area)", "MEAN(diameter_AP)"]].isna().all().all()
    assert b.loc[c4, "MEAN(solidity)"].notna().all()
    untouched = [c for c in COLUMNS_23 if not any(m in c for m in ("area", "diameter"))]
    old_lines = [line.split(",") for line in text.splitlines()]
    new_lines = [line.split(",") for line in out.splitlines()]
    idx = [COLUMNS_23.index(c) for c in untouched]
    assert [[r[i] for i in idx] for r in new_lines] == [[r[i] for i in idx] for r in old_lines]
    # factor 1.0 rewrites nothing: same bytes on the other levels
    other = ~(c3 | c4)
    assert [line for line, keep in zip(out.splitlines()[1:], other, strict=True) if keep] == [
        line for line, keep in zip(text.splitlines()[1:], other, strict=True) if keep
    ]


def io_text(text: str):
    import io

    return io.StringIO(text)


# ---------------------------------------------------------------------------------- policy ---


def test_policy_file_is_the_builtin_default() -> None:
    policy = load_normative_policy()
    assert policy == NormativePolicy()
    assert policy.source == str(DEFAULT_POLICY_PATH)
    assert len(policy.sha256) == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_slicewise_cov: 2\n", "unknown key"),
        ("max_level_spread_pct: yes\n", "must be a number"),
        ("min_subjects: 2.5\n", "positive integer"),
        ("slice_factors: median\n", "must be one of"),
        ("min_subjects: 5\nmin_subjects: 6\n", "duplicate key"),
        ("schema: 2\n", "schema must be 1"),
    ],
)
def test_policy_validation(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        load_normative_policy(path)
    assert err.value.path == str(path)


# --------------------------------------------------------------------- zscore, synthetic ---


def test_zscore_model_consistency(env: Env, syn: NormativeVersion, tmp_path: Path) -> None:
    src = env.work / "src-syn"
    subject = next((src / "spinal_cord").glob("*.csv"))
    with pytest.raises(InputError, match="measured with cordseg/3 but syn/1 was made with"):
        zscore(subject, "syn/1", model_ref="cordseg/3", registry=env.reg)
    allowed = zscore(
        subject, "syn/1", model_ref="cordseg/3", allow_model_mismatch=True, registry=env.reg
    )
    assert allowed.model_check == "mismatch-allowed"
    assert "two measuring instruments" in allowed.warnings[0]
    unknown = zscore(subject, "syn/1", registry=env.reg)
    assert unknown.model_check == "unchecked"
    assert "cannot check" in unknown.warnings[0]
    ok = zscore(subject, "syn/1", sex="F", model_ref="cordseg/1", registry=env.reg)
    assert ok.model_check == "match" and ok.warnings == []
    assert ok.n_reference == 4
    with pytest.raises(InputError, match="no subject of the database matches sex M, age >= 90"):
        zscore(subject, "syn/1", sex="m", age=(90, None), model_ref="cordseg/1", registry=env.reg)
    assert set(ok.table["level_name"]) == set(ALL_SYN_LEVELS)
    doc = ok.to_dict()
    assert doc["database_model"] == "cordseg/1" and doc["filters"]["sex"] == "F"
    assert all(isinstance(r["z"], float) for r in doc["levels"])
    native = tmp_path / "sub-x_T2w_PAM50.csv"
    df = pd.read_csv(subject)
    df["Slice (I->S)"] += 200
    df.to_csv(native, index=False)
    with pytest.raises(InputError, match="not PAM50-normalised"):
        zscore(native, "syn/1", model_ref="cordseg/1", registry=env.reg)


# ------------------------------------------------------------------- recompute (phantoms) ---


@pytest.mark.slow
def test_recompute_on_phantom_cohort(env: Env, tmp_path: Path) -> None:
    """Segment a 3-subject phantom cohort with the demo model; the stored CSVs hold exactly
    the morphometrics the drift check logged for that model and cohort."""
    from drift.cohort.evaluate import evaluate_version
    from drift.cohort.manifest import PhantomRecipe, load_cohort, write_phantom_manifest
    from drift.cohort.roots import ensure_root

    demo = Path(__file__).resolve().parents[1] / "models" / "demo" / "demo-good"
    if not (demo / "fold_0").is_dir():
        pytest.skip("demo model not built")
    pytest.importorskip("nnunetv2")
    manifest = write_phantom_manifest(
        tmp_path, name="nphantom", recipe=PhantomRecipe(n_subjects=3, contrasts=("T2w",))
    )
    info = env.reg.register("cordseg-demo", demo)
    res = update(
        "phantom-hc", info.ref, recompute=True, cohort=manifest, device="cpu", registry=env.reg
    )
    v = res.version
    assert (v.kind, v.model, v.n_subjects, v.parent) == ("recompute", info.ref, 3, None)
    assert v.tags[TAG + "cohort"] == "nphantom"
    cohort = load_cohort(manifest)
    measured = evaluate_version(
        env.reg,
        info,
        cohort,
        ensure_root(cohort),
        cache_dir=env.home / "cache" / "segmentations",
        device="cpu",
        progress=False,
        provenance={},
    )
    truth = pam50_measurements(measured.table).set_index(["subject", "slice"])
    with NormativeStore(env.reg).opened(v) as (_, folder):
        files = sorted((folder / "spinal_cord").glob("*.csv"))
        assert [f.name for f in files] == [f"sub-phantom0{i}_T2w_PAM50.csv" for i in (1, 2, 3)]
        for f in files:
            raw = read_sct_csv(f)
            # a recompute writes what SCT >= 7.4 writes: the 29-column layout
            assert list(raw.columns) == COLUMNS_29 and len(raw) == 945
        data = load_data(folder)
        parts = pd.read_csv(folder / "participants.tsv", sep="\t")
        record = read_records(folder)["recompute"]
    assert parts["participant_id"].tolist() == ["sub-phantom01", "sub-phantom02", "sub-phantom03"]
    assert record["cohort_manifest_sha256"] == cohort.manifest_sha256
    got = data.tidy.dropna(subset=["area"]).set_index(["subject", "slice"])
    assert len(got) == len(truth) > 600
    np.testing.assert_allclose(got["area"], truth.loc[got.index, "area"], rtol=1e-12)
    c3 = got[got["level"] == 3]["area"]
    assert 20 < c3.mean() < 200 and math.isfinite(c3.std())
