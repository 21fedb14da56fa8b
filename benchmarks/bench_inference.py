"""Inference speed: seconds per image of a demo model on phantom images, cold and cached.

    python benchmarks/bench_inference.py                      # demo-good, CPU or GPU (auto)
    python benchmarks/bench_inference.py --device cpu --threads 1 --images 6
    python benchmarks/bench_inference.py --device cuda --json gpu.json

Measures, on the demo cohort's phantoms (``make_subject(i, seed=0)``, 48 x 48 x ~135 voxels of
1 mm): the model load, ``predict_array`` per image (median, min, max; after one warm-up image),
and ``segment_cohort`` over the same files cold (hash + read + predict + write the cache),
without and with the prefetch (the next image hashed and read in a thread while the current
one is predicted), and warm (everything cached: hashes only, no model load). Prints a JSON
record with the device and library versions; the README's table is made of these records.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from drift.cohort.inference import segment_cohort
from drift.measure.phantoms import make_subject
from registry.fsutil import sha256_file
from registry.nnunet import load_predictor, predict_array

REPO = Path(__file__).resolve().parents[1]

CONTRASTS = ("T1w", "T2w", "T2star")


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"


def bench(model: Path, device: str, n_images: int, threads: int | None) -> dict:
    import torch

    subjects = [make_subject(i, seed=0) for i in range((n_images + 2) // 3 + 1)]
    cases = [(s, c) for s in subjects for c in CONTRASTS][: n_images + 1]

    t0 = time.perf_counter()
    predictor = load_predictor(model, device=device, num_threads=threads)
    load_s = time.perf_counter() - t0
    dev = str(predictor.device)

    def sync() -> None:
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    for i, (subject, contrast) in enumerate(cases):
        sync()
        t = time.perf_counter()
        predict_array(predictor, subject.images[contrast], subject.spacing)
        sync()
        if i:  # the first image warms up allocators and caches
            times.append(time.perf_counter() - t)

    torch_threads = torch.get_num_threads()

    with tempfile.TemporaryDirectory() as tmp:
        images = []
        for subject, contrast in cases[1:]:
            path = Path(tmp) / f"{subject.subject_id}_{contrast}.nii.gz"
            img = nib.Nifti1Image(subject.images[contrast].astype(np.int16), subject.affine)
            nib.save(img, path)
            images.append((f"{subject.subject_id}/{contrast}", path, sha256_file(path)))
        package_sha = "bench-" + sha256_file(model / "fold_0" / "checkpoint_final.pth")
        runs = {}
        # cold without the prefetch (each image read after the previous one is written), cold
        # with it (the default: image i + 1 hashed and read while image i is predicted), warm.
        for label, cache, prefetch in (
            ("cold_no_prefetch", "cache-plain", False),
            ("cold", "cache", True),
            ("warm", "cache", True),
        ):
            sync()
            t = time.perf_counter()
            results = segment_cohort(
                model,
                package_sha,
                images,
                Path(tmp) / cache,
                device,
                progress=False,
                num_threads=threads,
                prefetch=prefetch,
            )
            sync()
            runs[label] = time.perf_counter() - t
            assert all(r.status == "ok" for r in results), results
        assert all(r.cached for r in results)

    shape = cases[1][0].images[cases[1][1]].shape
    return {
        "model": model.name,
        "device": dev,
        "device_name": _device_name(dev),
        "torch_threads": torch_threads,
        "n_images": len(times),
        "image_shape": list(shape),
        "load_seconds": round(load_s, 2),
        "predict_seconds_median": round(statistics.median(times), 3),
        "predict_seconds_min": round(min(times), 3),
        "predict_seconds_max": round(max(times), 3),
        "cohort_cold_no_prefetch_seconds_per_image": round(
            runs["cold_no_prefetch"] / len(images), 3
        ),
        "cohort_cold_seconds_per_image": round(runs["cold"] / len(images), 3),
        "cohort_warm_seconds_per_image": round(runs["warm"] / len(images), 4),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=REPO / "models" / "demo" / "demo-good",
        help="nnU-Net v2 results folder (default: the demo-good package)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--images", type=int, default=6, help="timed images (default 6)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: the cores not already busy)"
    )
    parser.add_argument("--json", type=Path, help="also write the record to this file")
    args = parser.parse_args(argv)
    record = bench(args.model, args.device, args.images, args.threads)
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":  # nnU-Net may spawn processes: keep this guard
    sys.exit(main())
