"""Time ``cordwatch drift compare`` on the PAM50 normative database (203 subjects x 991 slices)
against its floor, as whole processes, alternating the cases run by run.

Usage: .venv/bin/python benchmarks/bench_compare.py [--repeat 5] [--data ../shared/data]
       [--before REV]   also time the code of git revision REV (e.g. e76e2bf, before issue 14)
       [--perf]         also count instructions (perf stat) of one run of each case

The candidate is a seeded copy of the database measuring every cord ~2 % smaller (area x
0.98, diameters x 0.99, 0.5 % per-subject and 1 % per-slice noise; written once to a temp
folder), so both folders are read and every statistic is computed as for two real releases.
Cases: the floor, ``python -c "import pandas, scipy.stats"`` (what any pandas + scipy tool
pays before reading anything); ``cordwatch drift compare BASE CAND --json OUT`` on the first
50, 100 and 203 subjects (linearity); and, with ``--before``, the same command from an
exported older revision. Prints the medians (min-max) and the ratios to the floor as a
Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"


def shrunk_copy(src: Path, dst: Path, *, factor: float = 0.98, seed: int = 14) -> None:
    """The candidate release: see the module doc (same recipe as tests/test_tables.py)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    dst.mkdir(parents=True, exist_ok=True)
    scale = {"MEAN(area)": factor, "MEAN(diameter_AP)": factor**0.5}
    scale["MEAN(diameter_RL)"] = factor**0.5
    for path in sorted(src.glob("*.csv")):
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        header, body = rows[0], rows[1:]
        cols = [header.index(c) for c in scale]
        subject = float(np.exp(rng.normal(0.0, 0.005)))
        noise = np.exp(rng.normal(0.0, 0.01, size=(len(body), len(cols))))
        for i, row in enumerate(body):
            for j, col in enumerate(cols):
                if row[col] != "":
                    # float(): repr of a numpy scalar is "np.float64(...)", not a number
                    value = float(row[col]) * scale[header[col]] * subject * noise[i, j]
                    row[col] = repr(float(value))
        with (dst / path.name).open("w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows([header, *body])


def subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` subjects' CSVs of ``src`` as symlinks in ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("sub-*.csv"))[:n]:
        (dst / f.name).symlink_to(f)
    return dst


def run_once(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall, user + system CPU) seconds of one run; CPU time suffers less from the load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if done.returncode not in (0, 1):  # 1: the gate failed, as it should on a 2 % shrink
        sys.exit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr}")
    return elapsed, cpu


def instructions(argv: list[str], cwd: Path) -> float | None:
    """User-space instructions of one run (perf stat), or None when perf is unavailable."""
    try:
        done = subprocess.run(
            ["perf", "stat", "-x,", "-e", "instructions:u", *argv],
            cwd=cwd,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        return None
    for line in done.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2].startswith("instructions") and parts[0].isdigit():
            return float(parts[0])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--before", default=None, metavar="REV")
    parser.add_argument("--perf", action="store_true")
    args = parser.parse_args()
    folder = args.data / "normative_r20250321" / "spinal_cord"
    if not folder.is_dir():
        sys.exit(f"{folder}: normative database not found")
    env_note = os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    del env_note

    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    shrunk = tmp / "candidate-all"
    shrunk_copy(folder, shrunk)
    n_all = len(list(folder.glob("sub-*.csv")))
    sizes = [n for n in (50, 100) if n < n_all] + [n_all]
    cordwatch = [str(PYTHON), "-c", "from drift.cli.main import app; app()"]
    cases: dict[str, tuple[list[str], Path]] = {
        "floor: python -c 'import pandas, scipy.stats'": (
            [str(PYTHON), "-c", "import pandas, scipy.stats"],
            REPO,
        )
    }
    for n in sizes:
        base = subset(folder, tmp / f"base-{n}", n)
        cand = subset(shrunk, tmp / f"cand-{n}", n)
        out = tmp / f"out-{n}.json"
        argv = [*cordwatch, "drift", "compare", str(base), str(cand), "--json", str(out)]
        cases[f"cordwatch drift compare, {n} subjects"] = (argv, REPO)
    if args.before:
        old = tmp / "before"
        old.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.before], cwd=REPO, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        base, cand = tmp / f"base-{n_all}", tmp / f"cand-{n_all}"
        argv = [*cordwatch, "drift", "compare", str(base), str(cand), "--json", str(tmp / "o.json")]
        cases[f"before ({args.before}): drift compare, {n_all} subjects"] = (argv, old)

    times: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for argv, cwd in cases.values():  # warm the page cache and the .pyc files
        run_once(argv, cwd)
    loads = []
    for _ in range(args.repeat):
        for name, (argv, cwd) in cases.items():
            wall, cpu = run_once(argv, cwd)
            times[name].append(wall)
            cpus[name].append(cpu)
        loads.append(os.getloadavg()[0])
    counts = (
        {name: instructions(argv, cwd) for name, (argv, cwd) in cases.items()} if args.perf else {}
    )

    floor = statistics.median(next(iter(times.values())))
    floor_cpu = statistics.median(next(iter(cpus.values())))
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average during the runs "
        f"{min(loads):.1f}-{max(loads):.1f}; {args.repeat} alternating runs per case, "
        "whole processes, wall clock\n"
    )
    header = "| case | wall median | min-max | / floor | CPU median | / floor |"
    if counts:
        header += " instructions (1 run) | / floor |"
    print(header)
    print("|---|---|---|---|---|---|" + ("---|---|" if counts else ""))
    floor_ins = next(iter(counts.values()), None) if counts else None
    for name, ts in times.items():
        med = statistics.median(ts)
        cpu = statistics.median(cpus[name])
        line = (
            f"| {name} | {med:.2f} s | {min(ts):.2f}-{max(ts):.2f} s | {med / floor:.1f}x "
            f"| {cpu:.2f} s | {cpu / floor_cpu:.1f}x |"
        )
        if counts:
            ins = counts[name]
            ratio = f"{ins / floor_ins:.1f}x" if ins and floor_ins else "n/a"
            line += f" {ins / 1e9:.2f} G | {ratio} |" if ins else " n/a | n/a |"
        print(line)
    per = [statistics.median(times[f"cordwatch drift compare, {n} subjects"]) for n in sizes]
    if len(sizes) > 1:
        slope = (per[-1] - per[0]) / (sizes[-1] - sizes[0])
        print(
            f"\ngrowth: {1000 * slope:.1f} ms per subject between {sizes[0]} and {sizes[-1]} "
            f"subjects; intercept {per[0] - slope * sizes[0]:.2f} s"
        )
    print(f"(temp folder {tmp})")


if __name__ == "__main__":
    main()
