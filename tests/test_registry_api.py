"""The registry API on an embedded sqlite store (one store per module keeps this fast)."""

from __future__ import annotations

import itertools
import os
import sqlite3
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import api as api_module
from registry.api import VERDICT_TAG, Registry, connect
from registry.errors import (
    GateFailed,
    InputError,
    IntegrityError,
    RegistryError,
    UnsafeArchiveError,
)
from registry.lookup import fast_sha256
from registry.manifest import MANIFEST_NAME, build_manifest
from registry.refs import parse_ref
from registry.testing import make_package, zip_package


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("registry-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORDWATCH_HOME", str(home))
        mp.setenv("CORDWATCH_USER", "tester")
        for var in ("MLFLOW_TRACKING_URI", "CORDWATCH_ARTIFACT_ROOT", "GITHUB_ACTOR"):
            mp.delenv(var, raising=False)
        yield home


@pytest.fixture(scope="module")
def reg(home: Path) -> Registry:
    return connect()


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def fresh(reg: Registry, tmp_path: Path) -> Registry:
    """Another client of the same registry with its own, empty CORDWATCH_HOME (cache)."""
    return connect(reg.tracking_uri, home=tmp_path / "other-home")


def stored_file(info_source: str, rel: str) -> Path:
    assert info_source.startswith("file://")
    return Path(info_source.removeprefix("file://")) / "artifacts" / "package" / rel


# -- round trip ------------------------------------------------------------------------------


def test_round_trip_folder_and_zip(reg: Registry, tmp_path: Path) -> None:
    folder = make_package(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres", folds=("0", "1"))
    zipped_src = make_package(tmp_path / "release", folds=("all",), seed=7, size=4096)
    archive = zip_package(zipped_src, tmp_path / "release.zip", nested=True)

    v1 = reg.register(
        "rt", folder, tags={"task": "sc-seg", "contrasts": "T1w,T2w"}, alias="candidate",
        description="first release",
    )  # fmt: skip
    v2 = reg.register("rt", archive, tags={"release_tag": "r20250101"}, description="from zip")
    assert (v1.version, v2.version) == (1, 2)
    assert v1.aliases == ("candidate",)
    assert v1.sha256 == build_manifest(folder).sha256
    assert v2.sha256 == build_manifest(zipped_src).sha256
    assert v2.tags["cordwatch.format"] == "zip" and v2.tags["cordwatch.source"] == "release.zip"
    assert v1.tags["cordwatch.nnunet.configuration"] == "3d_fullres"
    assert v1.tags["task"] == "sc-seg" and v1.description == "first release"
    assert v1.manifest is not None and len(v1.manifest.files) == 4

    other = fresh(reg, tmp_path)
    pulled = other.pull("rt@candidate")
    assert pulled.is_relative_to(tmp_path / "other-home" / "cache")
    assert files_of(pulled) == files_of(folder)  # byte-identical
    assert (pulled / MANIFEST_NAME).is_file()
    assert files_of(other.pull("rt/2")) == files_of(zipped_src)

    shown = other.resolve("rt@candidate", manifest=True)
    assert shown.version == 1 and shown.manifest == v1.manifest
    assert [v.version for v in other.list_versions("rt")] == [1, 2]


def test_second_pull_downloads_nothing(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg.register("cached", make_package(tmp_path / "p"), alias="champion-x")
    other = fresh(reg, tmp_path)
    first = other.pull("cached@champion-x")

    def no_download(*args: object, **kwargs: object) -> str:
        raise AssertionError("downloaded again")

    monkeypatch.setattr(other.client, "download_artifacts", no_download)
    assert other.pull("cached@champion-x") == first  # fast path (no MLflow)
    monkeypatch.setattr(api_module, "fast_sha256", lambda *a: None)
    assert other.pull("cached/1") == first  # through MLflow, still served by the cache


def test_pull_to_output_folder(reg: Registry, tmp_path: Path) -> None:
    src = make_package(tmp_path / "p", seed=3)
    reg.register("outdir", src)
    out = reg.pull("outdir/1", tmp_path / "out" / "model")
    assert out == tmp_path / "out" / "model"
    assert files_of(out) == files_of(src)
    (out / "dataset.json").chmod(0o644)  # copies are ordinary, writable files
    assert reg.pull("outdir/1", out) == out  # same package already there: fine
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        reg.pull("outdir/1", busy)
    assert (busy / "notes.txt").read_text() == "mine"


# -- integrity -------------------------------------------------------------------------------


def _flip_first_byte(path: Path) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])


