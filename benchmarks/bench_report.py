"""Time the drift report (figures + HTML + Markdown + JSON, in memory) before and after, in one run.

Usage: .venv/bin/python benchmarks/bench_report.py [--repeat 5] [--before REV]

The input is shaped like the phantom demo check (10 subjects x 3 contrasts x C2..T1, PAM50
slices: 908-938 for C2 ... 693-735 for T1; candidate = baseline x 0.3 % noise, area C4 -3 %
so that one level fails), with a 3-version history. ``--before`` (default ``e76e2bf``, the
last revision whose ``drift/gate/report.py`` drew every figure itself: the report issue 14
measured) names the git revision whose ``drift/gate/report.py`` is the "before": it is
loaded from git into a private module next to today's code, and the two renderers run
alternately, ``--repeat`` times each, so that the machine's load hits both alike. Prints the
medians of wall time and of CPU time (``time.process_time``: on a loaded machine the wall
time measures the other processes too) and their ratios, then the median CPU time of each
figure of today's renderer and of the rest (the JSON document; HTML + Markdown). Imports
(matplotlib, Pillow, Jinja2) and font loading are not counted: one warm-up render of each
renderer comes first, as in a process that renders more than one report (``drift check`` pays
them once, ~0.3 s, whatever the renderer).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PAM50_LEVELS = {2: (908, 938), 3: (871, 907), 4: (834, 870), 5: (801, 833), 6: (770, 800)}
PAM50_LEVELS |= {7: (736, 769), 8: (693, 735)}


def phantom_like_tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Baseline and candidate tidy tables shaped like the phantom cohort's."""
    rng = np.random.default_rng(seed)
    rows = [
        (f"sub-{s:02d}", c, lev, z)
        for s in range(10)
        for c in ("T1w", "T2w", "T2star")
        for lev, (lo, hi) in PAM50_LEVELS.items()
        for z in range(lo, hi + 1)
    ]
    base = pd.DataFrame(rows, columns=["subject", "contrast", "level", "slice"])
    size = np.exp(rng.normal(0, 0.1, 10))[base["subject"].str[4:].astype(int)]
    base["area"] = 75.0 * size * np.exp(rng.normal(0, 0.02, len(base)))
    base["diameter_AP"] = 8.0 * np.sqrt(size) * np.exp(rng.normal(0, 0.01, len(base)))
    base["diameter_RL"] = 12.0 * np.sqrt(size) * np.exp(rng.normal(0, 0.01, len(base)))
    cand = base.copy()
    for m in ("area", "diameter_AP", "diameter_RL"):
        cand[m] *= np.exp(rng.normal(0, 0.003, len(base)))
    cand.loc[cand["level"] == 4, "area"] *= 0.97
    return base, cand


def load_before(rev: str) -> ModuleType:
    """``drift/gate/report.py`` at git revision ``rev`` as a private module."""
    src = subprocess.run(
        ["git", "show", f"{rev}:drift/gate/report.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-report-")) / "report_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("report_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--before", default="e76e2bf", help="git revision of the 'before' report.py"
    )
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from drift.gate import report as after
    from drift.gate.policy import drift_result

    before = load_before(args.before)
    base, cand = phantom_like_tables()
    prov = {
        "baseline": {"ref": "cordseg-demo/1", "sha256": "a" * 64},
        "candidate": {"ref": "cordseg-demo/2", "sha256": "b" * 64},
    }
    result = drift_result(base, cand, provenance=prov)
    history = pd.DataFrame(
        {
            "version": [v for v in (1, 2, 3) for _ in PAM50_LEVELS],
            "level": list(PAM50_LEVELS) * 3,
            "area": [75.0 - 0.1 * v for v in (1, 2, 3) for _ in PAM50_LEVELS],
        }
    )
    kw = {"baseline_table": base, "candidate_table": cand, "history": history}

    times: dict[str, list[float]] = {"before": [], "after": []}
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    load_start = os.getloadavg()
    sizes: dict[str, int] = {}
    for _name, mod in (("before", before), ("after", after)):  # warm-up (font cache, imports)
        mod.render_report(result, **kw)
    for _ in range(args.repeat):
        for name, mod in (("before", before), ("after", after)):
            start, start_cpu = time.perf_counter(), time.process_time()
            files = mod.render_report(result, **kw)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            sizes[name] = sum(len(data) for _, data in files.values())
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {sys.version.split()[0]}; load average at start {load_start}, "
        f"at end {os.getloadavg()}"
    )
    print(f"phantom-like check: {len(base)} rows per version, {args.repeat} runs each, alternating")
    print("| renderer | median wall s | min wall s | median CPU s | min CPU s | bytes written |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in ("before", "after"):
        print(
            f"| {k} ({args.before if k == 'before' else 'working tree'}) | {med[k]:.3f} | "
            f"{min(times[k]):.3f} | {med_cpu[k]:.3f} | {min(cpu[k]):.3f} | {sizes[k]:,} |"
        )
    print(
        f"speed-up: {med['before'] / med['after']:.2f}x wall, "
        f"{med_cpu['before'] / med_cpu['after']:.2f}x CPU"
    )

    fig_times: dict[str, list[float]] = {}
    json_times: list[float] = []
    for _ in range(args.repeat):
        for key, seconds in after.figure_timings(result, **kw).items():
            fig_times.setdefault(key, []).append(seconds)
        start_cpu = time.process_time()
        after.result_json(result)
        json_times.append(time.process_time() - start_cpu)
    print("| part (working tree) | median CPU s |")
    print("|---|---:|")
    figures_total = 0.0
    for key, ts in fig_times.items():
        figures_total += statistics.median(ts)
        print(f"| figure {key} | {statistics.median(ts):.3f} |")
    json_cpu = statistics.median(json_times)
    print(f"| all figures | {figures_total:.3f} |")
    print(f"| JSON document (result_json) | {json_cpu:.3f} |")
    rest = med_cpu["after"] - figures_total - json_cpu
    print(
        f"| HTML + Markdown (the total's median minus the parts': noisy under load) | {rest:.3f} |"
    )


if __name__ == "__main__":
    main()
