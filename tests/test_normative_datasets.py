"""Normative databases in the multi-dataset layout of PAM50-normalized-metrics (since 2026:
``spinal_cord/<DATASET>/`` each with its own participants.tsv) beside the single-folder
r20250321 layout: import, per-dataset keys, unioned participants, export in either layout,
round trips, bad input, rescale and a recompute over several cohorts.

The real database (../shared/data/normative_r20250321, 203 subjects) is split once per
module into 3 datasets (80/70/53 subjects, one participant_id repeated in a second dataset
with other values) in a temporary folder; the logic cases use small synthetic databases.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from drift.cli.main import app
from drift.normative.datasets import load_data, record_csv, union_participants
from drift.normative.layout import NormativeData, read_database, write_synthetic_db
from drift.normative.store import TAG, NormativeStore, NormativeVersion, export_db, import_db
from drift.normative.summary import (
    Filters,
    _reference_means,
    level_summary,
    subject_level_means,
    summary,
)
from registry.api import Registry
from registry.testing import registry_of_versions

runner = CliRunner()

METRICS = ["area", "diameter_AP", "diameter_RL", "eccentricity", "solidity"]
SPLIT = {"spine-generic": 80, "dataset-b": 70, "dataset-c": 53}
REPEATED = "sub-amu01"  # also in dataset-b, measured 10 % larger and aged 60


@dataclass
class Env:
    reg: Registry
    home: Path
    work: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("normative-datasets")
    home = work / "home"
    with registry_of_versions(work, versions=2) as reg:
        yield Env(reg, home, work)


def cw(env: Env, *args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, ["normative", *map(str, args), "--registry", env.reg.tracking_uri])
    return result.exit_code, result.stdout, result.stderr


def one_line_error(err: str, path: Path | str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("cordwatch: error: ") and str(path) in lines[0], err
    return lines[0]


def table_sha256(data: NormativeData) -> str:
    """sha256 of the tidy table and the participants table as CSV text (NaN written empty)."""
    digest = hashlib.sha256()
    for frame in (data.tidy, data.participants):
        digest.update(frame.to_csv(index=False, float_format="%.17g").encode())
    return digest.hexdigest()


# ------------------------------------------------------------ the real database, split ---


@pytest.fixture(scope="module")
def real_src(shared_data: Path) -> Path:
    return shared_data / "normative_r20250321"


@pytest.fixture(scope="module")
def tree(env: Env, real_src: Path) -> Path:
    """``spinal_cord/<DATASET>/`` x 3 from the real CSVs (copies in a temporary folder), each
    dataset with its own participants columns, plus REPEATED in dataset-b with areas x 1.1."""
    root = env.work / "pam50-normalized-metrics"
    participants = pd.read_csv(
        real_src / "participants.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    subjects = sorted(participants["participant_id"])
    assert len(subjects) == sum(SPLIT.values()) == 203
    columns = {
        "spine-generic": list(participants.columns),
        "dataset-b": ["participant_id", "sex", "age", "manufacturer"],
        "dataset-c": ["participant_id", "age", "sex", "institution", "manufacturer"],
    }
    start = 0
    for name, n in SPLIT.items():
        folder = root / "spinal_cord" / name
        folder.mkdir(parents=True)
        chosen = subjects[start : start + n]
        start += n
        for s in chosen:
            shutil.copyfile(
                real_src / "spinal_cord" / f"{s}_T2w_PAM50.csv", folder / f"{s}_T2w_PAM50.csv"
            )
        rows = participants.set_index("participant_id").loc[chosen].reset_index()
        table = rows[columns[name]]
        if name == "dataset-b":
            table = table.assign(handedness="R")
            extra = participants[participants["participant_id"] == REPEATED][columns[name]]
            table = pd.concat([table, extra.assign(age="60", handedness="L")], ignore_index=True)
            csv = pd.read_csv(real_src / "spinal_cord" / f"{REPEATED}_T2w_PAM50.csv")
            csv["MEAN(area)"] = csv["MEAN(area)"] * 1.1
            csv.to_csv(folder / f"{REPEATED}_T2w_PAM50.csv", index=False)
        table.to_csv(folder / "participants.tsv", sep="\t", index=False)
        (folder / "dataset_description.json").write_text(json.dumps({"name": name}) + "\n")
    (root / "datasets.tsv").write_text("metric\tname\nspinal_cord\tspine-generic\n")
    (root / "README.md").write_text("# three datasets\n")
    # upstream's canal measures: another metric folder, not part of a cord database
    (root / "spinal_canal" / "spine-generic").mkdir(parents=True)
    return root


@dataclass
class Multi:
    version: NormativeVersion
    data: NormativeData
    seconds: float


@pytest.fixture(scope="module")
def multi(env: Env, tree: Path) -> Multi:
    import time

    t0 = time.perf_counter()
    version = import_db(tree, "multi", "cordseg/1", registry=env.reg)
    seconds = time.perf_counter() - t0
    with NormativeStore(env.reg).opened(version) as (_, folder):
        data = load_data(folder)
    return Multi(version, data, seconds)


@pytest.fixture(scope="module")
def single(real_src: Path) -> NormativeData:
    return read_database(real_src / "spinal_cord", real_src / "participants.tsv")


def test_import_counts_per_dataset(env: Env, multi: Multi, tree: Path) -> None:
    v, data = multi.version, multi.data
    print(f"import of the 3-dataset tree (204 CSVs): {multi.seconds:.1f} s")
    assert (v.kind, v.n_subjects, v.n_files, v.contrast) == ("import", 204, 204, "T2w")
    assert v.tags[TAG + "db_layout"] == "datasets"
    assert v.tags[TAG + "datasets"] == "dataset-b,dataset-c,spine-generic"
    assert v.tags[TAG + "n_datasets"] == "3"
    assert v.source == str(tree.resolve())
    per_dataset = data.tidy.groupby("dataset")["subject"].nunique().to_dict()
    assert per_dataset == {"spine-generic": 80, "dataset-b": 71, "dataset-c": 53}
    assert data.kind == "datasets" and len(data.files) == 204
    # the same participant_id in two datasets: two records, two participants rows
    assert {f"spine-generic/{REPEATED}", f"dataset-b/{REPEATED}"} <= set(data.files)
    p = data.participants
    assert list(p.columns[:2]) == ["dataset", "participant_id"]
    assert len(p) == 204 and p.groupby("dataset").size().to_dict() == per_dataset
    # union of the columns; a column a dataset lacks is n/a
    assert {"handedness", "institution", "researcher", "manufacturer"} <= set(p.columns)
    b = p[p["dataset"] == "dataset-b"].set_index("participant_id")
    assert b.loc[REPEATED, "age"] == "60" and b.loc[REPEATED, "handedness"] == "L"
    assert set(b["researcher"]) == {"n/a"}
    assert set(p.loc[p["dataset"] == "spine-generic", "handedness"]) == {"n/a"}
    with NormativeStore(env.reg).opened(v) as (_, folder):
        stored = sorted(q.relative_to(folder).as_posix() for q in folder.rglob("*") if q.is_file())
    assert "spinal_cord/dataset-b/dataset_description.json" in stored
    assert "datasets.tsv" in stored and "README.md" in stored
    assert not any(s.startswith("spinal_canal") for s in stored)


def test_level_values_equal_the_single_import(
    env: Env, multi: Multi, single: NormativeData, real_src: Path
) -> None:
    """Per subject and level, the multi-dataset values are those of the single-folder read
    of the same subjects (the repeated participant's second record aside), and so are the
    per-level summaries; the summary of the whole database counts both records."""
    tidy = multi.data.tidy
    plain = tidy[tidy["subject"] != f"dataset-b/{REPEATED}"].copy()
    plain["subject"] = plain["subject"].str.split("/").str[1]
    got = subject_level_means(plain, METRICS).set_index(["subject", "level"]).sort_index()
    want = subject_level_means(single.tidy, METRICS).set_index(["subject", "level"]).sort_index()
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    pd.testing.assert_frame_equal(
        level_summary(got.reset_index(), METRICS), level_summary(want.reset_index(), METRICS)
    )
    levels = summary("multi/1", metrics=["area"], registry=env.reg).set_index("level")
    c3 = want.xs(3, level="level")["area"].to_numpy()
    extra = (
        pd.read_csv(sorted((real_src / "spinal_cord").glob(f"{REPEATED}_*.csv"))[0])
        .query("VertLevel == 3")["MEAN(area)"]
        .mean()
        * 1.1
    )
    values = np.append(c3, extra)
    assert levels.loc[3, "n"] == 204
    assert levels.loc[3, "mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert levels.loc[3, "sd"] == pytest.approx(values.std(ddof=1), rel=1e-10)
    # filters read each dataset's own columns; dataset-b's repeated row is aged 60, its twin 28
    old = _reference_means(multi.data, Filters(age=(40, None)), ["area"], "multi/1")
    ages = pd.to_numeric(multi.data.participants["age"], errors="coerce")
    assert f"dataset-b/{REPEATED}" in set(old["subject"])
    assert old["subject"].nunique() == int((ages >= 40).sum()) > 2


def test_round_trip_import_export_import(env: Env, multi: Multi, tmp_path: Path) -> None:
    out = export_db("multi/1", tmp_path / "export", registry=env.reg)
    assert sorted(p.name for p in (out / "spinal_cord").iterdir()) == sorted(SPLIT)
    again = load_data(out)
    assert table_sha256(again) == table_sha256(multi.data)
    v2 = import_db(out, "multi-again", "cordseg/1", registry=env.reg)
    assert v2.files_sha256 == multi.version.files_sha256
    assert (
        v2.n_subjects == 204 and v2.tags[TAG + "datasets"] == multi.version.tags[TAG + "datasets"]
    )


# ------------------------------------------------------------------ conversions, synthetic ---


def _synthetic_tree(root: Path, sizes: dict[str, int]) -> Path:
    """``root/spinal_cord/<name>/`` from seeded synthetic databases with distinct subjects."""
    offset = 0
    for name, n in sizes.items():
        src = write_synthetic_db(root.parent / f"{root.name}-{name}", n, seed=offset)
        folder = root / "spinal_cord" / name
        folder.mkdir(parents=True)
        p = pd.read_csv(src / "participants.tsv", sep="\t", dtype=str)
        rename = {}
        for path in sorted((src / "spinal_cord").glob("*.csv")):
            pid, _, _ = record_csv(path.name) or ("", None, "")
            new = f"sub-{name.replace('-', '')}{len(rename) + 1:02d}"
            rename[pid] = new
            shutil.copyfile(path, folder / path.name.replace(pid, new))
        p["participant_id"] = p["participant_id"].map(rename)
        p.to_csv(folder / "participants.tsv", sep="\t", index=False)
        offset += n
    return root


def test_single_to_datasets_to_single(env: Env, tmp_path: Path) -> None:
    src = write_synthetic_db(tmp_path / "one", 6)
    v = import_db(src, "syn-one", "cordseg/1", registry=env.reg)
    assert v.tags[TAG + "db_layout"] == "single"
    code, _, err = cw(
        env, "export", "syn-one", tmp_path / "ds", "--layout", "datasets", "--dataset", "sg"
    )
    assert code == 0, err
    ds = tmp_path / "ds" / "spinal_cord" / "sg"
    assert (ds / "participants.tsv").read_bytes() == (src / "participants.tsv").read_bytes()
    v2 = import_db(tmp_path / "ds", "syn-ds", "cordseg/1", registry=env.reg)
    assert (v2.tags[TAG + "db_layout"], v2.tags[TAG + "datasets"], v2.n_subjects) == (
        "datasets",
        "sg",
        6,
    )
    code, _, err = cw(env, "export", "syn-ds", tmp_path / "flat", "--layout", "single")
    assert code == 0, err
    flat = tmp_path / "flat"
    for path in sorted((src / "spinal_cord").glob("*.csv")):
        assert (flat / "spinal_cord" / path.name).read_bytes() == path.read_bytes()
    back = pd.read_csv(flat / "participants.tsv", sep="\t", dtype=str)
    orig = pd.read_csv(src / "participants.tsv", sep="\t", dtype=str)
    assert set(back["dataset"]) == {"sg"}
    pd.testing.assert_frame_equal(back.drop(columns="dataset"), orig)
    v3 = import_db(flat, "syn-flat", "cordseg/1", registry=env.reg)
    first = load_data(src)
    with NormativeStore(env.reg).opened(v3) as (_, folder):
        last = load_data(folder)
    pd.testing.assert_frame_equal(last.tidy, first.tidy, check_exact=True)
    meta = json.loads((flat / "cordwatch" / "version.json").read_text())
    assert (meta["layout"], meta["stored_layout"]) == ("single", "datasets")


def test_several_roots_and_sessions(env: Env, tmp_path: Path) -> None:
    """Two single-layout roots make one database of two datasets (named after the folders);
    the same participant_id in both is two subjects, which the single layout cannot hold; a
    dataset with sessions counts subjects, not sessions, and cannot be flattened either."""
    a = write_synthetic_db(tmp_path / "site-a", 3)
    b = write_synthetic_db(tmp_path / "site-b", 2, seed=5)
    code, stdout, err = cw(env, "import", a, b, "--name", "two-roots")
    assert code == 0, err
    assert "5 subjects in 2 datasets (site-a,site-b)" in stdout
    assert stdout.strip().splitlines()[-1] == "1"
    v = NormativeStore(env.reg).resolve("two-roots")
    assert (v.tags[TAG + "datasets"], v.n_subjects) == ("site-a,site-b", 5)
    # the same participant ids (sub-syn01, sub-syn02) in both: no collision
    with NormativeStore(env.reg).opened(v) as (_, folder):
        data = load_data(folder)
    assert {"site-a/sub-syn01", "site-b/sub-syn01"} <= set(data.files)
    code, stdout, err = cw(env, "show", "two-roots")
    assert code == 0, err
    assert "  datasets:     2 (site-a,site-b; 5 CSV files)" in stdout.splitlines()
    code, _, err = cw(env, "export", "two-roots", tmp_path / "flat2", "--layout", "single")
    assert code == 2
    line = one_line_error(err, "participants.tsv")
    assert "sub-syn01 has 2 participants rows (datasets site-a, site-b" in line
    assert not (tmp_path / "flat2").exists()
    # sessions: BIDS's one participants row per (participant_id, session_id)
    root = _synthetic_tree(tmp_path / "ses", {"long": 2})
    folder = root / "spinal_cord" / "long"
    p = pd.read_csv(folder / "participants.tsv", sep="\t", dtype=str)
    rows = []
    for path in sorted(folder.glob("*.csv")):
        pid, _, contrast = record_csv(path.name) or ("", None, "")
        for ses in ("ses-1", "ses-2"):
            shutil.copyfile(path, folder / f"{pid}_{ses}_{contrast}_PAM50.csv")
            rows.append(p[p["participant_id"] == pid].assign(session_id=ses))
        path.unlink()
    pd.concat(rows).to_csv(folder / "participants.tsv", sep="\t", index=False)
    v = import_db(root, "sessions", registry=env.reg)
    assert (v.n_subjects, v.n_files) == (2, 4)
    code, _, err = cw(env, "export", "sessions", tmp_path / "flat", "--layout", "single")
    assert code == 2 and "participants rows" in one_line_error(err, "participants.tsv")


# ---------------------------------------------------------------------------- bad input ---


def _bad(env: Env, tmp_path: Path, *roots: Path) -> str:
    code, stdout, err = cw(env, "import", *roots, "--name", "bad")
    assert code == 2, (stdout, err)
    assert not NormativeStore(env.reg).versions("bad")
    return err


def test_dataset_without_participants(env: Env, tmp_path: Path) -> None:
    root = _synthetic_tree(tmp_path / "t", {"a": 2, "b": 2})
    (root / "spinal_cord" / "b" / "participants.tsv").unlink()
    err = _bad(env, tmp_path, root)
    line = one_line_error(err, root / "spinal_cord" / "b" / "participants.tsv")
    assert "dataset b has no participants.tsv" in line


def test_csv_without_participants_row_is_refused(env: Env, tmp_path: Path) -> None:
    root = _synthetic_tree(tmp_path / "t", {"a": 2, "b": 3})
    tsv = root / "spinal_cord" / "b" / "participants.tsv"
    p = pd.read_csv(tsv, sep="\t", dtype=str)
    p.iloc[1:].to_csv(tsv, sep="\t", index=False)
    line = one_line_error(_bad(env, tmp_path, root), tsv)
    assert f"{p['participant_id'].iloc[0]} has a CSV but no row (1 missing)" in line


def test_duplicate_datasets(env: Env, tmp_path: Path) -> None:
    a = write_synthetic_db(tmp_path / "x" / "sg", 2)
    b = write_synthetic_db(tmp_path / "y" / "sg", 2)
    line = one_line_error(_bad(env, tmp_path, a, b), b)
    assert "dataset sg given twice" in line
    root = _synthetic_tree(tmp_path / "t", {"DS": 2, "ds": 2})
    line = one_line_error(_bad(env, tmp_path, root), root / "spinal_cord" / "ds")
    assert "dataset ds given twice" in line


def test_mix_of_both_layouts(env: Env, tmp_path: Path) -> None:
    root = _synthetic_tree(tmp_path / "t", {"a": 2})
    stray = root / "spinal_cord" / "sub-extra_T2w_PAM50.csv"
    shutil.copyfile(next((root / "spinal_cord" / "a").glob("*.csv")), stray)
    line = one_line_error(_bad(env, tmp_path, root), stray)
    assert "mix of the single-folder and multi-dataset layouts" in line
    stray.unlink()
    (root / "participants.tsv").write_text("participant_id\n")
    line = one_line_error(_bad(env, tmp_path, root), root / "participants.tsv")
    assert "mix of the single-folder and multi-dataset layouts" in line


def test_union_participants_doc() -> None:
    a = pd.DataFrame({"participant_id": ["sub-1"], "session_id": ["ses-1"], "dataset": "A"})
    b = pd.DataFrame({"participant_id": ["sub-1"], "sex": ["M"], "dataset": "B"})
    got = union_participants([a, b])
    assert got.columns.tolist() == ["dataset", "participant_id", "session_id", "sex"]
    assert got.values.tolist() == [["A", "sub-1", "ses-1", "n/a"], ["B", "sub-1", "n/a", "M"]]


# ------------------------------------------------------------------- rescale, recompute ---


def _scaling(env: Env, factor: float) -> dict:
    """A drift result cordseg/1 -> cordseg/2 with one uniform factor at every level."""
    sha = env.reg.resolve("cordseg/1").sha256
    levels = {
        lv: {
            "scaling_factor": factor,
            "ci95": [factor - 0.002, factor + 0.002],
            "slicewise_cov": 0.3,
            "n_subjects": 20,
        }
        for lv in ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2")
    }
    return {
        "verdict": "fail",
        "metrics": {
            m: {"levels": levels, "slice_profile": {}}
            for m in ("area", "diameter_AP", "diameter_RL")
        },
        "provenance": {
            "baseline": {"ref": "cordseg/1", "sha256": sha},
            "candidate": {"ref": "cordseg/2", "sha256": sha},
        },
    }


def test_rescale_keeps_the_datasets(env: Env, tmp_path: Path) -> None:
    root = _synthetic_tree(tmp_path / "t", {"a": 3, "b": 2})
    (root / "spinal_cord" / "b" / "dataset_description.json").write_text('{"name": "b"}\n')
    parent = import_db(root, "resc", "cordseg/1", registry=env.reg)
    doc = tmp_path / "result.json"
    doc.write_text(json.dumps(_scaling(env, 0.98)))
    code, _, err = cw(env, "update", "resc", "--model", "cordseg/2", "--scaling", doc)
    assert code == 0, err
    v = NormativeStore(env.reg).resolve("resc")
    assert (v.version, v.kind, v.n_subjects, v.n_files) == (2, "rescale", 5, 5)
    assert v.tags[TAG + "db_layout"] == "datasets" and v.tags[TAG + "datasets"] == "a,b"
    with (
        NormativeStore(env.reg).opened(v) as (_, new),
        NormativeStore(env.reg).opened(parent) as (_, old),
    ):
        for name in ("a/participants.tsv", "b/participants.tsv", "b/dataset_description.json"):
            assert (new / "spinal_cord" / name).read_bytes() == (
                old / "spinal_cord" / name
            ).read_bytes()
        before, after = load_data(old).tidy, load_data(new).tidy
    assert after["subject"].tolist() == before["subject"].tolist()
    np.testing.assert_allclose(after["area"], before["area"] * 0.98, rtol=1e-12)
    np.testing.assert_array_equal(after["solidity"], before["solidity"])


def _bids_cohort(folder: Path, name: str, subjects: list[str]) -> Path:
    """A BIDS-like tree (stand-in image bytes, participants.tsv at the top) and its cohort
    manifest; the segmentation is stubbed in the test, so the bytes are never decoded."""
    from drift.cohort.manifest import write_manifest_table

    root = folder / f"{name}-bids"
    rows = []
    for s in subjects:
        image = root / s / "anat" / f"{s}_T2w.nii.gz"
        labels = root / "derivatives" / "labels" / s / "anat" / f"{s}_T2w_label-discs.nii.gz"
        for path in (image, labels):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{name} {path.name}".encode())
        rows.append(
            {
                "participant_id": s,
                "contrast": "T2w",
                "image": image.relative_to(root).as_posix(),
                "image_sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
                "disc_labels": labels.relative_to(root).as_posix(),
                "disc_labels_sha256": hashlib.sha256(labels.read_bytes()).hexdigest(),
            }
        )
    pd.DataFrame({"participant_id": subjects, "sex": "F", "age": "33"}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    manifest = folder / f"{name}.tsv"
    write_manifest_table(manifest, rows)
    manifest.with_suffix(".yaml").write_text(
        f"format: cordwatch-cohort/1\nname: {name}\nlevel_source: disc_labels\n"
    )
    return manifest


def test_recompute_over_several_cohorts(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--recompute with two --cohort/--root pairs: one dataset per cohort, each segmented by
    the (stubbed) evaluation with the engine it was given, participants from the BIDS root."""
    import drift.cohort.evaluate as evaluate
    from drift.cohort.evaluate import Measured
    from drift.normative.update import update

    reference = load_data(write_synthetic_db(tmp_path / "ref", 3)).tidy
    calls: list[tuple[str, object]] = []

    def fake_evaluate(reg, info, cohort, root, *, engine=None, **kwargs) -> Measured:
        calls.append((cohort.name, engine))
        parts = []
        for i, s in enumerate(cohort.subjects):
            part = reference[reference["subject"] == f"sub-syn0{i + 1}"]
            parts.append(part.assign(subject=s))
        return Measured(table=pd.concat(parts, ignore_index=True))

    monkeypatch.setattr(evaluate, "evaluate_version", fake_evaluate)
    m1 = _bids_cohort(tmp_path, "site-x", ["sub-x01", "sub-x02"])
    m2 = _bids_cohort(tmp_path, "site-y", ["sub-01", "sub-02", "sub-03"])
    engine = object()  # stands in for the --scheduler cluster: handed to every evaluation
    res = update(
        "recomp",
        "cordseg/2",
        recompute=True,
        cohort=[m1, m2],
        root=[tmp_path / "site-x-bids", tmp_path / "site-y-bids"],
        registry=env.reg,
        engine=engine,
    )
    assert calls == [("site-x", engine), ("site-y", engine)]
    v = res.version
    assert (v.kind, v.model, v.n_subjects, v.n_files) == ("recompute", "cordseg/2", 5, 5)
    assert v.tags[TAG + "datasets"] == "site-x,site-y"
    with NormativeStore(env.reg).opened(v) as (_, folder):
        data = load_data(folder)
        desc = json.loads(
            (folder / "spinal_cord" / "site-y" / "dataset_description.json").read_text()
        )
    assert data.datasets == ("site-x", "site-y")
    assert set(data.participants["age"]) == {"33"}  # from each BIDS root's participants.tsv
    assert desc["name"] == "site-y" and desc["GeneratedBy"][0]["Model"] == "cordseg/2"
    got = data.tidy[data.tidy["subject"] == "site-y/sub-02"].dropna(subset=["area"])
    want = reference[reference["subject"] == "sub-syn02"].dropna(subset=["area"])
    np.testing.assert_allclose(got["area"].to_numpy(), want["area"].to_numpy(), rtol=1e-12)
    # the CLI: repeated --cohort, and a --root count that does not match is one line, exit 2
    code, _, err = cw(
        env,
        "update",
        "recomp",
        "--model",
        "cordseg/2",
        "--recompute",
        "--cohort",
        m1,
        "--cohort",
        m2,
        "--root",
        tmp_path / "site-x-bids",
    )
    assert code == 2 and "2 --cohort but 1 --root" in one_line_error(err, "site-x-bids")
    code, _, err = cw(
        env,
        "update",
        "recomp",
        "--model",
        "cordseg/2",
        "--recompute",
        "--cohort",
        m1,
        "--cohort",
        m1,
    )
    assert code == 2 and "dataset site-x given twice" in one_line_error(err, "site-x.tsv")
