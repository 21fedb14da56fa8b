"""``cordwatch morphometry`` in-process: outputs, SCT CSV round trip, and bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from drift.cli.main import app
from drift.measure.sctcsv import COLUMNS_23, COLUMNS_29, read_sct_csv, sct_to_tidy

runner = CliRunner()


def save(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    nib.save(
        nib.Nifti1Image(data, np.diag([0.8, 0.8, 0.8, 1.0]) if affine is None else affine), path
    )
    return path


@pytest.fixture()
def cord(tmp_path: Path) -> dict[str, Path]:
    """A straight 4.5 x 3.5 mm elliptic cylinder over 30 slices with levels 2..4."""
    from drift.measure.phantoms import elliptic_cylinder

    seg = elliptic_cylinder((32, 32, 30), (0.8, 0.8, 0.8), 4.5, 3.5)
    labeled = np.zeros(seg.shape, np.uint8)
    for level, (lo, hi) in {4: (0, 10), 3: (10, 20), 2: (20, 30)}.items():
        labeled[:, :, lo:hi] = np.where(seg[:, :, lo:hi] > 0.5, level, 0)
    discs = np.zeros(seg.shape, np.uint8)
    # SCT 7.4's rule: level N runs up to and including disc N's slice.
    discs[16, 16, 29], discs[16, 16, 19], discs[16, 16, 9] = 2, 3, 4
    return {
        "seg": save(seg, tmp_path / "seg.nii.gz"),
        "labeled": save(labeled, tmp_path / "labeled.nii.gz"),
        "discs": save(discs, tmp_path / "discs.nii.gz"),
    }


def test_perlevel_csv_has_sct_columns_and_true_area(cord, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    result = runner.invoke(
        app,
        [
            "morphometry",
            str(cord["seg"]),
            "--vertfile",
            str(cord["labeled"]),
            "--perlevel",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    table = read_sct_csv(out)
    assert list(table.columns) == COLUMNS_29  # SCT 7.4's layout
    # SCT writes the rows in slice order (I->S): the inferior level first.
    assert table["VertLevel"].tolist() == ["4", "3", "2"]
    assert table["Slice (I->S)"].tolist() == ["0:9", "10:19", "20:29"]
    np.testing.assert_allclose(table["MEAN(area)"], np.pi * 4.5 * 3.5, rtol=3e-3)


def test_discfile_gives_the_same_levels_as_the_labelled_seg(cord) -> None:
    from drift.cli.morphometry import morphometry_table

    by_labels = morphometry_table(cord["seg"], vertfile=cord["labeled"], perlevel=True)
    by_discs = morphometry_table(cord["seg"], discfile=cord["discs"], perlevel=True)
    assert by_discs["VertLevel"].tolist() == by_labels["VertLevel"].tolist()
    np.testing.assert_allclose(by_discs["MEAN(area)"], by_labels["MEAN(area)"])


def test_perslice_and_vert_range(cord, tmp_path: Path) -> None:
    out = tmp_path / "slices.csv"
    args = [
        "morphometry",
        str(cord["seg"]),
        "--vertfile",
        str(cord["labeled"]),
        "--perslice",
        "--vert",
        "3:4",
        "-o",
        str(out),
    ]
    assert runner.invoke(app, args).exit_code == 0
    tidy = sct_to_tidy(read_sct_csv(out), "sub-x", "T2w")
    assert tidy["slice"].tolist() == list(range(0, 20))
    assert set(tidy["level"]) == {3, 4}


def test_normalize_pam50_writes_template_slices(cord, tmp_path: Path) -> None:
    out = tmp_path / "pam50.csv"
    args = [
        "morphometry",
        str(cord["seg"]),
        "--vertfile",
        str(cord["labeled"]),
        "--normalize-pam50",
        "-o",
        str(out),
    ]
    assert runner.invoke(app, args).exit_code == 0
    tidy = sct_to_tidy(read_sct_csv(out), "sub-x", "T2w")
    # The inner level C3 fills its whole PAM50 range 871..907.
    c3 = tidy[tidy["level"] == 3]["slice"]
    assert (c3.min(), c3.max(), len(c3)) == (871, 907, 37)
    np.testing.assert_allclose(tidy["area"], np.pi * 4.5 * 3.5, rtol=5e-3)


def test_table_printed_without_output(cord) -> None:
    result = runner.invoke(
        app, ["morphometry", str(cord["seg"]), "--vertfile", str(cord["labeled"]), "--perlevel"]
    )
    assert result.exit_code == 0
    assert "MEAN(area)" in result.output
    assert "49.4" in result.output or "49.5" in result.output


def test_reads_both_sct_layouts(tmp_path: Path, shared_data: Path) -> None:
    real = read_sct_csv(
        shared_data / "normative_r20250321" / "spinal_cord" / "sub-amu01_T2w_PAM50.csv"
    )
    assert list(real.columns) == COLUMNS_23
    tidy = sct_to_tidy(real, "sub-amu01", "T2w")
    assert tidy["level"].between(1, 20).all() and tidy["area"].notna().any()
    new = tmp_path / "new.csv"
    row = {c: "" for c in COLUMNS_29} | {
        "Slice (I->S)": "5",
        "VertLevel": "3",
        "MEAN(area)": "70.5",
        "MEAN(diameter_AP_ellipse)": "7.1",
    }
    pd.DataFrame([row], columns=COLUMNS_29).to_csv(new, index=False)
    tidy = sct_to_tidy(read_sct_csv(new), "sub-01", "T1w")
    assert len(COLUMNS_29) == 29
    assert tidy[["slice", "level", "area", "diameter_AP_ellipse"]].values.tolist() == [
        [5, 3, 70.5, 7.1]
    ]


# ---------------------------------------------------------------------- bad input -----------


def bad_inputs(tmp_path: Path, cord: dict[str, Path]) -> dict[str, tuple[list[str], str, str]]:
    seg = cord["seg"]
    text = tmp_path / "notes.nii.gz"
    text.write_text("hello")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(seg.read_bytes()[:0] + b"x" * 10)[:-6])
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(seg.read_bytes()[:300])
    four_d = save(np.zeros((8, 8, 8, 3), np.float32), tmp_path / "4d.nii.gz")
    empty = save(np.zeros((8, 8, 8), np.float32), tmp_path / "empty.nii.gz")
    nan = np.ones((8, 8, 8), np.float32)
    nan[2, 2, 2] = np.nan
    nan_path = save(nan, tmp_path / "nan.nii.gz")
    big = save(np.full((8, 8, 8), 3.0, np.float32), tmp_path / "big.nii.gz")
    other_shape = save(np.ones((8, 8, 8), np.uint8), tmp_path / "shape.nii.gz")
    other_affine = save(
        nib.load(cord["labeled"]).get_fdata().astype(np.uint8),
        tmp_path / "affine.nii.gz",
        np.diag([1.0, 1.0, 1.0, 1.0]),
    )
    s, lab = str(seg), str(cord["labeled"])
    shape = nib.load(seg).shape
    no_pmj = save(np.zeros(shape, np.uint8), tmp_path / "pmj0.nii.gz")
    two = np.zeros(shape, np.uint8)
    two[16, 16, 28], two[16, 18, 29] = 1, 1
    two_pmj = save(two, tmp_path / "pmj2.nii.gz")
    low = np.zeros(shape, np.uint8)
    low[16, 16, 10] = 1
    low_pmj = save(low, tmp_path / "pmjlow.nii.gz")
    pmj_args = ["--pmj-distance", "5"]
    return {
        "PMJ without label": (
            ["morphometry", s, "--pmj", str(no_pmj), *pmj_args],
            "pmj0.nii.gz",
            "empty",
        ),
        "PMJ with two labels": (
            ["morphometry", s, "--pmj", str(two_pmj), *pmj_args],
            "pmj2.nii.gz",
            "2 labelled voxels",
        ),
        "PMJ inside the cord": (
            ["morphometry", s, "--pmj", str(low_pmj), *pmj_args],
            "pmjlow.nii.gz",
            "within or below the cord's extent",
        ),
        "slices outside": (
            ["morphometry", s, "--slices", "10:40"],
            "seg.nii.gz",
            "outside the image",
        ),
        "slices syntax": (["morphometry", s, "--slices", "ten"], "", "--slices must look like"),
        "missing": (["morphometry", str(tmp_path / "nope.nii.gz")], "nope.nii.gz", "not found"),
        "not nifti": (["morphometry", str(text)], "notes.nii.gz", ""),
        "corrupted gzip": (["morphometry", str(broken)], "broken.nii.gz", ""),
        "truncated": (["morphometry", str(truncated)], "truncated.nii.gz", ""),
        "4D": (["morphometry", str(four_d)], "4d.nii.gz", "3D"),
        "empty": (["morphometry", str(empty)], "empty.nii.gz", "empty"),
        "NaN": (["morphometry", str(nan_path)], "nan.nii.gz", "NaN"),
        "outside [0,1]": (["morphometry", str(big)], "big.nii.gz", "[0, 1]"),
        "shape": (["morphometry", s, "--vertfile", str(other_shape)], "shape.nii.gz", "shape"),
        "affine": (["morphometry", s, "--vertfile", str(other_affine)], "affine.nii.gz", "affine"),
        "absent levels": (
            ["morphometry", s, "--vertfile", lab, "--vert", "6:7"],
            "labeled.nii.gz",
            "none of the levels 6:7",
        ),
        "no levels": (["morphometry", s, "--perlevel"], "", "--vertfile"),
        "bad mode": (["morphometry", s, "--angle-correction", "cos"], "", "exact, sct or none"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not nifti",
        "corrupted gzip",
        "truncated",
        "4D",
        "empty",
        "NaN",
        "outside [0,1]",
        "shape",
        "affine",
        "absent levels",
        "PMJ without label",
        "PMJ with two labels",
        "PMJ inside the cord",
        "slices outside",
        "slices syntax",
        "no levels",
        "bad mode",
    ],
)
def test_bad_input_one_line_exit_2_no_output(case: str, cord, tmp_path: Path) -> None:
    args, names_file, says = bad_inputs(tmp_path, cord)[case]
    out = tmp_path / "result.csv"
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cordwatch: error: ")
    assert names_file in lines[0]
    assert says in lines[0]
    assert not out.exists()
    assert not list(tmp_path.glob(".result.csv.*"))


def test_vert_with_some_levels_absent_warns_once_and_goes_on(cord, tmp_path: Path) -> None:
    out = tmp_path / "v.csv"
    args = ["morphometry", str(cord["seg"]), "--vertfile", str(cord["labeled"]), "--perlevel"]
    result = runner.invoke(app, [*args, "--vert", "2:7", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cordwatch: warning: ")
    assert "[5, 6, 7]" in lines[0] and "labeled.nii.gz" in lines[0]
    assert read_sct_csv(out)["VertLevel"].tolist() == ["4", "3", "2"]


def test_slices_range_and_perslice_every_slice(cord, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    args = ["morphometry", str(cord["seg"]), "--slices", "10:19", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    table = read_sct_csv(out)
    assert table["Slice (I->S)"].tolist() == ["10:19"]
    assert float(table["SUM(length)"].iloc[0]) == pytest.approx(10 * 0.8)
    out2 = tmp_path / "p.csv"
    args = ["morphometry", str(cord["seg"]), "--perslice", "--slices", "3,5:6", "-o", str(out2)]
    assert runner.invoke(app, args).exit_code == 0
    table = read_sct_csv(out2)
    assert table["Slice (I->S)"].tolist() == ["3", "5", "6"]
    assert (table["STD(area)"] == 0.0).all()
