"""Cohort manifests: validation, the phantom cohort generated on first use, verification.

The phantom cohort is generated once per session (about 3 s on 2 CPU cores) and copied where a
test needs to damage it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drift.cli.main import app
from drift.cohort import manifest as co
from drift.cohort import roots, verify
from registry.errors import InputError, IntegrityError
from registry.fsutil import sha256_file

REPO = Path(__file__).resolve().parents[1]
COHORTS = REPO / "reference_data" / "cohorts"
LISTING = Path("spine-generic") / "frozen_test_cohort_r20250310.tsv"
runner = CliRunner()

ID = ("sub-01", "T2w")
SHA = "ab" * 32
GOOD_HEADER = "format: cordwatch-cohort/1\nname: tiny\nlevel_source: disc_labels\n"
GOOD_TABLE = (
    "participant_id\tcontrast\timage\timage_sha256\tdisc_labels\tdisc_labels_sha256\n"
    f"sub-01\tT2w\tsub-01/anat/sub-01_T2w.nii.gz\t{SHA}\tderivatives/sub-01_discs.nii.gz\t{SHA}\n"
)


def write_manifest(folder: Path, table: str, header: str | None = GOOD_HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.tsv"
    path.write_text(table, encoding="utf-8")
    if header is not None:
        path.with_suffix(".yaml").write_text(header, encoding="utf-8")
    return path


def last_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines, result.output
    return lines[-1]


@pytest.fixture(scope="session")
def phantom_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CORDWATCH_HOME in which the shipped phantom cohort was generated on first use."""
    home = tmp_path_factory.mktemp("phantom-home")
    roots.ensure_phantom_cohort(co.load_cohort("phantom"), home=home)
    return home


@pytest.fixture()
def phantom_copy(phantom_home: Path, tmp_path: Path) -> Path:
    """A private copy of the generated phantom cohort, safe to damage."""
    root = tmp_path / "phantom-root"
    shutil.copytree(phantom_home / "cohorts" / "phantom", root)
    return root


# --------------------------------------------------------------------------------------------
# Shipped manifests
# --------------------------------------------------------------------------------------------


def test_shipped_manifests_are_listed_and_named_by_their_stem() -> None:
    paths = co.list_manifests()
    assert {"phantom", "spine-generic_r20250310"} <= {p.stem for p in paths}
    for path in paths:
        assert co.load_cohort(path).name == path.stem


def test_phantom_manifest_shape_and_recipe() -> None:
    cohort = co.load_cohort("phantom")
    assert cohort.is_generated
    # The recipe the brief fixes (and write_cohort's defaults).
    assert cohort.generator == co.PhantomRecipe(
        n_subjects=10, seed=0, contrasts=("T1w", "T2w", "T2star"), spacing=(1.0, 1.0, 1.0)
    )
    assert len(cohort.items) == 30
    assert len(cohort.subjects) == 10
    assert cohort.contrasts == ("T1w", "T2w", "T2star")
    assert cohort.level_source == "disc_labels"
    assert len(cohort.files()) == 150  # 5 files per row, none shared
    item = cohort.items[0]
    assert item.key == ("sub-phantom01", "T1w")
    assert item.levels is item.disc_labels is not None
    assert item.files()[0] is item.image
    assert all(f.size and f.size > 0 for f in cohort.files())


def test_spine_generic_manifest_shape() -> None:
    cohort = co.load_cohort("spine-generic_r20250310")
    assert not cohort.is_generated
    assert len(cohort.items) == 294
    assert len(cohort.subjects) == 49
    assert cohort.contrasts == ("T1w", "T2w", "T2star", "MTon", "MToff", "DWI")
    assert cohort.level_source == "disc_labels"
    assert all(item.gt_seg and item.disc_labels for item in cohort.items)
    assert all(item.gt_softseg is None and item.labeled_seg is None for item in cohort.items)
    assert len(cohort.files()) == 882
    assert cohort.source["tag"] == "r20250310"


