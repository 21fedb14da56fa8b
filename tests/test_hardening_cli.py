"""Issue 15, CLI-wide defects: outputs onto inputs (2), the error boundary (4), work before
refusing (9), damaged values (6) and the minor ones (10). In-process, fast."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import typer.main
from typer.testing import CliRunner

from drift.cli.main import app
from drift.measure.sctcsv import write_sct_csv

runner = CliRunner()


def invoke(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("cordwatch: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture()
def seg(tmp_path: Path) -> Path:
    from drift.measure.phantoms import elliptic_cylinder

    data = elliptic_cylinder((24, 24, 12), (0.8, 0.8, 0.8), 4.5, 3.5)
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 0.8, 1.0])), path)
    return path


def write_csvs(directory: Path, n: int = 6, scale: float = 1.0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        levels = np.repeat(np.arange(2, 9), 3)
        rows = pd.DataFrame(
            {
                "Slice (I->S)": (20 - levels) * 3 + np.tile(np.arange(3), 7),
                "VertLevel": levels,
                "MEAN(area)": 75.0 * (1 + 0.05 * s) * scale * np.ones(len(levels)),
                "MEAN(diameter_AP)": 8.0 * math.sqrt(1 + 0.05 * s) * np.ones(len(levels)),
                "MEAN(diameter_RL)": 12.0 * math.sqrt(1 + 0.05 * s) * np.ones(len(levels)),
            }
        )
        name = f"sub-{s:02d}_T2w_PAM50.csv"
        write_sct_csv(rows, directory / name, filename=name, version="test")
    return directory


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return write_csvs(tmp_path / "base"), write_csvs(tmp_path / "cand")


# -- 2. outputs overwrote inputs ---------------------------------------------------------------


def test_2_morphometry_output_onto_its_inputs_is_refused(seg: Path, tmp_path: Path) -> None:
    before = seg.read_bytes()
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.nii.gz"
    link.symlink_to(seg)
    hard = tmp_path / "hard.nii.gz"
    os.link(seg, hard)
    for out in (seg, tmp_path / "sub" / ".." / "seg.nii.gz", link, hard):
        code, stdout, stderr = invoke("morphometry", seg, "-o", out)
        assert code == 2, (out, stdout, stderr)
        assert "would overwrite the input" in one_error_line(stderr)
        assert seg.read_bytes() == before
    code, _, stderr = invoke("morphometry", seg, "--vertfile", seg, "--perlevel", "-o", seg)
    assert code == 2 and seg.read_bytes() == before


def test_2_drift_compare_output_onto_an_input_csv_is_refused(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, cand = dirs
    victim = base / "sub-01_T2w_PAM50.csv"
    before = victim.read_bytes()
    code, _, stderr = invoke("drift", "compare", base, cand, "--result", victim)
    assert code == 2 and "would write inside the input folder" in one_error_line(stderr)
    policy = tmp_path / "policy.yaml"
    policy.write_text("{}\n")
    code, _, stderr = invoke("drift", "compare", base, cand, "--policy", policy, "--result", policy)
    assert code == 2 and "would overwrite the input" in one_error_line(stderr)
    assert policy.read_text() == "{}\n"
    code, _, stderr = invoke("drift", "compare", base, cand, "--report", base)
    assert code == 2 and "input" in one_error_line(stderr)
    code, _, stderr = invoke("drift", "compare", base, cand, "--result", tmp_path / "a.json",
                             "--report", tmp_path / "a.json")  # fmt: skip
    assert code == 2
    assert victim.read_bytes() == before


def test_2_drift_check_and_pull_refuse_before_any_work(
    cordwatch_home: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("metrics: {}\n")
    check = ["drift", "check", "m@candidate", "--baseline", "m@champion", "--cohort", "phantom"]
    code, _, stderr = invoke(*check, "--policy", policy, "--result", policy)
    assert code == 2 and "would overwrite the input" in one_error_line(stderr)
    assert policy.read_text() == "metrics: {}\n"
    assert not cordwatch_home.exists()  # refused before the registry was touched
    code, _, stderr = invoke("models", "pull", "m/1", "-o", cordwatch_home / "cache" / "x")
    assert code == 2 and "inside the input folder" in one_error_line(stderr)


# -- 4. unexpected errors: exit 2 with one line, result files last -----------------------------


def test_4_report_onto_a_file_writes_no_json_and_exits_2(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, cand = dirs
    existing = tmp_path / "existing.txt"
    existing.write_text("keep")
    result_json = tmp_path / "r.json"
    code, _, stderr = invoke("drift", "compare", base, cand, "--report", existing,
                             "--result", result_json)  # fmt: skip
    assert code == 2, stderr
    one_error_line(stderr)
    assert not result_json.exists() and existing.read_text() == "keep"


def test_4_output_that_is_a_folder_or_below_a_file_exits_2(seg: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    code, _, stderr = invoke("morphometry", seg, "-o", folder)
    assert code == 2 and "folder" in one_error_line(stderr)
    code, _, stderr = invoke("morphometry", seg, "-o", seg.parent / "seg.nii.gz" / "x.csv")
    assert code == 2 and "which is a file" in one_error_line(stderr)


def test_4_traceback_flag_shows_the_unexpected_error(
    seg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import drift.measure.nifti

    def boom(*a: Any, **k: Any) -> Any:
        raise OSError(5, "Input/output error", str(seg))

    monkeypatch.setattr(drift.measure.nifti, "load_segmentation", boom)
    code, _, stderr = invoke("morphometry", seg)
    assert code == 2 and "Input/output error" in one_error_line(stderr)
    result = runner.invoke(app, ["--traceback", "morphometry", str(seg)])
    assert isinstance(result.exception, OSError)


def _leaf_commands() -> dict[str, Any]:
    found: dict[str, Any] = {}

    def walk(cmd: Any, prefix: tuple[str, ...]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, (*prefix, name))
        else:
            found[" ".join(prefix)] = cmd

    walk(typer.main.get_command(app), ())
    return found


# For each command: arguments, and a function it calls inside (patched to raise).
# "OUT" is replaced by a result path that must not exist afterwards.
BOUNDARY: dict[str, tuple[list[str], str]] = {
    "morphometry": (["SEG", "-o", "OUT"], "drift.measure.morphometry.slice_metric_arrays"),
    "demo": (["--out", "OUT"], "drift.cli.demo.phantom_level_accuracy"),
    "serve": (["--port", "1"], "drift.service.checks.CheckSettings.load"),
    "models register": (["m", "SEG"], "registry.api.connect"),
    "models list": ([], "registry.api.connect"),
    "models show": (["m/1"], "registry.api.connect"),
    "models pull": (["m/1", "-o", "OUT"], "registry.api.connect"),
    "models promote": (["m/1"], "registry.api.connect"),
    "models history": (["m"], "registry.api.connect"),
    "models diff": (["m/1", "m/2"], "registry.api.connect"),
    "drift compare": (["BASE", "CAND", "--result", "OUT"], "drift.gate.policy.drift_result"),
    "drift check": (
        ["m@c", "--baseline", "m@p", "--cohort", "phantom", "--result", "OUT"],
        "drift.gate.check.run_check",
    ),
    "cohort list": ([], "drift.cohort.manifest.load_cohort"),
    "cohort show": (["phantom"], "drift.cohort.manifest.load_cohort"),
    "cohort verify": (["phantom"], "drift.cohort.manifest.load_cohort"),
    "normative import": (["BASE", "--name", "db"], "registry.api.connect"),
    "normative list": ([], "registry.api.connect"),
    "normative show": (["db"], "registry.api.connect"),
    "normative summary": (["db"], "registry.api.connect"),
    "normative update": (["db", "--model", "m/1", "--scaling", "SEG"], "registry.api.connect"),
    "normative export": (["db", "OUT"], "registry.api.connect"),
    "normative zscore": (["SEG", "--db", "db"], "registry.api.connect"),
    "models audit": (["m"], "registry.api.connect"),
    "policy schema": ([], "drift.gate.schema.json_schema"),
    "release candidate": ([], "drift.gate.release.resolve_candidate"),
    "release gated": (
        ["SEG", "SEG", "--tree", "t", "--path", "p"],
        "drift.gate.release.read_json_file",
    ),
    "release outputs": (["SEG", "key"], "drift.gate.release.read_json_file"),
    "release record": (
        [
            "OUT",
            "--model",
            "m",
            "--version",
            "1",
            "--sha256",
            "a",
            "--baseline",
            "1",
            "--commit",
            "c",
            "--normative-name",
            "n",
            "--normative-version",
            "1",
            "--normative-mode",
            "scaling",
        ],
        "drift.gate.release.promotion_record",
    ),
}


def test_4_boundary_table_covers_every_command() -> None:
    commands = _leaf_commands()
    missing = sorted(set(commands) - set(BOUNDARY))
    assert not missing, f"add {missing} to BOUNDARY (arguments + a function it calls inside)"
    for name, cmd in commands.items():
        assert getattr(cmd.callback, "__cordwatch_command__", False), name


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), MemoryError()])
@pytest.mark.parametrize("name", sorted(BOUNDARY))
def test_4_every_command_turns_an_unexpected_error_into_exit_2(
    name: str,
    exc: BaseException,
    seg: Path,
    dirs: tuple[Path, Path],
    cordwatch_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    args, target = BOUNDARY[name]
    module_name, _, attr = target.rpartition(".")
    try:
        owner: Any = importlib.import_module(module_name)
    except ModuleNotFoundError:  # Class.method
        mod, _, cls = module_name.rpartition(".")
        owner = getattr(importlib.import_module(mod), cls)
    calls = []

    def boom(*a: Any, **k: Any) -> Any:
        calls.append(1)
        raise exc

    monkeypatch.setattr(owner, attr, boom)
    out = tmp_path / "result-out"
    subs = {"SEG": str(seg), "BASE": str(dirs[0]), "CAND": str(dirs[1]), "OUT": str(out)}
    argv = [*name.split(), *(subs.get(a, a) for a in args)]
    result = runner.invoke(app, argv)
    assert calls, f"{name}: the injected failure was not reached: {result.stderr}"
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    line = one_error_line(result.stderr)
    assert ("out of memory" if isinstance(exc, MemoryError) else "No space left") in line
    assert not out.exists()


# -- 9. work before refusing -------------------------------------------------------------------


def _lying_header(path: Path, shape: tuple[int, int, int]) -> Path:
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    header = img.header.copy()
    header.set_data_shape(shape)
    raw = header.binaryblock + b"\0" * 4 + np.zeros(8, np.float32).tobytes()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
def test_9_nifti_header_larger_than_the_file_is_refused_at_once(tmp_path: Path, name: str) -> None:
    import resource
    import time

    from drift.measure.nifti import load_segmentation
    from registry.errors import InputError

    path = _lying_header(tmp_path / name, (1024, 1024, 2000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="header") as caught:
        load_segmentation(path)
    assert time.perf_counter() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_9_oversized_policy_is_refused_before_parsing_and_error_is_short(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    with policy.open("w") as fh:
        fh.write("metrics:\n  area: [")
        fh.write(", ".join(["1"] * 1_500_000))
        fh.write("]\n")
    code, _, stderr = invoke("drift", "compare", tmp_path, tmp_path, "--policy", policy)
    assert code == 2
    line = one_error_line(stderr)
    assert str(policy) in line and len(line) < 500


# -- 10. minor -----------------------------------------------------------------------------------


def test_10_truncated_nii_and_complex_image_give_one_line(seg: Path, tmp_path: Path) -> None:
    img = nib.load(str(seg))
    plain = tmp_path / "seg.nii"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine), plain)
    cut = tmp_path / "cut.nii"
    cut.write_bytes(plain.read_bytes()[:-100])
    code, _, stderr = invoke("morphometry", cut)
    assert code == 2 and "truncated" in one_error_line(stderr)
    cplx = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.complex64), img.affine), cplx)
    code, _, stderr = invoke("morphometry", cplx)
    assert code == 2 and "complex" in one_error_line(stderr)


# -- 6. damaged or impossible values (drift compare's CSV reading) -----------------------------


def test_6_candidate_csv_truncated_mid_line_is_an_error(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, cand = dirs
    victim = cand / "sub-02_T2w_PAM50.csv"
    victim.write_bytes(victim.read_bytes()[:-7])  # cut inside the last row
    code, _, stderr = invoke("drift", "compare", base, cand, "--result", tmp_path / "r.json")
    line = one_error_line(stderr)
    assert code == 2 and "truncated" in line and str(victim) in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("value", ["-75.0", "inf", "-inf"])
def test_6_impossible_area_is_refused_naming_file_and_row(
    dirs: tuple[Path, Path], value: str
) -> None:
    base, cand = dirs
    victim = cand / "sub-03_T2w_PAM50.csv"
    df = pd.read_csv(victim, dtype=str, keep_default_na=False)
    df.loc[4, "MEAN(area)"] = value
    df.to_csv(victim, index=False)
    code, _, stderr = invoke("drift", "compare", base, cand)
    line = one_error_line(stderr)
    assert code == 2 and str(victim) in line and "line 6: MEAN(area) is" in line, line


def test_6_negative_diameter_refused_by_the_per_file_reader(tmp_path: Path) -> None:
    from drift.measure.sctcsv import read_sct_csv
    from registry.errors import InputError

    folder = write_csvs(tmp_path / "d", n=1)
    victim = folder / "sub-00_T2w_PAM50.csv"
    df = pd.read_csv(victim, dtype=str, keep_default_na=False)
    df.loc[0, "MEAN(diameter_RL)"] = "-1"
    df.to_csv(victim, index=False)
    with pytest.raises(InputError, match=r"line 2: MEAN\(diameter_RL\) is -1, .*negative"):
        read_sct_csv(victim)
