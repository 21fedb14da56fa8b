"""SCT 7.4 parity on real data: cordwatch's outputs against SCT 7.4's own outputs.

The reference CSVs in ``tests/data/sct74/`` were written by Spinal Cord Toolbox's
``sct_process_segmentation`` itself (7.4.dev0, commit 3b3c5b22d5b3aa63eb6291799c621a6544dc3ad8,
run from source; the commands are in ``tests/data/sct74/README.md``) on the files of
``../shared/data``. Each case runs cordwatch on the same inputs with
``--angle-correction sct`` (``none`` where SCT ran with ``-angle-corr 0``) and asserts, row by
row, what issue 12 asks:

* the same rows in the same order: ``Slice (I->S)`` and ``VertLevel`` identical (every slice
  of the image per slice; SCT's disc rule; PAM50 slices and levels after normalisation);
* ``MEAN(area)`` within 0.5 %, every other ``MEAN(...)`` and ``SUM(length)`` within 1 %
  (angles and orientation: 1 % of max(|SCT|, 1 degree), as they cross zero);
* ``STD(...)`` within the same fraction of the metric's ``MEAN`` (a level's STD of solidity
  is ~0.005: a relative bound on it would test noise, not the instrument);
* NaN (empty cells) exactly where SCT has them.

The real data are needed only to re-run cordwatch (the shared_data fixture skips when they
are absent locally, and fails under CI=true). The measured deviations are in
docs/sct-parity.md; :func:`test_deviations_stay_as_documented` keeps them from creeping up.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from drift.cli.main import app
from drift.cli.morphometry import morphometry_table
from drift.measure.sctcsv import COLUMNS_29

SCT_COMMIT = "3b3c5b22d5b3aa63eb6291799c621a6544dc3ad8"
REFERENCE = Path(__file__).parent / "data" / "sct74"
T2 = "sct_testing_data/t2"
SMALL = "sct_testing_data/template"

#: name -> (segmentation, options of morphometry_table; files relative to ../shared/data)
CASES: dict[str, tuple[str, dict[str, object]]] = {
    "t2_perslice": (f"{T2}/t2_seg-manual.nii.gz", {"perslice": True}),
    "t2_perslice_anglecorr0": (
        f"{T2}/t2_seg-manual.nii.gz",
        {"perslice": True, "angle_correction": "none"},
    ),
    "t2_perslice_discfile": (
        f"{T2}/t2_seg-manual.nii.gz",
        {"perslice": True, "discfile": f"{T2}/labels.nii.gz"},
    ),
    "t2_perslice_vertfile": (
        f"{T2}/t2_seg-manual.nii.gz",
        {"perslice": True, "vertfile": f"{T2}/t2_seg-manual_labeled.nii.gz"},
    ),
    "t2_perlevel_vert_vertfile": (
        f"{T2}/t2_seg-manual.nii.gz",
        {"perlevel": True, "vert": (1, 25), "vertfile": f"{T2}/t2_seg-manual_labeled.nii.gz"},
    ),
    "t2_perlevel_vert_discfile": (
        f"{T2}/t2_seg-manual.nii.gz",
        {"perlevel": True, "vert": (1, 25), "discfile": f"{T2}/labels.nii.gz"},
    ),
    "t2_vert2to5_discfile": (
        f"{T2}/t2_seg-manual.nii.gz",
        {"vert": (2, 5), "discfile": f"{T2}/labels.nii.gz"},
    ),
    "t2_pam50_discfile": (
        f"{T2}/t2_seg-manual.nii.gz",
        {"perslice": True, "normalize_pam50": True, "discfile": f"{T2}/labels.nii.gz"},
    ),
    "t2_pam50_vertfile": (
        f"{T2}/t2_seg-manual.nii.gz",
        {
            "perslice": True,
            "normalize_pam50": True,
            "vertfile": f"{T2}/t2_seg-manual_labeled.nii.gz",
        },
    ),
    "pam50small_perlevel_vert_discfile": (
        f"{SMALL}/PAM50_small_cord.nii.gz",
        {"perlevel": True, "vert": (1, 25), "discfile": f"{SMALL}/PAM50_small_label_disc.nii.gz"},
    ),
    "pam50small_perlevel_vert_vertfile": (
        f"{SMALL}/PAM50_small_cord.nii.gz",
        {"perlevel": True, "vert": (1, 25), "vertfile": f"{SMALL}/PAM50_small_levels.nii.gz"},
    ),
    "pam50small_perslice_discfile": (
        f"{SMALL}/PAM50_small_cord.nii.gz",
        {"perslice": True, "discfile": f"{SMALL}/PAM50_small_label_disc.nii.gz"},
    ),
    # The full template (991 slices): round slices (orientation -45 as skimage), slices with
    # the major axis exactly along AP (+90), centroids on half pixels (SCT's rounding frame)
    # and PAM50's label 60, which takes disc 21's place at the cord's lowest slice.
    "pam50_perslice": ("PAM50/PAM50_cord.nii.gz", {"perslice": True}),
    "pam50_perlevel_vert_discfile": (
        "PAM50/PAM50_cord.nii.gz",
        {"perlevel": True, "vert": (1, 25), "discfile": "PAM50/PAM50_label_disc.nii.gz"},
    ),
}
SLOW = {"pam50_perslice", "pam50_perlevel_vert_discfile"}

AREA_TOL = 0.005
OTHER_TOL = 0.01
#: Largest deviation measured per column kind over all cases (docs/sct-parity.md), with
#: head room: solidity is SCT's pixel-count hull to 0.7 %, the area 2e-4 (SCT sums the
#: bilinearly warped slice), everything else float rounding.
DOCUMENTED = {"area": 3e-4, "solidity": 7e-3, "other": 1e-5}


def read_reference(name: str) -> list[dict[str, str]]:
    with open(REFERENCE / f"{name}.csv", newline="") as handle:
        return list(csv.DictReader(handle))


_OURS: dict[tuple[Path, str], list[dict[str, object]]] = {}


def ours(shared_data: Path, name: str) -> list[dict[str, object]]:
    """cordwatch's rows for a case (computed once per session)."""
    if (shared_data, name) in _OURS:
        return _OURS[shared_data, name]
    seg, options = CASES[name]
    kwargs: dict[str, object] = {"angle_correction": "sct", "warn": lambda _msg: None}
    for key, value in options.items():
        kwargs[key] = shared_data / str(value) if key in ("vertfile", "discfile") else value
    table = morphometry_table(shared_data / seg, **kwargs)  # type: ignore[arg-type]
    _OURS[shared_data, name] = table.to_dict("records")
    return _OURS[shared_data, name]


