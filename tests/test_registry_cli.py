"""``cordwatch models ...`` in-process: exact outputs, exit codes and one-line errors."""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drift.cli.main import app
from registry.manifest import MANIFEST_NAME, build_manifest
from registry.testing import make_package, zip_package

runner = CliRunner()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("cli-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORDWATCH_HOME", str(home))
        mp.setenv("CORDWATCH_USER", "cli-tester")
        for var in ("MLFLOW_TRACKING_URI", "CORDWATCH_ARTIFACT_ROOT"):
            mp.delenv(var, raising=False)
        yield home


def cw(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["models", *map(str, args)], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_register_list_show(home: Path, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres", folds=("0", "1"))
    code, out, err = cw(
        "register", "cli-sc", pkg, "--alias", "candidate", "--tag", "task=sc seg",
        "--tag", "contrasts=T1w,T2w", "--description", "first",
    )  # fmt: skip
    assert (code, out, err) == (0, "1\n", "")
    code, out, _ = cw("register", "cli-sc", zip_package(pkg, tmp_path / "m.zip"), "--json")
    assert code == 0
    assert json.loads(out) == {"name": "cli-sc", "version": 2, "sha256": build_manifest(pkg).sha256}

    code, out, _ = cw("list")
    assert code == 0 and "cli-sc" in out and "candidate->1" in out
    code, out, _ = cw("list", "cli-sc", "--json")
    versions = json.loads(out)
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["tags"]["contrasts"] == "T1w,T2w" and versions[0]["aliases"] == ["candidate"]

    code, out, _ = cw("show", "cli-sc@candidate", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["version"] == 1 and shown["description"] == "first"
    assert [f["path"] for f in shown["files"]] == [
        "dataset.json",
        "fold_0/checkpoint_final.pth",
        "fold_1/checkpoint_final.pth",
        "plans.json",
    ]
    code, out, _ = cw("show", "cli-sc/2")
    assert code == 0 and out.startswith("cli-sc/2\n") and "cordwatch.format = zip" in out
    assert "fold_1/checkpoint_final.pth" in out


def test_pull_and_tamper(home: Path, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p", seed=5)
    assert cw("register", "cli-pull", pkg, "--alias", "champion-ish")[0] == 0
    code, out, err = cw("pull", "cli-pull@champion-ish")
    folder = Path(out.strip())
    assert code == 0 and err == "" and out == f"{folder}\n"
    assert folder.parent == home / "cache" / "packages"
    assert (folder / "fold_0" / "checkpoint_final.pth").read_bytes() == (
        pkg / "fold_0" / "checkpoint_final.pth"
    ).read_bytes()

    code, out, _ = cw("pull", "cli-pull/1", "-o", tmp_path / "here")
    assert (code, out) == (0, f"{tmp_path / 'here'}\n")
    assert (tmp_path / "here" / MANIFEST_NAME).is_file()

    victim = folder / "plans.json"
    victim.chmod(0o644)
    victim.write_text(victim.read_text().replace("nnUNetPlans", "nnUNetPlanz"))
    code, out, err = cw("pull", "cli-pull/1")
    assert code == 2 and out == ""
    assert err.startswith(f"cordwatch: error: {victim}: sha256 ") and err.count("\n") == 1
    code, out, _ = cw("pull", "cli-pull/1", "--refresh")
    assert code == 0 and Path(out.strip()) == folder
    assert (folder / "plans.json").read_bytes() == (pkg / "plans.json").read_bytes()


def test_promote_gate_history_and_diff(home: Path, tmp_path: Path) -> None:
    a = make_package(tmp_path / "a", seed=1)
    b = make_package(tmp_path / "b", seed=2)
    cw("register", "cli-gate", a, "--tag", "task=sc")
    cw("register", "cli-gate", b, "--tag", "task=sc", "--tag", "parent=1")

    code, out, err = cw("promote", "cli-gate/2")
    assert code == 1 and out == ""
    assert err == (
        "cordwatch: error: cli-gate/2: cannot move champion: no drift verdict yet "
        "(cordwatch.drift.verdict=pass needed; override with --force --reason)\n"
    )
    code, _, err = cw("promote", "cli-gate/2", "--force")
    assert code == 2 and "--reason" in err
    code, out, _ = cw("promote", "cli-gate/2", "--force", "--reason", "urgent fix")
    assert (code, out) == (0, "cli-gate@champion: - -> 2 (forced)\n")
    code, out, _ = cw("promote", "cli-gate/1", "--alias", "candidate")
    assert (code, out) == (0, "cli-gate@candidate: - -> 1\n")
    code, out, _ = cw("promote", "cli-gate/1", "--alias", "candidate")
    assert (code, out) == (0, "cli-gate/1: candidate already points here (unchanged)\n")

    code, out, _ = cw("history", "cli-gate", "--json")
    events = json.loads(out)
    assert [(e["alias"], e["from"], e["to"], e["forced"]) for e in events] == [
        ("champion", None, 2, True),
        ("candidate", None, 1, False),
    ]
    assert events[0]["reason"] == "urgent fix" and events[0]["who"] == "cli-tester"
    code, out, _ = cw("history", "cli-gate")
    assert code == 0 and "urgent fix" in out and "cli-tester" in out

    code, out, _ = cw("diff", "cli-gate/1", "cli-gate/2")
    lines = out.splitlines()
    assert code == 0 and lines[:2] == ["--- cli-gate/1", "+++ cli-gate/2"]
    sha_a, sha_b = build_manifest(a).sha256[:12], build_manifest(b).sha256[:12]
    assert f"~ package sha256: {sha_a} -> {sha_b}" in lines
    assert "+ tag parent = cli-gate/1" in lines
    assert any(line.startswith("~ file fold_0/checkpoint_final.pth: ") for line in lines)
    code, out, _ = cw("diff", "cli-gate/1", "cli-gate@champion", "--json")
    assert json.loads(out)["files"]["changed"][0]["path"] == "fold_0/checkpoint_final.pth"


def test_bad_input_is_one_line_and_exit_2(home: Path, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p")
    evil = zip_package(pkg, tmp_path / "evil.zip")
    with zipfile.ZipFile(evil, "a") as zf:
        zf.writestr("../../../etc/cron.d/x", "* * * * * root id")
    before = cw("list", "--json")[1]
    code, out, err = cw("register", "cli-evil", evil)
    assert code == 2 and out == ""
    assert err == (
        f"cordwatch: error: {evil}: entry '../../../etc/cron.d/x': path traversal ('..')\n"
    )
    assert cw("list", "--json")[1] == before

    for args, message in [
        (("show", "cli-sc"), "expected NAME@ALIAS or NAME/VERSION"),
        (("show", "no-such-model/1"), "not found"),
        (("register", "x", pkg, "--tag", "task"), "KEY=VALUE"),
        (("register", "x", pkg, "--tag", "a=1", "--tag", "a=2"), "tag given twice"),
        (("register", "x", tmp_path / "nothing"), "no such file or folder"),
        (("promote", "x/1", "--alias", "latest"), "invalid alias"),
    ]:
        code, out, err = cw(*args)
        assert code == 2 and out == "", args
        assert err.startswith("cordwatch: error: ") and message in err and err.count("\n") == 1


def test_registry_flag_wins_over_environment(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "flag.db"
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    code, out, _ = cw(
        "--registry", f"sqlite:///{other}", "register", "flagged", make_package(tmp_path / "p"),
        env=env,
    )  # fmt: skip
    assert (code, out) == (0, "1\n") and other.is_file()
    assert (tmp_path / "artifacts").is_dir()  # artifacts beside the chosen database
    code, out, err = cw("list", env=env)  # the environment's server: unreachable
    assert code == 2 and out == "" and err.startswith("cordwatch: error: ")
    assert err == (
        "cordwatch: error: http://127.0.0.1:9: cannot reach the registry server "
        "(Connection refused)\n"
    )


def test_unreachable_database_is_one_line_at_once(home: Path) -> None:
    """MLflow's SQL store retried a dead PostgreSQL for ~2 minutes, logging a warning per try;
    the registry probes it once (with a timeout) and says so in one line, password redacted."""
    env = {"MLFLOW_TRACKING_URI": "postgresql://mlflow:pg-s3cret@127.0.0.1:9/mlflow"}
    started = time.monotonic()
    code, out, err = cw("list", env=env)
    assert time.monotonic() - started < 30  # before: 105-118 s
    assert (code, out) == (2, "")
    assert err == (
        "cordwatch: error: postgresql://***@127.0.0.1:9/mlflow: cannot reach the registry "
        "database (Connection refused)\n"
    )


def test_tampered_store_fails_pull_in_a_fresh_home(home: Path, tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "p", seed=8)
    code, out, _ = cw("register", "cli-store", pkg, "--json")
    assert code == 0
    registry = f"sqlite:///{home / 'registry.db'}"
    fresh_home = {"CORDWATCH_HOME": str(tmp_path / "fresh")}
    source = json.loads(cw("show", "cli-store/1", "--json")[1])["source"]
    stored = Path(source.removeprefix("file://")) / "artifacts/package/fold_0/checkpoint_final.pth"
    stored.write_bytes(stored.read_bytes()[:-1])  # truncated by one byte
    code, out, err = cw("--registry", registry, "pull", "cli-store/1", env=fresh_home)
    assert code == 2 and out == ""
    assert err.startswith(
        f"cordwatch: error: {source}/artifacts/package/fold_0/checkpoint_final.pth: size "
    )
    assert "truncated or altered" in err and err.count("\n") == 1
    assert not (tmp_path / "fresh" / "cache" / "packages").exists() or not any(
        (tmp_path / "fresh" / "cache" / "packages").iterdir()
    )
