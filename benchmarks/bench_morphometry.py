"""Time the morphometry of the PAM50 cord (991 slices, per level) and of the SCT t2 subject.

Usage: .venv/bin/python benchmarks/bench_morphometry.py [--repeat 7] [--data ../shared/data]
       .venv/bin/python benchmarks/bench_morphometry.py --sct-cases [--repeat 5] [--before REV]
       .venv/bin/python benchmarks/bench_morphometry.py --linear [--repeat 5]
       .venv/bin/python benchmarks/bench_morphometry.py --batch 6 [--repeat 5]

``--linear``: issue 14's "4x the slices costs <= 4.4x": the PAM50 cord (991 slices) and the
same cord four times as long (mirrored copies end to end, 3964 slices, so the centerline
stays smooth), per level, compute only (arrays in memory) and the whole command in-process
(NIfTI files read, CSV written), alternating, medians of --repeat.

``--batch N``: issue 14's batch target: ``cordwatch morphometry --batch TABLE -o DIR
--perlevel`` as whole processes with 1 and with N rows of the PAM50 cord + its level file,
alternating; the marginal cost of one more file is (T_N - T_1) / (N - 1), wall and CPU.

``--sct-cases``: the seven cases SCT 7.4 was timed on (issue 14), each as the whole
``cordwatch morphometry ... -o out.csv`` process, wall clock, the cases alternating run by
run, medians of --repeat; beside them the floor of each subject (a Python that imports numpy
and nibabel and loads the segmentation and its label file) and, with ``--before REV``, the
same commands from an exported older revision. Prints the Markdown table of
benchmarks/README.md with SCT's figures as the issue gives them.

Reports medians of --repeat runs for: compute only (metrics + levels + aggregation), the
whole command in-process (read NIfTI + compute + write CSV), the whole CLI as a subprocess
(Python start-up included), and, in the same run, an SCT-style per-slice loop (skimage
regionprops on the 5x-upsampled slice, what sct_process_segmentation does) as the ratio
baseline.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sct_style_loop(seg: np.ndarray, spacing: tuple[float, float, float]) -> list[float]:
    """Per-slice loop in the manner of SCT's compute_shape (regionprops on 5x upsampling)."""
    from skimage import measure, transform

    areas = []
    for z in range(seg.shape[2]):
        patch = seg[:, :, z].astype(np.float64)
        if patch.max() <= 0:
            continue
        norm = patch / patch.max()
        regions = measure.regionprops((norm > 0.5).astype(np.uint8))
        minx, miny, maxx, maxy = regions[0].bbox
        crop = norm[max(minx - 3, 0) : maxx + 3, max(miny - 3, 0) : maxy + 3]
        up = transform.pyramid_expand(crop, upscale=5, sigma=None, order=1)
        region = measure.regionprops((up > 0.5).astype(np.uint8), intensity_image=up)[0]
        _ = (region.axis_major_length, region.axis_minor_length, region.solidity)
        areas.append(float(np.sum(up)) * spacing[0] * spacing[1] / 25)
    return areas


#: SCT 7.4's wall times as issue 14 gives them (loaded 2-core machine), seconds.
SCT_SECONDS = {
    "t2 per slice": 6.5,
    "t2 per level, vertfile": 7.9,
    "t2 per level, discfile": 5.2,
    "t2 PAM50-normalised": 24.5,
    "PAM50 cord per slice": 16.7,
    "PAM50 cord per level, vertfile": 50.6,
    "PAM50 cord per level, discfile": 29.9,
}


