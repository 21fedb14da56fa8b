"""Issue 15: defects found by attacking cordwatch, each reproduced first, most severe first.

Registry-side defects (1 pyfunc trust, 7 zip bombs, 8 credentials) live here; the CLI-wide
ones (2 outputs onto inputs, 4 error boundary, 9 oversized inputs, 6 damaged CSVs, 10 minor)
are in test_hardening_cli.py, the signal test in test_hardening_signals.py.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.api import Registry, connect
from registry.errors import IntegrityError, RegistryError, UnsafeArchiveError
from registry.manifest import build_manifest
from registry.testing import make_package


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("hardening-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORDWATCH_HOME", str(home))
        mp.setenv("CORDWATCH_USER", "tester")
        for var in ("MLFLOW_TRACKING_URI", "CORDWATCH_ARTIFACT_ROOT", "GITHUB_ACTOR"):
            mp.delenv(var, raising=False)
        yield home


@pytest.fixture(scope="module")
def reg(home: Path) -> Registry:
    return connect()


def model_dir(source: str) -> Path:
    assert source.startswith("file://")
    return Path(source.removeprefix("file://"))


def _fake_predict(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    import registry.nnunet

    seen: list[Path] = []

    def fake_predict_paths(
        package_dir: Path, paths: list[str], out_dir: str, **kw: object
    ) -> list[Path]:
        seen.append(Path(package_dir))
        return [Path(out_dir) / Path(p).name for p in paths]

    monkeypatch.setattr(registry.nnunet, "predict_paths", fake_predict_paths)
    return seen


def _replace_checkpoint_and_manifest(stored: Path) -> None:
    """The attack of defect 1: new weights, and a manifest rewritten to match them."""
    package = stored / "artifacts" / "package"
    ckpt = next(package.rglob("checkpoint_final.pth"))
    ckpt.write_bytes(b"attacker pickle" * 10)
    (stored / "artifacts" / "cordwatch_manifest.json").write_bytes(
        build_manifest(package).to_bytes()
    )


# -- 1. MLflow's own loader trusted the artifact store ------------------------------------------


def test_1_pyfunc_refuses_a_manifest_rewritten_in_the_store(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.tracking_uri)
    seen = _fake_predict(monkeypatch)
    info = reg.register("pyf-tamper", make_package(tmp_path / "p", folds=("all",)))
    model = mlflow.pyfunc.load_model(f"models:/{info.ref}")  # untouched: loads
    model.predict(pd.DataFrame({"path": ["a.nii.gz"]}), params={"out_dir": str(tmp_path / "o")})
    assert len(seen) == 1

    _replace_checkpoint_and_manifest(model_dir(info.source))
    with pytest.raises(IntegrityError, match=r"cordwatch\.sha256 of no version"):
        mlflow.pyfunc.load_model(f"models:/{info.ref}")
    with pytest.raises(IntegrityError, match=r"cordwatch_manifest\.json"):
        mlflow.pyfunc.load_model(info.source)
    assert len(seen) == 1  # predict never reached


def test_1_stored_model_carries_no_code_outside_the_manifest(reg: Registry, tmp_path: Path) -> None:
    import yaml

    info = reg.register("pyf-code", make_package(tmp_path / "p", folds=("all",)))
    stored = model_dir(info.source)
    assert not (stored / "code").exists()
    conf = yaml.safe_load((stored / "MLmodel").read_text())["flavors"]["python_function"]
    assert not conf.get("code")


def test_1_load_verified_checks_the_database_and_runs_installed_code(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry.verified import load_verified

    seen = _fake_predict(monkeypatch)
    info = reg.register("pyf-verified", make_package(tmp_path / "p", folds=("all",)))
    out = load_verified(info.ref).predict(["a.nii.gz"], params={"out_dir": str(tmp_path)})
    assert list(out["segmentation"]) == [str(tmp_path / "a.nii.gz")]
    assert seen[0].name == info.sha256  # the verified cache entry

    _replace_checkpoint_and_manifest(model_dir(info.source))
    other_home = tmp_path / "other-home"  # no cached copy: must download and check
    with pytest.raises(IntegrityError, match="registry's package sha256"):
        load_verified(info.ref, registry=reg.tracking_uri, home=other_home)
    assert len(seen) == 1


# -- 7. zip bombs of many small entries ----------------------------------------------------------


def _many_zeros_zip(path: Path, n: int, size: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/dataset.json", "{}")
        for i in range(n):
            zf.writestr(f"pkg/junk/{i:05d}.bin", bytes(size))
    return path


def test_7_many_small_entries_bomb_is_refused_before_writing(tmp_path: Path) -> None:
    from registry.archive import ZipLimits, check_zip, extract_zip

    # 400 entries of 256 KiB zeros (each under the per-entry 1 MiB threshold): 100 MiB from ~100 kB
    bomb = _many_zeros_zip(tmp_path / "bomb.zip", 400, 256 << 10)
    with pytest.raises(UnsafeArchiveError, match=r"expand \d+ times overall"):
        check_zip(bomb)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError):
        extract_zip(bomb, dest)
    assert not any(dest.iterdir())
    # the total-size limit counts every entry (a large limit and ratio let it through)
    with pytest.raises(UnsafeArchiveError, match="uncompressed size"):
        check_zip(bomb, ZipLimits(max_total_bytes=50 << 20, max_ratio=1e9))
    assert check_zip(bomb, ZipLimits(max_ratio_total=1e9))  # limits, not a blanket refusal


def test_7_default_total_limit_follows_the_archive_size(tmp_path: Path) -> None:
    from registry.archive import ZipLimits

    limits = ZipLimits()
    assert limits.max_total_bytes <= 16 << 30
    assert limits.max_ratio_total <= limits.max_ratio


# -- 8. credentials in messages ------------------------------------------------------------------


def test_8_password_in_registry_uri_is_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry.api import connect as connect_to
    from registry.settings import redact

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = "http://alice:hunter2-secret@127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(RegistryError) as caught:
        connect_to(uri, home=tmp_path).resolve("m/1")
    assert "hunter2-secret" not in str(caught.value)
    assert "***@127.0.0.1:9" in str(caught.value)
    assert redact("postgresql://u:p4ss@db:5432/x") == "postgresql://***@db:5432/x"


def test_8_log_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from drift.cli.common import redact_log_records

    redact_log_records()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("mlflow.tracking").warning(
            "retrying %s", "https://ci:tok3n-value@mlflow.example.org/api"
        )
    assert "tok3n-value" not in caplog.text and "https://***@mlflow.example.org" in caplog.text


def test_8_cli_error_with_password_in_environment_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from drift.cli.main import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:pa55word-xyz@127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("CORDWATCH_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["models", "show", "m/1"])
    assert result.exit_code == 2
    assert "pa55word-xyz" not in result.stderr + result.stdout


# -- 4. concurrency on the same target -----------------------------------------------------------


def _concurrently(n: int, fn: object) -> list[BaseException]:
    import threading

    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run() -> None:
        barrier.wait()
        try:
            fn()  # type: ignore[operator]
        except BaseException as err:  # collected and asserted on below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_4_concurrent_pulls_to_one_folder_and_refreshes_are_safe(
    reg: Registry, home: Path, tmp_path: Path
) -> None:
    info = reg.register("conc", make_package(tmp_path / "p", folds=("0", "1"), size=1 << 16))
    reg.pull(info.ref)
    dest = tmp_path / "same"
    for _ in range(3):
        errors = _concurrently(8, lambda: connect(reg.tracking_uri, home).pull(info.ref, dest))
        assert errors == []
    assert build_manifest(dest, skip=["cordwatch_manifest.json"]).sha256 == info.sha256
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".same.")] == []
    for _ in range(3):
        errors = _concurrently(
            8, lambda: connect(reg.tracking_uri, home).pull(info.ref, refresh=True)
        )
        assert errors == []
    packages = home / "cache" / "packages"
    assert [p.name for p in packages.iterdir() if p.name.startswith("trash-")] == []
    assert reg.pull(info.ref).name == info.sha256


# -- 10. minor ------------------------------------------------------------------------------------


def test_10_read_only_command_on_a_mistyped_sqlite_uri_creates_nothing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from drift.cli.main import app

    typo = tmp_path / "regsitry" / "registry.db"
    for args in (["list"], ["show", "m/1"], ["history", "m"], ["pull", "m/1"]):
        result = CliRunner().invoke(app, ["models", "--registry", f"sqlite:///{typo}", *args])
        assert result.exit_code == 2, result.output
        assert "no registry here yet: nothing was registered" in result.stderr
    assert not typo.parent.exists()


def test_10_show_names_the_stored_manifest_not_a_deleted_temp_folder(
    reg: Registry, tmp_path: Path
) -> None:
    info = reg.register("tmpname", make_package(tmp_path / "p"))
    stored = model_dir(info.source) / "artifacts" / "cordwatch_manifest.json"
    stored.write_bytes(stored.read_bytes().replace(b'"format"', b' "format"'))
    with pytest.raises(IntegrityError) as caught:
        reg.resolve(info.ref, manifest=True)
    assert caught.value.path == f"{info.source}/artifacts/cordwatch_manifest.json"
    assert "cordwatch-manifest-" not in str(caught.value)
