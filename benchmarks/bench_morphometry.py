"""Time the morphometry of the PAM50 cord (991 slices, per level) and of the SCT t2 subject.

Usage: .venv/bin/python benchmarks/bench_morphometry.py [--repeat 7] [--data ../shared/data]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()

    from drift.cli_morphometry import morphometry_table
    from drift.levels import aggregate, slice_levels_from_labeled
    from drift.morphometry import slice_metrics
    from drift.nifti import load_labels, load_segmentation
    from drift.sctcsv import write_sct_csv

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