def test_spine_generic_manifest_equals_the_shared_listing(shared_data: Path) -> None:
    listing = shared_data / LISTING
    cohort = co.load_cohort("spine-generic_r20250310")
    with open(listing, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == len(cohort.items) == 294
    for row, item in zip(rows, cohort.items, strict=True):
        assert (row["participant_id"], row["contrast"]) == item.key
        for kind in ("image", "gt_seg", "disc_labels"):
            f = getattr(item, kind)
            assert (f.path, f.sha256, f.size) == (
                row[kind],
                row[f"{kind}_sha256"],
                int(row[f"{kind}_bytes"]),
            )
    assert cohort.source["listing_sha256"] == sha256_file(listing)
    assert cohort.table_sha256 == sha256_file(listing)  # derived byte for byte


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

BAD_TABLES = {
    "missing image_sha256": (
        "participant_id\tcontrast\timage\nsub-01\tT2w\ta.nii.gz\n",
        "missing required column(s) ['image_sha256']",
    ),
    "unknown column": (
        GOOD_TABLE.replace("disc_labels_sha256", "disc_label_sha256"),
        "line 1: unknown column(s) ['disc_label_sha256']",
    ),
    "duplicate subject/contrast": (
        GOOD_TABLE + GOOD_TABLE.splitlines()[1].replace("T2w.nii", "T2w-2.nii") + "\n",
        "line 3: duplicate (participant_id, contrast) ('sub-01', 'T2w') (first on line 2)",
    ),
    "short sha256": (
        GOOD_TABLE.replace(f"\t{SHA}\tderiv", f"\t{SHA[:-1]}\tderiv"),
        "line 2, column image_sha256: expected 64 lowercase hex digits",
    ),
    "upper-case sha256": (
        GOOD_TABLE.replace(f"\t{SHA}\n", f"\t{SHA.upper()}\n"),
        "line 2, column disc_labels_sha256: expected 64 lowercase hex digits",
    ),
    "parent path": (
        GOOD_TABLE.replace("sub-01/anat/", "../anat/"),
        "line 2, column image: path must be relative",
    ),
    "absolute path": (
        GOOD_TABLE.replace("derivatives/", "/derivatives/"),
        "line 2, column disc_labels: path must be relative",
    ),
    "sha256 without path": (
        GOOD_TABLE.replace("derivatives/sub-01_discs.nii.gz", ""),
        "line 2, column disc_labels: empty, but its sha256/bytes are filled in",
    ),
    "empty image": (
        GOOD_TABLE.replace("sub-01/anat/sub-01_T2w.nii.gz", ""),
        "line 2, column image: empty",
    ),
    "bad size": (
        "participant_id\tcontrast\timage\timage_sha256\timage_bytes\tdisc_labels\t"
        f"disc_labels_sha256\nsub-01\tT2w\ta.nii.gz\t{SHA}\t12a\td.nii.gz\t{SHA}\n",
        "line 2, column image_bytes: expected a non-negative integer, got '12a'",
    ),
    "wrong field count": (
        GOOD_TABLE + "sub-02\tT2w\tb.nii.gz\n",
        "line 3: 3 fields, the header has 6",
    ),
    "one path, two hashes": (
        GOOD_TABLE
        + f"sub-01\tT1w\tsub-01/anat/sub-01_T1w.nii.gz\t{SHA}\t"
        + f"derivatives/sub-01_discs.nii.gz\t{'cd' * 32}\n",
        "line 3, column disc_labels_sha256: derivatives/sub-01_discs.nii.gz listed with "
        "another sha256 on line 2",
    ),
    "no rows": (GOOD_TABLE.splitlines()[0] + "\n", "cohort table has no rows"),
    "empty file": ("", "cohort table is empty"),
    "level column absent": (
        "participant_id\tcontrast\timage\timage_sha256\nsub-01\tT2w\ta.nii.gz\t" + SHA + "\n",
        "the header's level_source is 'disc_labels' but the table has no 'disc_labels' column",
    ),
    "bad subject id": (
        GOOD_TABLE.replace("sub-01\tT2w", "sub 01\tT2w"),
        "line 2, column participant_id: expected a non-empty name",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_table_is_refused_naming_file_line_and_column(tmp_path: Path, case: str) -> None:
    table, message = BAD_TABLES[case]
    path = write_manifest(tmp_path, table)
    with pytest.raises(InputError) as err:
        co.load_cohort(path)
    assert err.value.path == str(path)
    assert message in err.value.message
    # The CLI: exit 2, one line naming the manifest table.
    result = runner.invoke(app, ["cohort", "verify", str(path), "--root", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert last_error_line(result).startswith(f"cordwatch: error: {path}: ")
    assert message in last_error_line(result)


BAD_HEADERS = {
    "not yaml": ("name: [unclosed\n", "not a valid YAML cohort header"),
    "not a mapping": ("- a\n- b\n", "cohort header must be a YAML mapping"),
    "no format": ("name: tiny\nlevel_source: disc_labels\n", "header key 'format' must be"),
    "unknown key": (GOOD_HEADER + "levels: disc_labels\n", "unknown header key(s) ['levels']"),
    "bad level source": (
        GOOD_HEADER.replace("level_source: disc_labels", "level_source: gt_seg"),
        "header key 'level_source' must be one of ['disc_labels', 'labeled_seg']",
    ),
    "bad name": (GOOD_HEADER.replace("name: tiny", "name: ../x"), "header key 'name' must"),
    "bad generator": (
        GOOD_HEADER + "generator: {function: os.system, n_subjects: 1, seed: 0, "
        "contrasts: [T2w], spacing: [1, 1, 1]}\n",
        "function must be 'drift.phantoms.write_cohort'",
    ),
    "generator disagrees with table": (
        GOOD_HEADER + "generator: {function: drift.phantoms.write_cohort, n_subjects: 2, "
        "seed: 0, contrasts: [T2w], spacing: [1, 1, 1]}\n",
        "generator makes 2 subjects x ['T2w'], the table lists 1 subjects x ['T2w']",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_header_is_refused_naming_the_header(tmp_path: Path, case: str) -> None:
    header, message = BAD_HEADERS[case]
    path = write_manifest(tmp_path, GOOD_TABLE, header)
    with pytest.raises(InputError) as err:
        co.load_cohort(path)
    assert err.value.path == str(path.with_suffix(".yaml"))
    assert message in err.value.message


def test_missing_header_and_missing_manifest(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, GOOD_TABLE, header=None)
    with pytest.raises(InputError, match="cohort header missing"):
        co.load_cohort(path)
    result = runner.invoke(app, ["cohort", "verify", str(tmp_path / "nope.tsv")])
    assert result.exit_code == 2
    line = last_error_line(result)
    assert line.startswith(f"cordwatch: error: {tmp_path / 'nope.tsv'}: cohort manifest not found")
    assert "phantom" in line  # names the shipped cohorts


def test_good_manifest_loads_from_table_or_header(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, GOOD_TABLE)
    by_table = co.load_cohort(path)
    by_header = co.load_cohort(path.with_suffix(".yaml"))
    assert by_table == by_header == co.load_cohort(tmp_path / "tiny")  # or the stem
    (item,) = by_table.items
    assert item.key == ID
    assert item.image.path == "sub-01/anat/sub-01_T2w.nii.gz"
    assert item.image.sha256 == SHA and item.image.size is None
    assert item.gt_seg is None and item.levels == item.disc_labels
    assert item.image.locate(tmp_path) == tmp_path / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    assert not by_table.is_generated


def test_crlf_table_and_blank_lines_are_read(tmp_path: Path) -> None:
    crlf = GOOD_TABLE.replace("\n", "\r\n") + "\r\n"
    cohort = co.load_cohort(write_manifest(tmp_path, crlf))
    (item,) = cohort.items
    assert item.disc_labels is not None and item.disc_labels.sha256 == SHA


def test_manifest_sha256_covers_table_and_header(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, GOOD_TABLE)
    before = co.load_cohort(path)
    path.with_suffix(".yaml").write_text(GOOD_HEADER + "description: edited\n")
    after = co.load_cohort(path)
    assert after.table_sha256 == before.table_sha256 == sha256_file(path)
    assert after.header_sha256 != before.header_sha256
    assert after.manifest_sha256 != before.manifest_sha256
    assert after.provenance()["cohort_manifest_sha256"] == after.manifest_sha256


def test_written_table_omits_empty_optional_columns_and_round_trips(tmp_path: Path) -> None:
    rows = [
        {"participant_id": "sub-01", "contrast": "T2w", "image": "a.nii.gz", "image_sha256": SHA,
         "image_bytes": 3, "disc_labels": "d.nii.gz", "disc_labels_sha256": SHA, "gt_seg": ""},
        {"participant_id": "sub-02", "contrast": "T2w", "image": "b.nii.gz", "image_sha256": SHA,
         "image_bytes": 4, "disc_labels": "", "disc_labels_sha256": ""},
    ]  # fmt: skip
    path = co.write_manifest_table(tmp_path / "tiny.tsv", rows)
    assert path.read_text().splitlines()[0].split("\t") == [
        "participant_id", "contrast", "image", "image_sha256", "image_bytes", "disc_labels",
        "disc_labels_sha256",
    ]  # fmt: skip
    path.with_suffix(".yaml").write_text(GOOD_HEADER)
    cohort = co.load_cohort(path)
    assert [i.image.size for i in cohort.items] == [3, 4]
    assert cohort.items[1].levels is None  # empty cell = no level file for that row
    with pytest.raises(InputError, match="unknown cohort column"):
        co.write_manifest_table(tmp_path / "x.tsv", [{"participant": "sub-01"}])


# --------------------------------------------------------------------------------------------
# Roots
# --------------------------------------------------------------------------------------------


def test_resolve_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = co.load_cohort("spine-generic_r20250310")
    phantom = co.load_cohort("phantom")
    monkeypatch.delenv(co.COHORT_ROOT_ENV, raising=False)
    monkeypatch.setenv("CORDWATCH_HOME", str(tmp_path / "home"))
    with pytest.raises(InputError, match="give --root DIR or set CORDWATCH_COHORT_ROOT"):
        roots.resolve_root(dataset)
    assert roots.resolve_root(phantom) == tmp_path / "home" / "cohorts" / "phantom"
    assert not (tmp_path / "home").exists()  # resolving creates nothing
    monkeypatch.setenv(co.COHORT_ROOT_ENV, str(tmp_path))
    assert roots.resolve_root(dataset) == tmp_path
    # The env names a dataset's root; a generated cohort keeps its cache folder.
    assert roots.resolve_root(phantom) == tmp_path / "home" / "cohorts" / "phantom"
    other = tmp_path / "other"
    other.mkdir()
    assert roots.resolve_root(dataset, other) == other  # the flag wins
    assert roots.resolve_root(phantom, other) == other
    with pytest.raises(InputError, match=r"cohort root \(--root\) is not a directory"):
        roots.resolve_root(dataset, tmp_path / "absent")
    with pytest.raises(InputError, match="not generated by cordwatch"):
        roots.ensure_phantom_cohort(dataset, home=tmp_path / "home")


# --------------------------------------------------------------------------------------------
# The phantom cohort: generated on first use, verified, never silently regenerated
# --------------------------------------------------------------------------------------------


def test_phantom_generated_on_first_use_verifies(phantom_home: Path) -> None:
    cohort = co.load_cohort("phantom")
    root = phantom_home / "cohorts" / "phantom"
    seen: list[str] = []
    report = verify.verify_cohort(cohort, root, on_file=lambda c: seen.append(c.path))
    assert report.ok
    assert report.counts == {"ok": 150, "missing": 0, "changed": 0, "unreadable": 0}
    assert seen == [f.path for f in cohort.files()]
    report.raise_for_problems()  # no exception
    # No temporary folder left beside it; a second call reuses the folder as it is.
    assert sorted(p.name for p in root.parent.iterdir()) == [".phantom.lock", "phantom"]
    stamp = (root / cohort.items[0].image.path).stat().st_mtime_ns
    assert roots.ensure_root(cohort, home=phantom_home) == root
    assert (root / cohort.items[0].image.path).stat().st_mtime_ns == stamp


def test_committed_phantom_hashes_equal_a_fresh_generation(phantom_home: Path) -> None:
    """The determinism guarantee: write_cohort(recipe) reproduces every committed byte."""
    cohort = co.load_cohort("phantom")
    root = phantom_home / "cohorts" / "phantom"
    generated = {p.relative_to(root).as_posix() for p in root.rglob("*.nii.gz")}
    assert generated == {f.path for f in cohort.files()}
    for f in cohort.files():
        path = f.locate(root)
        assert (sha256_file(path), path.stat().st_size) == (f.sha256, f.size), f.path


def test_cli_verify_phantom_ok(phantom_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORDWATCH_HOME", str(phantom_home))
    result = runner.invoke(app, ["cohort", "verify", "phantom"])
    assert result.exit_code == 0, result.output
    assert "150 files: 150 ok, 0 missing, 0 changed" in result.stdout
    assert result.stderr == ""  # already generated: nothing to say
    result = runner.invoke(app, ["cohort", "verify", "phantom", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["counts"]["ok"] == 150 and data["problems"] == []
    assert data["manifest_sha256"] == co.load_cohort("phantom").manifest_sha256


def test_tampered_byte_is_reported_changed(phantom_copy: Path) -> None:
    cohort = co.load_cohort("phantom")
    target = cohort.items[4].image
    path = target.locate(phantom_copy)
    payload = bytearray(path.read_bytes())
    payload[100] ^= 0x01  # same size, other content
    path.write_bytes(bytes(payload))
    result = runner.invoke(app, ["cohort", "verify", "phantom", "--root", str(phantom_copy)])
    assert result.exit_code == 2, result.output
    assert "150 files: 149 ok, 0 missing, 1 changed" in result.stdout
    assert f"changed  {target.path}: sha256 " in result.stdout
    line = last_error_line(result)
    assert line.startswith(f"cordwatch: error: {cohort.manifest}: 1 of 150 cohort files")
    assert f"(first: {target.path} changed)" in line
    result = runner.invoke(
        app, ["cohort", "verify", "phantom", "--root", str(phantom_copy), "--json"]
    )
    assert result.exit_code == 2
    (problem,) = json.loads(result.stdout)["problems"]
    assert problem["path"] == target.path and problem["status"] == "changed"
    assert problem["actual_sha256"] == sha256_file(path) != target.sha256
    assert (problem["subject"], problem["contrast"], problem["kind"]) == (
        cohort.items[4].subject,
        cohort.items[4].contrast,
        "image",
    )


def test_size_change_and_deletion(phantom_copy: Path) -> None:
    cohort = co.load_cohort("phantom")
    grown, gone = cohort.items[0].gt_seg, cohort.items[7].disc_labels
    assert grown is not None and gone is not None
    with open(grown.locate(phantom_copy), "ab") as fh:
        fh.write(b"\0")
    gone.locate(phantom_copy).unlink()
    report = verify.verify_cohort(cohort, phantom_copy)
    assert not report.ok
    assert report.counts == {"ok": 148, "missing": 1, "changed": 1, "unreadable": 0}
    by_path = {c.path: c for c in report.problems}
    assert by_path[grown.path].status == "changed"
    assert by_path[grown.path].detail == f"size {grown.size + 1} != {grown.size} bytes"
    assert by_path[gone.path].status == "missing"
    with pytest.raises(IntegrityError, match="2 of 150 cohort files missing or changed"):
        report.raise_for_problems()
    result = runner.invoke(app, ["cohort", "verify", "phantom", "--root", str(phantom_copy)])
    assert result.exit_code == 2
    assert f"missing  {gone.path}" in result.stdout


def test_broken_link_is_missing(phantom_copy: Path) -> None:
    cohort = co.load_cohort("phantom")
    f = cohort.items[0].image
    path = f.locate(phantom_copy)
    path.unlink()
    path.symlink_to(phantom_copy / "annex-object-not-fetched")
    (check,) = verify.verify_cohort(cohort, phantom_copy).problems
    assert check.path == f.path and check.status == "missing"
    assert "broken link" in check.detail


def test_damaged_cache_is_never_regenerated(
    phantom_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / "cohorts").mkdir(parents=True)
    root = home / "cohorts" / "phantom"
    shutil.move(phantom_copy, root)
    f = co.load_cohort("phantom").items[2].labeled_seg
    assert f is not None
    f.locate(root).write_bytes(b"not a nifti")
    monkeypatch.setenv("CORDWATCH_HOME", str(home))
    result = runner.invoke(app, ["cohort", "verify", "phantom"])
    assert result.exit_code == 2
    assert f"changed  {f.path}" in result.stdout
    assert f"delete {root} to regenerate it" in last_error_line(result)
    assert f.locate(root).read_bytes() == b"not a nifti"  # left as found


def test_generation_that_does_not_match_the_manifest_fails_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    recipe = co.PhantomRecipe(n_subjects=1, contrasts=("T2w",))
    table = co.write_phantom_manifest(tmp_path / "manifests", name="tiny", recipe=recipe)
    cohort = co.load_cohort(table)
    assert cohort.generator == recipe and len(cohort.files()) == 5
    wrong = cohort.items[0].gt_seg
    assert wrong is not None
    table.write_text(table.read_text().replace(wrong.sha256, "0" * 64))
    home = tmp_path / "home"
    with pytest.raises(IntegrityError) as err:
        roots.ensure_phantom_cohort(co.load_cohort(table), home=home)
    assert err.value.path == str(table)
    assert f"{wrong.path}: generated sha256 {wrong.sha256} != manifest {'0' * 64}" in str(err.value)
    assert [p.name for p in (home / "cohorts").iterdir()] == [".tiny.lock"]


@pytest.mark.slow
def test_concurrent_first_use_generates_one_consistent_cohort(tmp_path: Path) -> None:
    recipe = co.PhantomRecipe(n_subjects=3, contrasts=("T2w", "T1w"))
    table = co.write_phantom_manifest(tmp_path / "manifests", name="race", recipe=recipe)
    home = tmp_path / "home"
    env = {**os.environ, "CORDWATCH_HOME": str(home)}
    cmd = [sys.executable, "-m", "drift.cli.main", "cohort", "verify", str(table)]
    procs = [
        subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        assert b"30 files: 30 ok, 0 missing, 0 changed" in out
    # A second generator renaming onto the finished folder would have failed; none left behind.
    assert sorted(p.name for p in (home / "cohorts").iterdir()) == [".race.lock", "race"]
    assert verify.verify_cohort(co.load_cohort(table), home / "cohorts" / "race").ok


# --------------------------------------------------------------------------------------------
# Dataset cohort and the other commands
# --------------------------------------------------------------------------------------------


def test_spine_generic_needs_a_root_and_reports_missing_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(co.COHORT_ROOT_ENV, raising=False)
    result = runner.invoke(app, ["cohort", "verify", "spine-generic_r20250310"])
    assert result.exit_code == 2
    manifest = COHORTS / "spine-generic_r20250310.tsv"
    assert last_error_line(result) == (
        f"cordwatch: error: {manifest}: cohort 'spine-generic_r20250310' needs its data: "
        "give --root DIR or set CORDWATCH_COHORT_ROOT"
    )
    monkeypatch.setenv(co.COHORT_ROOT_ENV, str(tmp_path))
    result = runner.invoke(app, ["cohort", "verify", "spine-generic_r20250310", "--json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["root"] == str(tmp_path)
    assert data["counts"] == {"ok": 0, "missing": 882, "changed": 0, "unreadable": 0}
    assert "882 of 882 cohort files missing or changed" in last_error_line(result)


def test_cli_list(tmp_path: Path) -> None:
    result = runner.invoke(app, ["cohort", "list"])
    assert result.exit_code == 0, result.output
    assert "phantom" in result.stdout and "spine-generic_r20250310" in result.stdout
    result = runner.invoke(app, ["cohort", "list", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert (rows["phantom"]["n_subjects"], rows["phantom"]["n_contrasts"]) == (10, 3)
    assert rows["spine-generic_r20250310"]["n_items"] == 294
    assert rows["spine-generic_r20250310"]["n_contrasts"] == 6
    result = runner.invoke(app, ["cohort", "list", "--dir", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"no cohort manifests in {tmp_path}"


def test_cli_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORDWATCH_HOME", str(tmp_path))
    result = runner.invoke(app, ["cohort", "show", "phantom"])
    assert result.exit_code == 0, result.output
    assert "disc_labels (ground truth: the same for both versions)" in result.stdout
    assert f"{tmp_path / 'cohorts' / 'phantom'}  (generated on first use)" in result.stdout
    result = runner.invoke(app, ["cohort", "show", str(COHORTS / "phantom.yaml"), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    cohort = co.load_cohort("phantom")
    assert data["manifest_sha256"] == cohort.manifest_sha256
    assert len(data["items"]) == 30
    first = data["items"][0]
    assert first["image"] == {
        "path": cohort.items[0].image.path,
        "sha256": cohort.items[0].image.sha256,
        "bytes": cohort.items[0].image.size,
    }
    assert data["per_contrast"]["T2w"]["labeled_seg"] == 10
    assert not (tmp_path / "cohorts").exists()  # show generates nothing
