"""The whole drift check on the phantom cohort (10 subjects x 3 contrasts), cold and warm.

    .venv/bin/python benchmarks/bench_check.py [--device cpu] [--warm-repeat 3]

Cold: a fresh CORDWATCH_HOME (embedded registry, empty segmentation cache, the phantom cohort
generated on first use): both versions' 30 images are segmented, measured and logged. Warm:
the same check again, everything cached (segmentations by package x image x settings,
morphometrics per package x cohort in MLflow): statistics, report and verdict only. Each
timing is the whole `cordwatch drift check` subprocess, Python start-up included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORDWATCH = str(Path(sys.executable).with_name("cordwatch"))


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    code = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=False).returncode
    return time.perf_counter() - start, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warm-repeat", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="cordwatch-bench-"))
    env = {**os.environ, "CORDWATCH_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    models = REPO / "models" / "demo"
    steps = [
        [CORDWATCH, "models", "register", "bench", str(models / "demo-good")],
        [CORDWATCH, "models", "promote", "bench/1", "--force", "--reason", "benchmark"],
        [CORDWATCH, "models", "register", "bench", str(models / "demo-biased")],
    ]
    for cmd in steps:
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    check = [
        CORDWATCH,
        "drift",
        "check",
        "bench/2",
        "--baseline",
        "bench@champion",
        "--cohort",
        "phantom",
        "--device",
        args.device,
        "--no-progress",
        "--report",
        str(home / "report"),
    ]
    cold, code = timed(check, env)
    warm = [timed(check, env)[0] for _ in range(args.warm_repeat)]
    print(f"device: {args.device}; exit code {code} (1 = the biased model fails, as it should)")
    print(f"cold (2 x 30 images segmented, cohort generated): {cold:.1f} s")
    print(
        f"warm (everything cached), median of {args.warm_repeat}: {statistics.median(warm):.1f} s"
    )
    print(f"cold / warm: {cold / statistics.median(warm):.0f}x")


if __name__ == "__main__":
    main()