def test_tampered_cache_is_an_error_naming_the_file(reg: Registry, tmp_path: Path) -> None:
    src = make_package(tmp_path / "p", folds=("0", "1"), seed=11)
    reg.register("tamper-cache", src)
    other = fresh(reg, tmp_path)
    folder = other.pull("tamper-cache/1")
    ckpt = folder / "fold_1" / "checkpoint_final.pth"
    assert not os.access(ckpt, os.W_OK) or os.geteuid() == 0  # cached files are read-only
    _flip_first_byte(ckpt)
    with pytest.raises(IntegrityError, match="sha256") as err:
        other.pull("tamper-cache/1")
    assert err.value.path == str(ckpt)
    assert "--refresh" in str(err.value)
    ckpt.write_bytes(ckpt.read_bytes()[:10])  # truncated
    with pytest.raises(IntegrityError, match="truncated") as err:
        other.pull("tamper-cache/1")
    assert err.value.path == str(ckpt)
    repaired = other.pull("tamper-cache/1", refresh=True)
    assert files_of(repaired) == files_of(src)


def test_tampered_store_is_an_error_naming_the_file(reg: Registry, tmp_path: Path) -> None:
    src = make_package(tmp_path / "p", seed=12)
    info = reg.register("tamper-store", src)
    target = stored_file(info.source, "fold_0/checkpoint_final.pth")
    _flip_first_byte(target)
    other = fresh(reg, tmp_path)
    with pytest.raises(IntegrityError, match="sha256") as err:
        other.pull("tamper-store/1")
    assert err.value.path == f"{info.source}/artifacts/package/fold_0/checkpoint_final.pth"
    packages = tmp_path / "other-home" / "cache" / "packages"
    assert not packages.exists() or list(packages.iterdir()) == []  # nothing half-installed
    assert list((tmp_path / "other-home" / "cache" / "tmp").iterdir()) == []

    # a doctored manifest does not help: it no longer matches the registry's sha256
    from registry.manifest import Manifest

    manifest_path = stored_file(info.source, "x").parent.parent / MANIFEST_NAME
    doctored = build_manifest(stored_file(info.source, "x").parent)
    manifest_path.write_bytes(Manifest(doctored.files).to_bytes())
    with pytest.raises(IntegrityError, match="does not match the registry"):
        other.pull("tamper-store/1")


# -- hostile input leaves the registry unchanged ---------------------------------------------


def _snapshot(reg: Registry, home: Path) -> tuple[object, ...]:
    db = home / "registry.db"
    con = sqlite3.connect(db)
    try:
        counts = tuple(
            con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("experiments", "runs", "registered_models", "model_versions", "tags")
        )
    finally:
        con.close()
    files = sorted(str(p) for p in (home / "artifacts").rglob("*"))
    return counts, files, [m.to_dict() for m in reg.list_models()]


