"""Model packages without MLflow: refs, settings, manifests, layouts, and hostile zips."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from registry.archive import ZipLimits, check_zip, extract_zip
from registry.errors import InputError, IntegrityError, RegistryError, UnsafeArchiveError
from registry.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    build_manifest,
    read_verified_manifest,
    verify_tree,
)
from registry.package import stage_package, validate_layout
from registry.refs import Ref, check_alias, check_tag_key, parse_ref, parse_tag
from registry.settings import ensure_sqlite_store, resolve_settings, sqlite_path
from registry.testing import make_package, zip_package

# -- refs ------------------------------------------------------------------------------------


def test_parse_ref_alias_and_version() -> None:
    assert parse_ref("sc-seg@champion") == Ref("sc-seg", alias="champion")
    assert parse_ref("sc-seg/12") == Ref("sc-seg", version=12)
    assert parse_ref("models:/sc_seg.v2/3") == Ref("sc_seg.v2", version=3)
    assert str(parse_ref(" m@candidate ")) == "m@candidate"


@pytest.mark.parametrize(
    "text", ["m", "m/", "m/0", "m/-1", "m/v2", "m@", "m@latest", "m@v3", "/3", "a b/1", "m@x/y"]
)
def test_parse_ref_rejects(text: str) -> None:
    with pytest.raises(InputError):
        parse_ref(text)


def test_alias_and_tag_rules() -> None:
    assert check_alias("champion") == "champion"
    with pytest.raises(InputError, match="reserved"):
        check_alias("Latest")
    assert parse_tag("source_url=https://x/y?a=b") == ("source_url", "https://x/y?a=b")
    assert parse_tag("note=") == ("note", "")
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_tag("task")
    with pytest.raises(InputError, match="reserved"):
        parse_tag("cordwatch.drift.verdict=pass")
    with pytest.raises(InputError, match="reserved"):
        check_tag_key("mlflow.user")
    assert check_tag_key("cordwatch.drift.verdict", allow_reserved=True)


# -- settings --------------------------------------------------------------------------------


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORDWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CORDWATCH_ARTIFACT_ROOT", raising=False)
    default = resolve_settings()
    assert default.uri == f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    assert default.artifact_root == (tmp_path / "home" / "artifacts").as_uri()
    assert default.cache_dir == tmp_path / "home" / "cache"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    env = resolve_settings()
    assert env.uri == "http://127.0.0.1:5999" and env.is_server and env.artifact_root is None
    assert env.lock_path is None

    flag = resolve_settings(f"sqlite:///{tmp_path}/other.db")
    assert flag.uri == f"sqlite:///{tmp_path}/other.db"
    assert flag.lock_path == tmp_path / "other.db.lock"

    monkeypatch.setenv("CORDWATCH_ARTIFACT_ROOT", "s3://bucket/prefix")
    assert resolve_settings(f"sqlite:///{tmp_path}/x.db").artifact_root == "s3://bucket/prefix"


def test_settings_relative_sqlite_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_settings("sqlite:///rel.db").uri == f"sqlite:///{tmp_path / 'rel.db'}"
    assert sqlite_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"


@pytest.mark.parametrize(
    "uri", ["./mlruns", "file:///tmp/mlruns", "sqlite://", "sqlite:///:memory:"]
)
def test_settings_refuse_file_store_and_memory(uri: str) -> None:
    with pytest.raises(RegistryError):
        resolve_settings(uri)


def test_ensure_store_refuses_a_non_database(tmp_path: Path) -> None:
    bogus = tmp_path / "registry.db"
    bogus.write_text("this is not sqlite, just text that is long enough " * 10)
    with pytest.raises(RegistryError, match="not a readable sqlite registry"):
        ensure_sqlite_store(resolve_settings(f"sqlite:///{bogus}"))


# -- manifests -------------------------------------------------------------------------------


def test_manifest_hashes_every_file(tmp_path: Path) -> None:
    root = make_package(tmp_path / "p", folds=("0", "1"), size=300, extra_files={"a/b.txt": b"hi"})
    manifest = build_manifest(root)
    paths = [f.path for f in manifest.files]
    assert paths == sorted(paths)
    assert set(paths) == {
        "a/b.txt",
        "dataset.json",
        "plans.json",
        "fold_0/checkpoint_final.pth",
        "fold_1/checkpoint_final.pth",
    }
    for entry in manifest.files:
        data = (root / entry.path).read_bytes()
        assert entry.size == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.sha256 == hashlib.sha256(manifest.to_bytes()).hexdigest()
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    # order of construction does not matter: the serialisation is canonical
    assert Manifest(tuple(reversed(manifest.files))).sha256 == manifest.sha256


def test_verify_tree_names_the_offending_file(tmp_path: Path) -> None:
    root = make_package(tmp_path / "p", folds=("0",), size=100)
    manifest = build_manifest(root)
    verify_tree(root, manifest)
    ckpt = root / "fold_0" / "checkpoint_final.pth"
    original = ckpt.read_bytes()

    ckpt.write_bytes(bytes([original[0] ^ 1]) + original[1:])  # same size, one bit flipped
    with pytest.raises(IntegrityError, match="sha256") as err:
        verify_tree(root, manifest)
    assert err.value.path == str(ckpt)

    ckpt.write_bytes(original[:50])  # truncated
    with pytest.raises(IntegrityError, match="size 50 bytes, manifest says 100") as err:
        verify_tree(root, manifest)
    assert err.value.path == str(ckpt)

    ckpt.write_bytes(original)
    (root / "fold_1").mkdir()
    (root / "fold_1" / "checkpoint_final.pth").write_bytes(b"extra fold")
    with pytest.raises(IntegrityError, match="not in the package manifest") as err:
        verify_tree(root, manifest)
    assert err.value.path == str(root / "fold_1" / "checkpoint_final.pth")

    (root / "fold_1" / "checkpoint_final.pth").unlink()
    (root / "plans.json").unlink()
    with pytest.raises(IntegrityError, match="missing") as err:
        verify_tree(root, manifest)
    assert err.value.path == str(root / "plans.json")


def test_stored_manifest_is_checked_against_the_registry_sha(tmp_path: Path) -> None:
    root = make_package(tmp_path / "p")
    manifest = build_manifest(root)
    stored = tmp_path / MANIFEST_NAME
    stored.write_bytes(manifest.to_bytes())
    assert read_verified_manifest(stored, manifest.sha256) == manifest
    # an attacker who edits the manifest to match altered weights is caught by the sha
    doctored = Manifest((FileEntry("dataset.json", 1, "0" * 64),))
    stored.write_bytes(doctored.to_bytes())
    with pytest.raises(IntegrityError, match="does not match the registry") as err:
        read_verified_manifest(stored, manifest.sha256)
    assert err.value.path == str(stored)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        json.dumps({"format": "other", "files": []}).encode(),
        json.dumps(
            {
                "format": "cordwatch-manifest/1",
                "files": [{"path": "../x", "size": 1, "sha256": "0" * 64}],
            }
        ).encode(),
    ],
)
def test_malformed_manifest(payload: bytes) -> None:
    with pytest.raises(IntegrityError, match="malformed package manifest"):
        Manifest.from_bytes(payload, "m.json")


# -- layouts ---------------------------------------------------------------------------------


def test_results_folder_layout(tmp_path: Path) -> None:
    root = make_package(
        tmp_path / "nnUNetTrainer_2000epochs__nnUNetPlans__3d_fullres", folds=("10", "2", "0")
    )
    layout = validate_layout(root)
    assert layout.folds == ("0", "2", "10")  # integer order, not text
    assert layout.trainer == "nnUNetTrainer_2000epochs"
    assert layout.plans == "nnUNetPlans" and layout.configuration == "3d_fullres"
    assert layout.dataset_name == "Dataset101_SpinalCord"
    tags = layout.tags()
    assert tags["cordwatch.nnunet.folds"] == "0,2,10"
    assert json.loads(tags["cordwatch.nnunet.labels"]) == {"background": 0, "spinal_cord": 1}


def test_fold_all_with_best_checkpoint(tmp_path: Path) -> None:
    root = make_package(tmp_path / "release", folds=("all",), checkpoint="checkpoint_best.pth")
    layout = validate_layout(root)
    assert layout.folds == ("all",)
    assert layout.checkpoints == ("fold_all/checkpoint_best.pth",)
    assert layout.trainer is None


def test_layout_errors_name_the_problem(tmp_path: Path) -> None:
    root = make_package(tmp_path / "outer" / "results")
    with pytest.raises(InputError, match=r"no dataset\.json.*did you mean") as err:
        validate_layout(tmp_path / "outer")
    assert err.value.path == str(tmp_path / "outer")

    (root / "fold_0" / "checkpoint_final.pth").rename(root / "fold_0" / "model.pth")
    with pytest.raises(InputError, match=re.escape("no checkpoint_final.pth")) as err:
        validate_layout(root)
    assert err.value.path == str(root / "fold_0")

    (root / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    with pytest.raises(InputError, match="empty checkpoint"):
        validate_layout(root)

    (root / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    (root / "plans.json").write_text("{broken")
    with pytest.raises(InputError, match="not valid JSON") as err:
        validate_layout(root)
    assert err.value.path == str(root / "plans.json")

    (root / "plans.json").write_text("{}")
    with pytest.raises(InputError, match="'configurations'"):
        validate_layout(root)


def test_symlink_in_folder_is_refused(tmp_path: Path) -> None:
    root = make_package(tmp_path / "p")
    (root / "fold_0" / "leak.txt").symlink_to("/etc/hostname")
    with pytest.raises(InputError, match="symbolic links") as err:
        validate_layout(root)
    assert err.value.path == str(root / "fold_0" / "leak.txt")


# -- zips: accepted shapes -------------------------------------------------------------------


@pytest.mark.parametrize("nested", [True, False])
def test_zip_flat_or_nested(tmp_path: Path, nested: bool) -> None:
    src = make_package(tmp_path / "nnUNetTrainer__nnUNetPlans__2d", folds=("all",), size=500)
    archive = zip_package(src, tmp_path / "model.zip", nested=nested)
    work = tmp_path / "work"
    work.mkdir()
    staged = stage_package([archive], work)
    assert staged.kind == "zip" and staged.source_names == ("model.zip",)
    assert build_manifest(staged.root) == build_manifest(src)
    assert staged.layout.configuration == ("2d" if nested else None)


def test_one_zip_per_fold_is_merged(tmp_path: Path) -> None:
    src = make_package(tmp_path / "r", folds=("0", "1"), size=200)
    common = ["dataset.json", "plans.json"]
    z0 = zip_package(src, tmp_path / "fold0.zip", only=[*common, "fold_0"])
    z1 = zip_package(src, tmp_path / "fold1.zip", nested=False, only=[*common, "fold_1"])
    work = tmp_path / "work"
    work.mkdir()
    staged = stage_package([z0, z1], work)
    assert staged.layout.folds == ("0", "1")
    assert build_manifest(staged.root) == build_manifest(src)


def test_per_fold_zips_must_agree(tmp_path: Path) -> None:
    a = make_package(tmp_path / "a", folds=("0",))
    b = make_package(tmp_path / "b", folds=("1",))
    (b / "plans.json").write_text(json.dumps({"configurations": {}, "other": 1}))
    za, zb = zip_package(a, tmp_path / "a.zip"), zip_package(b, tmp_path / "b.zip")
    work = tmp_path / "w1"
    work.mkdir()
    with pytest.raises(
        InputError, match=re.escape("plans.json differs from the one in a.zip")
    ) as err:
        stage_package([za, zb], work)
    assert err.value.path == str(zb)

    same_fold = zip_package(a, tmp_path / "a2.zip")
    work = tmp_path / "w2"
    work.mkdir()
    with pytest.raises(InputError, match=re.escape("fold_0/checkpoint_final.pth is also in a.zip")):
        stage_package([za, same_fold], work)


def test_zip_without_package(tmp_path: Path) -> None:
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/dataset.json", "{}")
        zf.writestr("b/dataset.json", "{}")
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(InputError, match="no nnU-Net v2 results folder") as err:
        stage_package([archive], work)
    assert err.value.path == str(archive)


# -- zips: hostile ---------------------------------------------------------------------------


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we want
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for info, data in entries:
                zf.writestr(info, data)
    return path


def _valid_entries() -> list[tuple[zipfile.ZipInfo | str, bytes]]:
    return [
        ("pkg/dataset.json", json.dumps({"labels": {}}).encode()),
        ("pkg/plans.json", json.dumps({"configurations": {}}).encode()),
        ("pkg/fold_0/checkpoint_final.pth", os.urandom(64)),
    ]


def _symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("../evil.txt", b"x"), "path traversal"),
        (("pkg/fold_0/../../evil.txt", b"x"), "path traversal"),
        (("/etc/cron.d/evil", b"x"), "absolute path"),
        (("C:/evil.txt", b"x"), "absolute path"),
        (("pkg\\..\\evil.txt", b"x"), "backslash"),
        (_symlink("pkg/fold_0/link", "/etc/passwd"), "symbolic link not allowed"),
        (("pkg/dataset.json", b"{}"), "duplicate name"),
        (("pkg/DATASET.json", b"{}"), "duplicate name"),
        (("pkg//x", b"x"), "empty path component"),
    ],
)
def test_hostile_entries_are_refused(
    tmp_path: Path, extra: tuple[zipfile.ZipInfo | str, bytes], message: str
) -> None:
    archive = _zip(tmp_path / "evil.zip", [*_valid_entries(), extra])
    name = extra[0] if isinstance(extra[0], str) else extra[0].filename
    assert name in zipfile.ZipFile(archive).namelist()  # the hostile entry really is there
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match=message) as err:
        extract_zip(archive, dest)
    assert err.value.path == str(archive)
    assert list(dest.iterdir()) == []  # nothing was written
    assert not (tmp_path / "evil.txt").exists()


def test_file_that_is_also_a_directory(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "e.zip", [*_valid_entries(), ("pkg/fold_0/checkpoint_final.pth/x", b"")]
    )
    with pytest.raises(UnsafeArchiveError, match="both a file and a directory"):
        check_zip(archive)


def test_encrypted_entry_is_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "e.zip", [*_valid_entries(), ("pkg/secret.bin", b"x" * 10)])
    data = bytearray(archive.read_bytes())
    records = [i for i in range(len(data)) if data[i : i + 4] == b"PK\x01\x02"]
    data[records[3] + 8] |= 0x1  # general-purpose flag bit 0: encrypted
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).infolist()[3].flag_bits & 0x1
    with pytest.raises(UnsafeArchiveError, match="encrypted"):
        check_zip(archive)


def test_compression_bomb_is_refused(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "bomb.zip", [*_valid_entries(), ("pkg/fold_0/zeros.bin", bytes(20 << 20))]
    )
    assert archive.stat().st_size < 100_000  # 20 MiB of zeros in a few kB
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match="decompression bomb"):
        extract_zip(archive, dest)
    assert list(dest.iterdir()) == []


def test_size_and_count_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _zip(tmp_path / "ok.zip", _valid_entries())
    assert len(check_zip(archive, ZipLimits())) == 3
    with pytest.raises(UnsafeArchiveError, match="exceeds the limit of 50"):
        check_zip(archive, ZipLimits(max_total_bytes=50))
    with pytest.raises(UnsafeArchiveError, match="more than the limit of 2"):
        check_zip(archive, ZipLimits(max_files=2))
    monkeypatch.setenv("CORDWATCH_ZIP_MAX_FILES", "2")
    with pytest.raises(UnsafeArchiveError, match="more than the limit of 2"):
        check_zip(archive)
    monkeypatch.setenv("CORDWATCH_ZIP_MAX_FILES", "many")
    with pytest.raises(InputError, match="bad zip limit"):
        check_zip(archive)


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    """The "better zip bomb": central-directory entries sharing one compressed stream."""
    archive = _zip(tmp_path / "ok.zip", _valid_entries())
    data = bytearray(archive.read_bytes())
    records = [i for i in range(len(data)) if data[i : i + 4] == b"PK\x01\x02"]
    assert len(records) == 3
    struct.pack_into("<I", data, records[2] + 42, 0)  # third entry points at the first's data
    (tmp_path / "overlap.zip").write_bytes(bytes(data))
    with pytest.raises(UnsafeArchiveError, match="overlap"):
        check_zip(tmp_path / "overlap.zip")


def test_corrupt_data_is_an_input_error(tmp_path: Path) -> None:
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for name, payload in _valid_entries():
            zf.writestr(name, payload)
    data = bytearray(archive.read_bytes())
    where = data.index(b"fold_0/checkpoint_final.pth") + len("fold_0/checkpoint_final.pth") + 5
    data[where] ^= 0xFF
    archive.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(InputError, match="corrupt") as err:
        extract_zip(archive, dest)
    assert err.value.path == str(archive)


def test_not_a_zip(tmp_path: Path) -> None:
    bogus = tmp_path / "model.zip"
    bogus.write_bytes(b"PK but not really" * 10)
    with pytest.raises(InputError, match="not a readable zip"):
        check_zip(bogus)


def test_junk_entries_are_left_out(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "mac.zip",
        [*_valid_entries(), ("__MACOSX/pkg/._dataset.json", b"x"), ("pkg/.DS_Store", b"x")],
    )
    work = tmp_path / "w"
    work.mkdir()
    staged = stage_package([archive], work)
    assert {f.path for f in build_manifest(staged.root).files} == {
        "dataset.json",
        "plans.json",
        "fold_0/checkpoint_final.pth",
    }
