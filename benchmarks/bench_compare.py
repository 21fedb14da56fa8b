"""Time ``cordwatch drift compare`` on the PAM50 normative database (203 subjects x 991 slices).

Usage: .venv/bin/python benchmarks/bench_compare.py [--repeat 5] [--data ../shared/data]

Reports medians of --repeat runs for: reading the 203 CSVs of one folder into the tidy table;
the statistics and the gate (``drift_result``: level means, pairing, 2000-resample subject
bootstrap, TOST, Wilcoxon, Bland-Altman, ICC, slice-wise ratios and profile, per-contrast,
outliers, conditions) on a noisy candidate; rendering the report (figures, HTML, Markdown)
in memory; the whole command in-process (both folders, --json); and the CLI as a subprocess
(Python start-up and imports included). Prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def median_seconds(fn: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """(median, min, max) wall-clock seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    folder = args.data / "normative_r20250321" / "spinal_cord"
    if not folder.is_dir():
        sys.exit(f"{folder}: normative database not found")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from typer.testing import CliRunner

    from drift.cli import app
    from drift.cli_drift import read_csv_dir
    from drift.policy import drift_result
    from drift.report import render_report

    base, files = read_csv_dir(folder, "baseline")
    # A realistic candidate: 1 % per-(subject, level) and 2 % per-slice log-normal noise.
    rng = np.random.default_rng(0)
    cand = base.copy()
    keys = cand["subject"] + "|" + cand["level"].astype(str)
    codes = keys.astype("category").cat.codes.to_numpy()
    for m in ("area", "diameter_AP", "diameter_RL"):
        unit = np.exp(rng.normal(0, 0.01, codes.max() + 1))[codes]
        cand[m] = cand[m] * unit * np.exp(rng.normal(0, 0.02, len(cand)))

    rows: list[tuple[str, tuple[float, float, float]]] = []

    def timed(name: str, fn: Callable[[], object]) -> None:
        rows.append((name, median_seconds(fn, args.repeat)))

    timed(f"read one folder ({len(files)} CSVs -> tidy table)", lambda: read_csv_dir(folder, "b"))
    result = drift_result(base, cand)
    timed("statistics + gate (drift_result)", lambda: drift_result(base, cand))
    timed(
        "render report in memory (4 figures, HTML, Markdown)",
        lambda: render_report(result, baseline_table=base, candidate_table=cand),
    )

    runner = CliRunner()
    exe = Path(sys.executable).parent / "cordwatch"
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["drift", "compare", str(folder), str(folder), "--json", str(Path(tmp) / "r.json")]

        def in_process() -> None:
            res = runner.invoke(app, argv)
            assert res.exit_code == 0, res.output

        timed("whole command in-process (2 folders, --json)", in_process)
        timed(
            "CLI subprocess (2 folders, --json)",
            lambda: subprocess.run([str(exe), *argv], check=True, capture_output=True),
        )

    n_rows = len(base)
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.1f}; "
        f"{base['subject'].nunique()} subjects, {n_rows} tidy rows per folder; "
        f"repeat {args.repeat}\n"
    )
    print("| step | median | min | max |")
    print("|---|---|---|---|")
    for name, (med, lo, hi) in rows:
        print(f"| {name} | {med:.2f} s | {lo:.2f} s | {hi:.2f} s |")
    area = result.comparison.levels
    c3 = area[(area["metric"] == "area") & (area["level"] == 3)].iloc[0]
    print(
        f"\nnoisy candidate: verdict {result.verdict}; area C3 scaling {c3['scaling_factor']:.4f} "
        f"[{c3['ci95_low']:.4f}, {c3['ci95_high']:.4f}]"
    )


if __name__ == "__main__":
    main()
