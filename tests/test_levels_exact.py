"""Issue 14: the disc projection without scipy.interpolate, and a command line without pydantic.

SCT truncates and rounds its centerline to voxels, so its levels from disc labels depend on
FITPACK's last bits (PAM50's centerline x is 70.0 on every slice; FITPACK returns 70 +- 1e-12
and the truncation gives 69 on some slices). :func:`drift.measure.spline.fitpack_spline` /
:func:`fitpack_values` are FITPACK's curfit / splev operation by operation: these tests hold
them to scipy's compiled FITPACK bit for bit. The command line converts plain option values
itself (:func:`drift.cli.common.plain_coercion`); the last tests hold that conversion to
typer's own (pydantic) one, results and error messages.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drift.measure.spline import fitpack_spline, fitpack_values, smoothing_spline, spline_values

REPO = Path(__file__).resolve().parents[1]
interpolate = pytest.importorskip("scipy.interpolate")


def _assert_same_bits(x: np.ndarray, y: np.ndarray, s: float, k: int) -> None:
    t, c, kk = fitpack_spline(x, y, s, k)
    ts, cs, ks = interpolate.splrep(x, y, s=s, k=k)
    assert kk == ks
    np.testing.assert_array_equal(t, ts)
    n = len(ts) - k - 1
    np.testing.assert_array_equal(c[:n], cs[:n])
    xe = np.arange(x[0] - 3.0, x[-1] + 3.0, 0.5)
    np.testing.assert_array_equal(fitpack_values(t, c, k, xe), interpolate.splev(xe, (ts, cs, k)))


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    rng = np.random.default_rng(seed)
    k = int(rng.choice([1, 2, 3, 3, 5]))
    m = int(rng.integers(k + 2, 300))
    x = np.sort(rng.choice(np.arange(1500), m, replace=False)).astype(float)
    kind = seed % 4
    if kind == 0:  # noise: many knots, part 2 with many iterations on p
        y = rng.normal(size=m)
        s = float(rng.uniform(0.05, 1.0)) * m
    elif kind == 1:  # a smooth centerline with noise, as a segmentation gives
        y = 70 + 5 * np.sin(x / rng.uniform(30, 300)) + rng.normal(scale=0.2, size=m)
        s = float(rng.uniform(0.001, 0.05)) * m
    elif kind == 2:  # constant: the least-squares polynomial, FITPACK's rounding noise
        y = np.full(m, float(rng.integers(0, 200)))
        s = float(rng.uniform(0.1, 30.0))
    else:  # quarter-voxel steps (centres of mass of small masks)
        y = np.round(np.cumsum(rng.normal(size=m)) * 4) / 4
        s = float(rng.uniform(0.01, 1.0)) * m
    return x, y, s, k


@pytest.mark.parametrize("seed", range(40))
def test_fitpack_port_is_scipys_fitpack_bit_for_bit(seed: int) -> None:
    _assert_same_bits(*_case(seed))


def test_constant_centerline_truncates_as_fitpack() -> None:
    """The PAM50 situation without the data: x = 70.0 on 950 slices. FITPACK's value is 70 up
    to its rounding, on both sides of 70, so truncating it gives 69 on some slices; the port
    gives exactly FITPACK's values (the smoothing port, exactly 70.0, would not)."""
    z = np.arange(40.0, 990.0)
    x = np.full(len(z), 70.0)
    s = 20 * 0.5 / 3
    exact = fitpack_values(*fitpack_spline(z, x, s, 3), z)
    scipy_values = interpolate.splev(z, interpolate.splrep(z, x, s=s, k=3))
    np.testing.assert_array_equal(exact, scipy_values)
    assert {69, 70} <= set(np.trunc(exact).astype(int).tolist())
    smooth = spline_values(*smoothing_spline(z, x, s, 3), z)
    assert not np.array_equal(np.trunc(smooth), np.trunc(exact))


def test_pam50_disc_projection_uses_fitpacks_bits(shared_data: Path) -> None:
    """On the PAM50 cord the disc projection's centerline is scipy's FITPACK, bit for bit
    (SCT's get_centerline: centre of mass per slice, bspline with smooth 20)."""
    from drift.measure.morphometry import voxel_centerline
    from drift.measure.nifti import load_segmentation

    path = shared_data / "PAM50" / "PAM50_cord.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path}: real data not present")
    seg = load_segmentation(path)
    zref, x, y = voxel_centerline(seg.data, seg.spacing[2])
    mask = np.asarray(seg.data) != 0
    per_x, per_y = mask.sum(axis=1), mask.sum(axis=0)
    counts = per_x.sum(axis=0)
    z = np.flatnonzero(counts)
    np.testing.assert_array_equal(zref, np.arange(z[0], z[-1] + 1))
    s = (len(z) / len(zref)) ** 2 * 20 * seg.spacing[2] / 3
    for values, per in ((x, per_x), (y, per_y)):
        centre = (np.arange(per.shape[0], dtype=float) @ per)[z] / counts[z]
        tck = interpolate.splrep(z.astype(float), centre, s=s, k=3)
        np.testing.assert_array_equal(values, interpolate.splev(zref.astype(float), tck))
    assert {69, 70} <= set(np.trunc(x).astype(int).tolist())