def test_malicious_zips_leave_the_registry_unchanged(
    reg: Registry, home: Path, tmp_path: Path
) -> None:
    reg.register("victim", make_package(tmp_path / "ok"))
    before = _snapshot(reg, home)
    good = make_package(tmp_path / "pkg", folds=("0",))
    hostile = {}
    for name, entry, payload in [
        ("traversal", "../../evil.py", b"import os"),
        ("absolute", "/tmp/evil.py", b"import os"),
        ("bomb", "pkg/fold_0/zeros.bin", bytes(16 << 20)),
    ]:
        archive = zip_package(good, tmp_path / f"{name}.zip")
        with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(entry, payload)
        hostile[name] = archive
    link = zip_package(good, tmp_path / "symlink.zip")
    with zipfile.ZipFile(link, "a") as zf:
        info = zipfile.ZipInfo("pkg/fold_0/checkpoint_best.pth")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/shadow")
    hostile["symlink"] = link

    for name, archive in hostile.items():
        for model in ("victim", f"new-{name}"):
            with pytest.raises(UnsafeArchiveError) as err:
                reg.register(model, archive, alias="champion")
            assert err.value.path == str(archive), name
    assert _snapshot(reg, home) == before
    assert not (tmp_path / "evil.py").exists() and not Path("/tmp/evil.py").exists()


def test_invalid_requests_create_nothing(reg: Registry, home: Path, tmp_path: Path) -> None:
    before = _snapshot(reg, home)
    pkg = make_package(tmp_path / "p")
    with pytest.raises(GateFailed, match="cannot register straight into champion"):
        reg.register("gated", pkg, alias="champion")
    with pytest.raises(InputError, match="invalid model name"):
        reg.register("bad/name", pkg)
    with pytest.raises(InputError, match="invalid alias"):
        reg.register("fine", pkg, alias="v2")
    with pytest.raises(InputError, match="reserved"):
        reg.register("fine", pkg, tags={"cordwatch.drift.verdict": "pass"})
    with pytest.raises(InputError, match="no such file"):
        reg.register("fine", tmp_path / "missing")
    with pytest.raises(InputError, match=r"parent fine/9"):
        reg.register("fine", pkg, tags={"parent": "9"})
    assert _snapshot(reg, home) == before


# -- versions, tags, lineage, diff -----------------------------------------------------------


def test_versions_are_ordered_by_number(reg: Registry, tmp_path: Path) -> None:
    src = make_package(tmp_path / "p")
    for _ in range(11):
        reg.register("many", src)
    versions = [v.version for v in reg.list_versions("many")]
    assert versions == list(range(1, 12))  # as text, 10 and 11 would come before 2
    summary = {m.name: m for m in reg.list_models()}["many"]
    assert (summary.versions, summary.latest) == (11, 11)


def test_lineage_and_tags(reg: Registry, tmp_path: Path) -> None:
    src = make_package(tmp_path / "p")
    reg.register("lin", src, alias="candidate")
    v2 = reg.register("lin", src, tags={"parent": "lin@candidate", "git_commit": "abc123"})
    v3 = reg.register("lin", src, tags={"parent": "2"})
    assert v2.tags["parent"] == "lin/1" and v3.tags["parent"] == "lin/2"
    tagged = reg.set_version_tags("lin/3", {VERDICT_TAG: "pass", "note": "ok"})
    assert tagged.tags[VERDICT_TAG] == "pass" and tagged.tags["note"] == "ok"
    with pytest.raises(InputError, match="reserved"):
        reg.set_version_tags("lin/3", {"cordwatch.sha256": "0" * 64})
    assert reg.resolve("lin/3").sha256 == v3.sha256


def test_diff_lists_metadata_and_file_changes(reg: Registry, tmp_path: Path) -> None:
    a = make_package(tmp_path / "a", folds=("0", "1"), seed=1)
    b = make_package(tmp_path / "b", folds=("0", "2"), seed=1, extra_files={"notes.txt": b"x"})
    (b / "fold_0" / "checkpoint_final.pth").write_bytes(b"retrained")
    reg.register("dif", a, tags={"task": "sc"}, description="one")
    reg.register("dif", b, tags={"task": "sc", "release_tag": "r2"}, description="two")
    d = reg.diff("dif/1", "dif/2")
    assert not d.same_package
    assert [f.path for f in d.added] == ["fold_2/checkpoint_final.pth", "notes.txt"]
    assert [f.path for f in d.removed] == ["fold_1/checkpoint_final.pth"]
    assert [(x.path, y.size) for x, y in d.changed] == [("fold_0/checkpoint_final.pth", 9)]
    assert d.tags["release_tag"] == (None, "r2") and "task" not in d.tags
    assert d.tags["cordwatch.nnunet.folds"] == ("0,1", "0,2")
    assert d.description == ("one", "two")
    assert reg.diff("dif/1", "dif/1").to_dict()["files"] == {
        "added": [],
        "removed": [],
        "changed": [],
    }