def sct_cases(data: Path, repeat: int, before: str | None) -> None:
    """The seven SCT cases as whole processes (see the module doc)."""
    import os
    import platform
    import resource

    t2, pam = data / "sct_testing_data" / "t2", data / "PAM50"
    t2_seg, t2_vert, t2_disc = (
        t2 / "t2_seg-manual.nii.gz",
        t2 / "t2_seg-manual_labeled.nii.gz",
        t2 / "labels.nii.gz",
    )
    pam_seg, pam_vert, pam_disc = (
        pam / "PAM50_cord.nii.gz",
        pam / "PAM50_levels.nii.gz",
        pam / "PAM50_label_disc.nii.gz",
    )
    opts = {
        "t2 per slice": [t2_seg, "--perslice"],
        "t2 per level, vertfile": [t2_seg, "--vertfile", t2_vert, "--perlevel"],
        "t2 per level, discfile": [t2_seg, "--discfile", t2_disc, "--perlevel"],
        "t2 PAM50-normalised": [t2_seg, "--vertfile", t2_vert, "--normalize-pam50"],
        "PAM50 cord per slice": [pam_seg, "--perslice"],
        "PAM50 cord per level, vertfile": [pam_seg, "--vertfile", pam_vert, "--perlevel"],
        "PAM50 cord per level, discfile": [pam_seg, "--discfile", pam_disc, "--perlevel"],
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-morph-"))
    python = str(REPO / ".venv" / "bin" / "python")
    entry = [python, "-c", "from drift.cli.main import app; app()", "morphometry"]
    floor_code = (
        "import sys, numpy as np, nibabel as nib\n"
        "for p in sys.argv[1:]: np.asanyarray(nib.load(p).dataobj)"
    )
    cases: dict[str, tuple[list[str], Path]] = {
        "floor t2": ([python, "-c", floor_code, str(t2_seg), str(t2_vert)], REPO),
        "floor PAM50": ([python, "-c", floor_code, str(pam_seg), str(pam_vert)], REPO),
    }
    for name, args in opts.items():
        cases[name] = ([*entry, *map(str, args), "-o", str(tmp / "out.csv")], REPO)
    if before:
        old = tmp / "before"
        old.mkdir()
        archive = subprocess.run(
            ["git", "archive", before], cwd=REPO, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        for name, args in opts.items():
            argv = [*entry, *map(str, args), "-o", str(tmp / "old.csv")]
            cases[f"before: {name}"] = (argv, old)

    def once(argv: list[str], cwd: Path) -> tuple[float, float]:
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
        wall = time.perf_counter() - start
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime

    for argv, cwd in cases.values():  # warm the page cache and the .pyc files
        once(argv, cwd)
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    loads = []
    for _ in range(repeat):
        for name, (argv, cwd) in cases.items():
            wall, cpu = once(argv, cwd)
            walls[name].append(wall)
            cpus[name].append(cpu)
        loads.append(os.getloadavg()[0])
    med = {name: statistics.median(v) for name, v in walls.items()}
    cpu_med = {name: statistics.median(v) for name, v in cpus.items()}
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average during the runs "
        f"{min(loads):.1f}-{max(loads):.1f}; {repeat} alternating runs per case, whole "
        f"processes; floors: t2 {med['floor t2']:.2f} s wall / {cpu_med['floor t2']:.2f} s CPU, "
        f"PAM50 {med['floor PAM50']:.2f} s / {cpu_med['floor PAM50']:.2f} s\n"
    )
    head = "| case | SCT 7.4 (issue) | cordwatch wall (min-max) | x SCT | / floor | CPU | / floor |"
    if before:
        head += f" before ({before}) wall | before / floor |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name in opts:
        floor = "floor t2" if name.startswith("t2") else "floor PAM50"
        ws = walls[name]
        line = (
            f"| {name} | {SCT_SECONDS[name]:.1f} s | {med[name]:.2f} s "
            f"({min(ws):.2f}-{max(ws):.2f}) | {SCT_SECONDS[name] / med[name]:.0f}x "
            f"| {med[name] / med[floor]:.1f}x | {cpu_med[name]:.2f} s "
            f"| {cpu_med[name] / cpu_med[floor]:.1f}x |"
        )
        if before:
            b = med[f"before: {name}"]
            line += f" {b:.2f} s | {b / med[floor]:.1f}x |"
        print(line)
    print(f"(temp folder {tmp})")


def _pam50_long(data: Path, copies: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The PAM50 cord and level volumes repeated ``copies`` times along z, every other copy
    mirrored (a continuous cord), with the cord's affine."""
    import nibabel as nib

    cord = nib.nifti1.load(str(data / "PAM50" / "PAM50_cord.nii.gz"))
    levels = nib.nifti1.load(str(data / "PAM50" / "PAM50_levels.nii.gz"))
    c, lv = np.asanyarray(cord.dataobj), np.asanyarray(levels.dataobj)
    parts_c = [c if k % 2 == 0 else c[:, :, ::-1] for k in range(copies)]
    parts_l = [lv if k % 2 == 0 else lv[:, :, ::-1] for k in range(copies)]
    return np.concatenate(parts_c, axis=2), np.concatenate(parts_l, axis=2), cord.affine


def _load_note() -> str:
    import os
    import platform

    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def linear(data: Path, repeat: int) -> None:
    """4x the slices: compute only and whole command in-process (see the module doc)."""
    import os

    import nibabel as nib

    from drift.cli.morphometry import morphometry_table
    from drift.measure.levels import aggregate, slice_levels_from_labeled
    from drift.measure.morphometry import slice_metrics
    from drift.measure.sctcsv import write_sct_csv

    tmp = Path(tempfile.mkdtemp(prefix="bench-linear-"))
    arrays: dict[int, tuple[np.ndarray, np.ndarray, tuple[float, float, float]]] = {}
    files: dict[int, tuple[Path, Path]] = {}
    for copies in (1, 4):
        cord, lv, affine = _pam50_long(data, copies)
        seg_path, lv_path = tmp / f"cord{copies}.nii.gz", tmp / f"levels{copies}.nii.gz"
        nib.save(nib.Nifti1Image(cord, affine), seg_path)
        nib.save(nib.Nifti1Image(lv, affine), lv_path)
        sx, sy, sz = (float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        arrays[copies] = (cord.astype(np.float32), slice_levels_from_labeled(lv), (sx, sy, sz))
        files[copies] = (seg_path, lv_path)
    times: dict[tuple[int, str], list[float]] = {}
    loads = []
    for _ in range(repeat):
        for copies, (cord, levels, spacing) in arrays.items():
            start = time.perf_counter()
            aggregate(slice_metrics(cord, spacing), levels, perlevel=True)
            times.setdefault((copies, "compute"), []).append(time.perf_counter() - start)
            seg_path, lv_path = files[copies]
            start = time.perf_counter()
            table = morphometry_table(seg_path, vertfile=lv_path, perlevel=True)
            write_sct_csv(table, tmp / "out.csv", filename=str(seg_path), version="bench")
            times.setdefault((copies, "in-process"), []).append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{_load_note()} (during: {min(loads):.1f}-{max(loads):.1f}); medians of {repeat}")
    print("| what | 991 slices | 3964 slices (4x) | ratio |")
    print("|---|---|---|---|")
    for what in ("compute", "in-process"):
        a, b = med[(1, what)], med[(4, what)]
        print(f"| {what} | {a:.3f} s | {b:.3f} s | {b / a:.2f}x |")


def batch(data: Path, repeat: int, n_rows: int) -> None:
    """Marginal cost of one more PAM50-size file in ``morphometry --batch`` (module doc)."""
    import os
    import resource

    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    seg, lv = data / "PAM50" / "PAM50_cord.nii.gz", data / "PAM50" / "PAM50_levels.nii.gz"
    tables = {}
    for n in (1, n_rows):
        table = tmp / f"rows{n}.tsv"
        lines = ["seg\tvertfile\tname", *(f"{seg}\t{lv}\tcord{k}" for k in range(n))]
        table.write_text("\n".join(lines) + "\n")
        tables[n] = table
    python = str(REPO / ".venv" / "bin" / "python")
    entry = [python, "-c", "from drift.cli.main import app; app()", "morphometry"]

    def once(n: int) -> tuple[float, float]:
        out = tmp / f"out{n}"
        argv = [*entry, "--batch", str(tables[n]), "-o", str(out), "--perlevel"]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        wall = time.perf_counter() - start
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime

    once(1)  # warm the page cache and the .pyc files
    walls: dict[int, list[float]] = {1: [], n_rows: []}
    cpus: dict[int, list[float]] = {1: [], n_rows: []}
    loads = []
    for _ in range(repeat):
        for n in (1, n_rows):
            wall, cpu = once(n)
            walls[n].append(wall)
            cpus[n].append(cpu)
        loads.append(os.getloadavg()[0])
    w = {n: statistics.median(v) for n, v in walls.items()}
    c = {n: statistics.median(v) for n, v in cpus.items()}
    print(f"{_load_note()} (during: {min(loads):.1f}-{max(loads):.1f}); medians of {repeat}")
    print(f"| rows | wall | CPU |\n|---|---|---|\n| 1 | {w[1]:.2f} s | {c[1]:.2f} s |")
    print(f"| {n_rows} | {w[n_rows]:.2f} s | {c[n_rows]:.2f} s |")
    print(
        f"| marginal per file | {(w[n_rows] - w[1]) / (n_rows - 1):.3f} s "
        f"| {(c[n_rows] - c[1]) / (n_rows - 1):.3f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sct-cases", action="store_true")
    parser.add_argument("--before", default=None, metavar="REV")
    parser.add_argument("--linear", action="store_true")
    parser.add_argument("--batch", type=int, default=0, metavar="N")
    args = parser.parse_args()
    if args.linear:
        linear(args.data, args.repeat)
        return
    if args.batch:
        batch(args.data, args.repeat, args.batch)
        return
    if args.sct_cases:
        sct_cases(args.data, args.repeat, args.before)
        return

    from drift.cli.morphometry import morphometry_table
    from drift.measure.levels import aggregate, slice_levels_from_labeled
    from drift.measure.morphometry import slice_metrics
    from drift.measure.nifti import load_labels, load_segmentation
    from drift.measure.sctcsv import write_sct_csv

    cases = {
        "PAM50 cord (141x141x991, 0.5 mm), per level": (
            args.data / "PAM50" / "PAM50_cord.nii.gz",
            args.data / "PAM50" / "PAM50_levels.nii.gz",
        ),
        "SCT t2 subject (60x55x52, 1 mm), per level": (
            args.data / "sct_testing_data" / "t2" / "t2_seg-manual.nii.gz",
            args.data / "sct_testing_data" / "t2" / "t2_seg-manual_labeled.nii.gz",
        ),
    }
    tmp = Path(tempfile.mkdtemp())
    print(f"median of {args.repeat} runs, seconds")
    for name, (seg_path, vert_path) in cases.items():
        seg = load_segmentation(seg_path)
        levels = slice_levels_from_labeled(load_labels(vert_path, seg).data)

        def compute(seg=seg, levels=levels) -> object:
            return aggregate(slice_metrics(seg.data, seg.spacing), levels, perlevel=True)

        def in_process(seg_path=seg_path, vert_path=vert_path) -> object:
            table = morphometry_table(seg_path, vertfile=vert_path, perlevel=True)
            return write_sct_csv(table, tmp / "out.csv", filename=str(seg_path), version="bench")

        cli = [
            str(REPO / ".venv" / "bin" / "cordwatch"),
            "morphometry",
            str(seg_path),
            "--vertfile",
            str(vert_path),
            "--perlevel",
            "-o",
            str(tmp / "cli.csv"),
        ]
        t_compute = median_seconds(compute, args.repeat)
        t_inproc = median_seconds(in_process, args.repeat)
        t_cli = median_seconds(
            lambda cli=cli: subprocess.run(cli, check=True, stdout=subprocess.DEVNULL), args.repeat
        )
        t_python = median_seconds(
            lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.repeat
        )
        t_loop = median_seconds(lambda seg=seg: sct_style_loop(seg.data, seg.spacing), 3)
        print(f"\n{name}")
        print(f"  compute only (metrics + levels + aggregate): {t_compute:.3f}")
        print(f"  whole command in-process (read + compute + CSV): {t_inproc:.3f}")
        print(f"  whole CLI subprocess: {t_cli:.3f} (bare Python start: {t_python:.3f})")
        print(
            f"  SCT-style per-slice loop (3 runs): {t_loop:.3f} "
            f"-> vectorised is {t_loop / t_compute:.1f}x faster"
        )


if __name__ == "__main__":
    main()