def _loaded_after(code: str, modules: tuple[str, ...]) -> list[str]:
    listing = f"[m for m in {modules!r} if m in sys.modules]"
    probe = f"{code}\nimport json, sys\nprint(json.dumps({listing}))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_discfile_command_loads_no_scipy_interpolate_pandas_or_pydantic(
    shared_data: Path, tmp_path: Path
) -> None:
    """``cordwatch morphometry SEG --discfile DISCS --perlevel -o out.csv`` (issue 14's case):
    the projection's spline is the FITPACK port, the options are converted without pydantic."""
    small = shared_data / "sct_testing_data" / "template"
    seg, discs = small / "PAM50_small_cord.nii.gz", small / "PAM50_small_label_disc.nii.gz"
    if not seg.is_file():
        pytest.skip(f"{seg}: real data not present")
    out = tmp_path / "out.csv"
    args = ["morphometry", str(seg), "--discfile", str(discs), "--perlevel", "-o", str(out)]
    code = (
        f"import sys\nfrom drift.cli.main import app\nsys.argv = ['cordwatch', *{args!r}]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code"
    )
    loaded = _loaded_after(code, ("scipy.interpolate", "pandas", "pydantic", "mlflow"))
    assert out.is_file()
    assert loaded == []


# ------------------------------------------------------------------------------------------
# The command line's own conversion of plain option values = typer's
# ------------------------------------------------------------------------------------------


def _all_params() -> list[object]:
    import typer.main

    from drift.cli.main import app

    params: list[object] = []

    def walk(cmd: object) -> None:
        params.extend(getattr(cmd, "params", []))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return params


VALUES = [None, "a.nii.gz", "", "-", "/x//y/", "1.5", " 2 ", "3", "abc", "true", "0",
          Path("b"), 2.0, 7, True, False, ("a", "b"), ["1"]]  # fmt: skip


def _outcome(runtime: object, value: object, param: object) -> object:
    import typer

    try:
        result = runtime.coerce(value, param=param, ctx=None)  # type: ignore[attr-defined]
    except (typer.BadParameter, ValueError, TypeError, AssertionError) as err:
        return ("error", type(err).__name__, str(err))
    return ("ok", type(result).__name__, result)


def test_plain_coercion_is_typers_for_every_parameter(tmp_path: Path, monkeypatch) -> None:
    """Every parameter of every cordwatch command, a spread of values: the same value (and
    type) or the same error as typer's own runtime coercion (pydantic TypeAdapters)."""
    from typer._coercion import build_runtime_param

    from drift.cli.common import _PlainRuntimeParam

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.nii.gz").write_text("")
    checked = 0
    for param in _all_params():
        runtime = param.get_runtime_param()  # type: ignore[attr-defined]
        typers = build_runtime_param(param.type_descriptor)  # type: ignore[attr-defined]
        for value in VALUES:
            assert _outcome(runtime, value, param) == _outcome(typers, value, param), (
                param.name,  # type: ignore[attr-defined]
                value,
            )
        checked += isinstance(runtime, _PlainRuntimeParam)
    assert checked > 20  # the plain path is taken (str, Path, bool, float options)


def test_long_centerline_uses_compiled_fitpack_with_the_ports_values() -> None:
    """Above LONG_CENTERLINE slices the tangents come from scipy's compiled FITPACK (the numpy
    port's dense QR grows as slices x knots^2); both give the same centerline."""
    from drift.measure.morphometry import LONG_CENTERLINE, smoothed_centerline

    n = LONG_CENTERLINE + 200
    z = np.arange(n, dtype=float)
    rng = np.random.default_rng(3)
    cx = 70 + 5 * np.sin(z / 150) + rng.normal(0, 0.03, n)
    cy = 60 + 3 * np.cos(z / 90) + rng.normal(0, 0.03, n)
    s = 20 * 0.5 / 3
    fast = smoothed_centerline(z, cx, cy, z, 0.5, 20.0)
    port = [
        spline_values(*smoothing_spline(z, c, s, 3), z, der=d) for d in (0, 1) for c in (cx, cy)
    ]
    for a, b in zip(fast, port, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)