# -- aliases, gate, history ------------------------------------------------------------------


def test_promote_requires_a_passing_verdict(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_package(tmp_path / "p")
    reg.register("gate", src, alias="candidate")
    reg.register("gate", src)

    with pytest.raises(GateFailed, match="no drift verdict") as err:
        reg.promote("gate/1")
    assert err.value.exit_code == 1 and err.value.path == "gate/1"
    reg.set_version_tags("gate/1", {VERDICT_TAG: "fail"})
    with pytest.raises(GateFailed, match="verdict is 'fail'"):
        reg.promote("gate/1")
    with pytest.raises(InputError, match="--reason"):
        reg.promote("gate/1", force=True)
    assert "champion" not in reg.resolve("gate/1").aliases

    reg.set_version_tags("gate/1", {VERDICT_TAG: "pass"})
    first = reg.promote("gate/1")
    assert first is not None and (first.from_version, first.to_version) == (None, 1)
    assert reg.promote("gate/1") is None  # already there: nothing recorded
    assert reg.resolve("gate@champion").version == 1

    monkeypatch.setenv("CORDWATCH_USER", "release-bot")
    forced = reg.promote("gate/2", force=True, reason="hotfix for site X")
    assert forced is not None and forced.forced and forced.verdict == ""
    assert reg.resolve("gate@champion").version == 2
    moved = reg.promote("gate/2", alias="candidate")  # other aliases are not gated
    assert moved is not None and (moved.from_version, moved.to_version) == (1, 2)

    history = connect(reg.tracking_uri).history("gate")  # read back by a new client
    assert [(e.alias, e.from_version, e.to_version) for e in history] == [
        ("candidate", None, 1),
        ("champion", None, 1),
        ("champion", 1, 2),
        ("candidate", 1, 2),
    ]
    assert [e.who for e in history] == ["tester", "tester", "release-bot", "release-bot"]
    assert history[1].verdict == "pass" and not history[1].forced
    assert history[2].forced and history[2].reason == "hotfix for site X"
    assert history[0].reason == "set at registration"
    assert all(a.when <= b.when for a, b in itertools.pairwise(history))


def test_aliases_are_read_from_the_model_not_search_results(reg: Registry, tmp_path: Path) -> None:
    reg.register("al", make_package(tmp_path / "p"), alias="candidate")
    reg.promote("al/1", alias="staging-x")
    assert reg.list_versions("al")[0].aliases == ("candidate", "staging-x")


def test_unknown_refs_are_registry_errors(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not found") as err:
        reg.resolve("nosuchmodel/1")
    assert err.value.path == "nosuchmodel/1"
    reg.register("refs", make_package(tmp_path / "p"))
    with pytest.raises(RegistryError, match="not found"):
        reg.pull("refs@nosuchalias")
    with pytest.raises(RegistryError, match="not found"):
        reg.history("nosuchmodel")
    # a version registered by plain MLflow (no manifest) is refused, not half-fetched
    reg.client.create_model_version("refs", "file:///nonexistent", run_id=None)
    with pytest.raises(RegistryError, match="not a cordwatch package"):
        reg.pull("refs/2")


def test_fast_lookup_agrees_with_mlflow(reg: Registry, tmp_path: Path) -> None:
    reg.register("fast", make_package(tmp_path / "a", seed=1), alias="candidate")
    info = reg.register("fast", make_package(tmp_path / "b", seed=2))
    assert fast_sha256(reg.settings, parse_ref("fast@candidate")) == (
        1,
        reg.resolve("fast/1").sha256,
    )
    assert fast_sha256(reg.settings, parse_ref("fast/2")) == (2, info.sha256)
    assert fast_sha256(reg.settings, parse_ref("fast/3")) is None
    assert fast_sha256(reg.settings, parse_ref("fast@nope")) is None
    reg.client.delete_model_version("fast", "2")
    assert fast_sha256(reg.settings, parse_ref("fast/2")) is None  # deleted: ask MLflow
    with pytest.raises(RegistryError):
        reg.pull("fast/2")


# -- the stored MLflow model -----------------------------------------------------------------


def test_pyfunc_verifies_and_segments_through_registry_nnunet(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc
    import pandas as pd

    import registry.nnunet

    info = reg.register("pyf", make_package(tmp_path / "p", folds=("all",)))
    calls = []

    def fake_predict_paths(
        package_dir: Path, paths: list[str], out_dir: str, device: str = "auto", **kw: bool
    ) -> list[Path]:
        calls.append((Path(package_dir), list(paths), out_dir, device, kw))
        return [Path(out_dir) / (Path(p).name + "_seg") for p in paths]

    monkeypatch.setattr(registry.nnunet, "predict_paths", fake_predict_paths)
    model = mlflow.pyfunc.load_model(info.source)
    out = model.predict(
        pd.DataFrame({"path": ["a.nii.gz", "b.nii.gz"]}),
        params={"out_dir": str(tmp_path / "segs"), "device": "cpu"},
    )
    assert list(out["segmentation"]) == [str(tmp_path / "segs" / f"{n}.nii.gz_seg") for n in "ab"]
    (package_dir, paths, out_dir, device, kw) = calls[0]
    assert out_dir == str(tmp_path / "segs")
    assert paths == ["a.nii.gz", "b.nii.gz"] and device == "cpu"
    assert (package_dir / "fold_all" / "checkpoint_final.pth").is_file()
    assert kw == {"tta": False, "soft": False}
    requirements = (Path(info.source.removeprefix("file://")) / "requirements.txt").read_text()
    assert "nnunetv2==" in requirements and "mlflow==" in requirements

    # a model whose package was altered refuses to load (before nnU-Net unpickles anything)
    _flip_first_byte(stored_file(info.source, "fold_all/checkpoint_final.pth"))
    with pytest.raises(IntegrityError, match="sha256"):
        mlflow.pyfunc.load_model(info.source)


def test_sqlite_store_is_initialised_once_and_marked(tmp_path: Path) -> None:
    import shutil

    from registry import settings as settings_module

    db = tmp_path / "r.db"
    settings_module.ensure_sqlite_store(settings_module.resolve_settings(f"sqlite:///{db}"))
    marker = tmp_path / "r.db.initialised"
    assert marker.is_file() and settings_module._store_initialised(db)
    # A complete MLflow schema without the marker (as seen half-way through another process's
    # initialisation, or a database made elsewhere) is not trusted: it is verified, then marked.
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    assert not settings_module._store_initialised(copy)
    settings_module.ensure_sqlite_store(settings_module.resolve_settings(f"sqlite:///{copy}"))
    assert settings_module._store_initialised(copy)
    # the marker names the file it belongs to: a replaced database is initialised again
    db.unlink()
    assert not settings_module._store_initialised(db)


def test_concurrent_first_pulls_share_one_cache_entry(reg: Registry, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    src = make_package(tmp_path / "p", folds=("0", "1"), size=1 << 20, seed=21)
    reg.register("together", src)
    clients = [fresh(reg, tmp_path) for _ in range(4)]  # one cache, four clients
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda c: c.pull("together/1"), clients))
    assert len(set(folders)) == 1
    assert files_of(folders[0]) == files_of(src)
    assert list((tmp_path / "other-home" / "cache" / "tmp").iterdir()) == []  # no leftovers
