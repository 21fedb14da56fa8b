"""Synthetic model packages for tests and benchmarks.

The checkpoints are seeded random bytes: the registry hashes and moves them but never
unpickles anything, so they need not be real torch files.

>>> import tempfile
>>> root = make_package(Path(tempfile.mkdtemp()) / "pkg", folds=("0", "1"), size=10)
>>> sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
['dataset.json', 'fold_0/checkpoint_final.pth', 'fold_1/checkpoint_final.pth', 'plans.json']
"""

from __future__ import annotations

import json
import random
import zipfile
from collections.abc import Sequence
from pathlib import Path

DATASET_JSON = {
    "channel_names": {"0": "T2w"},
    "labels": {"background": 0, "spinal_cord": 1},
    "numTraining": 42,
    "file_ending": ".nii.gz",
}
PLANS_JSON = {
    "dataset_name": "Dataset101_SpinalCord",
    "plans_name": "nnUNetPlans",
    "configurations": {"3d_fullres": {"patch_size": [64, 160, 64]}},
}


def make_package(
    root: str | Path,
    folds: Sequence[str] = ("0",),
    size: int = 1024,
    seed: int = 0,
    checkpoint: str = "checkpoint_final.pth",
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a fake nnU-Net v2 results folder: dataset.json, plans.json, fold_*/<checkpoint>.

    Each checkpoint holds ``size`` random bytes drawn from ``seed`` (and the fold), so two
    packages with different seeds differ in every checkpoint.
    """
    root = Path(root)
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(DATASET_JSON, indent=2))
    (root / "plans.json").write_text(json.dumps(PLANS_JSON, indent=2))
    for fold in folds:
        rng = random.Random(f"{seed}/{fold}")
        (root / f"fold_{fold}").mkdir()
        (root / f"fold_{fold}" / checkpoint).write_bytes(rng.randbytes(size))
    for rel, data in (extra_files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def zip_package(
    package: str | Path, archive: str | Path, nested: bool = True, only: Sequence[str] = ()
) -> Path:
    """Zip a package folder like an SCT release: nested in its folder name, or flat.

    ``only`` keeps just these top-level entries (e.g. ``["dataset.json", "plans.json",
    "fold_0"]`` for a one-fold zip).
    """
    package, archive = Path(package), Path(archive)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package.rglob("*")):
            rel = path.relative_to(package)
            if only and rel.parts[0] not in only:
                continue
            name = (Path(package.name) / rel if nested else rel).as_posix()
            if path.is_dir():
                zf.writestr(name + "/", b"")
            else:
                zf.write(path, name)
    return archive
