"""The scale-out engine (drift.cohort.engine) on this machine: overhead, speed-up, batch.

Usage: .venv/bin/python benchmarks/bench_engine.py [--overhead] [--segment] [--batch]
       [--images 1602] [--cohort 60] [--files 100] [--repeat 3] [--json OUT.json]

``--overhead``: the engine's own cost per task. A simulated cohort of ``--images`` small
NIfTI images (16 x 16 x 16) is segmented by the stub segmenter (``loader="threshold"``:
sha256 of the image, read, threshold, write the cache entry, no model) in this process and
on a LocalCluster of one worker; overhead per image = (cluster - in-process) / images, the
median of ``--repeat``. Memory: the peak RSS growth of this (the client's) process while a
LocalCluster of 2 workers runs the first 400, 800 and all images (flat = constant).

``--segment``: the segmentation phase of a drift check, the real demo model
(models/demo/demo-good, nnU-Net v2 on CPU) on ``--cohort`` phantom images, cold cache, in
this process (torch threads: the cores not busy) and on ``local:2`` (two workers of one
thread), in one run; the ratio is the speed-up.

``--batch``: ``morphometry --batch`` of ``--files`` rows pointing at the PAM50 cord
(141 x 141 x 991 at 0.5 mm) and its levels, per level, in this process for 10 and for
``--files`` rows (marginal seconds per file = the slope), then ``--files`` rows on local:2.

Prints the Markdown of benchmarks/README.md's "Scale-out engine" section (with the load
average before and after each part).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAM50 = Path(os.environ.get("CORDWATCH_SHARED_DATA", REPO.parent / "shared" / "data")) / "PAM50"


def load() -> float:
    return os.getloadavg()[0]


def cluster(n: int) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )


@contextmanager
def peak_rss() -> Iterator[dict[str, float]]:
    """Peak RSS growth (MiB) of this process while the block runs (sampled every 10 ms)."""
    import psutil

    proc = psutil.Process()
    out = {"base": proc.memory_info().rss / 2**20, "peak": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            out["peak"] = max(out["peak"], proc.memory_info().rss / 2**20)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()
        out["growth"] = max(0.0, out["peak"] - out["base"])


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- overhead ---


def write_small_cohort(root: Path, n: int) -> list[tuple[str, Path, str]]:
    import nibabel as nib
    import numpy as np

    from registry.fsutil import sha256_file

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        path = root / f"sub-{i:04d}_T2w.nii.gz"
        data = rng.normal(500, 100, (16, 16, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        images.append((f"sub-{i:04d}/T2w", path, sha256_file(path)))
    return images


def bench_overhead(n: int, repeat: int, tmp: Path) -> dict[str, Any]:
    from distributed import Client

    from drift.cohort.engine import Engine

    images = write_small_cohort(tmp / "small", n)
    run = 0

    def segment(engine: Engine, subset: list) -> list:
        nonlocal run
        run += 1
        return engine.segment_cohort(
            "/stub", "0" * 64, subset, tmp / f"cache-{run}", progress=False, loader="threshold"
        )

    before = load()
    here, there, cpu_here, cpu_there = [], [], [], []
    with cluster(1) as one, Client(one, set_as_default=False) as client:
        segment(Engine(client), images[:20])  # warm-up: imports on the worker
        segment(Engine(), images[:20])

        def cpu() -> float:  # this process (client + the LocalCluster's scheduler) + workers
            return time.process_time() + sum(client.run(time.process_time).values())

        for _ in range(repeat):  # alternate, so that the load hits both alike
            c0 = cpu()
            here.append(timed(lambda: segment(Engine(), images)))
            c1 = cpu()
            there.append(timed(lambda: segment(Engine(client), images)))
            c2 = cpu()
            cpu_here.append(c1 - c0)
            cpu_there.append(c2 - c1)
    memory = {}
    with cluster(2) as two, Client(two, set_as_default=False) as client:
        segment(Engine(client), images[:20])
        for k in sorted({min(400, n), min(800, n), n}):
            with peak_rss() as rss:
                segment(Engine(client), images[:k])
            memory[k] = round(rss["growth"], 1)
    per_here = statistics.median(here) / n
    per_there = statistics.median(there) / n
    return {
        "images": n,
        "in_process_s": [round(t, 2) for t in here],
        "local1_s": [round(t, 2) for t in there],
        "in_process_ms_per_image": round(1000 * per_here, 2),
        "local1_ms_per_image": round(1000 * per_there, 2),
        "overhead_ms_per_image": round(1000 * (per_there - per_here), 2),
        "cpu_in_process_ms_per_image": round(1000 * statistics.median(cpu_here) / n, 2),
        "cpu_local1_ms_per_image": round(1000 * statistics.median(cpu_there) / n, 2),
        "cpu_overhead_ms_per_image": round(
            1000 * (statistics.median(cpu_there) - statistics.median(cpu_here)) / n, 2
        ),
        "client_rss_growth_mib": memory,
        "load": [round(before, 1), round(load(), 1)],
    }


# ---------------------------------------------------------------------------- segment -----


def bench_segment(n: int, tmp: Path) -> dict[str, Any]:
    from distributed import Client

    from drift.cohort.engine import Engine
    from drift.cohort.inference import segment_cohort
    from drift.measure.phantoms import write_cohort

    subjects = (n + 2) // 3
    root = tmp / "phantoms"
    table = write_cohort(root, n_subjects=subjects, contrasts=("T1w", "T2w", "T2star"), seed=11)
    images = [
        (f"{r.participant_id}/{r.contrast}", root / r.image, r.image_sha256)
        for r in table.itertuples()
    ][:n]
    pkg = REPO / "models" / "demo" / "demo-good"
    before = load()
    t_here = timed(
        lambda: segment_cohort(pkg, "1" * 64, images, tmp / "seg-here", "cpu", progress=False)
    )
    mid = load()
    with cluster(2) as two, Client(two, set_as_default=False) as client:
        t_there = timed(
            lambda: Engine(client).segment_cohort(
                pkg, "1" * 64, images, tmp / "seg-there", "cpu", progress=False
            )
        )
    return {
        "images": len(images),
        "in_process_s": round(t_here, 1),
        "local2_s": round(t_there, 1),
        "ratio_in_process_over_local2": round(t_here / t_there, 2),
        "load": [round(before, 1), round(mid, 1), round(load(), 1)],
    }


# ------------------------------------------------------------------------------ batch -----


def bench_batch(n: int, tmp: Path) -> dict[str, Any]:
    from drift.cli.morphometry import morphometry_table
    from drift.cohort.engine import Engine, open_engine, run_batch

    cord, levels = PAM50 / "PAM50_cord.nii.gz", PAM50 / "PAM50_levels.nii.gz"
    if not cord.is_file():
        raise SystemExit(f"{cord}: not found (set CORDWATCH_SHARED_DATA)")

    def table(k: int) -> Path:
        path = tmp / f"batch-{k}.tsv"
        rows = [f"{cord}\t{levels}\tpam50-{i:03d}" for i in range(k)]
        path.write_text("seg\tvertfile\tname\n" + "\n".join(rows) + "\n")
        return path

    opts = {"perlevel": True, "perslice": False}
    opts |= {"vert": None, "normalize_pam50": False, "angle_correction": "exact"}
    opts |= {"interpolate_discs": False, "slices": None}

    def batch(k: int, engine: Engine, out: str) -> None:
        report = run_batch(
            table(k), tmp / out, morphometry_table, opts, engine, version="bench", progress=False
        )
        assert not report.failed, report.failed

    before = load()
    batch(2, Engine(), "warm")
    t_small = timed(lambda: batch(10, Engine(), "here-10"))
    t_big = timed(lambda: batch(n, Engine(), f"here-{n}"))
    mid = load()
    with open_engine("local:2") as engine:
        batch(2, engine, "warm-2")
        t_cluster = timed(lambda: batch(n, engine, f"local2-{n}"))
    return {
        "files": n,
        "in_process_10_s": round(t_small, 1),
        f"in_process_{n}_s": round(t_big, 1),
        "marginal_s_per_file": round((t_big - t_small) / (n - 10), 3),
        f"local2_{n}_s": round(t_cluster, 1),
        "local2_s_per_file": round(t_cluster / n, 3),
        "load": [round(before, 1), round(mid, 1), round(load(), 1)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overhead", action="store_true")
    ap.add_argument("--segment", action="store_true")
    ap.add_argument("--batch", action="store_true")
    ap.add_argument("--images", type=int, default=1602)
    ap.add_argument("--cohort", type=int, default=60)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    everything = not (args.overhead or args.segment or args.batch)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    record: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="cordwatch-bench-engine-") as tmp:
        base = Path(tmp)
        for name, flag, fn in (
            ("overhead", args.overhead, lambda: bench_overhead(args.images, args.repeat, base)),
            ("segment", args.segment, lambda: bench_segment(args.cohort, base)),
            ("batch", args.batch, lambda: bench_batch(args.files, base)),
        ):
            if flag or everything:
                record[name] = fn()
                print(json.dumps({name: record[name]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
