"""``cordwatch normative ...`` in-process: exit codes, the last-line version number, JSON,
loud warnings on stderr, one-line errors naming the file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from drift.cli.main import app
from drift.normative.layout import write_synthetic_db
from drift.normative.store import NormativeStore, resolve
from drift.normative.summary import summary, zscore
from registry.api import Registry
from registry.testing import registry_of_versions

runner = CliRunner()


@dataclass
class Env:
    reg: Registry
    home: Path
    work: Path
    src: Path  # a synthetic database folder (8 subjects)

    @property
    def uri(self) -> str:
        return self.reg.tracking_uri


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("cli-normative")
    home = work / "home"
    with registry_of_versions(work, versions=3) as reg:
        yield Env(reg, home, work, write_synthetic_db(work / "src", 8))


def cw(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, ["normative", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def uniform_result(
    path: Path, factor: float, baseline: str | None, candidate: str, reg: Registry
) -> Path:
    """A drift result with uniform factors naming its models (ref and package sha256)."""

    def named(ref: str) -> dict[str, str]:
        return {"ref": ref, "sha256": reg.resolve(ref).sha256}

    levels = {
        name: {
            "scaling_factor": factor,
            "ci95": [factor - 0.002, factor + 0.002],
            "slicewise_cov": 0.3,
            "n_subjects": 20,
        }
        for name in ("C1", "C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2")
    }
    prov = {"candidate": named(candidate)} | ({"baseline": named(baseline)} if baseline else {})
    doc = {
        "verdict": "warn",
        "metrics": {m: {"levels": levels} for m in ("area", "diameter_AP", "diameter_RL")},
        "provenance": prov,
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def db(env: Env) -> str:
    """The synthetic database imported through the CLI as cli-hc/1 (model cordseg/1)."""
    code, out, err = cw("import", env.src, "--name", "cli-hc", "--model", "cordseg/1")
    assert code == 0, err
    assert out.splitlines()[-1] == "1"
    assert "imported 8 subjects (T2w)" in out and "model cordseg/1" in out
    assert err == ""
    return "cli-hc/1"


def test_import_without_model_warns(env: Env) -> None:
    code, out, err = cw("--registry", env.uri, "import", env.src, "--name", "anon")
    assert code == 0
    assert out.splitlines()[-1] == "1"
    assert "WARNING" in err and "records no model" in err


def test_import_bad_folder_exit_2_naming_the_file(env: Env, tmp_path: Path) -> None:
    src = write_synthetic_db(tmp_path / "db", 2)
    bad = src / "spinal_cord" / "sub-syn02_T2w_PAM50.csv"
    bad.write_text("Slice (I->S),VertLevel\n1,2\n")
    code, out, err = cw("import", src, "--name", "broken")
    assert code == 2 and out == ""
    assert err.startswith(f"cordwatch: error: {bad}: ")
    assert len(err.strip().splitlines()) == 1
    assert NormativeStore(env.reg).versions("broken") == []
    code, _, err = cw("import", tmp_path / "missing", "--name", "broken")
    assert code == 2 and "not a directory" in err


def test_list_and_show(env: Env, db: str) -> None:
    code, out, _ = cw("list", "--json")
    assert code == 0
    rows = {r["ref"]: r for r in json.loads(out)}
    assert rows[db]["model"] == "cordseg/1" and rows[db]["kind"] == "import"
    assert rows[db]["n_subjects"] == 8
    code, out, _ = cw("list")
    assert code == 0 and db in out and "cordseg/1" in out
    code, out, _ = cw("show", "cli-hc/1", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["ref"] == db and doc["n_participants"] == 8
    lib = summary(db, metrics=["area"], registry=env.reg)
    c3 = next(r for r in doc["summary"] if r["metric"] == "area" and r["level_name"] == "C3")
    assert c3["mean"] == pytest.approx(lib.set_index("level_name").loc["C3", "mean"], rel=1e-12)
    code, out, _ = cw("show", "cli-hc")  # NAME = latest
    assert code == 0
    assert "kind:         import" in out and "Per-level summary" in out and "C3" in out


def test_summary_filters(env: Env, db: str) -> None:
    code, out, _ = cw("summary", db, "--sex", "f", "--age", "20:40", "--json", "--metric", "area")
    assert code == 0
    doc = json.loads(out)
    assert doc["filters"] == {"sex": "F", "age": [20.0, 40.0], "vendor": None}
    lib = summary(db, sex="F", age=(20, 40), metrics=["area"], registry=env.reg)
    assert [r["mean"] for r in doc["levels"]] == pytest.approx(lib["mean"].tolist(), rel=1e-12)
    assert {r["n"] for r in doc["levels"]} == {4}  # F aged 21, 27, 33, 39 (42 is M)
    code, out, _ = cw("summary", db, "--vendor", "GE")
    assert code == 0 and "vendor GE" in out
    code, _, err = cw("summary", db, "--age", "40:20")
    assert code == 2 and "LO is greater than HI" in err
    code, _, err = cw("summary", db, "--sex", "X")
    assert code == 2 and "--sex must be M or F" in err
    code, _, err = cw("summary", "nope/1")
    assert code == 2 and "no normative database 'nope'" in err


def test_export(env: Env, db: str, tmp_path: Path) -> None:
    code, out, _ = cw("export", db, tmp_path / "out")
    assert code == 0 and out.strip() == str(tmp_path / "out")
    for src in sorted((env.src / "spinal_cord").iterdir()):
        assert (tmp_path / "out" / "spinal_cord" / src.name).read_bytes() == src.read_bytes()
    assert (tmp_path / "out" / "participants.tsv").read_bytes() == (
        env.src / "participants.tsv"
    ).read_bytes()
    assert (tmp_path / "out" / "PROVENANCE.md").is_file()
    code, _, err = cw("export", db, tmp_path / "out")
    assert code == 2 and "not empty" in err


def test_update_rescale_prints_the_version_last(env: Env, db: str, tmp_path: Path) -> None:
    code, out, err = cw("import", env.src, "--name", "upd", "--model", "cordseg/1")
    assert code == 0
    result = uniform_result(tmp_path / "r.json", 0.98, "cordseg/1", "cordseg/2", env.reg)
    code, out, err = cw("update", "upd", "--model", "cordseg/2", "--scaling", result)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1] == "2"
    assert "rescale from upd/1 -> upd/2 for model cordseg/2" in out
    code, out, _ = cw("show", "upd/2", "--json")
    doc = json.loads(out)
    assert doc["kind"] == "rescale" and doc["parent"] == 1
    assert doc["records"]["rescale"]["candidate_model"] == "cordseg/2"
    assert {r["scaling_factor"] for r in doc["factors"]} == {0.98}
    code, out, _ = cw("show", "upd/2")
    assert "RESCALE, not a recompute" in out and "Scaling factors used" in out


def test_update_refusals_exit_2(env: Env, db: str, tmp_path: Path) -> None:
    before = len(NormativeStore(env.reg).versions("cli-hc"))
    uneven = uniform_result(tmp_path / "u.json", 1.0, "cordseg/1", "cordseg/3", env.reg)
    doc = json.loads(uneven.read_text())
    doc["metrics"]["area"]["levels"]["C4"]["scaling_factor"] = 0.95
    uneven.write_text(json.dumps(doc))
    code, out, err = cw("update", "cli-hc", "--model", "cordseg/3", "--scaling", uneven)
    assert code == 2 and out == ""
    assert err.startswith("cordwatch: error: refusing to rescale")
    assert "area: level factors spread" in err and "C4 0.9500" in err
    code, _, err = cw("update", "cli-hc", "--model", "cordseg/3")
    assert code == 2 and "exactly one of --scaling" in err
    code, _, err = cw(
        "update", "cli-hc", "--model", "cordseg/3", "--scaling", uneven, "--recompute"
    )
    assert code == 2 and "exactly one of --scaling" in err
    code, _, err = cw("update", "cli-hc", "--model", "cordseg/3", "--recompute")
    assert code == 2 and "--recompute needs --cohort" in err
    code, _, err = cw("update", "cli-hc", "--model", "cordseg/9", "--scaling", uneven)
    assert code == 2 and "--model" in err
    assert len(NormativeStore(env.reg).versions("cli-hc")) == before


def test_update_assume_baseline_is_loud_and_recorded(env: Env, tmp_path: Path) -> None:
    code, _, _ = cw("import", env.src, "--name", "nomodel")
    assert code == 0
    result = uniform_result(tmp_path / "r.json", 0.99, None, "cordseg/2", env.reg)
    code, _, err = cw("update", "nomodel", "--model", "cordseg/2", "--scaling", result)
    assert code == 2
    assert "nomodel/1 records no model" in err and "--assume-baseline" in err
    code, out, err = cw(
        "update", "nomodel", "--model", "cordseg/2", "--scaling", result, "--assume-baseline"
    )
    assert code == 0
    assert out.splitlines()[-1] == "2"
    assert "WARNING: --assume-baseline overrode" in err
    code, out, _ = cw("show", "nomodel/2", "--json")
    assert json.loads(out)["tags"]["cordwatch.normative.assume_baseline"] == "true"


def test_zscore_model_checks(env: Env, db: str, tmp_path: Path) -> None:
    subject = env.src / "spinal_cord" / "sub-syn03_T2w_PAM50.csv"
    code, out, err = cw("zscore", subject, "--db", db, "--model", "cordseg/2")
    assert code == 2 and out == ""
    assert err.startswith(f"cordwatch: error: {subject}: the subject was measured with cordseg/2")
    assert "--allow-model-mismatch" in err
    code, out, err = cw(
        "zscore", subject, "--db", db, "--model", "cordseg/2", "--allow-model-mismatch"
    )
    assert code == 0
    assert "WARNING" in err and "two measuring instruments" in err
    assert "model check: mismatch-allowed" in out
    code, out, err = cw("zscore", subject, "--db", db)
    assert code == 0 and "WARNING" in err and "cannot check" in err
    code, out, err = cw("zscore", subject, "--db", db, "--model", "cordseg/1", "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["model_check"] == "match" and doc["subject"] == "sub-syn03"
    lib = zscore(subject, db, model_ref="cordseg/1", registry=env.reg).table
    assert [r["z"] for r in doc["levels"]] == pytest.approx(lib["z"].tolist(), rel=1e-12)
    code, out, _ = cw("zscore", subject, "--db", db, "--model", "cordseg/1", "--sex", "M")
    assert code == 0 and "sex M" in out and "percentile" in out
    code, _, err = cw("zscore", tmp_path / "none.csv", "--db", db)
    assert code == 2 and "file not found" in err


def test_tampered_artifact_exit_2(env: Env, db: str, tmp_path: Path) -> None:
    code, _, _ = cw("import", env.src, "--name", "tamper", "--model", "cordseg/1")
    assert code == 0
    v = resolve("tamper/1", registry=env.reg)
    rel = "participants.tsv"
    stored = Path(v.artifact_uri.removeprefix("file://")) / rel
    original = stored.read_bytes()
    stored.write_bytes(original + b"sub-evil\tF\t30\tGE\n")
    try:
        for args in (
            ("export", "tamper/1", tmp_path / "out"),
            ("show", "tamper"),
            ("summary", "tamper/1"),
        ):
            code, _, err = cw(*args)
            assert code == 2, args
            assert err.startswith(f"cordwatch: error: {v.stored(rel)}: size ")
            assert "(normative tamper/1)" in err
        assert not (tmp_path / "out").exists()
    finally:
        stored.write_bytes(original)
    code, _, _ = cw("export", "tamper/1", tmp_path / "out")
    assert code == 0
    frame = pd.read_csv(tmp_path / "out" / "participants.tsv", sep="\t")
    assert len(frame) == 8