def cell(value: object) -> str:
    """A table value as SCT writes it in the identifying columns ('' for none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        if value is not None and np.isnan(value):  # type: ignore[call-overload]
            return ""
    except TypeError:
        pass
    return str(value)


def number(value: object) -> float:
    text = cell(value)
    return float(text) if text != "" else math.nan


def deviations(
    reference: list[dict[str, str]], got: list[dict[str, object]]
) -> dict[str, tuple[float, str]]:
    """Per metric column: the largest deviation (as defined in the module docstring) and
    where it is. Asserts rows, slices, levels and NaN positions on the way."""
    assert len(got) == len(reference), (len(got), len(reference))
    for ref_row, row in zip(reference, got, strict=True):
        assert cell(row["Slice (I->S)"]) == ref_row["Slice (I->S)"]
        assert cell(row["VertLevel"]) == ref_row["VertLevel"], ref_row["Slice (I->S)"]
        assert cell(row["DistancePMJ"]) == ref_row["DistancePMJ"]
    worst: dict[str, tuple[float, str]] = {}
    for col in COLUMNS_29[6:]:
        metric = col[col.index("(") + 1 : -1]
        for ref_row, row in zip(reference, got, strict=True):
            expected, value = number(ref_row[col]), number(row.get(col))
            where = f"{col} at slice(s) {ref_row['Slice (I->S)']}"
            assert math.isnan(expected) == math.isnan(value), where
            if math.isnan(expected):
                continue
            if col.startswith("STD("):
                scale = abs(number(ref_row[f"MEAN({metric})"]))
            else:
                scale = abs(expected)
            if metric.startswith("angle_") or metric == "orientation":
                scale = max(scale, 1.0)
            dev = abs(value - expected) / scale if scale > 0 else abs(value - expected)
            if dev > worst.get(col, (-1.0, ""))[0]:
                worst[col] = (dev, where)
    return worst


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in CASES]
)
def test_matches_sct_74_outputs(shared_data: Path, name: str) -> None:
    """Every row, slice and level identical; every column within 0.5 % (area) / 1 %."""
    worst = deviations(read_reference(name), ours(shared_data, name))
    for col, (dev, where) in worst.items():
        tol = AREA_TOL if col.endswith("(area)") else OTHER_TOL
        assert dev <= tol, f"{name}: {where}: {dev:.2e} > {tol}"


def test_deviations_stay_as_documented(shared_data: Path) -> None:
    """The figures of docs/sct-parity.md: solidity <= 0.7 %, area <= 0.03 %, the other
    columns <= 1e-5 on the per-slice t2 and PAM50_small outputs."""
    for name in ("t2_perslice", "t2_perslice_anglecorr0", "pam50small_perslice_discfile"):
        for col, (dev, where) in deviations(read_reference(name), ours(shared_data, name)).items():
            if col.startswith("STD("):
                continue
            metric = col[col.index("(") + 1 : -1]
            bound = DOCUMENTED.get(metric, DOCUMENTED["other"])
            assert dev <= bound, f"{name}: {where}: {dev:.2e} > {bound}"


def test_cli_writes_sct_74_header_and_every_row(shared_data: Path, tmp_path: Path) -> None:
    """The CSV itself: SCT's 29 columns in SCT's order, the same slices and levels, empty
    cells where SCT's are, through ``cordwatch morphometry``."""
    reference = read_reference("t2_perslice_discfile")
    out = tmp_path / "t2.csv"
    seg, options = CASES["t2_perslice_discfile"]
    args = ["morphometry", str(shared_data / seg), "--perslice", "--angle-correction", "sct"]
    args += ["--discfile", str(shared_data / str(options["discfile"])), "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(out, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == list(read_reference("t2_perslice")[0].keys()) == COLUMNS_29
    assert [r["Slice (I->S)"] for r in rows] == [r["Slice (I->S)"] for r in reference]
    assert [r["VertLevel"] for r in rows] == [r["VertLevel"] for r in reference]
    assert [r["DistancePMJ"] for r in rows] == [r["DistancePMJ"] for r in reference]
    for row, ref in zip(rows, reference, strict=True):
        for col in COLUMNS_29[6:]:
            assert (row[col] == "") == (ref[col] == ""), (col, ref["Slice (I->S)"])
        assert float(row["MEAN(area)"]) == pytest.approx(float(ref["MEAN(area)"]), rel=AREA_TOL)


def test_reference_is_sct_74() -> None:
    """The stored files are SCT 7.4's 29-column layout (not the 23-column one)."""
    for name in CASES:
        rows = read_reference(name)
        assert list(rows[0]) == COLUMNS_29, name
        assert {r["SCT Version"] for r in rows} == {"7.4.dev0"}, name
