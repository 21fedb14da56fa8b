"""Import hygiene: the command line and the measuring edge load only what they use.

Each check runs a fresh interpreter (a module imported by an earlier test would hide a
regression) and lists which heavy packages ended up in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Never needed to parse the command line or print help (seconds of import each).
HEAVY = ("pandas", "mlflow", "torch", "matplotlib", "nnunetv2", "pydicom", "dask")


def loaded_after(code: str) -> list[str]:
    """The packages of :data:`HEAVY` (and scipy.interpolate) loaded by ``code`` in a fresh
    interpreter."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps([m for m in {[*HEAVY, 'scipy.interpolate']!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_import_loads_no_heavy_package() -> None:
    assert loaded_after("import drift.cli.main") == []


def test_help_loads_no_heavy_package() -> None:
    code = (
        "import sys\nfrom drift.cli.main import app\nsys.argv = ['cordwatch', '--help']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass"
    )
    assert loaded_after(code) == []


def test_nifti_reader_does_not_import_pydicom() -> None:
    """nibabel imports pydicom (when installed) for DICOM header extensions: blocked."""
    assert "pydicom" not in loaded_after("import drift.measure.nifti")


def test_pydicom_still_importable_after_nibabel() -> None:
    pytest.importorskip("pydicom")
    code = "import drift.measure.nifti\nimport pydicom"
    assert "pydicom" in loaded_after(code)


def test_morphometry_command_loads_no_registry_or_plotting(tmp_path: Path) -> None:
    """``cordwatch morphometry`` per level on a real segmentation, CSV out: no MLflow, torch,
    matplotlib, pydicom or dask, and (issue 14 item 1) no pandas and no scipy.interpolate:
    the centerline spline is numpy (drift.measure.spline), the rows and the CSV are written
    without pandas."""
    t2 = REPO.parent / "shared" / "data" / "sct_testing_data" / "t2"
    if not t2.is_dir():
        pytest.skip(f"{t2}: real test data not present")
    args = [
        "morphometry",
        str(t2 / "t2_seg-manual.nii.gz"),
        "--vertfile",
        str(t2 / "t2_seg-manual_labeled.nii.gz"),
        "--perlevel",
        "-o",
        str(tmp_path / "out.csv"),
    ]
    code = (
        f"import sys\nfrom drift.cli.main import app\nsys.argv = ['cordwatch', *{args!r}]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code"
    )
    loaded = loaded_after(code)
    assert (tmp_path / "out.csv").is_file()
    assert loaded == []
